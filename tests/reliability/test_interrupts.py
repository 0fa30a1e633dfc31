"""Interrupts, kernel restarts and kernel kills at random moments of a 2-rank run: nothing orphaned.

Short form in CI (a few of each); ``pytest -m soak`` runs 50 interrupts of each kind.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COUNTS: Counter = Counter()
SHORT, SOAK = 2, 50

LIB_SCRIPT = textwrap.dedent("""
    import os, sys, psutil
    from ptjupyter import Elastic, resolve
    from tests.run_helpers import run

    def work(piddir):
        import os, time
        open(os.path.join(piddir, str(os.getpid())), "w").close()
        import torch.distributed as dist
        dist.init_process_group("gloo")
        for _ in range(2000):
            dist.barrier()
            time.sleep(0.005)

    print("LAUNCHING", flush=True)
    try:
        run(resolve(Elastic(nproc_per_node=2)), work, (sys.argv[1],))
        print("FINISHED", flush=True)
    except KeyboardInterrupt:
        def infrastructure(p):  # the warm forkserver and mp's resource tracker (maybe still starting)
            cmd = " ".join(p.cmdline())
            return "multiprocessing.forkserver" in cmd or "multiprocessing.resource_tracker" in cmd
        left = [p.pid for p in psutil.Process().children(recursive=True)
                if p.status() != psutil.STATUS_ZOMBIE and not infrastructure(p)]
        print("INTERRUPTED left=%s" % left, flush=True)
""")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def library_interrupt(delay: float):
    with tempfile.TemporaryDirectory() as piddir:
        p = subprocess.Popen([sys.executable, "-c", LIB_SCRIPT, piddir], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        assert p.stdout.readline().strip() == "LAUNCHING"
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out = p.communicate(timeout=60)[0]
        pids = [int(n) for n in os.listdir(piddir)]
    assert "INTERRUPTED left=[]" in out, out  # FINISHED would mean a lost Ctrl-C
    assert not _wait_gone(pids, 2), f"workers survived: {pids}"
    COUNTS["library interrupt"] += 1


@pytest.mark.parametrize("i", range(SHORT))
def test_interrupt_a_library_run_at_a_random_moment(i):
    library_interrupt(random.Random(i).uniform(0.0, 3.0))


@pytest.mark.soak
@pytest.mark.parametrize("i", range(SOAK))
def test_soak_library_interrupts(i):
    library_interrupt(random.Random(1000 + i).uniform(0.0, 4.0))


# -- a real kernel ---------------------------------------------------------------------------------

CELL = textwrap.dedent("""\
    %%pytorch_elastic --nproc-per-node 2
    import os, time
    open(os.path.join({piddir!r}, str(os.getpid())), "w").close()
    import torch.distributed as dist
    dist.init_process_group("gloo")
    for _ in range(4000):
        dist.barrier()
        time.sleep(0.005)
    """)


class Kernel:
    def __init__(self):
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(ROOT))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        assert self.execute("%load_ext ptjupyter")[0] == "ok"

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid

    def execute(self, code, timeout=120):
        msg_id = self.kc.execute(code)
        return self.reply(msg_id, timeout)

    def reply(self, msg_id, timeout=120):
        while True:
            msg = self.kc.get_shell_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") == msg_id:
                c = msg["content"]
                return c["status"], c.get("ename"), c

    def workers(self):
        """The kernel's descendants other than the warm forkserver and mp's resource tracker."""
        import psutil

        out = []
        for p in psutil.Process(self.pid).children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
                if "forkserver" in cmd or "resource_tracker" in cmd or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                out.append(p.pid)
            except psutil.Error:
                pass
        return out

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    yield k
    k.close()


def _wait_for_pids(piddir, n, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(os.listdir(piddir)) >= n:
            return [int(x) for x in os.listdir(piddir)]
        time.sleep(0.05)
    raise AssertionError("workers did not start")


def kernel_interrupt(kernel, delay):
    with tempfile.TemporaryDirectory() as piddir:
        msg_id = kernel.kc.execute(CELL.format(piddir=piddir))
        _wait_for_pids(piddir, 2)
        time.sleep(delay)
        kernel.km.interrupt_kernel()
        status, ename, _ = kernel.reply(msg_id)
        pids = [int(x) for x in os.listdir(piddir)]
    assert status == "error" and ename == "KeyboardInterrupt", (status, ename)
    assert not _wait_gone(pids, 2), f"workers survived the interrupt: {pids}"
    assert not kernel.workers()
    assert kernel.execute("x_after = 40 + 2")[0] == "ok"
    COUNTS["kernel interrupt"] += 1


@pytest.mark.parametrize("i", range(SHORT))
def test_interrupt_a_kernel_cell_at_a_random_moment(kernel, i):
    kernel_interrupt(kernel, random.Random(i).uniform(0.0, 2.0))


@pytest.mark.soak
@pytest.mark.parametrize("i", range(SOAK))
def test_soak_kernel_interrupts(kernel, i):
    kernel_interrupt(kernel, random.Random(2000 + i).uniform(0.0, 3.0))


@pytest.mark.parametrize("how", ["kill", "restart", "shutdown"])
def test_killing_or_restarting_the_kernel_mid_run_leaves_no_worker(how):
    k = Kernel()
    try:
        with tempfile.TemporaryDirectory() as piddir:
            k.kc.execute(CELL.format(piddir=piddir))
            pids = _wait_for_pids(piddir, 2)
            time.sleep(random.Random(how).uniform(0.1, 1.0))
            if how == "kill":
                os.kill(k.pid, signal.SIGKILL)
            elif how == "restart":
                k.km.restart_kernel(now=True)
            else:
                k.km.shutdown_kernel(now=True)
            assert not _wait_gone(pids, 5), f"workers survived a kernel {how}: {pids}"
            COUNTS[f"kernel {how}"] += 1
    finally:
        try:
            k.close()
        except Exception:  # noqa: BLE001 - already gone
            pass
