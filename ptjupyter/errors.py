"""Every error a ptjupyter user sees: one family, one rendering.

:class:`PtjupyterError` carries a one-line ``headline`` and optional ``details`` lines; IPython shows
exactly those lines (``_render_traceback_``), never ptjupyter's own frames. Bad input is an
:class:`InvalidValue` / :class:`InvalidType` (also a ``ValueError`` / ``TypeError``, so callers that
catch the builtins keep working), raised before any process or pod starts. Run outcomes are
:class:`RankFailed` (a rank's own traceback) and :class:`RunTimeout`; the Kubernetes errors in
:mod:`ptjupyter.k8s.errors` and the magic's usage errors subclass the same base.
"""
from __future__ import annotations

import signal
from typing import ClassVar, Optional, Sequence

__all__ = ["PtjupyterError", "InvalidValue", "InvalidType", "RankFailed", "WorkerFailed", "RunTimeout", "cause"]


class PtjupyterError(Exception):
    """A user-facing error: a one-line ``headline`` and ``details`` lines, shown as just those lines."""

    label: ClassVar[str] = ""  # shown before the headline ("UsageError: ..."); empty: the headline alone

    def __init__(self, headline: str, details: Sequence[str] = ()):
        headline = str(headline)
        super().__init__(headline)
        self.headline = headline
        self.details = list(details)

    def __str__(self) -> str:
        return "\n".join([self.headline, *self.details])

    def render(self) -> list[str]:
        """The lines a notebook shows for this error."""
        return [f"{self.label}: {self.headline}" if self.label else self.headline, *self.details]

    def _render_traceback_(self) -> list[str]:  # IPython shows these lines instead of a traceback
        return self.render()

    def __reduce__(self):  # picklable across processes whatever a subclass's __init__ takes
        return (_rebuild, (type(self), self.headline, dict(self.__dict__)))


def _rebuild(cls, headline, state):
    obj = cls.__new__(cls)
    Exception.__init__(obj, headline)
    obj.__dict__.update(state)
    return obj


class InvalidValue(PtjupyterError, ValueError):
    """A bad value: names the parameter, the value and what is accepted. Nothing was started."""

    label = "ValueError"


class InvalidType(PtjupyterError, TypeError):
    """A value of the wrong type: names the parameter, the value and what is accepted. Nothing was started."""

    label = "TypeError"


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


class RankFailed(PtjupyterError, RuntimeError):
    """A rank failed and the other ranks were stopped.

    ``headline`` names the first failing rank and its cause; ``str()`` adds that rank's own traceback,
    the other ranks' causes and a hint for known causes. In a notebook the runner's frames are left out.
    """

    def __init__(self, rank: int, exitcode: Optional[int], traceback_text: str = "", *, attempt: int = 0,
                 max_restarts: int = 0, others: Optional[dict] = None, hint: Optional[str] = None,
                 timestamp: Optional[float] = None):
        from .local.hints import hint_for

        self.rank = rank
        self.exitcode = exitcode
        self.signal_name = cause(exitcode) if exitcode is not None and exitcode < 0 else None
        self.traceback_text = traceback_text or ""
        self.attempt = attempt
        self.max_restarts = max_restarts
        self.others = dict(others or {})  # rank -> cause of the other ranks (mostly "stopped")
        self.hint = hint if hint is not None else hint_for(self.traceback_text)
        self.timestamp = timestamp  # when the rank's error happened (time.time()), when known
        self.log_file: Optional[str] = None  # the rank's kept stderr (--log-dir), see name_log_file
        what = self.signal_name or cause(exitcode)
        head = f"rank {rank} failed ({what})"
        if self.signal_name is None and exitcode is not None and exitcode >= 0 and self.traceback_text:
            head = f"rank {rank} failed ({what}): {_last_line(self.traceback_text)}"
        if max_restarts:
            head += f" on attempt {attempt + 1} of {max_restarts + 1}"
        details = []
        if self.traceback_text:
            details.append(self.traceback_text.rstrip("\n"))
        elif self.signal_name:
            details.append(f"(the worker was killed by {self.signal_name}; no Python traceback)")
        if self.others:
            details.append("other ranks: " + ", ".join(f"rank {r} ({c})" for r, c in sorted(self.others.items())))
        if self.hint:
            details.append(f"hint: {self.hint}")
        super().__init__(head, details)

    @property
    def header(self) -> str:
        return self.headline

    def name_log_file(self, path: str) -> None:
        """Say where the failing rank's full output was kept (``--log-dir``)."""
        self.log_file = path
        self.details.append(f"rank {self.rank}'s full output: {path}")

    def render(self) -> list[str]:
        lines = [self.headline, "(the other ranks were stopped)"]
        if self.traceback_text.strip():
            tb = [ln for ln in self.traceback_text.rstrip("\n").splitlines() if not _is_runner_frame(ln)]
            lines += ["", f"--- rank {self.rank}'s traceback ---"] + tb
        elif self.signal_name:
            lines += ["", f"(the worker was killed by {self.signal_name}; no Python traceback)"]
        if self.others:
            lines.append("other ranks: " + ", ".join(f"rank {r} ({c})" for r, c in sorted(self.others.items())))
        if self.log_file:
            lines.append(f"rank {self.rank}'s full output: {self.log_file} (and stdout.log beside it)")
        if self.hint:
            lines += ["", "hint: " + self.hint]
        return lines


WorkerFailed = RankFailed  # the name the local launcher's API has always raised


class RunTimeout(PtjupyterError, TimeoutError):
    """``timeout`` seconds passed; every rank was stopped. ``detail`` says which ranks were still running."""

    def __init__(self, timeout: float, detail: str = ""):
        self.timeout = timeout
        self.detail = detail
        super().__init__(f"timeout={timeout:g} s passed; all ranks were stopped" + (f" ({detail})" if detail else ""))


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:200] if lines else ""


def _is_runner_frame(line: str) -> bool:
    # the frame of capture's runner (cloudpickle names shipped code "<dynamic-code>"): not the user's code
    s = line.strip()
    return (s.startswith(('File "<dynamic-code>"', 'File "<ptjupyter runner>"'))
            and s.endswith(", in pytorch_elastic_cell"))
