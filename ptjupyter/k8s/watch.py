"""A list followed by a resumable watch (``watch.Watch().stream``), and the one retry backoff of ptjupyter.k8s.

A watch that the server ends (its ``timeout_seconds``) or that drops resumes from the last
resourceVersion seen; ``410 Gone`` (the version was compacted away) relists and watches from the new
list's version; 429/5xx and dropped connections are retried with :func:`backoff`, at most
``max_failures`` times in a row.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from .errors import K8sError

__all__ = ["backoff", "ResumableWatch", "WATCH_TIMEOUT", "MAX_FAILURES", "RETRY_STATUSES"]

log = logging.getLogger("ptjupyter")
WATCH_TIMEOUT = 50  # seconds per watch request (server side); then resume from the last resourceVersion
MAX_FAILURES = 6  # consecutive failed (re)connects of one watch or log stream before giving up
RETRY_STATUSES = (429, 500, 502, 503, 504)


def backoff(failures: int, base: float = 0.2, cap: float = 5.0) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: ``base * 2**failures``, at most ``cap``."""
    return min(base * 2 ** failures, cap)


class ResumableWatch:
    """LIST then WATCH one collection until ``stop`` is set, handing each event to ``on_event(type, obj)``.

    ``relist()`` lists (and hands the items over itself) and returns the list's resourceVersion;
    ``list_fn(*args, **kw)`` is the ``kubernetes`` client's list call that ``watch.Watch().stream`` drives.
    ``on_error(exc)`` is called once when the watch gives up (a one-line ``K8sError`` or the relist's error).
    ``new_watch()`` makes the ``kubernetes.watch.Watch`` of each request (tests pass their own).
    """

    def __init__(self, what: str, list_fn: Callable, args: tuple, kw: dict, *, relist: Callable[[], str],
                 on_event: Callable[[str, dict], Any], on_error: Callable[[BaseException], Any],
                 stop: threading.Event, job: str, namespace: str, max_failures: Optional[int] = None,
                 timeout: int = WATCH_TIMEOUT, new_watch: Optional[Callable[[], Any]] = None):
        self.what, self.list_fn, self.args, self.kw = what, list_fn, args, kw
        self.relist, self.on_event, self.on_error, self.stop = relist, on_event, on_error, stop
        self.job, self.namespace, self.timeout = job, namespace, timeout
        self.max_failures = MAX_FAILURES if max_failures is None else max_failures
        self.new_watch = new_watch
        self._current = None  # the open kubernetes.watch.Watch, for close()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Unblock a watch waiting for events (safe from any thread, any number of times)."""
        with self._lock:
            w = self._current
        if w is not None:
            try:
                w.stop()
            except Exception:  # noqa: BLE001 - it may be closing itself
                pass
            abort(getattr(w, "_resp", None))

    def run(self) -> None:
        """The watch loop (the body of its thread); returns when stopped or after ``on_error``."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        from .errors import short_reason, translate

        failures = gone = 0
        err: BaseException = K8sError("no error")
        try:
            rv = self.relist()
        except Exception as e:  # noqa: BLE001 - reported by the owner
            self.on_error(e)
            return
        new_watch = self.new_watch or (lambda: watch.Watch(return_type="object"))
        while not self.stop.is_set():
            w = new_watch()
            with self._lock:
                self._current = w
            try:
                for ev in w.stream(self.list_fn, *self.args, resource_version=rv, timeout_seconds=self.timeout,
                                   allow_watch_bookmarks=True, _request_timeout=(10, self.timeout + 10), **self.kw):
                    failures = gone = 0
                    obj = ev.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if ev.get("type") != "BOOKMARK":
                        self.on_event(ev.get("type"), obj)
                    if self.stop.is_set():
                        break
                continue  # the server ended the watch (its timeout): resume from rv
            except ApiException as e:
                if self.stop.is_set():
                    return
                if e.status == 410:  # our resourceVersion is too old: relist, then watch from the new one
                    log.debug("[PYTORCH_ELASTIC] %s watch: 410 Gone, relisting", self.what)
                    gone += 1
                    if gone > self.max_failures:
                        self.on_error(K8sError(f"watching {self.what} of job {self.job}: the server keeps answering "
                                               f"410 Gone after relisting ({gone} times)"))
                        return
                    if gone > 1:
                        self.stop.wait(backoff(gone))
                    try:
                        rv = self.relist()
                    except Exception as e2:  # noqa: BLE001 - reported by the owner
                        self.on_error(e2)
                        return
                    continue
                if e.status not in RETRY_STATUSES:
                    self.on_error(translate(e, "watch", self.what, self.namespace))
                    return
                failures += 1
                err = e
            except Exception as e:  # noqa: BLE001 - a dropped connection: resume from rv
                if self.stop.is_set():
                    return
                failures += 1
                err = e
            finally:
                with self._lock:
                    self._current = None
            if failures > self.max_failures:
                # one line: an ApiException's str() carries the response headers and body on further lines
                why = (translate(err, "watch", self.what, self.namespace) if isinstance(err, ApiException)
                       else short_reason(err))
                self.on_error(K8sError(f"watching {self.what} of job {self.job} failed {failures} times in a row: "
                                       f"{why}", status=getattr(err, "status", None)))
                return
            self.stop.wait(backoff(failures))


def abort(resp) -> None:
    """Unblock a thread reading ``resp`` (urllib3) by shutting its socket down."""
    import socket

    if resp is None:
        return
    socks = []
    conn = getattr(resp, "connection", None) or getattr(resp, "_connection", None)
    socks.append(getattr(conn, "sock", None))
    try:  # urllib3 2 may have detached the connection; the socket is still under the http.client response
        socks.append(resp._fp.fp.raw._sock)
    except AttributeError:
        pass
    for sock in socks:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
