"""Shared test helpers: which processes a run left behind, and which sockets listen."""
from __future__ import annotations

import os
import signal
import time

import pytest


@pytest.fixture(autouse=True)
def _python_sigint_handler():
    """Each test starts with Python's own SIGINT handler: importing flytekit installs one that calls exit(1)."""
    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def infrastructure_pids() -> set[int]:
    """Long-lived helpers that may outlive a run by design: the warm forkserver, mp's resource tracker."""
    pids = set()
    try:
        from multiprocessing import forkserver, resource_tracker

        fs = getattr(forkserver._forkserver, "_forkserver_pid", None)
        rt = getattr(resource_tracker._resource_tracker, "_pid", None)
        pids.update(p for p in (fs, rt) if p)
    except Exception:  # noqa: BLE001 - best effort
        pass
    return pids


def leftover_processes(root: int | None = None, wait: float = 2.0) -> list:
    """Descendants of ``root`` (default: this process) other than the infrastructure, after up to ``wait`` s."""
    import psutil

    deadline = time.monotonic() + wait
    while True:
        infra = infrastructure_pids()
        try:
            procs = psutil.Process(root or os.getpid()).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        alive = []
        for p in procs:
            try:
                if p.pid not in infra and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def listening_sockets(pid: int | None = None) -> set:
    """(ip, port) of the TCP sockets this process listens on."""
    import psutil

    try:
        conns = psutil.Process(pid or os.getpid()).net_connections(kind="inet")
    except psutil.Error:
        return set()
    return {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}


@pytest.fixture
def no_leftovers():
    """Fails the test if it leaves a worker process or a listening socket behind."""
    before = listening_sockets()
    yield
    left = leftover_processes()
    assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"
    after = listening_sockets() - before
    assert not after, f"sockets still listening: {after}"
