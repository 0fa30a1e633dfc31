"""Tail one pod's ``pytorch`` container log live, resuming after dropped streams and container restarts.

Lines are requested with ``timestamps=true``. After a dropped stream the tail reconnects with
``sinceSeconds`` covering the gap (plus slack) and :class:`LogCursor` skips every line whose timestamp
is older than, or equal and already shown, the last one shown: no duplicates, no gaps.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Callable, Optional

from . import watch as _watch
from .errors import translate
from .watch import RETRY_STATUSES, abort, backoff

__all__ = ["LogCursor", "LogTail", "LOG_READ_TIMEOUT"]

log = logging.getLogger("ptjupyter")
LOG_READ_TIMEOUT = 600  # seconds without any log output before a stream is reopened (not counted as a failure)
SINCE_SLACK = 10  # seconds added to sinceSeconds: clocks and the server's rounding
_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")


def ts_key(ts: str) -> Optional[str]:
    """An RFC 3339 timestamp as a string that sorts in time order (nanoseconds padded), or None."""
    m = _TS.match(ts)
    if not m:
        return None
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')}Z"


class LogCursor:
    """Where one container's log was read up to; decides which lines of a (re)opened stream are new.

    Several lines can carry the same timestamp: the cursor counts those shown at the latest one, and on a
    new connection skips that many before showing more.
    """

    def __init__(self):
        self.last_key: Optional[str] = None
        self.n_at_last = 0  # lines shown with timestamp last_key
        self.conn_count = 0  # lines at last_key seen on the current connection
        self.last_recv: Optional[float] = None  # time.monotonic() of the last line shown

    def reconnected(self) -> None:
        self.conn_count = 0

    def since_seconds(self) -> Optional[int]:
        """``sinceSeconds`` for a reconnect (None: nothing shown yet, read from the start or the tail)."""
        if self.last_recv is None:
            return None
        return int(time.monotonic() - self.last_recv) + SINCE_SLACK

    def accept(self, raw: bytes) -> Optional[str]:
        """The text of one timestamped log line, or None when it was shown before."""
        text = raw.decode("utf-8", "replace").rstrip("\r")
        ts, sep, rest = text.partition(" ")
        key = ts_key(ts) if sep else None
        if key is not None:
            text = rest
            if self.last_key is None or key > self.last_key:
                self.last_key, self.n_at_last, self.conn_count = key, 1, 1
            elif key < self.last_key:
                return None  # shown before the stream dropped
            else:
                self.conn_count += 1
                if self.conn_count <= self.n_at_last:
                    return None  # same timestamp, already shown
                self.n_at_last += 1
        self.last_recv = time.monotonic()
        return text


class LogTail(threading.Thread):
    """Stream one pod's log to ``on_line(text)`` until the container is done for good, the pod is gone or
    ``stop`` is set.

    The pod's side is given as callables: ``open_stream(**kw)`` opens the log request (the ``kubernetes``
    client's ``read_namespaced_pod_log`` with ``_preload_content=False``), ``wait_started()`` blocks until the
    container started (False: it never will), ``pod_now()`` says after a stream ended whether the container is
    ``final``, ``restarting``, ``running`` or ``gone``, and ``wait_change(timeout)`` waits for the pod to change.
    ``on_note(text)`` says what a user should know (a log that cannot be read); ``on_done()`` comes last, always.
    """

    def __init__(self, name: str, *, container: str, open_stream: Callable[..., Any], wait_started: Callable[[], bool],
                 pod_now: Callable[[], str], wait_change: Callable[[float], Any], on_line: Callable[[str], Any],
                 on_note: Callable[[str], Any], on_done: Callable[[], Any], stop: threading.Event,
                 namespace: str = "", label: str = "", tail: Optional[int] = None,
                 max_failures: Optional[int] = None):
        super().__init__(name=f"ptjupyter-log-{name}", daemon=True)
        self.pod, self.container, self.label, self.tail = name, container, label or name, tail
        self.open_stream, self.wait_started, self.pod_now, self.wait_change = open_stream, wait_started, pod_now, wait_change
        self.on_line, self.on_note, self.on_done, self.stop = on_line, on_note, on_done, stop
        self.namespace = namespace
        self.max_failures = _watch.MAX_FAILURES if max_failures is None else max_failures
        self.cursor = LogCursor()
        self.partial = b""  # the unterminated end of the last stream
        self.resp = None
        self._progress = False

    def close(self) -> None:
        """Unblock a read in progress (the thread then sees ``stop``)."""
        abort(self.resp)

    def run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # noqa: BLE001 - never kill the follower; say it
            if not self.stop.is_set():
                self.on_note(f"log stream of {self.label} stopped: {type(e).__name__}: {e}")
        finally:
            self.on_done()

    def _loop(self) -> None:
        from kubernetes.client.exceptions import ApiException

        failures = 0
        while not self.stop.is_set():
            if not self.wait_started():
                return
            kw: dict = dict(container=self.container, follow=True, timestamps=True, _preload_content=False,
                            _request_timeout=(10, LOG_READ_TIMEOUT))
            since = self.cursor.since_seconds()
            if since is not None:
                kw["since_seconds"] = since
            elif self.tail is not None:
                kw["tail_lines"] = self.tail
            progressed = clean = quiet = False
            self.cursor.reconnected()
            opened = time.monotonic()
            try:
                self.resp = self.open_stream(**kw)
                if self.stop.is_set():
                    return
                progressed = self._read(self.resp)
                clean = True
            except ApiException as e:
                if e.status == 404:
                    return
                if e.status != 400 and e.status not in RETRY_STATUSES:  # 400: container not started (yet)
                    raise translate(e, "get", "pods/log", self.namespace, self.pod) from None
            except Exception as e:  # noqa: BLE001 - a dropped connection: resume below
                if self.stop.is_set():
                    return
                quiet = "Read timed out" in str(e)  # no output for LOG_READ_TIMEOUT s: not a failure
                progressed = progressed or self._progress
                log.debug("[PYTORCH_ELASTIC] log stream of %s dropped: %s", self.pod, str(e).splitlines()[0])
            finally:
                if self.resp is not None:
                    try:
                        self.resp.release_conn()
                    except Exception:  # noqa: BLE001 - already closed by close()
                        pass
                self.resp = None
            if self.stop.is_set():
                return
            state = self.pod_now()
            if state == "final" and clean:
                if self.partial:
                    self._line(self.partial)
                    self.partial = b""
                return
            self.partial = b""  # a line cut by a dropped stream comes again, whole, after the resume
            if state == "gone":
                return
            if state == "restarting" and clean:
                self.wait_change(5.0)
                continue
            # a stream that stayed open a while and was closed (idle proxies do that) is no failure
            quiet = quiet or time.monotonic() - opened > 30
            failures = 0 if (progressed or quiet) else failures + 1
            if failures > self.max_failures:
                self.on_note(f"log stream of {self.label} keeps failing; stopped tailing it")
                return
            if failures:
                self.stop.wait(backoff(failures))

    def _read(self, resp) -> bool:
        """Feed a stream's complete lines; True when one of them was new."""
        progressed = self._progress = False
        buf = b""
        try:
            for chunk in resp.stream(None, decode_content=False):
                buf += chunk
                while True:
                    i = buf.find(b"\n")
                    if i < 0:
                        break
                    line, buf = buf[:i], buf[i + 1:]
                    if self._line(line):
                        progressed = self._progress = True
        finally:
            self.partial = buf
        return progressed

    def _line(self, raw: bytes) -> bool:
        text = self.cursor.accept(raw)
        if text is None:
            return False
        self.on_line(text)
        return True
