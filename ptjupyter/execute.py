"""The one dispatcher: ``execute(plan, fn)`` runs a training function the way ``plan.mode`` says.

The magic, the flytekit tasks (and sessions) call it; nothing else picks a runner:

- ``DIRECT``: :func:`ptjupyter.local.direct.call`, a plain call in this process;
- ``ELASTIC``: :func:`ptjupyter.local.launch.launch`, torch's elastic launch on this machine;
- ``POD`` / ``PYTORCHJOB``: :func:`ptjupyter.k8s.run`, submitted to Kubernetes and followed;
- ``SESSION``: :func:`ptjupyter.session.run`, on the kernel's persistent session ranks.

``plan.timeout``, ``plan.fresh`` and ``plan.detach`` say how this run goes; :func:`ptjupyter.plan.resolve`
has already dropped (with a note) those that do not apply to the mode.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from .errors import InvalidType
from .plan import Mode, Plan

__all__ = ["execute"]


def execute(plan: Plan, fn: Callable, args=(), kwargs=None, *, sink=None,
            shipped: Optional[Mapping[str, Any]] = None, out: Callable[[str], Any] = print) -> Any:
    """Run ``fn(*args, **kwargs)`` as ``plan`` says and return its (rank 0's) value.

    ``sink``: ``.line(rank, stream, text)`` and ``.state(rank, state, detail)`` for live output
    (a k8s run reports per pod). ``shipped``: the notebook names the function reads, for the
    Kubernetes payload's size report. ``out``: where a Kubernetes run prints its own notes.
    Raises :class:`~ptjupyter.errors.PtjupyterError` subclasses (``RankFailed``, ``RunTimeout``,
    ``K8sError``, ``JobFailed``, bad input) or ``KeyboardInterrupt``; a direct call's own exceptions
    are the caller's.
    """
    __tracebackhide__ = True  # noqa: F841 - IPython hides this frame in tracebacks
    _check(plan, fn, args, kwargs, sink)
    if plan.mode is Mode.DIRECT:
        from .local.direct import call

        return call(fn, args, kwargs, sink=sink, timeout=plan.timeout)
    if plan.mode is Mode.ELASTIC:
        from .local.launch import launch

        return launch(plan, fn, args, kwargs, sink=sink)
    if plan.mode is Mode.SESSION:
        from . import session

        return session.run(plan, fn, args, kwargs, sink=sink)
    from . import k8s

    if args or kwargs:
        raise InvalidType("args/kwargs are not accepted for a Kubernetes run; the function must take no arguments "
                          "(a cell's function takes none)")
    return k8s.run(plan, fn, sink=sink, detach=plan.detach, shipped=shipped, out=out)


def _check(plan, fn, args, kwargs, sink) -> None:
    if not isinstance(plan, Plan):
        raise InvalidType(f"plan={plan!r} is not accepted; expected a ptjupyter.Plan from ptjupyter.resolve()")
    if not callable(fn):
        raise InvalidType(f"fn={fn!r} is not accepted; expected a callable")
    if not isinstance(args, (tuple, list)):
        raise InvalidType(f"args={args!r} is not accepted; expected a tuple of positional arguments")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise InvalidType(f"kwargs={kwargs!r} is not accepted; expected a dict of keyword arguments or None")
    if sink is not None and not (callable(getattr(sink, "line", None)) and callable(getattr(sink, "state", None))):
        raise InvalidType(f"sink={sink!r} is not accepted; expected an object with .line(rank, stream, text) and "
                          ".state(rank, state, detail)")
