"""The warm start: a multiprocessing forkserver that has imported torch once, started in the background.

The default start method ``spawn`` is served by this forkserver: each run still gets fresh worker
processes (forked from a clean server that never ran user code or touched CUDA), but they do not
pay the interpreter start and ``import torch`` again. ``prewarm()`` starts it without blocking
(the magic calls it at ``%load_ext``); a run that finds it still importing waits for it.

The forkserver is multiprocessing's own (one per process). It persists between runs as a child of
this process, ignores SIGINT (so an interrupt does not kill it) and exits when this process dies
(it watches a pipe from us), taking its workers along (they have ``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import threading
from typing import Optional

__all__ = ["PRELOAD", "prewarm", "wait_ready", "server_pid", "helper_pids"]

# what every worker needs; the worker helper first so that its import is free too
PRELOAD = ["ptjupyter.local.worker", "torch", "torch.distributed", "torch.distributed.elastic.multiprocessing",
           "cloudpickle"]

_lock = threading.Lock()
_thread: Optional[threading.Thread] = None
_error: Optional[BaseException] = None


def _start(import_here: bool = False) -> None:
    global _error
    try:
        from multiprocessing import forkserver

        server = forkserver._forkserver
        if server._forkserver_pid is None:  # preload only takes effect when the server (re)starts
            server.set_forkserver_preload(PRELOAD)
        server.ensure_running()
        _error = None
    except BaseException as e:  # noqa: BLE001 - reported by wait_ready(); the run then falls back to spawn
        _error = e
        return
    if import_here:
        try:
            import torch.distributed.launcher.api  # noqa: F401  (what a run imports first)
        except BaseException:  # noqa: BLE001 - the first run imports it again and reports
            pass


def prewarm(import_here: bool = False) -> threading.Thread:
    """Start the torch-preloaded forkserver in a background thread; returns at once (idempotent).

    ``import_here=True`` also imports torch's launcher in this process, in that background thread,
    so that even the first run does not wait for it (the caller then has torch in ``sys.modules``).
    """
    global _thread
    with _lock:
        if _thread is None or (not _thread.is_alive() and not _running()):
            _thread = threading.Thread(target=_start, args=(import_here,), name="ptjupyter-prewarm", daemon=True)
            _thread.start()
        return _thread


def wait_ready(timeout: Optional[float] = None) -> bool:
    """Make sure the forkserver is started; True when it is (its preload may still be importing)."""
    t = prewarm()
    t.join(timeout)
    return _error is None and _running()


def _running() -> bool:
    from multiprocessing import forkserver

    pid = forkserver._forkserver._forkserver_pid
    if pid is None:
        return False
    import psutil

    try:  # never waitpid here: multiprocessing reaps its own server and would fail if we did
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def server_pid() -> Optional[int]:
    """Pid of the forkserver if it runs (it is a child of this process and stays between runs)."""
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid if _running() else None


def helper_pids() -> set[int]:
    """Long-lived helper children of this process that are not workers: the forkserver and
    multiprocessing's resource tracker. Tests that look for orphans exclude these."""
    from multiprocessing import resource_tracker

    pids = {server_pid()}
    pids.add(getattr(resource_tracker._resource_tracker, "_pid", None))
    return {p for p in pids if p}
