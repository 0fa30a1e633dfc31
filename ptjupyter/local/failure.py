"""Which rank failed first, and why: a pure function of what the relay learnt about the workers."""
from __future__ import annotations

import signal
from typing import Iterable, Mapping

from ..errors import RankFailed
from .hints import hint_for

__all__ = ["first_failure"]

# a rank that failed only because a peer went away (or was stopped) is not the root cause
_PEER_LOSS = ("closed by peer", "reset by peer", "Broken pipe", "ECONNRESET", "Socket closed", "EOF",
              "remote process exited", "DistNetworkError", "Connection refused")


def _bad(w) -> bool:
    if w.record and w.record.get("kind") == "ok":
        return False  # it finished the function: a signal after that is the agent's teardown
    return (w.exitcode not in (0, None)) or bool(w.fault) or bool(w.record)


def _when(w) -> float:
    if w.record and w.record.get("kind") != "ok":
        return w.record.get("time", float("inf"))
    return min(w.extra.get("fault_time", float("inf")), w.died_at or float("inf"))


def _consequential(w) -> bool:
    if any(p in (w.record or {}).get("traceback", "") for p in _PEER_LOSS):
        return True
    return w.exitcode in (-signal.SIGTERM, -signal.SIGINT) and not w.record and not w.fault


def first_failure(workers: Iterable, torch_failures: Mapping[int, tuple], max_restarts: int = 0) -> RankFailed:
    """The error of a failed run: the earliest failing rank of the last attempt that is not just a
    consequence of another rank's failure (a peer that went away, a rank stopped by the agent).

    ``workers``: :class:`~ptjupyter.local.relay.WorkerInfo` of every attempt. ``torch_failures``:
    rank -> (exit code, message) from torch's ``ChildFailedError``, used when none of our workers says
    why (a worker that died before the worker helper ran).
    """
    workers = list(workers)
    last = max((w.attempt for w in workers), default=0)
    current = [w for w in workers if w.attempt == last]
    failed = [w for w in current if _bad(w)]
    primary = [w for w in failed if not _consequential(w)] or failed
    timestamp = None
    if primary:
        first = min(primary, key=_when)
        code = first.exitcode
        if code is None and first.record and first.record.get("kind") != "ok":
            code = first.record.get("code", 1)
        if code is None and first.fault_signal():
            code = -int(getattr(signal, first.fault_signal()))
        text = (first.record or {}).get("traceback") or (first.fault.strip() + "\n" if first.fault.strip() else "")
        rank = first.rank
        when = _when(first)
        timestamp = when if when != float("inf") else None
    else:
        rank, (code, message) = min(torch_failures.items()) if torch_failures else (0, (None, ""))
        text = message if isinstance(message, str) and message not in ("", "<N/A>") else ""
    others = {w.rank: w.detail() for w in current if w.rank != rank and _bad(w)}
    return RankFailed(rank, code, text, attempt=last, max_restarts=max_restarts, others=others,
                      hint=hint_for(text), timestamp=timestamp)
