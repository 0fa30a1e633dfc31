"""Local execution of a plan: a direct call (``direct``) or torch's elastic launch on this machine (``launch``).

Both are reached through :func:`ptjupyter.execute.execute`; importing this package imports no torch.
"""

__all__ = ["prewarm"]


def prewarm(import_here: bool = False):
    """Start the torch-preloaded forkserver in the background (see :func:`ptjupyter.local.warm.prewarm`)."""
    from .warm import prewarm as _prewarm

    return _prewarm(import_here)
