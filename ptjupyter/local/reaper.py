"""Stopping workers: the SIGINT -> SIGTERM -> SIGKILL ladder and the final sweep.

Every worker leads its own process group (the worker helper calls ``setpgid``), so a signal to
the group also reaches what the worker started (DataLoader workers, subprocesses). A worker
killed before it got that far is signalled by pid.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from typing import Callable, Iterable, Mapping, Optional

__all__ = ["ladder", "sweep", "living", "INT_WAIT", "TERM_WAIT"]

INT_WAIT = 1.0  # seconds a worker gets to handle KeyboardInterrupt
TERM_WAIT = 1.0  # seconds after SIGTERM before SIGKILL


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _status_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # a zombie is dead, just not reaped
    except psutil.Error:
        return False


def living(pids: Iterable[int]) -> set[int]:
    """The given pids still alive, plus any live member of their process groups."""
    import psutil

    pids = set(pids)
    if not pids:
        return set()
    alive = {pid for pid in pids if _status_alive(pid)}
    for proc in psutil.process_iter(["status"]):
        if proc.pid in alive or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getpgid(proc.pid) in pids:
                alive.add(proc.pid)
        except OSError:
            pass
    return alive


def _send(sig: signal.Signals, pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.killpg(pid, sig)  # the worker's own group: it and its children
        except OSError:
            try:
                os.kill(pid, sig)  # not (yet) a group leader
            except OSError:
                pass


def ladder(pids: Iterable[int], *, ranks: Optional[Mapping[int, int]] = None, reason: str = "interrupted",
           say: Callable[[str], None] = _say, int_wait: float = INT_WAIT, term_wait: float = TERM_WAIT,
           hurry: Callable[[], bool] = lambda: False) -> set[int]:
    """SIGINT, wait; SIGTERM, wait; SIGKILL, saying what it does. Returns the pids left alive (normally none).

    ``hurry()`` returning True (a second Ctrl-C) cuts the waits short.
    """
    pids = set(pids)
    ranks = dict(ranks or {})
    start = time.monotonic()
    for sig, wait in ((signal.SIGINT, int_wait), (signal.SIGTERM, term_wait), (signal.SIGKILL, 2.0)):
        alive = living(pids)
        if not alive:
            break
        named = [f"rank {ranks[p]} (pid {p})" for p in sorted(alive, key=lambda p: (ranks.get(p, 1 << 30), p))
                 if p in ranks]
        rest = len(alive) - len(named)
        who = ", ".join(named) or "the workers"
        if rest:
            who += f" and {rest} process{'es' if rest > 1 else ''} they started" if named else f" ({rest} processes)"
        say(f"ptjupyter: {reason}: sending {sig.name} to {who}")
        _send(sig, pids | alive)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline and (sig == signal.SIGKILL or not hurry()):
            time.sleep(0.02)
            alive = living(pids)
    left = living(pids)
    if left:
        say(f"ptjupyter: {reason}: still alive after SIGKILL (uninterruptible?): pids {sorted(left)}")
    elif pids:
        say(f"ptjupyter: {reason}: all workers stopped ({time.monotonic() - start:.1f} s)")
    return left


def sweep(pids: Iterable[int]) -> set[int]:
    """SIGKILL whatever of ``pids`` and their groups is still alive, silently; returns what it killed."""
    pids = set(pids)
    left = living(pids)
    if left:
        _send(signal.SIGKILL, pids | left)
        deadline = time.monotonic() + 2.0
        while living(pids) and time.monotonic() < deadline:
            time.sleep(0.01)
    return left
