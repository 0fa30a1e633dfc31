"""The magics' usage error: a bad option or cell, in the one error family, shown as ``UsageError: ...``.

Kept apart from :mod:`ptjupyter.errors` because it subclasses IPython's ``UsageError`` (only the
magics import IPython).
"""
from __future__ import annotations

from IPython.core.error import UsageError

from .errors import PtjupyterError

__all__ = ["OptionError"]


class OptionError(PtjupyterError, UsageError):
    """A magic's option or cell was not accepted; one line naming it, its value and what is accepted."""

    label = "UsageError"
