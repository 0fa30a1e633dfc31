"""A rank's fds 1 and 2 as pipes whose lines go to the kernel: ``print``, C code and subprocesses alike.

:class:`Output` replaces the rank's fds 1 and 2 (which the worker helper pointed at files) with
pipes read by one thread, which sends complete lines to the kernel over the channel, one message
per chunk read (not per line). ``sys.stdout``/``sys.stderr`` become line-buffered files on those
fds, so Python's prints, writes from C (``printf``, a library's logging) and the output of
subprocesses the cell starts arrive in the order they were written to each fd (C's ``printf`` into a
pipe is block-buffered: its lines come at the latest when the command ends). :meth:`flush`, called
after each command, writes a token (one atomic pipe write) to both fds and waits until the reader
has passed it: every line written during the command has then been sent, before the command's
``done``. Nothing here assumes the kernel is on this machine.
"""
from __future__ import annotations

import os
import secrets
import select
import sys
import threading

__all__ = ["Output"]

MAX_LINE = 1 << 16  # a longer line without "\n" is sent in pieces
FLUSH_WAIT = 2.0  # seconds flush() waits for its token (a cell that replaced fd 1 or 2 never shows it)


class Output:
    def __init__(self, send, fds=((1, "stdout"), (2, "stderr"))):
        self.send = send  # send(stream, text): text is one or more lines without the final "\n"
        self.token = b"\x00ptjupyter-flush-" + secrets.token_hex(8).encode() + b"\x00"
        self.names: dict = {}  # read end -> stream name
        self.pending: dict = {}  # read end -> bytes after the last "\n"
        self.seen: dict = {}  # read end -> tokens passed
        self.ends: dict = {}  # fd (1, 2) -> its pipe's read end
        self.sent = 0
        self.cond = threading.Condition()
        for fd, name in fds:
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)
            self.names[r], self.pending[r], self.seen[r], self.ends[fd] = name, b"", 0, r
        self.thread = threading.Thread(target=self._read, name="ptjupyter-session-output", daemon=True)
        self.thread.start()

    def install(self) -> None:
        """``sys.stdout``/``sys.stderr`` as line-buffered files on fds 1 and 2 (so on the pipes)."""
        _flush_streams()
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)

    def flush(self) -> None:
        """Return once everything written to fds 1 and 2 so far has been sent (or after FLUSH_WAIT s).

        C's stdio buffers are flushed too (``fflush(NULL)``): on a pipe, ``printf`` output is block-buffered.
        """
        _fflush()
        _flush_streams()
        self.sent += 1
        for fd, r in self.ends.items():
            try:
                os.write(fd, self.token)
            except OSError:  # a cell closed the fd: nothing more comes from it
                with self.cond:
                    self.seen[r] = max(self.seen[r], self.sent)
        with self.cond:
            self.cond.wait_for(lambda: min(self.seen.values(), default=self.sent) >= self.sent, FLUSH_WAIT)

    # -- the reader thread
    def _read(self) -> None:
        poller = select.poll()
        for r in self.names:
            poller.register(r, select.POLLIN)
        open_fds = set(self.names)
        while open_fds:
            for r, _ in poller.poll():
                try:
                    data = os.read(r, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    poller.unregister(r)
                    open_fds.discard(r)
                    continue
                try:
                    self._take(r, data)
                except Exception:  # noqa: BLE001 - the channel is closing: the rank is exiting
                    return

    def _take(self, r: int, data: bytes) -> None:
        buf = self.pending[r] + data
        parts = buf.split(self.token)
        for part in parts[:-1]:  # text before a token: all of it goes, the last partial line too
            self._lines(r, part, final=True)
        self.pending[r] = self._lines(r, parts[-1], final=False)
        if len(parts) > 1:
            with self.cond:
                self.seen[r] += len(parts) - 1
                self.cond.notify_all()

    def _lines(self, r: int, buf: bytes, final: bool) -> bytes:
        """Send the complete lines of ``buf`` (all of it when ``final``); return what is left."""
        cut = len(buf) if final else buf.rfind(b"\n") + 1
        if not final and cut == 0 and len(buf) > MAX_LINE:
            cut = len(buf)
        head, rest = buf[:cut], buf[cut:]
        if head:
            text = head.decode("utf-8", "replace")
            self.send(self.names[r], text[:-1] if text.endswith("\n") else text)
        return rest


_libc = None


def _fflush() -> None:
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None)
        _libc.fflush(None)
    except Exception:  # noqa: BLE001 - no libc to ask: C output arrives when its buffer fills
        pass


def _flush_streams() -> None:
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:  # noqa: BLE001 - a stream a cell replaced and closed
            pass
