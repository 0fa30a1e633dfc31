"""The IPython surface: ``%%pytorch_elastic`` and ``%pytorch_elastic_widgets``.

``load_ipython_extension`` registers :class:`PytorchElastic` (a ``Magics`` subclass, so a traitlets
``Configurable``: ``%config PytorchElastic.nproc_per_node = 2`` and ``ipython_config.py`` set its
defaults). Its state (the widget panel's overrides, the last plan) lives on the instance.

A cell's options become override layers for :func:`ptjupyter.plan.resolve`, lowest first:
Elastic defaults < ``%config`` < widget panel < ``--config NAME`` < cell flags.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from typing import Any, Optional

from traitlets import Bool, Enum, Float, Int, Unicode, Union

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .config import START_METHODS, Elastic, PyTorch
from .display import STATUS_MODES
from .local.hints import hint_for
from .plan import PREFIX, TARGETS, Layer, Mode, logger, resolve

__all__ = ["PytorchElastic", "PytorchElasticError", "CellSyntaxError", "RankFailed", "CellTimeout",
           "load_ipython_extension", "unload_ipython_extension", "CONFIG_KEYS"]

# traits that are plan overrides (the "%config" layer); the others steer the magic itself
CONFIG_KEYS = ("nnodes", "nproc_per_node", "max_restarts", "start_method", "monitor_interval", "target",
               "image", "namespace", "context")


class PytorchElasticError(Exception):
    """A cell error shown as a few plain lines (no traceback through ptjupyter's own frames)."""

    def __init__(self, message: str, lines: Optional[list] = None):
        super().__init__(message)
        self.lines = lines if lines is not None else [message]

    def _render_traceback_(self):  # IPython shows these lines instead of a traceback
        return list(self.lines)


class CellSyntaxError(PytorchElasticError):
    """The cell does not parse; nothing was started. ``lineno`` counts the ``%%pytorch_elastic`` line as 1."""

    def __init__(self, err: SyntaxError):
        self.lineno, self.msg = err.lineno, err.msg
        where = f"line {err.lineno}" if err.lineno else "the cell"
        lines = [f"SyntaxError: {err.msg} ({where} of the cell); nothing was started"]
        if err.text:
            lines.append("    " + err.text.rstrip("\n"))
            if err.offset:
                lines.append("    " + " " * max(err.offset - 1, 0) + "^")
        super().__init__(lines[0], lines)


class RankFailed(PytorchElasticError):
    """A rank failed: the first failing rank's own traceback, the rank and a hint when the cause is known."""

    def __init__(self, err, hint: Optional[str] = None):
        self.rank = getattr(err, "rank", None)
        self.exitcode = getattr(err, "exitcode", None)
        self.signal_name = getattr(err, "signal_name", None)
        self.traceback_text = getattr(err, "traceback_text", None) or ""
        text = str(err)
        header = text.splitlines()[0] if text else f"rank {self.rank} failed"
        lines = [header, "(the other ranks were stopped)"]
        if self.traceback_text.strip():
            tb = [ln for ln in self.traceback_text.rstrip("\n").splitlines() if not _RUNNER_FRAME.match(ln)]
            lines += ["", f"--- rank {self.rank}'s traceback ---"] + tb
        else:
            rest = [ln for ln in text.splitlines()[1:] if not ln.startswith("hint:")]
            lines += ([""] + rest) if rest else []
        if hint:
            lines += ["", "hint: " + hint]
        self.hint = hint
        super().__init__(header, lines)


# the frame of capture's runner (cloudpickle names shipped code "<dynamic-code>"): not the user's code
_RUNNER_FRAME = re.compile(r'^\s*File "<(dynamic-code|ptjupyter runner)>", line \d+, in pytorch_elastic_cell$')


class CellTimeout(PytorchElasticError):
    """``--timeout`` passed: every rank was stopped."""


@magics_class
class PytorchElastic(Magics):
    """``%%pytorch_elastic``: run a cell as a PyTorch distributed (torch elastic) training function.

    Defaults for every cell: ``%config PytorchElastic.nproc_per_node = 2`` (or ``c.PytorchElastic...``
    in ``ipython_config.py``). Unset traits (None) leave the ``Elastic()`` default in place.
    """

    nnodes = Union([Int(), Unicode()], default_value=None, allow_none=True,
                   help='Nodes: N or "MIN:MAX". Locally only 1; more nodes need target="k8s".').tag(config=True)
    nproc_per_node = Int(None, allow_none=True,
                         help="Worker processes per node (ranks). 1 with one node = a plain call in the kernel.").tag(config=True)
    max_restarts = Int(None, allow_none=True,
                       help="Times torch elastic restarts the whole worker group after a failure.").tag(config=True)
    start_method = Unicode(None, allow_none=True,
                           help="How workers start: spawn (default, safe), forkserver, or fork (fast; refused once "
                                "CUDA is initialised).").tag(config=True)
    monitor_interval = Float(None, allow_none=True,
                             help="Seconds between the elastic agent's checks of its workers (local default 0.1).").tag(config=True)
    target = Unicode(None, allow_none=True, help='Where cells run: "local" (default) or "k8s".').tag(config=True)
    image = Unicode(None, allow_none=True, help="k8s: container image of the pods (same Python and torch as the kernel).").tag(config=True)
    namespace = Unicode(None, allow_none=True, help='k8s: namespace of the job (default "default").').tag(config=True)
    context = Unicode(None, allow_none=True, help="k8s: kubeconfig context (default: the current one).").tag(config=True)
    timeout = Float(None, allow_none=True,
                    help="Seconds after which every rank of a cell is stopped (None: no limit).").tag(config=True)
    rank0_only = Bool(False, help="Show only rank 0's output lines.").tag(config=True)
    status = Enum(STATUS_MODES, default_value="auto",
                  help="Live status: html (in-place display, kernels), text (summary line only), off, or auto "
                       "(html in a kernel). The env var PTJUPYTER_STATUS overrides.").tag(config=True)
    warn_mb = Float(100.0, help="Warn when a captured variable pickles to more than this many MB.").tag(config=True)
    prewarm = Bool(True, help="On %load_ext, start the local launcher's warm worker start-up in the background "
                              "(if it has one). PTJUPYTER_PREWARM=0 turns it off.").tag(config=True)

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self.widget_overrides: dict = {}  # the "widget panel" layer, written by ptjupyter.widgets
        self.panel = None
        self.last_plan = None
        self.last_capture = None

    # -- layers and plan
    def config_layer(self) -> dict:
        return {k: getattr(self, k) for k in CONFIG_KEYS if getattr(self, k) is not None}

    def resolve_layers(self, extra: tuple = (), widget: Optional[dict] = None) -> list:
        layers = [Layer("%config", self.config_layer()),
                  Layer("widget panel", dict(self.widget_overrides if widget is None else widget))]
        return layers + list(extra)

    # -- %%pytorch_elastic
    @magic_arguments(name="%pytorch_elastic")  # the usage line then reads %%pytorch_elastic
    @argument("--nnodes", metavar="N|MIN:MAX", help="Nodes. Locally only 1; several need --target k8s.")
    @argument("--nproc-per-node", type=int, metavar="N", help="Processes (ranks) per node.")
    @argument("--max-restarts", type=int, metavar="N", help="Restarts of the worker group after a failure.")
    @argument("--start-method", choices=START_METHODS, help="spawn (default), forkserver or fork.")
    @argument("--target", choices=TARGETS, help="local (default) or k8s.")
    @argument("--config", metavar="NAME", help="An Elastic(...) or PyTorch(...) object in the notebook: its fields "
                                               "override %%config and the widget panel; cell flags override it.")
    @argument("--out", "-o", metavar="NAME", help="Store rank 0's result (the cell's last expression) in NAME.")
    @argument("--rank0-only", action="store_true", default=None, help="Show only rank 0's output lines.")
    @argument("--debug", action="store_true", help="Show the [PYTORCH_ELASTIC] decision lines: the plan and where "
                                                   "each value came from.")
    @argument("--dry-run", action="store_true", help="Print the resolved plan with sources and the names the cell "
                                                     "ships with their sizes (and, for k8s, the manifest); run nothing.")
    @argument("--timeout", type=float, metavar="S", help="Stop every rank after S seconds (a rank stuck at a "
                                                         "barrier never hangs the notebook).")
    @argument("--fresh", action="store_true", help="Start new worker processes (no warm start-up).")
    @argument("--image", help="k8s: container image.")
    @argument("--namespace", help="k8s: namespace.")
    @argument("--context", help="k8s: kubeconfig context.")
    @argument("--job-name", help="k8s: job name (DNS-1035 label; default generated).")
    @argument("--detach", action="store_true", help="k8s: submit and return at once; the job keeps running.")
    @cell_magic
    def pytorch_elastic(self, line: str, cell: str) -> Any:
        """Run this cell on every rank of a PyTorch distributed (torch elastic) job.

        The cell body becomes a function run by each rank (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR
        and MASTER_PORT are set; call torch.distributed.init_process_group() in the cell). The value
        of the cell's last expression on rank 0 is the cell's output (and goes to --out NAME).

        The cell reads notebook variables, functions and classes by value: only the names it uses
        are shipped (pickled with cloudpickle; modules by reference). Names the cell assigns stay on
        the workers: they do not appear in the notebook (return what you need, or use --out).
        Changes a rank makes to a shipped object are made to its own copy. With one process
        (world size 1) the cell is a plain call in the kernel: nothing is copied or pickled.
        IPython syntax (%magic, !cmd) works only in that case.

        Each rank's output appears while it runs, prefixed [rankN]. A failing rank shows its own
        traceback; interrupting the kernel stops every worker.

        Values come from, lowest to highest precedence: Elastic() defaults < %config
        PytorchElastic.* < the widget panel (%pytorch_elastic_widgets) < --config NAME < flags
        on this line. --debug and --dry-run show which source set each value.

        Examples::

            %%pytorch_elastic --nproc-per-node 2
            import torch.distributed as dist
            dist.init_process_group("gloo")
            dist.get_rank()
        """
        __tracebackhide__ = True  # noqa: F841 - IPython hides this frame in tracebacks
        args = parse_argstring(self.pytorch_elastic, line)
        return self._run_cell(args, line, cell)

    def _flag_layer(self, args) -> dict:
        return {
            "nnodes": args.nnodes, "nproc_per_node": args.nproc_per_node, "max_restarts": args.max_restarts,
            "start_method": args.start_method, "target": args.target, "image": args.image,
            "namespace": args.namespace, "context": args.context, "job_name": args.job_name,
        }

    def _config_object_layer(self, name: str) -> Layer:
        ns = self.shell.user_ns
        if name not in ns:
            raise UsageError(f"--config {name}: there is no variable {name!r} in the notebook; expected the name of "
                             "an Elastic(...) or PyTorch(...) object")
        obj = ns[name]
        if not isinstance(obj, (Elastic, PyTorch)):
            raise UsageError(f"--config {name}: {name} is a {type(obj).__name__}; expected a ptjupyter.Elastic or "
                             "ptjupyter.PyTorch object")
        return Layer(f"--config {name}", obj)

    def _plan(self, args):
        extra = []
        if args.config:
            extra.append(self._config_object_layer(args.config))
        extra.append(Layer("cell flags", self._flag_layer(args)))
        try:
            return resolve(None, self.resolve_layers(tuple(extra)))
        except (TypeError, ValueError) as e:
            raise UsageError(str(e).splitlines()[0]) from None

    def _run_cell(self, args, line: str, cell: str):
        __tracebackhide__ = True  # noqa: F841
        if args.out is not None and not args.out.isidentifier():
            raise UsageError(f"--out {args.out!r} is not accepted; expected a Python variable name")
        timeout = args.timeout if args.timeout is not None else self.timeout
        if timeout is not None and not timeout > 0:
            raise UsageError(f"--timeout {timeout!r} is not accepted; expected a number of seconds > 0")
        rank0_only = self.rank0_only if args.rank0_only is None else args.rank0_only

        prev_level = logger.level
        if args.debug:
            from .plan import set_debug

            set_debug(True)
        try:
            plan = self._plan(args)
            self.last_plan = plan
            direct = plan.mode is Mode.DIRECT
            captured = self._capture(cell, line, by_value=not direct)
            self.last_capture = captured
            if logger.isEnabledFor(logging.DEBUG):
                for row in plan.describe().splitlines():
                    logger.debug("%s plan %s", PREFIX, row)
                logger.debug("%s %s", PREFIX, captured.describe())
                if timeout is not None:
                    logger.debug("%s timeout: %s s", PREFIX, timeout)
            if args.dry_run:
                self._print_dry_run(plan, captured, timeout)
                return None
            if direct:
                result = self._run_direct(captured, timeout)
            else:
                result = self._run_launcher(plan, captured, timeout=timeout, fresh=args.fresh,
                                            rank0_only=rank0_only, detach=args.detach)
        finally:
            if args.debug:
                logger.setLevel(prev_level)
        if args.out:
            self.shell.user_ns[args.out] = result
        return None if captured.quiet else result

    def _capture(self, cell: str, line: str, by_value: bool):
        from .capture import CaptureError, capture_cell

        def warn(msg):
            print(f"Warning: {msg}", file=sys.stderr, flush=True)

        try:
            return capture_cell(cell, self.shell.user_ns, self.shell, by_value=by_value,
                                warn_bytes=int(self.warn_mb * 1e6), warn=warn,
                                header=f"%%pytorch_elastic {line}".rstrip())
        except SyntaxError as e:
            raise CellSyntaxError(e) from None
        except CaptureError as e:
            raise UsageError(str(e)) from None

    def _print_dry_run(self, plan, captured, timeout):
        print("pytorch_elastic --dry-run: nothing was started")
        print(plan.describe())
        print(f"timeout: {timeout if timeout is not None else 'none'}")
        if plan.mode is Mode.DIRECT:
            print("shipping: nothing (a direct call in this process uses the notebook's own objects: "
                  + (", ".join(sorted(captured.names)) or "none") + ")")
        else:
            print(captured.describe())
        if captured.assigned:
            print("assigned in the cell (stay on the workers): " + ", ".join(captured.assigned))
        if plan.target == "k8s":
            from . import k8s

            try:
                print(k8s.dry_run(plan, captured.fn, shipped=dict(captured.names)))
            except (TypeError, ValueError) as e:
                raise UsageError(str(e).splitlines()[0]) from None

    def _run_direct(self, captured, timeout):
        """World size 1: a plain call in this process (no pickling, no subprocess)."""
        __tracebackhide__ = True  # noqa: F841
        if not timeout or threading.current_thread() is not threading.main_thread():
            return captured.fn()

        def on_alarm(signum, frame):
            raise CellTimeout(f"--timeout {timeout:g} s passed; the cell was stopped")

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return captured.fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    def _run_launcher(self, plan, captured, *, timeout, fresh, rank0_only, detach):
        __tracebackhide__ = True  # noqa: F841
        from .display import CellSink, status_mode

        if plan.target == "k8s":  # the k8s follower reports per pod: index 0..max_nodes-1
            master = isinstance(plan.config, PyTorch)
            sink = CellSink(plan.max_nodes, rank0_only=rank0_only, status=status_mode(self.status, self.shell),
                            unit="pod", name=(lambda i: "master-0" if i == 0 else f"worker-{i - 1}") if master
                            else (lambda i: f"worker-{i}"))
        else:
            sink = CellSink(plan.nproc_per_node, rank0_only=rank0_only, status=status_mode(self.status, self.shell))
        sink.start()
        try:
            if plan.target == "k8s":
                from . import k8s

                try:
                    result = k8s.run(plan, captured.fn, sink=sink, detach=detach, shipped=dict(captured.names))
                except (TypeError, ValueError) as e:  # options/payload checks, before anything is sent
                    sink.finish("nothing was submitted")
                    raise UsageError(str(e).splitlines()[0]) from None
            else:
                from .local import launch

                result = launch.run(plan, captured.fn, sink=sink, timeout=timeout, fresh=fresh)
        except KeyboardInterrupt:
            if plan.target == "k8s":  # following stopped; the job itself keeps running
                sink.finish("interrupted; stopped following, the job keeps running")
                raise KeyboardInterrupt("stopped following; the job keeps running") from None
            sink.finish("interrupted; all ranks were stopped")
            # a fresh one: the notebook shows one line, not the launcher's frames
            raise KeyboardInterrupt("all ranks were stopped") from None
        except BaseException as e:
            self._raise_run_error(e, sink, timeout)
            raise
        sink.finish("ok")
        return result

    def _raise_run_error(self, e, sink, timeout):
        __tracebackhide__ = True  # noqa: F841
        name = type(e).__name__
        if name == "WorkerFailed" or (hasattr(e, "rank") and hasattr(e, "traceback_text")):
            header = (str(e).splitlines() or [f"rank {getattr(e, 'rank', '?')} failed"])[0]
            sink.finish(header)
            hint = getattr(e, "hint", None) or hint_for(str(e) + "\n" + (getattr(e, "traceback_text", "") or ""))
            raise RankFailed(e, hint) from None
        if isinstance(e, TimeoutError) or name == "RunTimeout":
            sink.finish(f"stopped by --timeout {timeout:g} s" if timeout else "timed out")
            msg = (str(e).splitlines() or [""])[0] or f"--timeout {timeout} s passed"
            raise CellTimeout(f"{msg}; all ranks were stopped") from None
        if name in ("JobFailed", "K8sError", "JobDeleted") or type(e).__module__.startswith("ptjupyter.k8s"):
            text = str(e) or name
            sink.finish(text.splitlines()[0])
            raise PytorchElasticError(text.splitlines()[0], [f"{name}: {ln}" if i == 0 else ln
                                                            for i, ln in enumerate(text.splitlines())]) from None
        sink.finish(f"failed: {name}")

    # -- %pytorch_elastic_widgets
    @line_magic
    def pytorch_elastic_widgets(self, line: str = ""):
        """Show the widget panel: nnodes, nproc_per_node, max_restarts, target, image, namespace.

        Values you change there override %config for later %%pytorch_elastic cells (a --config
        object and cell flags still win). Also: ``ptjupyter.widgets.panel()``.
        """
        from .widgets import panel

        return panel(magics=self)


def _registered(ip) -> Optional[PytorchElastic]:
    inst = ip.magics_manager.registry.get("PytorchElastic")
    return inst if isinstance(inst, PytorchElastic) else None


def load_ipython_extension(ip) -> PytorchElastic:
    """Register the magics once per shell; a second call returns the same instance."""
    inst = _registered(ip)
    if inst is None:
        inst = PytorchElastic(shell=ip)
        ip.register_magics(inst)
        _register_k8s_jobs_magic(ip)
        if inst.prewarm and os.environ.get("PTJUPYTER_PREWARM", "1").lower() not in ("0", "false", "no", "off"):
            _prewarm()
    return inst


def unload_ipython_extension(ip) -> None:
    inst = _registered(ip)
    if inst is None:
        return
    mm = ip.magics_manager
    mm.registry.pop("PytorchElastic", None)
    mm.magics["cell"].pop("pytorch_elastic", None)
    mm.magics["line"].pop("pytorch_elastic_widgets", None)
    mm.magics["line"].pop("pytorch_elastic_jobs", None)
    if inst in getattr(ip, "configurables", []):
        ip.configurables.remove(inst)


def _register_k8s_jobs_magic(ip) -> None:
    """``%pytorch_elastic_jobs`` (list / attach / cancel cluster jobs), when the k8s part is installed."""
    import importlib.util

    try:
        if importlib.util.find_spec("ptjupyter.k8s.magic") is None:
            return
        from .k8s import magic as k8s_magic

        k8s_magic.register(ip)
    except Exception as e:  # noqa: BLE001 - never breaks %load_ext
        logger.debug("%s %%pytorch_elastic_jobs not registered: %s", PREFIX, e)


def _prewarm() -> None:
    """Let the local launcher warm its worker start-up in the background, when it offers that."""
    import importlib.util

    try:
        if importlib.util.find_spec("ptjupyter.local.warm") is None:
            return
        from .local import warm  # noqa: PLC0415

        prewarm = getattr(warm, "prewarm", None)
        if prewarm is not None:
            prewarm()
    except Exception as e:  # noqa: BLE001 - a failed warm-up never breaks %load_ext
        logger.debug("%s prewarm failed: %s", PREFIX, e)
