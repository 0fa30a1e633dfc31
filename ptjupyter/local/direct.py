"""World size 1: the function is called in this process (no pickling, no process, no port).

The one direct call of the package (the magic and the flytekit task both get here through
:func:`ptjupyter.execute.execute`). ``timeout`` and Ctrl-C go through the same :class:`Guard` as an
elastic launch, so both modes stop and report alike.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from ..errors import RunTimeout
from .guard import Guard, Stop

__all__ = ["call"]


def call(fn: Callable, args=(), kwargs=None, *, sink=None, timeout: Optional[float] = None) -> Any:
    """``fn(*args, **kwargs)`` here; its exceptions are the caller's. ``timeout`` raises :class:`RunTimeout`."""
    __tracebackhide__ = True  # noqa: F841 - IPython hides this frame in tracebacks
    if sink is not None:
        sink.state(0, "running", f"pid {os.getpid()} (direct call)")
    guard = Guard(timeout) if timeout is not None else None
    try:
        if guard is not None:
            guard.arm()
        result = fn(*args, **(kwargs or {}))
    except Stop as e:
        stop = e.reason
    except BaseException as e:
        if sink is not None:
            sink.state(0, "failed", type(e).__name__)
        raise
    else:
        stop = None
    finally:
        if guard is not None:
            guard.disarm()
    if stop is not None:
        if sink is not None:
            sink.state(0, "failed", stop)
        if stop == "timeout":
            raise RunTimeout(timeout, "the direct call was interrupted")
        raise KeyboardInterrupt
    if sink is not None:
        sink.state(0, "exited 0")
    return result
