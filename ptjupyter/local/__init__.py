"""Local execution of a plan: a direct call, or torch's elastic launch on this machine.

``run`` lives in :mod:`ptjupyter.local.launch`; importing this package imports no torch.
"""
from ..errors import RunTimeout, WorkerFailed

__all__ = ["run", "prewarm", "WorkerFailed", "RunTimeout"]


def run(plan, fn, args=(), kwargs=None, *, sink=None, timeout=None, fresh=False):
    """See :func:`ptjupyter.local.launch.run`."""
    from .launch import run as _run

    return _run(plan, fn, args, kwargs, sink=sink, timeout=timeout, fresh=fresh)


def prewarm(import_here: bool = False):
    """Start the torch-preloaded forkserver in the background (see :func:`ptjupyter.local.warm.prewarm`)."""
    from .warm import prewarm as _prewarm

    return _prewarm(import_here)
