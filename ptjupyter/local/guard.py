"""Who owns Ctrl-C during a run, and the timeout.

torch's process context installs SIGINT/SIGTERM handlers (raising ``SignalException``) in the main
thread whenever it starts workers, and leaves them installed. During a run SIGINT is ours: the
handler stops the workers itself (the ladder) and only then raises :class:`Stop` through torch's
agent, so the agent never gets to restart anything. The timeout is a timer that sends SIGINT to
the main thread (a real signal also breaks blocking waits). Afterwards every handler this process
had before the run is put back.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable, Optional

__all__ = ["Guard", "Stop"]

_HANDLED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")


class Stop(BaseException):
    """Raised by our SIGINT handler once the workers are stopped; BaseException so torch's
    ``except Exception`` clauses cannot swallow it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Guard:
    """Owns SIGINT (main thread) during a run: Ctrl-C or the timeout run ``on_stop`` then raise ``Stop``."""

    def __init__(self, timeout: Optional[float], on_stop: Callable[[str], None] = lambda reason: None):
        self.timeout = timeout
        self.on_stop = on_stop
        self.main = threading.current_thread() is threading.main_thread()
        self.reason: Optional[str] = None
        self.hurry = False
        self._armed = False
        self._deferring = False
        self.late = False  # Ctrl-C during the cleanup: raised once it is done
        self._stopping = False
        self._stopped = False
        self._lock = threading.Lock()
        self._saved: dict = {}
        self._timer: Optional[threading.Timer] = None

    def arm(self) -> None:
        """Take SIGINT (main thread only) and start the timer."""
        if self.main:
            for name in _HANDLED:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._saved[sig] = signal.getsignal(sig)
            signal.signal(signal.SIGINT, self._on_sigint)
        self._armed = True
        if self.timeout is not None:
            self._timer = threading.Timer(self.timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def defer(self) -> None:
        """From now on Ctrl-C is only noted (``late``): the cleanup must not be cut short."""
        with self._lock:
            self._armed = False
            self._deferring = True
        if self._timer is not None:
            self._timer.cancel()

    def disarm(self) -> None:
        """Stop the timer and put back the handlers this process had before the run (torch's included)."""
        self.defer()
        self._deferring = False
        for sig, handler in self._saved.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass

    def _expire(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self.reason = self.reason or "timeout"
            if self.main:
                # a real signal to the main thread also breaks blocking waits (select, sleep) in torch's agent
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                return
        self._stop()  # no handler possible off the main thread: stop the workers from here

    def _on_sigint(self, signum, frame):
        if self._deferring:
            self.late = True
            return
        if not self._armed:
            original = self._saved.get(signal.SIGINT)
            if callable(original):
                return original(signum, frame)
            raise KeyboardInterrupt
        if self._stopped:
            if not _in_finalizer(frame):
                raise Stop(self.reason)
            return
        if self._stopping:
            self.hurry = True  # a second Ctrl-C: skip the waits of the ladder
            return
        self.reason = self.reason or "interrupt"
        self._stop()
        self._stopped = True
        threading.Thread(target=self._insist, name="ptjupyter-stop", daemon=True).start()
        if not _in_finalizer(frame):
            raise Stop(self.reason)

    def _insist(self) -> None:
        # Python prints and drops exceptions raised in __del__/weakref finalizers, so Stop is not
        # raised there (and one could still be swallowed): signal again until the run has unwound.
        # Meanwhile the launch has no workers, and the stop file refuses restarts.
        while True:
            time.sleep(0.25)
            with self._lock:  # defer() takes it too: no signal from here once the run unwinds
                if not self._armed:
                    return
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def _stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.on_stop(self.reason)


def _in_finalizer(frame) -> bool:
    """True when ``frame`` runs inside a ``__del__`` or a multiprocessing finalizer (exceptions are dropped there)."""
    util = os.path.join("multiprocessing", "util.py")
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or (code.co_name == "__call__" and code.co_filename.endswith(util)):
            return True
        frame = frame.f_back
    return False
