"""The IPython surface: ``%%pytorch_elastic``, ``%pytorch_elastic_widgets`` (and ``%pytorch_elastic_jobs``,
registered from :mod:`ptjupyter.k8s.magic`).

``load_ipython_extension`` registers :class:`PytorchElastic` (a ``Magics`` subclass, so a traitlets
``Configurable``: ``%config PytorchElastic.nproc_per_node = 2`` and ``ipython_config.py`` set its
defaults). Its state (the widget panel's overrides, the last plan) lives on the instance.

A cell's options become override layers for :func:`ptjupyter.plan.resolve`, lowest first:
Elastic defaults < ``%config`` < widget panel < ``--config NAME`` < cell flags.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, Enum, Float, Int, Unicode, Union

from .cluster import RUNTIME_KINDS
from .config import START_METHODS, Elastic, PyTorch
from .display import STATUS_MODES
from .plan import APIS, PREFIX, TARGETS, Layer
from .usage import OptionError

__all__ = ["PytorchElastic", "load_ipython_extension", "unload_ipython_extension", "CONFIG_KEYS"]

logger = logging.getLogger("ptjupyter")

# traits that are plan overrides (the "%config" layer); the others steer the magic itself
CONFIG_KEYS = ("nnodes", "nproc_per_node", "max_restarts", "start_method", "monitor_interval", "target",
               "image", "namespace", "context", "timeout", "api", "runtime", "queue", "priority_class")


@magics_class
class PytorchElastic(Magics):
    """``%%pytorch_elastic``: run a cell as a PyTorch distributed (torch elastic) training function.

    Defaults for every cell: ``%config PytorchElastic.nproc_per_node = 2`` (or ``c.PytorchElastic...``
    in ``ipython_config.py``). Unset traits (None) leave the ``Elastic()`` default in place.
    """

    nnodes = Union([Int(), Unicode()], default_value=None, allow_none=True,
                   help='Nodes: N or "MIN:MAX". Locally only 1; more nodes need target="k8s".').tag(config=True)
    nproc_per_node = Union([Int(), Unicode()], default_value=None, allow_none=True,
                           help="Worker processes per node (ranks): N, or auto, gpu, cpu (as torchrun). 1 with one "
                                "node = a plain call in the kernel.").tag(config=True)
    max_restarts = Int(None, allow_none=True,
                       help="Times torch elastic restarts the whole worker group after a failure.").tag(config=True)
    start_method = Unicode(None, allow_none=True,
                           help="How workers start: spawn (default, safe), forkserver, or fork (fast; refused once "
                                "CUDA is initialised).").tag(config=True)
    monitor_interval = Float(None, allow_none=True,
                             help="Seconds between the elastic agent's checks of its workers (local default 0.1).").tag(config=True)
    target = Unicode(None, allow_none=True, help='Where cells run: "local" (default) or "k8s".').tag(config=True)
    image = Unicode(None, allow_none=True, help="k8s: container image of the pods (same Python and torch as the kernel).").tag(config=True)
    namespace = Unicode(None, allow_none=True,
                        help="k8s: namespace of the job (default: the kubeconfig context's).").tag(config=True)
    context = Unicode(None, allow_none=True, help="k8s: kubeconfig context (default: the current one).").tag(config=True)
    api = Unicode(None, allow_none=True,
                  help="k8s: auto (default: a TrainJob when the cluster serves Kubeflow Trainer v2 and nnodes is fixed, a "
                       "PyTorchJob for an elastic range or without Trainer, a Job for one node), trainjob, pytorchjob or "
                       "job.").tag(config=True)
    runtime = Unicode(None, allow_none=True, help="k8s TrainJob: the runtime (default torch-distributed).").tag(config=True)
    queue = Unicode(None, allow_none=True, help="k8s: Kueue LocalQueue (label kueue.x-k8s.io/queue-name).").tag(config=True)
    priority_class = Unicode(None, allow_none=True,
                             help="k8s: Kueue priority class (label kueue.x-k8s.io/priority-class).").tag(config=True)
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

    # -- layers and plan
    def config_layer(self) -> dict:
        layer = {k: getattr(self, k) for k in CONFIG_KEYS if getattr(self, k) is not None}
        if self.rank0_only:
            layer["ranks"] = (0,)
        return layer

    def resolve_layers(self, extra: tuple = (), widget: Optional[dict] = None) -> list:
        """The layers below a cell's own: ``%config``, then the widget panel (``widget`` instead, if given)."""
        layers = [Layer("%config", self.config_layer()),
                  Layer("widget panel", dict(self.widget_overrides if widget is None else widget))]
        return layers + list(extra)

    def _set_widget_overrides(self, values: dict) -> None:
        self.widget_overrides = dict(values)

    # -- %%pytorch_elastic
    @magic_arguments(name="%pytorch_elastic")  # the usage line then reads %%pytorch_elastic
    @argument("--nnodes", metavar="N|MIN:MAX", help="Nodes. Locally only 1; several need --target k8s.")
    @argument("--nproc-per-node", metavar="N|auto|gpu|cpu",
              help="Processes (ranks) per node; gpu: one per visible GPU (counted without a CUDA context), cpu: "
                   "one per usable CPU, auto: gpu if any, else cpu.")
    @argument("--max-restarts", type=int, metavar="N", help="Restarts of the worker group after a failure.")
    @argument("--start-method", choices=START_METHODS, help="spawn (default), forkserver or fork.")
    @argument("--target", choices=TARGETS, help="local (default) or k8s.")
    @argument("--config", metavar="NAME", help="An Elastic(...) or PyTorch(...) object in the notebook: its fields "
                                               "override %%config and the widget panel; cell flags override it.")
    @argument("--out", "-o", metavar="NAME", help="Store rank 0's result (the cell's last expression) in NAME.")
    @argument("--rank0-only", action="store_true", default=None, help="Show only rank 0's output (= --ranks 0).")
    @argument("--ranks", metavar="R,R,...", help="Show only these (local) ranks' output, lines, progress bars and "
                                                 "displays (torchrun's --local-ranks-filter).")
    @argument("--log-dir", metavar="DIR", help="Keep every rank's complete stdout/stderr as files under DIR/<run>/ "
                                               "(shown or not); a failure names its file.")
    @argument("--rdzv-conf", metavar="K=V,...", help="Rendezvous settings merged over rdzv_configs, e.g. timeout=60.")
    @argument("--grace", type=float, metavar="S", help="Seconds between SIGTERM and SIGKILL when ranks are stopped "
                                                       "(interrupt, timeout; default 1): time to save a checkpoint.")
    @argument("--gpus", type=int, metavar="N", help="k8s: nvidia.com/gpu per node in every training container's "
                                                   "requests and limits; nproc_per_node defaults to N.")
    @argument("--debug", action="store_true", help="Show the [PYTORCH_ELASTIC] decision lines: the plan and where "
                                                   "each value came from.")
    @argument("--dry-run", action="store_true", help="Print the resolved plan with sources and the names the cell "
                                                     "ships with their sizes (and, for k8s, the manifest); run nothing.")
    @argument("--timeout", type=float, metavar="S", help="Stop every rank after S seconds (a rank stuck at a "
                                                         "barrier never hangs the notebook).")
    @argument("--fresh", action="store_true", default=None, help="Start new worker processes (no warm start-up).")
    @argument("--session", action="store_true", default=None,
              help="Run the cell on the session's ranks (%%pytorch_elastic_session start), in each rank's "
                   "persistent namespace: names the cell assigns stay there for later session cells.")
    @argument("--image", help="k8s: container image.")
    @argument("--namespace", help="k8s: namespace (default: the kubeconfig context's).")
    @argument("--context", help="k8s: kubeconfig context.")
    @argument("--job-name", help="k8s: job name (DNS-1035 label; default generated).")
    @argument("--api", choices=APIS, help="k8s: auto (default), trainjob, pytorchjob or job.")
    @argument("--runtime", metavar="NAME", help="k8s TrainJob: the training runtime (default torch-distributed).")
    @argument("--runtime-kind", choices=RUNTIME_KINDS, help="k8s TrainJob: ClusterTrainingRuntime (default) or "
                                                            "TrainingRuntime (in the job's namespace).")
    @argument("--queue", metavar="NAME", help="k8s: Kueue LocalQueue to submit to (kueue.x-k8s.io/queue-name).")
    @argument("--priority-class", metavar="NAME", help="k8s: Kueue priority class (kueue.x-k8s.io/priority-class).")
    @argument("--detach", action="store_true", default=None,
              help="k8s: submit and return at once; the job keeps running.")
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
        from .cell import run_cell

        args = parse_argstring(self.pytorch_elastic, line)
        extra = [self._config_object_layer(args.config)] if args.config else []
        extra.append(Layer("cell flags", {
            "nnodes": args.nnodes, "nproc_per_node": args.nproc_per_node, "max_restarts": args.max_restarts,
            "start_method": args.start_method, "target": args.target, "image": args.image,
            "namespace": args.namespace, "context": args.context, "job_name": args.job_name,
            "api": args.api, "runtime": args.runtime, "runtime_kind": args.runtime_kind, "queue": args.queue,
            "priority_class": args.priority_class,
            "timeout": args.timeout, "fresh": args.fresh, "detach": args.detach, "session": args.session,
            "ranks": args.ranks if args.ranks is not None else "0" if args.rank0_only else None,
            "log_dir": args.log_dir, "rdzv_configs": args.rdzv_conf, "grace": args.grace, "gpus": args.gpus,
        }))
        return run_cell(self.shell, cell, line, self.resolve_layers(tuple(extra)), out=args.out, debug=args.debug, dry_run=args.dry_run, status=self.status, warn_mb=self.warn_mb,
                        on_plan=self._keep_plan)

    def _keep_plan(self, plan) -> None:
        self.last_plan = plan

    def _config_object_layer(self, name: str) -> Layer:
        ns = self.shell.user_ns
        if name not in ns:
            raise OptionError(f"--config {name}: there is no variable {name!r} in the notebook; expected the name of "
                              "an Elastic(...) or PyTorch(...) object")
        obj = ns[name]
        if not isinstance(obj, (Elastic, PyTorch)):
            raise OptionError(f"--config {name}: {name} is a {type(obj).__name__}; expected a ptjupyter.Elastic or "
                              "ptjupyter.PyTorch object")
        return Layer(f"--config {name}", obj)

    # -- %pytorch_elastic_widgets
    @line_magic
    def pytorch_elastic_widgets(self, line: str = ""):
        """Show the widget panel: nnodes, nproc_per_node, max_restarts, target, image, namespace.

        Values you change there override %config for later %%pytorch_elastic cells (a --config
        object and cell flags still win). Also: ``ptjupyter.widgets.panel()``.
        """
        from .widgets import Panel

        self.panel = Panel(layers=lambda widget: self.resolve_layers(widget=widget), apply=self._set_widget_overrides,
                           overrides=lambda: dict(self.widget_overrides))
        return self.panel


def _registered(ip) -> Optional[PytorchElastic]:
    inst = ip.magics_manager.registry.get("PytorchElastic")
    return inst if isinstance(inst, PytorchElastic) else None


def load_ipython_extension(ip) -> PytorchElastic:
    """Register the magics once per shell; a second call returns the same instance."""
    inst = _registered(ip)
    if inst is None:
        inst = PytorchElastic(shell=ip)
        ip.register_magics(inst)
        from .k8s.magic import PytorchElasticJobs  # light: kubernetes is imported only when a job command runs
        from .session.magic import SessionMagics

        ip.register_magics(PytorchElasticJobs)
        ip.register_magics(SessionMagics(shell=ip, elastic=inst))
        if inst.prewarm and os.environ.get("PTJUPYTER_PREWARM", "1").lower() not in ("0", "false", "no", "off"):
            _prewarm()
    return inst


def unload_ipython_extension(ip) -> None:
    inst = _registered(ip)
    if inst is None:
        return
    mm = ip.magics_manager
    mm.registry.pop("PytorchElastic", None)
    mm.registry.pop("PytorchElasticJobs", None)
    mm.registry.pop("SessionMagics", None)
    mm.magics["line"].pop("pytorch_elastic_session", None)
    mm.magics["cell"].pop("pytorch_elastic", None)
    mm.magics["line"].pop("pytorch_elastic_widgets", None)
    mm.magics["line"].pop("pytorch_elastic_jobs", None)
    if inst in getattr(ip, "configurables", []):
        ip.configurables.remove(inst)


def _prewarm() -> None:
    """Start the local launcher's warm forkserver in the background."""
    try:
        from .local import warm

        warm.prewarm()
    except Exception as e:  # noqa: BLE001 - a failed warm-up never breaks %load_ext (runs fall back to spawn)
        logger.debug("%s prewarm failed: %s", PREFIX, e)
