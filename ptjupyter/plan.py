"""One resolved execution plan: ``resolve(config, layers)`` is the only place that picks a mode.

A config (``Elastic``/``PyTorch``, default ``Elastic()``) plus ordered override layers (``%config``,
the widget panel, a ``--config`` object, cell flags, ``with_overrides``) become one frozen ``Plan``.
Launchers take a ``Plan``; none of them looks at ``nnodes`` again.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Optional, Sequence, Union

from . import flags
from .cluster import K8sOptions
from .config import ELASTIC_DEFAULT_MONITOR_INTERVAL, Elastic, PyTorch, given_fields, parse_nnodes
from .debug import PREFIX, logger, set_debug
from .errors import InvalidType, InvalidValue

__all__ = ["Mode", "Rendezvous", "Layer", "K8sOptions", "Plan", "resolve", "logger", "set_debug", "OVERRIDE_KEYS",
           "TARGETS", "RUN_KEYS", "APIS"]

TARGETS = ("local", "k8s")
APIS = ("auto", "trainjob", "pytorchjob", "job")  # the Kubernetes API a k8s run submits to (auto: see resolve)
LOCAL_MONITOR_INTERVAL = 0.1  # seconds; the end of a local run must be noticed at once


class Mode(str, Enum):
    """Where and how the training function runs."""

    DIRECT = "direct"  # world size 1: a plain call in this process, no rendezvous
    ELASTIC = "elastic"  # one node, several processes: torch's elastic_launch here
    POD = "pod"  # Kubernetes, one node: a plain batch/v1 Job whose pod runs DIRECT or ELASTIC
    PYTORCHJOB = "pytorchjob"  # Kubernetes, several nodes: a Kubeflow v1 PyTorchJob
    TRAINJOB = "trainjob"  # Kubernetes: a Kubeflow Trainer v2 TrainJob (fixed node count, torch-distributed runtime)
    SESSION = "session"  # the persistent ranks of this kernel's session (ptjupyter.session)


class Rendezvous(str, Enum):
    """Who provides the rendezvous of an elastic run."""

    LOOPBACK = "loopback"  # ptjupyter's own store on 127.0.0.1: one node, this machine
    POD_ENV = "pod-env"  # the training operator's PET_* environment inside a PyTorchJob pod


@dataclass(frozen=True)
class Layer:
    """Override values from one source, e.g. ``Layer("cell flags", {"nproc_per_node": 2})``.

    ``values`` may also be an ``Elastic``/``PyTorch`` object: it then replaces the config and
    sets all of its fields at this level of precedence.
    """

    source: str
    values: Union[Mapping[str, Any], Elastic, PyTorch]


K8S_KEYS = tuple(f.name for f in dataclasses.fields(K8sOptions))
ELASTIC_KEYS = ("nnodes", "nproc_per_node", "start_method", "monitor_interval", "max_restarts", "rdzv_configs")
# how this one run goes, not what the job is
RUN_KEYS = ("timeout", "fresh", "detach", "session", "ranks", "log_dir", "grace")
OVERRIDE_KEYS = ("target", "api", "rdzv_backend", "backend", "gpus") + ELASTIC_KEYS + K8S_KEYS + RUN_KEYS
BACKENDS = ("auto", "gloo", "nccl")  # a session's process group; auto: nccl with a GPU, else gloo
RDZV_BACKENDS = ("c10d", "static", "etcd", "etcd-v2")
# a cluster job has its own deadline (RunPolicy), starts its own processes and keeps its pods' logs
_LOCAL_ONLY = ("timeout", "fresh", "log_dir", "grace")
_K8S_ONLY = ("detach", "gpus")


@dataclass(frozen=True)
class Plan:
    """How a training function runs, fully resolved. Build it with :func:`resolve`.

    Every fact a runner needs is a field; ``sources`` (where each value came from) is for
    :meth:`describe` only. ``warnings`` are the one-line notes about options that do not apply.
    """

    mode: Mode
    target: str
    config: Union[Elastic, PyTorch]
    min_nodes: int
    max_nodes: int
    nproc_per_node: int
    start_method: str
    max_restarts: int
    monitor_interval: float
    rdzv_backend: str
    rdzv_endpoint: str
    rdzv_configs: Mapping[str, Any]
    k8s: K8sOptions
    sources: Mapping[str, str]
    run_id: Optional[str] = None  # rendezvous id shared by the nodes of one job; None: a fresh one per run
    rendezvous: Rendezvous = Rendezvous.LOOPBACK
    timeout: Optional[float] = None  # seconds, then every local rank is stopped
    fresh: bool = False  # local: plain spawn instead of the warm forkserver
    detach: bool = False  # k8s: return once submitted
    backend: str = "auto"  # session: the process group's backend (gloo, nccl, auto)
    ranks: Optional[tuple] = None  # the (local) ranks whose output the cell shows; None: all
    log_dir: Optional[str] = None  # local: every rank's full stdout/stderr kept under log_dir/<run>/
    grace: Optional[float] = None  # local: seconds between SIGTERM and SIGKILL; None: reaper.TERM_WAIT
    gpus: Optional[int] = None  # k8s: nvidia.com/gpu per node (requests and limits of every training container)
    warnings: tuple = ()
    api: str = "auto"  # k8s: the API asked for; "auto" + api_open: ptjupyter.k8s.discovery settles it once connected

    @property
    def api_open(self) -> bool:
        """k8s, ``api='auto'``, a fixed node count > 1: TrainJob if the cluster serves it, else PyTorchJob."""
        return (self.api == "auto" and self.mode is Mode.PYTORCHJOB and isinstance(self.config, Elastic)
                and self.min_nodes == self.max_nodes)

    @property
    def on_cluster(self) -> bool:
        """The run is a Kubernetes job (Job, PyTorchJob or TrainJob): its output is per pod."""
        return self.mode in (Mode.POD, Mode.PYTORCHJOB, Mode.TRAINJOB)

    @property
    def world_size(self) -> int:
        """Processes in the largest group the plan allows."""
        return self.max_nodes * self.nproc_per_node

    @property
    def session(self) -> bool:  # the cell runs on this kernel's persistent session ranks
        return self.mode is Mode.SESSION

    @property
    def node_mode(self) -> Mode:
        """What one node does: a direct call with one process, an elastic launch with more."""
        return Mode.DIRECT if self.nproc_per_node == 1 and self.max_nodes == 1 else Mode.ELASTIC

    def describe(self) -> str:
        """One line per setting with the source that decided it."""
        rows = [f"mode: {self.mode.value} (target {self.target})"]
        for key in ("nnodes", "nproc_per_node", "start_method", "max_restarts", "monitor_interval", "rdzv_backend"):
            value = f"{self.min_nodes}:{self.max_nodes}" if key == "nnodes" else getattr(self, key)
            rows.append(f"{key}: {value}  [{self.sources.get(key, 'default')}]")
        for key, value in (("backend", self.backend if self.session else None),
                           ("rendezvous", self.rendezvous.value if self.rendezvous is Rendezvous.POD_ENV else None)):
            if value is not None:
                rows.append(f"{key}: {value}  [{self.sources.get(key, 'default')}]")
        if self.target == "k8s":
            api = (f"{self.api} -> trainjob if the cluster serves trainjobs.trainer.kubeflow.org, else pytorchjob"
                   if self.api_open else f"{self.api} -> {self.mode.value}")
            rows.append(f"api: {api}  [{self.sources.get('api', 'default')}]")
            keys = ("image", "namespace", "context", "job_name") + (
                ("runtime", "runtime_kind") if self.mode is Mode.TRAINJOB or self.api_open else ()) + tuple(
                k for k in ("queue", "priority_class") if getattr(self.k8s, k))
            for key in keys:
                value = getattr(self.k8s, key)
                if key == "namespace" and value is None:
                    value = "the kubeconfig context's"
                rows.append(f"{key}: {value}  [{self.sources.get(key, 'default')}]")
        if self.gpus is not None:
            rows.append(f"gpus: {self.gpus}  [{self.sources.get('gpus', 'default')}]")
        for key in RUN_KEYS:
            if key in self.sources:
                rows.append(f"{key}: {getattr(self, key)}  [{self.sources[key]}]")
        return "\n".join(rows)


def _config_fields(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _same_kind(e: Exception):
    return InvalidType if isinstance(e, TypeError) else InvalidValue


def resolve(
    config: Union[Elastic, PyTorch, None] = None,
    layers: Sequence[Layer] = (),
    *,
    target: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Plan:
    """Resolve ``config`` (default ``Elastic()``) and ``layers`` (lowest precedence first) into a Plan.

    This is the one function that decides the execution mode and every fact that follows from it:
    - ``session=True`` (local, one node) -> ``SESSION``: the cell runs on this kernel's persistent ranks;
    - local, world size 1 -> ``DIRECT``; local, one node, several processes -> ``ELASTIC``;
    - local, several nodes -> an error (say ``--target k8s``), unless the torch elastic environment
      of a PyTorchJob pod (``PET_NNODES``) is present, then ``ELASTIC`` with the operator's rendezvous;
    - k8s: ``api`` (default ``auto``) picks the API: one node -> ``POD`` (a batch Job), an elastic range or a
      ``PyTorch`` config -> ``PYTORCHJOB``, a fixed node count -> ``PYTORCHJOB`` with ``plan.api_open``, which
      :func:`ptjupyter.k8s.discovery.settle` turns into ``TRAINJOB`` once connected when the cluster serves it;
      ``api='trainjob'|'pytorchjob'|'job'`` asks for one (``TRAINJOB``/``PYTORCHJOB``/``POD``).

    Every bad value raises a one-line :class:`~ptjupyter.errors.InvalidValue`/``InvalidType`` naming
    it, before anything starts. Options that do not apply to the mode (``timeout``/``fresh`` on
    Kubernetes, ``detach`` locally) are dropped with a one-line note in ``plan.warnings``.
    """
    env = os.environ if env is None else env
    config = Elastic() if config is None else config
    if not isinstance(config, (Elastic, PyTorch)):
        raise InvalidType(f"config={config!r} is not accepted; expected a ptjupyter.Elastic or ptjupyter.PyTorch")
    base_source = "Elastic default" if config == Elastic() else f"{type(config).__name__} config"
    sources: dict[str, str] = {k: base_source for k in ELASTIC_KEYS}
    explicit = set(given_fields(config))  # keys someone set, even to the default value
    elastic_values = _config_fields(config) if isinstance(config, Elastic) else {}
    other: dict[str, Any] = {"target": target or "local", "api": "auto", "rdzv_backend": "c10d", "backend": "auto"}
    run: dict[str, Any] = {}
    sources["target"] = "argument" if target else "default"
    sources["rdzv_backend"] = sources["backend"] = sources["api"] = "default"
    config_level = -1
    for level, layer in enumerate(layers):
        if isinstance(layer.values, (Elastic, PyTorch)):
            config, config_level = layer.values, level
            elastic_values = _config_fields(config) if isinstance(config, Elastic) else {}
            explicit = (explicit - set(ELASTIC_KEYS)) | set(given_fields(config))
            for k in ELASTIC_KEYS:
                sources[k] = layer.source
            continue
        if not isinstance(layer.values, Mapping):
            raise InvalidType(f"overrides from {layer.source}={layer.values!r} are not accepted; expected a mapping")
        for key, value in layer.values.items():
            if value is None:
                continue
            if key not in OVERRIDE_KEYS:
                raise InvalidType(
                    f"{key}={value!r} (from {layer.source}) is not an accepted override; accepted: {', '.join(OVERRIDE_KEYS)}"
                )
            if key in ELASTIC_KEYS and isinstance(config, PyTorch):
                if level > config_level >= 0 or config_level < 0:
                    raise InvalidValue(
                        f"{key}={value!r} (from {layer.source}) applies to Elastic configs only; the config is a "
                        "PyTorch (Master/Worker) config: set worker.replicas there instead"
                    )
                continue
            if key == "rdzv_configs":  # "k=v,..." merges over the settings below it
                value = flags.rdzv_conf(value, layer.source, elastic_values.get("rdzv_configs") or {})
            (elastic_values if key in ELASTIC_KEYS else run if key in RUN_KEYS else other)[key] = value
            sources[key] = layer.source
            explicit.add(key)

    target = other.pop("target")
    if target not in TARGETS:
        raise InvalidValue(f"target={target!r} (from {sources['target']}) is not accepted; expected one of {', '.join(TARGETS)}")
    if (api := other.pop("api")) not in APIS:
        raise InvalidValue(f"api={api!r} (from {sources['api']}) is not accepted; expected one of {', '.join(APIS)}")
    rdzv_backend = other.pop("rdzv_backend")
    if rdzv_backend not in RDZV_BACKENDS:
        raise InvalidValue(
            f"rdzv_backend={rdzv_backend!r} (from {sources['rdzv_backend']}) is not accepted; expected one of "
            f"{', '.join(RDZV_BACKENDS)}"
        )
    if (backend := other.pop("backend")) not in BACKENDS:
        raise InvalidValue(f"backend={backend!r} (from {sources['backend']}) is not accepted; expected {', '.join(BACKENDS)}")
    flags.check_run_options(run, sources)
    gpus = flags.gpus(other.pop("gpus", None), sources.get("gpus", "default"))
    if isinstance(config, Elastic):
        if isinstance(elastic_values.get("nproc_per_node"), str):
            n, how = flags.nproc_per_node(elastic_values["nproc_per_node"], sources["nproc_per_node"], target=target,
                                          gpus=gpus, env=env)
            elastic_values["nproc_per_node"] = n
            sources["nproc_per_node"] += f" ({how})" if how else ""
        elif target == "k8s" and gpus and "nproc_per_node" not in explicit:
            elastic_values["nproc_per_node"] = gpus
            sources["nproc_per_node"] = f"--gpus {gpus} ({sources.get('gpus')})"
    try:
        k8s = K8sOptions(**other)
    except (TypeError, ValueError) as e:
        key = str(e).split("=", 1)[0].split("[", 1)[0]
        raise _same_kind(e)(f"{e} (from {sources.get(key, 'default')})") from None

    if isinstance(config, Elastic):
        try:
            config = dataclasses.replace(config, **{k: elastic_values[k] for k in ELASTIC_KEYS})
        except (TypeError, ValueError) as e:
            key = str(e).split("=", 1)[0].rsplit(".", 1)[-1]
            raise _same_kind(e)(f"{e} (from {sources.get(key, 'default')})") from None
        min_nodes, max_nodes = parse_nnodes(config.nnodes)
        nproc, start_method = config.nproc_per_node, config.start_method
        max_restarts, monitor_interval = config.max_restarts, float(config.monitor_interval)
        rdzv_configs = dict(config.rdzv_configs)
    else:
        min_nodes = max_nodes = 1 + config.replicas
        nproc, start_method, max_restarts, monitor_interval, rdzv_configs = 1, "spawn", 0, 1.0, {}

    rdzv_endpoint, rendezvous, run_id = "127.0.0.1:0", Rendezvous.LOOPBACK, None  # port 0: a free port, no race
    if run.get("session") and (target == "k8s" or isinstance(config, PyTorch) or max_nodes > 1):
        raise InvalidValue(f"session=True (from {sources['session']}) is not accepted with target={target!r} and "
                           f"{max_nodes} node(s): a session's ranks run on this machine; use target='local', nnodes=1")
    if target == "k8s":
        mode = _k8s_mode(api, config, min_nodes, max_nodes, sources)
    elif run.get("session"):
        mode = Mode.SESSION
    elif isinstance(config, PyTorch):
        mode = Mode.DIRECT
    elif "PET_NNODES" in env:
        # inside a PyTorchJob pod (e.g. a Flyte task): the operator's torch elastic environment rules
        min_nodes, max_nodes = parse_nnodes(env["PET_NNODES"], "PET_NNODES")
        rdzv_endpoint = env.get("PET_RDZV_ENDPOINT", rdzv_endpoint)
        rdzv_backend = env.get("PET_RDZV_BACKEND", rdzv_backend)
        # every pod must name the same rendezvous: the operator's id if set, else the Flyte execution, else
        # torchrun's own default ("none")
        run_id = env.get("PET_RDZV_ID") or env.get("FLYTE_INTERNAL_EXECUTION_ID") or "none"
        rendezvous = Rendezvous.POD_ENV
        sources["nnodes"] = sources["rendezvous"] = "PET_* environment"
        mode = Mode.ELASTIC if max_nodes * nproc > 1 else Mode.DIRECT
    elif max_nodes > 1:
        raise InvalidValue(
            f"nnodes={config.nnodes!r} (from {sources['nnodes']}) asks for {max_nodes} nodes; a local run has one node. "
            "Use target='k8s' (--target k8s) for several nodes, or nnodes=1 with nproc_per_node for several processes"
        )
    elif nproc == 1:
        mode = Mode.DIRECT
    else:
        mode = Mode.ELASTIC

    if mode in (Mode.ELASTIC, Mode.SESSION) and start_method == "fork" and target == "local" and _cuda_initialized():
        raise InvalidValue(
            "start_method='fork' is not accepted: CUDA is already initialised in this process and forked workers "
            "cannot use it; use start_method='spawn' (the default) or 'forkserver', or restart the kernel"
        )

    if target == "local" and "monitor_interval" not in explicit:  # the plugin's 5 s only delays noticing the end
        monitor_interval = LOCAL_MONITOR_INTERVAL
        sources["monitor_interval"] += f" {ELASTIC_DEFAULT_MONITOR_INTERVAL} s -> local {LOCAL_MONITOR_INTERVAL} s"

    notes = []
    if target == "local" and sources["api"] != "default":
        notes.append(f"api={api!r} (from {sources['api']}) does not apply to a local run; ignored")
    dropped = _LOCAL_ONLY if target == "k8s" else _K8S_ONLY
    run["gpus"] = gpus
    for key in dropped:
        if run.get(key) not in (None, False):
            where = "a Kubernetes job" if target == "k8s" else "a local run"
            notes.append(f"{key}={run[key]!r} (from {sources[key]}) does not apply to {where}; ignored"
                         + ("; every local rank sees every visible GPU" if key == "gpus" else ""))
            run.pop(key)
            sources.pop(key)
    if mode is Mode.DIRECT and run.get("log_dir"):
        notes.append(f"log_dir={run.pop('log_dir')!r} (from {sources.pop('log_dir')}) applies to runs with several "
                     "processes; a direct call's output is the cell's own; ignored")
    shown = run.get("ranks")
    count = max_nodes if target == "k8s" else nproc
    if shown is not None and rendezvous is Rendezvous.LOOPBACK and mode is not Mode.SESSION and max(shown) >= count:
        raise InvalidValue(f"ranks={','.join(map(str, shown))} (from {sources['ranks']}) is not accepted: the run has "
                           f"{count} {'pod' if target == 'k8s' else 'rank'}(s); expected numbers 0..{count - 1}")

    plan = Plan(
        mode=mode, target=target, config=config, min_nodes=min_nodes, max_nodes=max_nodes, nproc_per_node=nproc,
        start_method=start_method, max_restarts=max_restarts, monitor_interval=monitor_interval,
        rdzv_backend=rdzv_backend, rdzv_endpoint=rdzv_endpoint, rdzv_configs=rdzv_configs, k8s=k8s,
        sources=dict(sources), run_id=run_id, rendezvous=rendezvous, timeout=run.get("timeout"),
        fresh=bool(run.get("fresh", False)), detach=bool(run.get("detach", False)), backend=backend,
        ranks=shown, log_dir=run.get("log_dir"), grace=run.get("grace"), gpus=run.get("gpus"), warnings=tuple(notes),
        api=api,
    )
    if logger.isEnabledFor(logging.DEBUG):
        nn = getattr(config, "nnodes", f"1+{min_nodes - 1}")
        logger.debug("%s resolve: nnodes=%r, type=%s [%s]", PREFIX, nn, type(nn), sources.get("nnodes"))
        logger.debug(
            "%s decision: mode=%s target=%s nodes=%d:%d nproc_per_node=%d [%s] start_method=%s [%s] "
            "max_restarts=%d [%s] monitor_interval=%s [%s]",
            PREFIX, mode.value, target, min_nodes, max_nodes, nproc, sources.get("nproc_per_node"), start_method,
            sources.get("start_method"), max_restarts, sources.get("max_restarts"), monitor_interval,
            sources.get("monitor_interval"),
        )
        for note in notes:
            logger.debug("%s ignored: %s", PREFIX, note)
        if mode is Mode.DIRECT:
            logger.debug("%s *** SINGLE-NODE DETECTED - BYPASSING ELASTIC LAUNCH ***", PREFIX)
    return plan


def _k8s_mode(api: str, config, min_nodes: int, max_nodes: int, sources: Mapping[str, str]) -> Mode:
    """The Kubernetes mode ``api`` asks for; ``auto``: one node -> a batch Job, an elastic range or a PyTorch
    (Master/Worker) config -> PyTorchJob, a fixed count -> PyTorchJob until discovery says TrainJob is served."""
    pytorch, elastic = isinstance(config, PyTorch), min_nodes < max_nodes
    nn = f"{min_nodes}:{max_nodes}" if elastic else str(max_nodes)
    if api == "job":
        if pytorch or max_nodes > 1:
            raise InvalidValue(f"api='job' (from {sources['api']}) is not accepted with nnodes={nn!r}: a batch Job runs "
                               "one pod; use api='trainjob', 'pytorchjob' or 'auto'")
        return Mode.POD
    if api == "trainjob":
        if pytorch:
            raise InvalidValue(f"api='trainjob' (from {sources['api']}) is not accepted with a PyTorch (Master/Worker) "
                               "config, the v1 PyTorchJob shape; use Elastic(nnodes=N) or api='pytorchjob'")
        if elastic:
            raise InvalidValue(f"api='trainjob' (from {sources['api']}) is not accepted with nnodes={nn!r}: Kubeflow "
                               "Trainer v2 has no elastic training yet (a TrainJob has a fixed numNodes); use a fixed "
                               "nnodes or api='pytorchjob'")
        return Mode.TRAINJOB
    if api == "pytorchjob" or pytorch or max_nodes > 1:
        return Mode.PYTORCHJOB
    return Mode.POD


def _cuda_initialized() -> bool:
    """True when this process has a CUDA context; never initialises one (or imports torch) itself."""
    torch = __import__("sys").modules.get("torch")
    return bool(torch is not None and hasattr(torch, "cuda") and torch.cuda.is_initialized())
