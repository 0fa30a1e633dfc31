"""capture.py: a cell becomes a function; only the names it reads travel, by value."""
from __future__ import annotations

import subprocess
import sys
import time

import cloudpickle
import pytest

from ptjupyter.capture import CaptureError, capture_cell


def _ns(ip, code):
    ip.run_cell(code, store_history=False)
    return ip.user_ns


def test_free_names_only_what_the_cell_reads(ip):
    ns = _ns(ip, "import math\nK = 3\nunused = 'x' * 1000\ndef helper(x):\n    return x * K\nclass Box:\n    v = 2\n")
    c = capture_cell("import os\ny = helper(Box.v)\nfor i in range(2):\n    y += i\n[j * K for j in range(2)]\nmath.floor(y + 0.5)",
                     ns, ip)
    assert set(c.names) == {"helper", "Box", "K", "math"}  # not 'unused', not the cell's own y/i/os, not builtins
    assert set(c.assigned) >= {"y", "i", "os"}
    assert c.sizes["math"] == 0 and c.sizes["helper"] > 0
    assert c.fn() == 7  # helper(2) = 6, +0 +1


def test_read_before_assignment_is_shipped(ip):
    ns = _ns(ip, "model = [1, 2]\nloss = 99")
    c = capture_cell("model = model + [3]\nloss = len(model)\nloss", ns, ip)
    assert set(c.names) == {"model"}  # loss is assigned before it is read: the worker's own value
    assert c.fn() == 3
    assert ns["model"] == [1, 2] and ns["loss"] == 99  # assigned names stay with the function


def test_by_value_under_spawn_in_a_fresh_interpreter(ip):
    """Functions and classes from earlier cells and imports inside the cell work in a process without them."""
    ns = _ns(ip, "class Acc:\n    def __init__(self):\n        self.n = 10\ndef twice(v):\n    return 2 * v\n")
    c = capture_cell("import json\nacc = Acc()\njson.dumps({'v': twice(acc.n)})", ns, ip)
    payload = cloudpickle.dumps(c.fn)
    out = subprocess.run([sys.executable, "-c", "import sys, cloudpickle; print(cloudpickle.loads(sys.stdin.buffer.read())())"],
                         input=payload, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == '{"v": 20}'


@pytest.mark.parametrize("setup, name, kind", [
    ("import threading\nlk = threading.Lock()", "lk", "_thread.lock"),
    ("import tempfile\nfh = tempfile.TemporaryFile('w')", "fh", "TextIOWrapper"),  # read-mode files travel as content
    ("gen = (i for i in range(3))", "gen", "generator"),
])
def test_unpicklable_global_names_the_variable(ip, setup, name, kind):
    ns = _ns(ip, setup)
    with pytest.raises(CaptureError) as ei:
        capture_cell(f"print({name})", ns, ip)
    msg = str(ei.value)
    assert "\n" not in msg and repr(name) in msg and kind in msg
    if name == "fh":
        ns["fh"].close()


def test_large_value_warns_with_name_and_size(ip):
    ns = _ns(ip, "big = bytes(101 * 1000 * 1000)")
    seen = []
    c = capture_cell("len(big)", ns, ip, warn=seen.append)
    assert len(seen) == 1 and "'big'" in seen[0] and "101.0 MB" in seen[0]
    assert c.sizes["big"] > 100e6
    ns.pop("big")


def test_syntax_error_has_the_cell_line_number(ip):
    with pytest.raises(SyntaxError) as ei:
        capture_cell("x = 1\ny = (\n", {}, ip, header="%%pytorch_elastic")
    assert ei.value.lineno == 3  # the %%pytorch_elastic line is line 1, as the notebook numbers it
    with pytest.raises(SyntaxError) as ei:
        capture_cell("x = 1\nyield x\n", {}, ip)
    assert ei.value.lineno == 2


def test_worker_traceback_points_into_the_cell(ip):
    c = capture_cell("a = 1\nraise ValueError('boom')", {}, ip, header="%%pytorch_elastic --nproc-per-node 2")
    import traceback

    try:
        cloudpickle.loads(cloudpickle.dumps(c.fn))()
    except ValueError:
        text = traceback.format_exc()
    assert 'File "<pytorch_elastic cell>", line 3' in text and "raise ValueError('boom')" in text


def test_last_expression_and_quiet_semicolon(ip):
    assert capture_cell("1 + 1", {}, ip).fn() == 2
    quiet = capture_cell("1 + 1;", {}, ip)
    assert quiet.quiet and quiet.fn() == 2  # ';' hides the value from display only (--out still gets it)
    assert capture_cell("x = 5", {}, ip).fn() is None
    assert capture_cell("", {}, ip).fn() is None


def test_ipython_syntax_inside_the_cell(ip):
    c = capture_cell("x = 3\nhere = %pwd\nx", ip.user_ns, ip, by_value=False)  # a direct call: works
    assert "get_ipython" in c.code and c.fn() == 3
    with pytest.raises(CaptureError) as ei:  # ranks have no IPython: say so before anything starts
        capture_cell("x = 3\n!ls\n", ip.user_ns, ip, header="%%pytorch_elastic --nproc-per-node 2")
    assert "line 3 of the cell" in str(ei.value) and "IPython" in str(ei.value)


def test_direct_capture_is_cheap(ip):
    """World size 1 skips pickling: building the function costs well under the 5 ms direct-call budget."""
    ns = _ns(ip, "import math\nK = 3")
    capture_cell("math.sqrt(K)", ns, ip, by_value=False)  # warm caches
    times = []
    for _ in range(20):
        t = time.perf_counter()
        c = capture_cell("math.sqrt(K)", ns, ip, by_value=False)
        times.append(time.perf_counter() - t)
    assert c.sizes == {"K": None, "math": None}
    assert min(times) < 0.005, f"capture took {min(times) * 1e3:.2f} ms"
