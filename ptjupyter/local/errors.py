"""Errors of a local run, and hints for causes users keep hitting."""
from __future__ import annotations

import re
import signal
from typing import Optional

__all__ = ["WorkerFailed", "RunTimeout", "cause", "hint_for"]


def cause(exitcode: Optional[int]) -> str:
    """``-9`` -> ``"SIGKILL"``, ``3`` -> ``"exit 3"``, ``None`` -> ``"unknown exit"``."""
    if exitcode is None:
        return "unknown exit"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit {exitcode}"


class WorkerFailed(RuntimeError):
    """A rank of a local run failed; the other ranks were stopped.

    ``str()`` is one header line naming the first failing rank and its cause, then that
    worker's own traceback (when it had one) and a hint for known causes.
    """

    def __init__(self, rank: int, exitcode: Optional[int], traceback_text: str = "", *, attempt: int = 0,
                 max_restarts: int = 0, others: Optional[dict] = None, hint: Optional[str] = None):
        self.rank = rank
        self.exitcode = exitcode
        self.signal_name = cause(exitcode) if exitcode is not None and exitcode < 0 else None
        self.traceback_text = traceback_text or ""
        self.attempt = attempt
        self.max_restarts = max_restarts
        self.others = dict(others or {})  # rank -> cause of the other ranks (mostly "stopped")
        self.hint = hint if hint is not None else hint_for(self.traceback_text)
        super().__init__(self._render())

    @property
    def header(self) -> str:
        what = self.signal_name or cause(self.exitcode)
        line = f"rank {self.rank} failed ({what})"
        if self.signal_name is None and self.exitcode is not None and self.exitcode >= 0 and self.traceback_text:
            line = f"rank {self.rank} failed ({what}): {_last_line(self.traceback_text)}"
        if self.max_restarts:
            line += f" on attempt {self.attempt + 1} of {self.max_restarts + 1}"
        return line

    def _render(self) -> str:
        parts = [self.header]
        if self.traceback_text:
            parts.append(self.traceback_text.rstrip("\n"))
        elif self.signal_name:
            parts.append(f"(the worker was killed by {self.signal_name}; no Python traceback)")
        if self.others:
            parts.append("other ranks: " + ", ".join(f"rank {r} ({c})" for r, c in sorted(self.others.items())))
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)

    def __reduce__(self):  # picklable (e.g. to cross a process boundary) despite the keyword-only fields
        return (_rebuild_failed, (self.rank, self.exitcode, self.traceback_text, self.attempt, self.max_restarts,
                                  self.others, self.hint))


def _rebuild_failed(rank, exitcode, text, attempt, max_restarts, others, hint):
    return WorkerFailed(rank, exitcode, text, attempt=attempt, max_restarts=max_restarts, others=others, hint=hint)


class RunTimeout(TimeoutError):
    """``timeout`` seconds passed; every rank was stopped."""

    def __init__(self, timeout: float, detail: str = ""):
        self.timeout = timeout
        self.detail = detail
        msg = f"timeout={timeout:g} s passed; all ranks were stopped"
        super().__init__(msg + (f" ({detail})" if detail else ""))

    def __reduce__(self):
        return (RunTimeout, (self.timeout, self.detail))


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:200] if lines else ""


_HINTS = (
    (re.compile(r"Can't (?:pickle|get attribute) .*__main__|Can't get attribute '[^']+' on <module '__(?:mp_)?main__'"),
     "an object defined in __main__ (a notebook cell or script) was pickled by reference inside a worker "
     "(torch.save(model), DataLoader(num_workers>0), a multiprocessing queue): save model.state_dict(), use "
     "num_workers=0, or define it in a .py module the workers can import"),
    (re.compile(r"PicklingError|[Cc]an't pickle|cannot pickle|is not picklable|cannot be pickled"),
     "a value sent to or returned from the workers cannot be pickled; return plain data (numbers, tensors, dicts)"),
    (re.compile(r"RendezvousTimeoutError|(?i:rendezvous.*timed? ?out)|timed out.*rendezvous"),
     "the rendezvous timed out: not every rank joined (check nnodes / nproc_per_node, and that no rank died at "
     "start-up); rdzv_configs={'timeout': ...} sets the limit"),
    (re.compile(r"(?i)address already in use|EADDRINUSE"),
     "a port is already in use; do not hard-code MASTER_PORT in the function (ptjupyter picks a free port), or "
     "stop the process that holds it"),
    (re.compile(r"(?i)cannot re-initialize cuda in forked subprocess|CUDA.*initiali[sz]ed.*fork"),
     "CUDA was initialised in this process before the workers were forked; use start_method='spawn' (the "
     "default) or restart the kernel and do not touch torch.cuda before the run"),
    (re.compile(r"DistNetworkError|DistBackendError|(?i:timed out)"),
     "a collective or barrier timed out: a rank is stuck or died; --timeout S (timeout=S) stops every rank "
     "after S seconds"),
)


def hint_for(text: str) -> Optional[str]:
    """A one-line hint for a known cause found in a worker's traceback, else None."""
    for pattern, hint in _HINTS:
        if pattern.search(text or ""):
            return hint
    return None
