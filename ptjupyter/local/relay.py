"""Worker output files -> sink, line by line, while the run goes on; plus each worker's life and death.

One thread per run tails the per-rank files the worker helper writes (see ``worker.py``), calls
``sink.line(rank, stream, text)`` for every complete line (in order for each rank and stream) and
``sink.state(rank, state, detail)`` as workers start and end. ``finish()`` drains everything left,
including a last line without a newline, once the workers are gone. Every sink call comes from
this thread, so a sink needs no locking.

Two optional sink methods: ``sink.progress(rank, stream, text)`` gets the latest ``\r`` redraw of a
line not yet ended (a progress bar), at most every ``PROGRESS_INTERVAL`` s per rank; the completed
line still comes through ``line()``. ``sink.display(rank, bundle, metadata)`` gets a rank's
``display(obj)`` (a MIME bundle the worker wrote as one marked line, see ``rich.py``), in order
with its text. A sink without them gets nothing resp. the ``text/plain`` form as a line.

Deaths are seen through pidfds (exact, no polling); exit codes come from the multiprocessing
``Process`` objects torch's agent started (read only, never waited on here).
"""
from __future__ import annotations

import json
import logging
import os
import re
import select
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from ..errors import cause
from .rich import MARK, decode

__all__ = ["PrintSink", "Relay", "WorkerInfo", "worker_info", "last_redraw"]

logger = logging.getLogger("ptjupyter")
_NAME = re.compile(r"^r(\d+)\.a(\d+)\.(out|err|pid)$")
_CHUNK = 1 << 20
_MAX_LINE = 1 << 20
_MAX_DISPLAY = 64 << 20  # a marked display line (a base64 PNG) may be longer than a text line
PROGRESS_INTERVAL = 0.1  # seconds between two progress redraws of one rank: <= 10 updates/s
_FAULTS = {
    "Segmentation fault": "SIGSEGV", "Aborted": "SIGABRT", "Floating-point exception": "SIGFPE",
    "Floating point exception": "SIGFPE", "Bus error": "SIGBUS", "Illegal instruction": "SIGILL",
}


class PrintSink:
    """Default sink: ``[rank{N}] text`` on ``sys.stdout``/``sys.stderr``; states go to the debug log."""

    def line(self, rank: int, stream: str, text: str) -> None:
        out = sys.stderr if stream == "stderr" else sys.stdout
        out.write(f"[rank{rank}] {text}\n")

    def state(self, rank: int, state: str, detail: str = "") -> None:
        logger.debug("[PYTORCH_ELASTIC] rank %d: %s %s", rank, state, detail)

    def progress(self, rank: int, stream: str, text: str, *, every: float = 1.0) -> None:
        """A progress bar's redraw as a line, at most every ``every`` s per rank (logs are line based)."""
        at = self.__dict__.setdefault("_progress_at", {})
        now = time.monotonic()
        if now - at.get(rank, -1e9) >= every:
            at[rank] = now
            self.line(rank, stream, text)


@dataclass
class WorkerInfo:
    """What the relay learnt about one worker process (one rank, one attempt)."""

    rank: int
    attempt: int
    pid: int
    proc: object = None  # multiprocessing.Process started by torch's agent, when found
    died_at: Optional[float] = None  # time.time() when its pidfd fired
    record: Optional[dict] = None  # the worker helper's .rec file
    fault: str = ""  # faulthandler output (fatal signal)
    reported: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def exitcode(self) -> Optional[int]:
        popen = getattr(self.proc, "_popen", None)
        return getattr(popen, "returncode", None)

    def fault_signal(self) -> Optional[str]:
        for text, name in _FAULTS.items():
            if f"Fatal Python error: {text}" in self.fault:
                return name
        return None

    def detail(self) -> str:
        """``"exit 3"``, ``"SIGKILL"``, ... from the best evidence at hand."""
        code = self.exitcode
        if code is not None:
            return cause(code)
        if self.record and self.record.get("kind") != "ok":
            return f"exit {self.record.get('code', 1)}"
        return self.fault_signal() or "died"


class _Tail:
    __slots__ = ("attempt", "file", "pending", "redraw")

    def __init__(self, attempt: int, path: str):
        self.attempt = attempt
        self.file = open(path, "rb")
        self.pending = b""
        self.redraw = None  # the latest \r redraw of the pending line not yet passed to sink.progress


class Relay(threading.Thread):
    """Tail ``run_dir`` for the run's worker files until :meth:`finish`."""

    def __init__(self, run_dir: str, sink, ranks=(), poll: float = 0.01):
        super().__init__(name="ptjupyter-relay", daemon=True)
        self.run_dir = run_dir
        self.sink = sink
        self.ranks = list(ranks)
        self.poll = poll
        self.workers: dict[tuple[int, int], WorkerInfo] = {}
        self.lines = 0
        self.sink_error: Optional[BaseException] = None
        self._tails: dict[tuple[int, str], _Tail] = {}
        self._seen: set[str] = set()
        self._pidfds: dict[int, WorkerInfo] = {}
        self._done = threading.Event()
        self._progress_at: dict[int, float] = {}  # rank -> when its last redraw went to the sink
        self._progress = getattr(sink, "progress", None)
        self._display = getattr(sink, "display", None)

    # -- the thread ---------------------------------------------------------------------------
    def run(self) -> None:
        for rank in self.ranks:
            self._state(rank, "starting")
        while True:
            final = self._done.is_set()
            self._scan()
            moved = self._pump()
            self._redraws()
            self._watch(0 if (moved or final) else self.poll)
            self._report(final)
            if final:
                break
        self._scan()
        while self._pump():
            pass
        for (rank, stream), tail in sorted(self._tails.items()):
            self._close(rank, stream, tail)
        for fd in list(self._pidfds):
            os.close(fd)
        self._pidfds.clear()
        self._report(True)

    def finish(self, timeout: float = 30.0) -> None:
        """Drain what is left and stop; call once the workers are gone."""
        self._done.set()
        if self.is_alive():
            self.join(timeout)

    # -- pieces -------------------------------------------------------------------------------
    def _scan(self) -> None:
        try:
            names = os.listdir(self.run_dir)
        except FileNotFoundError:
            return
        for name in sorted(names, key=_order):
            if name in self._seen:
                continue
            m = _NAME.match(name)
            if not m:
                continue
            rank, attempt, kind = int(m.group(1)), int(m.group(2)), m.group(3)
            self._seen.add(name)
            path = os.path.join(self.run_dir, name)
            if kind == "pid":
                self._on_pid(rank, attempt, path)
                continue
            stream = "stdout" if kind == "out" else "stderr"
            tail = self._tails.get((rank, stream))
            if tail is not None and tail.attempt > attempt:
                continue
            if tail is not None:
                while self._read(rank, stream, tail):  # the old attempt is over: drain it first
                    pass
                self._close(rank, stream, tail)
            try:
                self._tails[(rank, stream)] = _Tail(attempt, path)
            except FileNotFoundError:
                self._seen.discard(name)

    def _on_pid(self, rank: int, attempt: int, path: str) -> None:
        try:
            with open(path) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            self._seen.discard(os.path.basename(path))
            return
        info = WorkerInfo(rank, attempt, pid, proc=_find_process(pid))
        self.workers[(rank, attempt)] = info
        try:
            self._pidfds[os.pidfd_open(pid)] = info
        except (AttributeError, OSError):
            info.died_at = time.time() if not _alive(pid) else None
        if attempt:
            self._state(rank, "starting", f"restart {attempt}")
        self._state(rank, "running", f"pid {pid}" + (f", restart {attempt}" if attempt else ""))

    def _pump(self) -> bool:
        moved = False
        for (rank, stream), tail in list(self._tails.items()):
            moved |= self._read(rank, stream, tail)
        return moved

    def _read(self, rank: int, stream: str, tail: _Tail) -> bool:
        data = tail.file.read(_CHUNK)
        if not data:
            return False
        # a marked display line starts with MARK's first byte: a quick test per chunk, not per line
        marked = MARK[:1] in data or tail.pending[:1] == MARK[:1]
        lines = (tail.pending + data).split(b"\n")
        tail.pending = lines.pop()
        if len(tail.pending) > _MAX_LINE and not (tail.pending.startswith(MARK) and len(tail.pending) < _MAX_DISPLAY):
            lines.append(tail.pending)  # a line without end (binary dump): pass it on in pieces
            tail.pending = b""
        if lines:
            tail.redraw = None  # the line ended: it carries its final state itself
        if b"\r" in tail.pending and self._progress is not None:
            tail.redraw = last_redraw(tail.pending.decode("utf-8", "replace")) or None
        line = self.sink.line
        for raw in lines:
            try:
                if marked and raw.startswith(MARK):
                    self._rich(rank, raw)
                    continue
                line(rank, stream, _text(raw))
            except Exception as e:  # noqa: BLE001 - a broken sink must not stop the relay (nor the run)
                self._sink_failed(e)
        self.lines += len(lines)
        return True

    def _rich(self, rank: int, raw: bytes) -> None:
        bundle, metadata = decode(raw)
        if bundle is None:
            return
        if self._display is not None:
            self._display(rank, bundle, metadata)
        else:
            for text in str(bundle.get("text/plain", "")).splitlines() or [""]:
                self.sink.line(rank, "stdout", text)

    def _redraws(self) -> None:
        """Pass each rank's latest redraw on, at most every PROGRESS_INTERVAL s per rank."""
        if self._progress is None:
            return
        now = time.monotonic()
        for (rank, stream), tail in self._tails.items():
            if tail.redraw is None or now - self._progress_at.get(rank, 0.0) < PROGRESS_INTERVAL:
                continue
            text, tail.redraw = tail.redraw, None
            self._progress_at[rank] = now
            try:
                self._progress(rank, stream, text)
            except Exception as e:  # noqa: BLE001 - as above
                self._sink_failed(e)

    def _close(self, rank: int, stream: str, tail: _Tail) -> None:
        tail.redraw = None
        if tail.pending:
            try:
                if tail.pending.startswith(MARK):
                    self._rich(rank, tail.pending)
                else:
                    self.sink.line(rank, stream, _text(tail.pending))
            except Exception as e:  # noqa: BLE001 - as above
                self._sink_failed(e)
            self.lines += 1
            tail.pending = b""
        tail.file.close()

    def _watch(self, timeout: float) -> None:
        if not self._pidfds:
            if timeout:
                self._done.wait(timeout)
            return
        poller = select.poll()  # not select(): a kernel may hold more than FD_SETSIZE descriptors
        for fd in self._pidfds:
            poller.register(fd, select.POLLIN)
        ready = poller.poll(timeout * 1000)
        now = time.time()
        for fd, _ in ready:
            info = self._pidfds.pop(fd)
            os.close(fd)
            info.died_at = now

    def _report(self, final: bool) -> None:
        now = time.time()
        for info in list(self.workers.values()):
            if info.reported or info.died_at is None:
                continue
            pre = os.path.join(self.run_dir, f"r{info.rank}.a{info.attempt}")
            if info.record is None:
                info.record = _read_json(pre + ".rec")
            if not info.fault:
                info.fault = _read_text(pre + ".fault")
                if info.fault:
                    try:  # written as it crashed: a better time of death than when we noticed
                        info.extra["fault_time"] = os.stat(pre + ".fault").st_mtime
                    except OSError:
                        pass
            ok = info.record is not None and info.record.get("kind") == "ok"
            code = info.exitcode
            # torch's agent reaps within monitor_interval; until then the exit code is unknown
            if not (final or code is not None or ok or now - info.died_at > 1.0):
                continue
            info.reported = True
            if (code == 0 or (code is None and ok)) and ok:
                self._state(info.rank, "exited 0")
            else:
                self._state(info.rank, "failed", info.detail())

    def _state(self, rank: int, state: str, detail: str = "") -> None:
        try:
            self.sink.state(rank, state, detail)
        except Exception as e:  # noqa: BLE001 - a broken sink must not stop the relay
            self._sink_failed(e)

    def _sink_failed(self, e: BaseException) -> None:
        if self.sink_error is None:
            self.sink_error = e
            logger.warning("ptjupyter: the output sink failed: %r (output keeps being drained)", e)


def _text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    if "\r" in text:  # progress bars redraw with \r: keep what a terminal would show at the end
        text = text.rstrip("\r").rsplit("\r", 1)[-1]
    return text


def last_redraw(text: str) -> str:
    """What a terminal shows of a line redrawn with ``\r`` (a progress bar): its last non-empty segment."""
    return next((part for part in reversed(text.split("\r")) if part), "")


def _order(name: str):
    m = _NAME.match(name)
    return (int(m.group(2)), int(m.group(1)), m.group(3)) if m else (-1, -1, name)


def _find_process(pid: int):
    # torch's agent starts workers as multiprocessing.Process children of this process
    import multiprocessing.process as mpp

    for proc in mpp._children.copy():
        if getattr(proc, "pid", None) == pid:
            return proc
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def worker_info(run_dir: str, rank: int, attempt: int, pid: int) -> WorkerInfo:
    """One worker's :class:`WorkerInfo` from its files (record, fault) and its process, read now (sessions)."""
    pre = os.path.join(run_dir, f"r{rank}.a{attempt}")
    info = WorkerInfo(rank, attempt, pid or 0, proc=_find_process(pid) if pid else None)
    info.record = _read_json(pre + ".rec")
    info.fault = _read_text(pre + ".fault")
    return info
