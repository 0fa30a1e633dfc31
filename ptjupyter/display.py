"""What a running ``%%pytorch_elastic`` cell shows: rank lines as they arrive and a status line.

:class:`CellSink` is the sink the launchers call from their relay thread: ``line(rank, stream,
text)`` writes ``[rank1] text`` into the running cell (stdout or stderr, as the rank wrote it) and
``state(rank, state, detail)`` updates the per-rank status. The status is an in-place
``display(..., display_id=...)`` in a kernel (``html``), plain text elsewhere (``text``: only the
summary line), or off. The summary line (``pytorch_elastic: 2/2 ranks exited 0 in 3.1 s``) is
printed on stdout at the end in every mode but ``off``, so a notebook's saved output stays
comparable under nbval.

A rank's progress bar (``progress(rank, stream, text)``: the latest ``\r`` redraw, already throttled by
the relay) is one live line per rank and stream, updated in place in a kernel and cleared when the line
ends (its final state then arrives as an ordinary line); elsewhere a redraw is printed as a line at most
every ``TEXT_PROGRESS_INTERVAL`` s. ``display(rank, bundle, metadata)`` (a rank's ``display(obj)``) is
display data labelled with the rank in a kernel, its ``text/plain`` form elsewhere. ``ranks`` filters
lines, progress and displays alike.
"""
from __future__ import annotations

import html
import os
import sys
import threading
import time
from typing import Optional

__all__ = ["CellSink", "status_mode", "STATUS_MODES"]

STATUS_MODES = ("auto", "html", "text", "off")


def in_kernel(shell) -> bool:
    """The shell is a Jupyter kernel's (its frontend shows HTML, live updates and display data)."""
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def status_mode(requested: str = "auto", shell=None) -> str:
    """``html`` in a kernel, ``text`` in a terminal or a bare InteractiveShell; ``PTJUPYTER_STATUS`` overrides."""
    mode = os.environ.get("PTJUPYTER_STATUS", "").strip().lower() or requested
    if mode not in STATUS_MODES:
        mode = "auto"
    if mode == "auto":
        mode = "html" if in_kernel(shell) else "text"
    return mode


class CellSink:
    """Relay target for one cell run: rank lines into the cell, rank states into the status line."""

    TICK = 1.0  # seconds between elapsed-time refreshes of the live status
    TEXT_PROGRESS_INTERVAL = 1.0  # seconds between two progress lines of one rank without a kernel

    def __init__(self, nproc: int, *, status: str = "text", label: str = "pytorch_elastic",
                 stdout=None, stderr=None, name=None, unit: str = "rank", ranks=None, rich: Optional[bool] = None):
        self.nproc = nproc
        self.name = name or (lambda r: f"rank{r}")  # how a line's source is shown: rank1, worker-0, master-0
        self.unit = unit
        self.shown = frozenset(ranks) if ranks is not None else None
        self.rich = status == "html" if rich is None else rich  # a kernel: live lines and display data
        self._live: dict = {}  # (rank, stream) -> display handle of its progress line (kernel), or None
        self._text_progress_at: dict = {}
        self.mode = status
        self.label = label
        self._out = stdout
        self._err = stderr
        self.states: dict[int, tuple[str, str, float]] = {r: ("starting", "", 0.0) for r in range(nproc)}
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._dirty = False
        self._handle = None
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        self.outcome: Optional[str] = None

    # -- the sink interface (called from the launcher's relay thread)
    def line(self, rank: int, stream: str, text: str, label: Optional[str] = None) -> None:
        """One complete line of ``rank``; ``label``: the source's name when the runner knows it (a pod's)."""
        if self.shown is not None and rank not in self.shown:
            return
        if self._live and (rank, stream) in self._live:
            self._end_live(rank, stream)
        f = (self._err or sys.stderr) if stream == "stderr" else (self._out or sys.stdout)
        f.write(f"[{label or self.name(rank)}] {text.rstrip(chr(10))}\n")

    def progress(self, rank: int, stream: str, text: str) -> None:
        """The latest redraw of a rank's unfinished line (a progress bar)."""
        if self.shown is not None and rank not in self.shown:
            return
        shown = {"text/plain": f"[{self.name(rank)}] {text}"}
        if not self.rich:
            now = time.monotonic()
            if now - self._text_progress_at.get(rank, -1e9) >= self.TEXT_PROGRESS_INTERVAL:
                self._text_progress_at[rank] = now
                self.line(rank, stream, text)
            return
        handle = self._live.get((rank, stream))
        try:
            if handle is None:
                from IPython.display import display

                self._flush()  # after the text the rank wrote before the bar
                self._live[(rank, stream)] = display(shown, raw=True, display_id=True,
                                                     metadata={"ptjupyter": {"rank": rank, "progress": True}})
            else:
                handle.update(shown, raw=True)
        except Exception:  # noqa: BLE001 - a progress line never breaks a run
            pass

    def display(self, rank: int, bundle: dict, metadata: Optional[dict] = None) -> None:
        """A rank's ``display(obj)``: display data labelled with the rank, or its text/plain form."""
        if self.shown is not None and rank not in self.shown:
            return
        label = f"[{self.name(rank)}] "
        if not self.rich:
            for text in str(bundle.get("text/plain", "")).splitlines() or [""]:
                self.line(rank, "stdout", text)
            return
        data = dict(bundle)
        if "text/plain" in data:
            data["text/plain"] = label + str(data["text/plain"])
        try:
            from IPython.display import display

            self._flush()  # in order with the rank's text
            display(data, raw=True, metadata={**(metadata or {}), "ptjupyter": {"rank": rank}})
        except Exception:  # noqa: BLE001 - a display never breaks a run
            pass

    def _end_live(self, rank: int, stream: str) -> None:
        handle = self._live.pop((rank, stream), None)
        if handle is not None:  # the line's final state follows as an ordinary line
            try:
                handle.update({"text/plain": ""}, raw=True)
            except Exception:  # noqa: BLE001
                pass

    def _flush(self) -> None:
        for f in (self._out or sys.stdout, self._err or sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001
                pass

    def state(self, rank: int, state: str, detail: str = "") -> None:
        with self._lock:
            self.states[rank] = (state, detail, time.monotonic() - self.t0)
            self._dirty = True
        if self.mode == "html":
            self._refresh()

    # -- lifecycle, called by the magic in the kernel's main thread
    def start(self) -> "CellSink":
        self.t0 = time.monotonic()
        if self.mode == "html":
            from IPython.display import display

            self._handle = display(self._bundle(), raw=True, display_id=True)
            self._ticker = threading.Thread(target=self._tick, name="ptjupyter-status", daemon=True)
            self._ticker.start()
        return self

    def finish(self, outcome: str) -> str:
        """Stop the live status, show the final states and print the one-line summary; return it."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
            self._ticker = None
        self.outcome = outcome
        for rank, stream in list(self._live):
            self._end_live(rank, stream)
        self._flush()
        if self.mode == "html":
            self._refresh(force=True)
        summary = self.summary()
        if self.mode != "off":
            print(summary, file=self._out or sys.stdout, flush=True)
        return summary

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def summary(self) -> str:
        e = f"{self.elapsed():.1f} s"
        states = [self.states[r][0] for r in sorted(self.states)]
        if self.outcome == "ok":
            return f"{self.label}: {self.nproc}/{self.nproc} {self.unit}s exited 0 in {e}"
        if self.outcome:
            return f"{self.label}: {self.outcome} after {e}"
        return f"{self.label}: " + ", ".join(f"rank{r} {s}" for r, s in enumerate(states)) + f" ({e})"

    # -- rendering
    def _rows(self):
        with self._lock:
            items = sorted(self.states.items())
        now = self.elapsed()
        rows = []
        for rank, (state, detail, at) in items:
            text = state + (f" ({detail})" if detail else "")
            rows.append((rank, text, at if state in ("exited 0", "failed") else now))
        return rows

    def _bundle(self) -> dict:
        """One table row per rank (name, state, seconds), so 8 ranks stay inside the cell's width.

        The state's colour is a bar beside its text (red text failed WCAG contrast on JupyterLab's dark
        theme), a failed rank's row has the error background; colours are JupyterLab's theme variables,
        with fallbacks for front ends that do not define them; every row exists from the start and the columns have fixed
        widths, so the table keeps its size while it is updated in place.
        """
        rows = "".join(
            f"<tr data-rank='{r}'{_row_style(s)}><td style='{_TD}text-align:left'><b>{html.escape(self.name(r))}</b></td>"
            f"<td style='{_TD}text-align:left;min-width:22ch;border-left:3px solid {_state_color(s)};"
            f"padding-left:.5em'>{html.escape(s)}</td>"
            f"<td style='{_TD}text-align:right;min-width:8ch;color:{_DIM}'>{t:.1f} s</td></tr>"
            for r, s, t in self._rows()
        )
        head = html.escape(self.label)
        if self.outcome and self.outcome != "ok":
            head += ": " + html.escape(self.outcome)
        return {"text/html": f"<table class='ptjupyter-status' style='{_TABLE}'><thead><tr>"
                             f"<th colspan='3' style='{_TD}text-align:left;font-weight:normal;color:{_DIM}'>{head}</th>"
                             f"</tr></thead><tbody>{rows}</tbody></table>"}

    def _refresh(self, force: bool = False):
        if self._handle is None:
            return
        with self._lock:
            if not (self._dirty or force):
                return
            self._dirty = False
        try:
            self._handle.update(self._bundle(), raw=True)
        except Exception:  # noqa: BLE001 - the status never breaks a run
            pass

    def _tick(self):
        while not self._stop.wait(self.TICK):
            self._dirty = True
            self._refresh()


# the status table's look: JupyterLab's theme variables first (light and dark), plain colours elsewhere
_DIM = "var(--jp-ui-font-color2, #616161)"
_TABLE = ("font-family:var(--jp-code-font-family, monospace);font-size:90%;margin:0 0 .3em 0;border-collapse:collapse;"
          "table-layout:auto;font-variant-numeric:tabular-nums;color:var(--jp-ui-font-color1, inherit)")
_TD = "padding:1px .8em 1px 0;border:none;background:transparent;white-space:nowrap;"
_STATE_COLORS = {"running": "var(--jp-brand-color1, #1976d2)", "exited 0": "var(--jp-success-color1, #388e3c)",
                 "failed": "var(--jp-error-color1, #d32f2f)"}


def _row_style(text: str) -> str:
    return " style='background:var(--jp-rendermime-error-background, #fdd)'" if text.startswith("failed") else ""


def _state_color(text: str) -> str:
    return next((c for s, c in _STATE_COLORS.items() if text.startswith(s)), _DIM)
