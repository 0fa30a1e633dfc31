"""Persistent rank sessions: ranks started once, whose namespaces and process group live across cells.

``%pytorch_elastic_session start`` (:mod:`.magic`) -> :func:`start` -> a :class:`~.core.Session`
(this kernel's only one); ``%%pytorch_elastic --session`` -> ``resolve()`` gives ``Mode.SESSION`` ->
:func:`ptjupyter.execute.execute` -> :func:`run`. Modules: ``core`` (the session and its states),
``channel`` (ZeroMQ, signed messages), ``rank`` (what each rank runs), ``local`` (ranks as processes on
this machine, started by torch's elastic agent), ``errors``, ``sink`` (what a session cell shows),
``magic`` (the line magic). Importing this package imports neither torch nor zmq.
"""
from __future__ import annotations

import atexit
import threading
from typing import Any, Callable, Optional

from ..plan import Mode
from .errors import NoSession, SessionRunning

__all__ = ["current", "require", "start", "stop", "run", "cell_function", "NoSession", "SessionRunning"]

_lock = threading.Lock()
_session = None  # one per process: its ranks are this process's children, whoever asks


def current():
    """The running (or broken) session of this kernel, or None."""
    return _session if _session is not None and _session.state != "stopped" else None


def require():
    """The running (or broken) session, or the one-line :class:`NoSession`."""
    s = current()
    if s is None:
        raise NoSession()
    return s


def start(plan, grace: Optional[float] = None):
    """Start the kernel's session as ``plan`` (``Mode.SESSION``) says; a second one is refused.

    ``grace``: seconds an interrupted (or timed-out) cell's ranks get to leave it before they are
    stopped (SIGTERM, SIGKILL) and the session is broken; default :data:`.core.GRACE`.
    """
    global _session
    from .core import Session

    assert plan.mode is Mode.SESSION, plan.mode
    with _lock:
        running = current()
        if running is not None:
            raise SessionRunning(f"{running.world_size} ranks, {running.state}")
        _session = Session(plan, grace=grace).start()
    return _session


def stop() -> bool:
    """Stop the session (every rank process ends); False when there was none."""
    global _session
    with _lock:
        s, _session = _session, None
    if s is None or s.state == "stopped":
        return False
    s.stop()
    return True


atexit.register(stop)  # a kernel that exits normally stops its ranks (they die with it anyway)


def run(plan, fn: Callable, args=(), kwargs=None, *, sink=None) -> Any:
    """Run ``fn`` on the session's ranks (``execute()``'s ``Mode.SESSION``); rank 0's value."""
    __tracebackhide__ = True  # noqa: F841
    s = require()
    if plan.nproc_per_node != s.world_size and plan.nproc_per_node != 1:
        import sys

        print(f"Warning: nproc_per_node={plan.nproc_per_node} does not apply to a session cell: the session has "
              f"{s.world_size} ranks (restart it to change that)", file=sys.stderr, flush=True)
    return s.run(fn, args, kwargs, sink=sink, timeout=plan.timeout)


def cell_function(captured) -> Any:
    """A captured cell as the ranks run it: in their namespaces, shipping only the notebook names they lack."""
    from ..capture import CELL_FILENAME
    from .rank import InNamespace

    s = require()
    s.check()  # a broken session refuses before the cell shows anything
    names = {n: v for n, v in captured.names.items() if n not in s.names}
    s.names.update(captured.assigned)
    return InNamespace(captured.tree, CELL_FILENAME, captured.code.splitlines(True), names)
