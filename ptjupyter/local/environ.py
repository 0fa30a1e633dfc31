"""Temporary changes to ``os.environ`` that are always undone."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

__all__ = ["overridden"]


@contextlib.contextmanager
def overridden(**values: Optional[str]) -> Iterator[None]:
    """Set the names given a string, keep the others as they are; afterwards every named variable is back
    to what it was (including one that something inside set or removed)."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is not None:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
