"""One run of one ``%%pytorch_elastic`` cell: layers -> plan -> capture -> execute -> what the cell shows.

The magic (:mod:`ptjupyter.magics`) parses the options and builds the override layers; :func:`run_cell`
does the rest. Bad options and cells are :class:`~ptjupyter.usage.OptionError` /
:class:`CellSyntaxError` raised before anything starts; run outcomes are the error family's own
(``RankFailed``, ``RunTimeout``, ``K8sError``, ...), each rendered by itself. The live output goes to a
:class:`~ptjupyter.display.CellSink`, whose summary line says how the run ended.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Optional, Sequence

from .config import PyTorch
from .errors import InvalidType, InvalidValue, PtjupyterError, RunTimeout
from .plan import PREFIX, Layer, Mode, logger, resolve, set_debug
from .usage import OptionError

__all__ = ["run_cell", "CellSyntaxError"]


class CellSyntaxError(PtjupyterError):
    """The cell does not parse; nothing was started. ``lineno`` counts the ``%%pytorch_elastic`` line as 1."""

    def __init__(self, err: SyntaxError):
        self.lineno, self.msg = err.lineno, err.msg
        where = f"line {err.lineno}" if err.lineno else "the cell"
        details = []
        if err.text:
            details.append("    " + err.text.rstrip("\n"))
            if err.offset:
                details.append("    " + " " * max(err.offset - 1, 0) + "^")
        super().__init__(f"SyntaxError: {err.msg} ({where} of the cell); nothing was started", details)


def run_cell(shell, cell: str, line: str, layers: Sequence[Layer], *, out: Optional[str] = None,
             debug: bool = False, dry_run: bool = False, status: str = "auto",
             warn_mb: float = 100.0, on_plan=None) -> Any:
    """Run ``cell`` as the layers say and return what the cell shows (rank 0's last expression, or None).

    ``on_plan(plan)`` is told the resolved plan (the magic keeps the last one for ``--dry-run`` users).
    """
    __tracebackhide__ = True  # noqa: F841 - IPython hides this frame in tracebacks
    if out is not None and not out.isidentifier():
        raise OptionError(f"--out {out!r} is not accepted; expected a Python variable name")
    prev_level = logger.level
    if debug:
        set_debug(True)
    try:
        try:
            plan = resolve(None, layers)
        except PtjupyterError as e:
            raise OptionError(e.headline) from None
        if on_plan is not None:
            on_plan(plan)
        for note in plan.warnings:
            _warn(note)
        captured = _capture(shell, cell, line, by_value=plan.mode is not Mode.DIRECT, warn_mb=warn_mb)
        if logger.isEnabledFor(logging.DEBUG):
            for row in plan.describe().splitlines():
                logger.debug("%s plan %s", PREFIX, row)
            logger.debug("%s %s", PREFIX, captured.describe())
        if dry_run:
            _print_dry_run(plan, captured)
            return None
        if (hint := _gpu_hint(plan, cell)) is not None:
            _warn(hint)
        result = _execute(shell, plan, captured, status=status)
    finally:
        if debug:
            logger.setLevel(prev_level)
    if out:
        shell.user_ns[out] = result
    return None if captured.quiet else result


def _warn(msg: str) -> None:
    print(f"Warning: {msg}", file=sys.stderr, flush=True)


def _gpu_hint(plan, cell: str) -> Optional[str]:
    """A one-line hint when a local NCCL run asks for more ranks than there are visible GPUs."""
    if plan.mode not in (Mode.ELASTIC, Mode.SESSION) or plan.target != "local":
        return None
    if plan.backend != "nccl" and "nccl" not in cell:
        return None
    from .devices import gpu_count

    n = gpu_count()
    if plan.nproc_per_node <= n:
        return None
    return (f"{plan.nproc_per_node} ranks but {n} visible GPU(s): NCCL needs a GPU per rank ('Duplicate GPU "
            "detected'); use --nproc-per-node gpu, or the gloo backend")


def _capture(shell, cell: str, line: str, *, by_value: bool, warn_mb: float):
    from .capture import CaptureError, capture_cell

    try:
        return capture_cell(cell, shell.user_ns, shell, by_value=by_value, warn_bytes=int(warn_mb * 1e6),
                            warn=_warn, header=f"%%pytorch_elastic {line}".rstrip())
    except SyntaxError as e:
        raise CellSyntaxError(e) from None
    except CaptureError as e:
        raise OptionError(e.headline) from None


def _print_dry_run(plan, captured) -> None:
    print("pytorch_elastic --dry-run: nothing was started")
    print(plan.describe())
    print(f"timeout: {plan.timeout if plan.timeout is not None else 'none'}")
    if plan.mode is Mode.DIRECT:
        print("shipping: nothing (a direct call in this process uses the notebook's own objects: "
              + (", ".join(sorted(captured.names)) or "none") + ")")
    else:
        print(captured.describe())
    if captured.assigned:
        print("assigned in the cell (stay on the workers): " + ", ".join(captured.assigned))
    if plan.on_cluster:
        from . import k8s

        try:
            print(k8s.dry_run(plan, captured.fn, shipped=dict(captured.names)))
        except PtjupyterError as e:
            raise OptionError(e.headline) from None


def _sink(shell, plan, *, status: str):
    from .display import CellSink, in_kernel, status_mode

    mode = status_mode(status, shell)
    shown = dict(ranks=plan.ranks, rich=in_kernel(shell))
    if plan.mode is Mode.SESSION:
        from .session import current
        from .session.sink import SessionSink

        s = current()
        return SessionSink(s.world_size if s else plan.nproc_per_node, status=mode, **shown)
    if plan.on_cluster:  # the k8s follower reports per pod: index 0..max_nodes-1
        master = isinstance(plan.config, PyTorch)
        node = "node" if plan.mode is Mode.TRAINJOB else "worker"
        return CellSink(plan.max_nodes, status=mode, unit="pod", **shown,
                        name=(lambda i: "master-0" if i == 0 else f"worker-{i - 1}") if master
                        else (lambda i: f"{node}-{i}"))
    return CellSink(plan.nproc_per_node, status=mode, **shown)


def _execute(shell, plan, captured, *, status: str):
    __tracebackhide__ = True  # noqa: F841
    from .execute import execute

    if plan.mode is Mode.DIRECT:  # a plain call: the cell's own output and exceptions, no status line
        return execute(plan, captured.fn)
    on_cluster, in_session = plan.on_cluster, plan.mode is Mode.SESSION
    fn = captured.fn
    if in_session:
        from . import session

        fn = session.cell_function(captured)  # refuses in one line without a usable session
    sink = _sink(shell, plan, status=status).start()
    try:
        result = execute(plan, fn, sink=sink, shipped=dict(captured.names))
    except KeyboardInterrupt as e:
        if in_session:  # the ranks left the cell and keep their state
            sink.finish("interrupted; the ranks are idle with their state")
            raise KeyboardInterrupt(str(e)) from None
        if on_cluster:  # following stopped; the job itself keeps running
            sink.finish("interrupted; stopped following, the job keeps running")
            raise KeyboardInterrupt("stopped following; the job keeps running") from None
        sink.finish("interrupted; all ranks were stopped")
        raise KeyboardInterrupt("all ranks were stopped") from None  # one line, not the launcher's frames
    except (InvalidValue, InvalidType) as e:  # bad input found by the runner, before anything started
        sink.finish("nothing was submitted" if on_cluster else "nothing was started")
        raise OptionError(e.headline) from None
    except RunTimeout as e:
        sink.finish(f"stopped by --timeout {e.timeout:g} s")
        raise e from None
    except PtjupyterError as e:
        sink.finish(e.headline)
        raise e from None
    except BaseException as e:
        sink.finish(f"failed: {type(e).__name__}")
        raise
    sink.finish("ok")
    return result
