"""The launcher called from a real ``__main__`` (as in a notebook), interrupted, and killed.

Each test runs ``scripts/kernel.py`` in a subprocess that plays the kernel.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(__file__).with_name("scripts") / "kernel.py"
ROOT = Path(__file__).resolve().parents[2]


def start(mode, tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(SCRIPT), mode, str(tmp_path), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def wait_ready(proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == "READY":
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"kernel script never got ready: {proc.stderr.read()[-3000:]}")


def worker_pids(tmp_path):
    pids = []
    for f in sorted(tmp_path.glob("pids.*")):
        pids += [int(p) for p in f.read_text().split()]
    assert len(pids) == 4  # two workers, each with a child
    return pids


def alive(pids, wait):
    deadline = time.monotonic() + wait
    while True:
        left = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_main_function_under_spawn(tmp_path):
    """fn defined in __main__: warm forkserver twice (same server), a plain spawn, a lambda closure."""
    proc = start("allreduce", tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["warm"][0] == 101 and res["warm2"][0] == 201 and res["fresh"][0] == 301
    assert res["server"] == res["server2"] and res["warm"][1] != res["warm2"][1]
    assert res["closure"] == 42
    assert res["listen_ips"] and set(res["listen_ips"]) == {"127.0.0.1"}, res["listen_ips"]
    assert "Root Cause" not in err and "Traceback" not in err


def test_interrupt_walks_the_ladder_and_leaves_nothing(tmp_path):
    proc = start("interrupt", tmp_path)
    wait_ready(proc)
    pids = worker_pids(tmp_path)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert not alive(pids, wait=0.5), "worker or its child survived the interrupt"
    assert worker_pids(tmp_path) == pids  # no worker was started again (max_restarts=3)
    res = json.loads(out.strip().splitlines()[-1])
    assert res["interrupted"] and res["sigint_restored"] and res["sigterm_restored"]
    assert res["next"][0] == 8  # the kernel takes the next run normally
    assert "sending SIGINT to rank 0" in err and "sending SIGTERM to rank 1" in err
    assert "SIGKILL" not in err and "all workers stopped" in err
    assert time.monotonic() - t0 < 30


def test_workers_die_with_a_killed_kernel(tmp_path):
    proc = start("hold", tmp_path)
    wait_ready(proc)
    pids = worker_pids(tmp_path)
    server = [p.pid for p in psutil.Process(proc.pid).children() if "forkserver" in " ".join(p.cmdline())]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not alive(pids + server, wait=5), "orphans after the kernel was SIGKILLed"
    assert not list(Path(tempfile.gettempdir()).glob(f"ptjupyter-run-{proc.pid}-*"))  # the workers removed it


def test_sigterm_to_the_kernel_stops_workers_then_the_kernel(tmp_path):
    """Kernel shutdown sends SIGTERM: workers are stopped, then the kernel ends as SIGTERM says."""
    proc = start("hold", tmp_path)
    wait_ready(proc)
    pids = worker_pids(tmp_path)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert not alive(pids, wait=2), "workers survived the kernel's SIGTERM"


UNGUARDED = """
import os
from ptjupyter import Layer, resolve
from tests.run_helpers import run
print("top level ran in", os.getpid(), flush=True)   # must run once: workers do not re-run __main__

def rank_times(k):
    return int(os.environ["RANK"]) * k + 1

plan = resolve(layers=[Layer("t", {"nproc_per_node": 2})])
print("warm", run(plan, rank_times, (10,)), "fresh", run(plan, rank_times, (20,), fresh=True), flush=True)
"""


def test_script_without_main_guard(tmp_path):
    """Spawned workers skip the re-run of __main__: an unguarded script works and runs its top level once."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("top level ran") == 1
    assert "warm 1 fresh 1" in out.stdout


@pytest.mark.parametrize("count", [pytest.param(6, id="short"), pytest.param(60, id="soak", marks=pytest.mark.soak)])
def test_interrupts_at_random_moments(tmp_path, count):
    """Ctrl-C anywhere in a run (max_restarts=1): never a leftover, a stale handler or a respawn."""
    proc = start("interrupts", tmp_path, count, 1234)
    out, err = proc.communicate(timeout=60 + 3 * count)
    assert proc.returncode == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["bad"] == [] and res["next"] == 1
    assert res["interrupted"] + res["completed"] == count
    print(f"interrupts: {res['interrupted']} interrupted, {res['completed']} completed before the signal")
