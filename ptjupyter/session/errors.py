"""A session's errors, in the package's one error family (each shown as its own few lines)."""
from __future__ import annotations

from ..errors import PtjupyterError

__all__ = ["SessionError", "NoSession", "SessionRunning", "SessionBroken", "SessionCellFailed", "SessionTimeout",
           "SessionStartFailed"]

RESTART = "%pytorch_elastic_session restart"


class SessionError(PtjupyterError):
    """Base of the session errors."""


class NoSession(SessionError):
    def __init__(self):
        super().__init__("no session is running: start one with %pytorch_elastic_session start --nproc-per-node N")


class SessionRunning(SessionError):
    def __init__(self, what: str):
        super().__init__(f"a session is already running ({what}): one per kernel; %pytorch_elastic_session stop "
                         "or restart it")


class SessionStartFailed(SessionError):
    def __init__(self, headline: str, details=()):
        super().__init__(f"the session did not start: {headline}", details)


class SessionBroken(SessionError):
    """The session cannot run cells any more (a rank died, or did not stop when told): restart it."""

    def __init__(self, reason: str, *, now: bool = False, details=()):
        self.reason = reason
        if now:
            head = f"{reason}; the session is broken: {RESTART} starts new ranks (their state is lost)"
        else:
            head = f"the session is broken ({reason}): run {RESTART} (the ranks' state is lost)"
        super().__init__(head, details)


class SessionCellFailed(SessionError):
    """A rank raised in a session cell; the ranks are alive and keep their state."""

    def __init__(self, rank: int, error: dict, others: dict):
        self.rank, self.error, self.others = rank, dict(error), dict(others)
        head = f"rank {rank} raised {error['type']}" + (f": {error['text']}" if error.get("text") else "")
        head = head.splitlines()[0][:300] + " (the session's ranks keep their state)"
        details = ["", f"--- rank {rank}'s traceback ---"] + error.get("traceback", "").rstrip("\n").splitlines()
        if others:
            details.append("other ranks: " + ", ".join(f"rank {r} ({c})" for r, c in sorted(others.items())))
        super().__init__(head, details)


class SessionTimeout(SessionError, TimeoutError):
    def __init__(self, timeout: float, unfinished: list, detail: str):
        self.timeout, self.unfinished = timeout, list(unfinished)
        who = ", ".join(map(str, unfinished)) or "none"
        super().__init__(f"timeout={timeout:g} s passed; ranks {who} had not finished: {detail}")
