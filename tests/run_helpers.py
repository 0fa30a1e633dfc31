"""``run(plan, fn, ...)`` for tests: :func:`ptjupyter.execute` with this run's ``timeout``/``fresh`` set on the plan
(as ``resolve()`` sets them from a layer; ``resolve``'s own checks of them are tested in tests/test_plan.py)."""
from __future__ import annotations

import dataclasses

from ptjupyter.execute import execute


def run(plan, fn, args=(), kwargs=None, *, sink=None, timeout=None, fresh=False):
    if timeout is not None or fresh:
        plan = dataclasses.replace(plan, timeout=timeout, fresh=fresh)
    return execute(plan, fn, args, kwargs, sink=sink)
