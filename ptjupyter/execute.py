"""Run a function as a :class:`~ptjupyter.plan.Plan` says: the one dispatcher, keyed by ``plan.mode``.

Placeholder on the flytekit branch (only DIRECT and ELASTIC, through the local launcher); the
lead's full dispatcher (Kubernetes modes included) replaces this file at merge.
"""
from __future__ import annotations

from typing import Any, Callable

from .plan import Mode

__all__ = ["execute"]


def execute(plan, fn: Callable, *, args=(), kwargs=None, sink=None, shipped=None, out=print) -> Any:
    """Run ``fn(*args, **kwargs)`` as ``plan`` says and return its (rank 0's) value."""
    if plan.mode in (Mode.DIRECT, Mode.ELASTIC):
        from .local import launch

        return launch.run(plan, fn, args, kwargs, sink=sink)
    raise NotImplementedError(f"plan.mode={plan.mode.value!r} is not run by this placeholder dispatcher")
