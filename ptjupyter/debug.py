"""The ``[PYTORCH_ELASTIC]`` decision lines: the ``ptjupyter`` logger and the switch that shows them."""
from __future__ import annotations

import logging
import os

__all__ = ["logger", "PREFIX", "set_debug"]

logger = logging.getLogger("ptjupyter")
PREFIX = "[PYTORCH_ELASTIC]"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a kernel or pytest swaps it per cell/test)."""

    stream = property(lambda self: __import__("sys").stderr, lambda self, value: None)


def set_debug(on: bool = True) -> None:
    """Show (or hide) the ``[PYTORCH_ELASTIC]`` decision lines on stderr. Also: ``PTJUPYTER_DEBUG=1``."""
    logger.setLevel(logging.DEBUG if on else logging.WARNING)
    if on and not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)


if os.environ.get("PTJUPYTER_DEBUG", "").lower() in ("1", "true", "yes", "on"):
    set_debug(True)
