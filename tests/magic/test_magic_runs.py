"""%%pytorch_elastic runs 2 real ranks through a real InteractiveShell (run_cell_magic)."""
from __future__ import annotations

import pytest
from magic_helpers import needs_launcher

from ptjupyter.errors import RankFailed

pytestmark = [needs_launcher, pytest.mark.timeout(180)]

# torch's loggers bind sys.stderr when first imported: import them now, not under a test's capsys
import torch.distributed.launcher.api  # noqa: E402,F401


def test_two_ranks_result_out_lines_and_notebook_objects_by_value(ip, capsys):
    ip.run_cell("import math\nclass Scale:\n    def __init__(self, k):\n        self.k = k\n"
                "def scaled(x, s):\n    return x * s.k\nS = Scale(10)\n")
    cell = ("import os\nimport torch.distributed as dist\ndist.init_process_group('gloo')\nr = dist.get_rank()\n"
            "print('rank says', r, scaled(r, S), math.floor(2.5))\ndist.barrier()\n{'rank': r, 'k': S.k}")
    res = ip.run_cell_magic("pytorch_elastic", "--nproc-per-node 2 --out res", cell)
    assert res == {"rank": 0, "k": 10} and ip.user_ns["res"] == res
    assert "r" not in ip.user_ns  # assigned on the ranks only
    out = capsys.readouterr().out
    assert "[rank0] rank says 0 0 2" in out and "[rank1] rank says 1 10 2" in out
    assert "pytorch_elastic: 2/2 ranks exited 0 in" in out


def test_rank0_only(ip, capsys):
    ip.run_cell_magic("pytorch_elastic", "--nproc-per-node 2 --rank0-only", "import os\nprint('me', os.environ['RANK'])")
    out = capsys.readouterr().out
    assert "[rank0] me 0" in out and "[rank1]" not in out


def test_failing_rank_shows_its_own_traceback(ip, capsys):
    cell = "import os\nif os.environ['RANK'] == '1':\n    {}['missing']\nimport time\ntime.sleep(20)"
    with pytest.raises(RankFailed) as ei:
        ip.run_cell_magic("pytorch_elastic", "--nproc-per-node 2", cell)
    e = ei.value
    assert e.rank == 1 and "KeyError: 'missing'" in e.traceback_text
    text = "\n".join(e._render_traceback_())
    assert text.startswith("rank 1 failed") and 'File "<pytorch_elastic cell>", line 4' in text
    assert "<dynamic-code>" not in text and "Root Cause" not in text
    ip.run_cell("%%pytorch_elastic --nproc-per-node 2\nimport os\nif os.environ['RANK'] == '1':\n    raise SystemExit(3)\n"
                "import time\ntime.sleep(20)")
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "rank 1 failed (exit 3)" in text and "magics.py" not in text and "launch.py" not in text


def test_timeout_stops_a_rank_stuck_at_a_barrier(ip):
    from ptjupyter.errors import RunTimeout as CellTimeout

    cell = ("import os, time, torch.distributed as dist\ndist.init_process_group('gloo')\n"
            "if os.environ['RANK'] == '0':\n    time.sleep(60)\ndist.barrier()")
    with pytest.raises(CellTimeout) as ei:
        ip.run_cell_magic("pytorch_elastic", "--nproc-per-node 2 --timeout 4", cell)
    assert "all ranks were stopped" in str(ei.value)
