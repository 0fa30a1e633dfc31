"""A kernel that restarts or is killed with a live session leaves no rank process (one kernel for both)."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.magic.magic_helpers import Kernel

pytestmark = pytest.mark.timeout(120)

START = "%load_ext ptjupyter\n%pytorch_elastic_session start --nproc-per-node 2 --backend gloo"
PIDS = "sorted(__import__('ptjupyter.session', fromlist=['x']).current().ranks.pids.values())"


def alive(pids, wait):
    deadline = time.monotonic() + wait
    while True:
        left = []
        for p in pids:
            try:
                if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def started(k) -> list:
    content, _ = k.run(START)
    assert content["status"] == "ok", content
    pids = k.value(PIDS)
    assert len(pids) == 2 and k.pid not in pids
    return pids


def test_kernel_restart_then_kill_with_a_live_session_leaves_no_rank():
    k = Kernel(env={"PTJUPYTER_STATUS": "text"})
    try:
        pids = started(k)
        k.km.restart_kernel(now=False)  # the front end's "restart": a shutdown request, then a new kernel
        assert not alive(pids, 5.0), "rank processes left after the kernel restarted"
        k.kc.wait_for_ready(timeout=120)
        pids = started(k)
        os.kill(k.pid, signal.SIGKILL)  # a killed kernel (OOM killer, kill -9) runs no cleanup at all
        assert not alive(pids, 5.0), "rank processes left after the kernel was killed"
    finally:
        k.kc.stop_channels()
        k.km.shutdown_kernel(now=True)
