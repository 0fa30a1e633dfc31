"""Security basics: loopback-only local runs, no shell strings."""
from __future__ import annotations

import ast
import os
import sys
import threading
import time
from pathlib import Path

import cloudpickle

from ptjupyter import Elastic, resolve

cloudpickle.register_pickle_by_value(sys.modules[__name__])
PKG = Path(__file__).resolve().parents[2] / "ptjupyter"


def hold_the_group(seconds):
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    time.sleep(seconds)
    dist.barrier()
    dist.destroy_process_group()


def test_a_local_run_listens_on_loopback_only():
    import psutil

    from tests.run_helpers import run

    seen, stop = set(), threading.Event()

    def probe():
        me = psutil.Process()
        while not stop.is_set():
            for p in [me] + me.children(recursive=True):
                try:
                    for c in p.net_connections(kind="inet"):
                        if c.status == psutil.CONN_LISTEN:
                            seen.add((p.pid, c.laddr.ip, c.laddr.port))
                except psutil.Error:
                    pass
            time.sleep(0.05)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        run(resolve(Elastic(nproc_per_node=2)), hold_the_group, (1.5,))
    finally:
        stop.set()
        t.join()
    assert seen, "the probe saw no listening socket at all: it did not observe the run"
    assert {ip for _, ip, _ in seen} == {"127.0.0.1"}, sorted(seen)


def test_no_shell_strings_anywhere_in_the_package():
    """Processes are started from argument lists: no shell=True, os.system or os.popen."""
    offenders = []
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
                if (owner, name) in {("os", "system"), ("os", "popen")} or name == "create_subprocess_shell":
                    offenders.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {owner}.{name}")
                if name not in {"run", "Popen", "call", "check_call", "check_output"}:
                    continue
                for kw in node.keywords:
                    if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                        offenders.append(f"{path.relative_to(PKG.parent)}:{node.lineno} shell=...")
    assert not offenders, offenders
    assert len(list(PKG.rglob("*.py"))) > 10  # the walk really read the package
    assert os.path.isdir(PKG)
