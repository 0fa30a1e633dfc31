"""What a session cell shows: the rank lines as they come, a status table only for cells that take a while.

A :class:`~ptjupyter.display.CellSink` whose in-place html status appears after ``SHOW_AFTER`` s
(as ipyparallel's ``--progress-after``), so a quick cell costs no display messages, and whose summary
line says that the ranks finished the cell (they do not exit).
"""
from __future__ import annotations

import threading

from ..display import CellSink

__all__ = ["SessionSink", "SHOW_AFTER"]

SHOW_AFTER = 0.5  # seconds


class SessionSink(CellSink):
    def __init__(self, nproc: int, **kwargs):
        super().__init__(nproc, label="pytorch_elastic session", **kwargs)
        self.states = {r: ("running", "", 0.0) for r in range(nproc)}
        self._timer = None
        self._show_lock = threading.Lock()
        self._finished = False

    def start(self) -> "SessionSink":
        import time

        self.t0 = time.monotonic()
        if self.mode == "html":
            self._timer = threading.Timer(SHOW_AFTER, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _show(self) -> None:
        with self._show_lock:
            if self._finished:
                return
            t0 = self.t0
            super().start()  # the base's html display and ticker, keeping the cell's start time
            self.t0 = t0

    def finish(self, outcome: str) -> str:
        with self._show_lock:
            self._finished = True
            if self._timer is not None:
                self._timer.cancel()
        return super().finish(outcome)

    def summary(self) -> str:
        if self.outcome == "ok":
            return f"{self.label}: {self.nproc}/{self.nproc} {self.unit}s done in {self.elapsed():.1f} s"
        return super().summary()
