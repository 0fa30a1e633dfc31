"""flytekit task plugin for ptjupyter's ``PyTorch`` and ``Elastic`` configs (drop-in for flytekitplugins-kfpytorch).

``@task(task_config=Elastic(...))`` / ``@task(task_config=PyTorch(...))`` build the task classes below.
flytekit imports this module through the ``flytekit.plugins`` entry point, so ``import flytekit`` is enough.

Differences from the upstream plugin, all deliberate:

- The task type, the PyTorchJob custom and the shared-memory pod template are derived from the
  *current* config at every serialization, through :func:`ptjupyter.plan.resolve` (target ``k8s``):
  mode ``POD`` -> ``"python-task"``, mode ``PYTORCHJOB`` -> ``"pytorch"``. ``nnodes`` ``1``, ``"1"``
  and ``"1:1"`` are all single-node.
- ``node.with_overrides(task_config=...)`` changes *that node only*: the node gets its own variant
  of the task (named ``<task>-cfg<hash>``, carrying the config to the pod through
  :data:`config_override_resolver`); the task object and its other nodes keep their config.
  flytekit's own ``Node.with_overrides`` assigns the new config to the task object shared by all
  of its nodes.
- Local execution goes through :func:`ptjupyter.local.launch.run`: a world size of one is a direct
  call, ``nproc_per_node > 1`` an in-process elastic launch, several nodes a one-line error.

Local workflow runs: flytekit executes a task the moment it is called in a locally running
``@workflow``/``@dynamic``, so a ``.with_overrides(task_config=...)`` on its result comes too late
there (it applies when the workflow is serialized: ``pyflyte register``/``run --remote`` or a
``@dynamic`` running on a cluster). ptjupyter warns when that happens. To switch the config of a
call that runs locally as well, call a variant: ``train.with_task_config(Elastic(...))(x=1)``.
"""
from __future__ import annotations

import contextvars
import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import warnings
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Union

from flyteidl.plugins.kubeflow import common_pb2 as kubeflow_common
from flyteidl.plugins.kubeflow import pytorch_pb2 as pytorch_task
from flytekit import PythonFunctionTask, Resources
from flytekit.configuration import SerializationSettings
from flytekit.core.base_task import TaskResolverMixin
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.node import Node
from flytekit.core.pod_template import PodTemplate
from flytekit.core.promise import Promise, VoidPromise
from flytekit.core.resources import convert_resources_to_resource_model
from flytekit.extend import TaskPlugins
from google.protobuf.json_format import MessageToDict

from . import __version__
from .config import CleanPodPolicy, Elastic, Master, PyTorch, RestartPolicy, RunPolicy, Worker
from .plan import PREFIX, Mode, resolve

__all__ = [
    "PyTorchFunctionTask", "ElasticFunctionTask", "ConfigOverrideResolver", "config_override_resolver",
    "encode_config", "decode_config",
]

logger = logging.getLogger("ptjupyter")

PYTORCH_TASK_TYPE = "pytorch"
STANDALONE_TASK_TYPE = "python-task"
TASK_TYPE_VERSION = 1  # version of the PyTorchJob task template; the backend plugin reads it, do not change
SHM_MOUNT_PATH = "/dev/shm"
_LOCAL_PLAN: contextvars.ContextVar = contextvars.ContextVar("ptjupyter_local_plan")  # (task, plan) of a local call


class _ConfigTask(PythonFunctionTask):
    """Common part of the two task classes: everything that depends on the config is computed on demand."""

    _CONFIG_TYPE: type = object

    def __init__(self, task_config: Union[Elastic, PyTorch], task_function: Callable, **kwargs):
        if not isinstance(task_config, self._CONFIG_TYPE):
            raise TypeError(
                f"task_config={task_config!r} is not accepted by {type(self).__name__}; "
                f"expected a ptjupyter.{self._CONFIG_TYPE.__name__}"
            )
        self._ptj_init_kwargs = dict(kwargs)  # to build per-node variants with another config
        self._ptj_origin: Optional[_ConfigTask] = None  # the task a variant was made from
        self._ptj_variants: Dict[str, _ConfigTask] = {}
        super().__init__(
            task_config=task_config,
            task_function=task_function,
            task_type=PYTORCH_TASK_TYPE,  # placeholder: the task_type property derives it from the config
            task_type_version=TASK_TYPE_VERSION,
            **kwargs,
        )
        self.pod_template  # noqa: B018 - a shared-memory conflict with the user's pod template fails here, early
        nn = getattr(task_config, "nnodes", None)
        logger.debug("%s __init__: %s nnodes=%r, type=%s", PREFIX, self.name, nn, type(nn))

    # -- everything below reads the current config ------------------------------------------------

    def _plan(self):
        return resolve(self.task_config, target="k8s", env={})

    @property
    def task_type(self) -> str:
        return PYTORCH_TASK_TYPE if self._plan().mode is Mode.PYTORCHJOB else STANDALONE_TASK_TYPE

    @property
    def pod_template(self) -> Optional[PodTemplate]:
        """The user's pod template, plus a ``/dev/shm`` memory volume when ``increase_shared_mem`` asks for it."""
        base = self._ptj_pod_template
        if not self.task_config.increase_shared_mem or getattr(self, "shared_memory", None) not in (None, False):
            return base
        template = copy.deepcopy(base) if base is not None else PodTemplate()
        _add_shared_mem_volume(template)
        return template

    @pod_template.setter
    def pod_template(self, value: Optional[PodTemplate]) -> None:
        self._ptj_pod_template = value

    def get_custom(self, settings: SerializationSettings) -> Optional[Dict[str, Any]]:
        plan = self._plan()
        if plan.mode is not Mode.PYTORCHJOB:
            return super().get_custom(settings)
        return MessageToDict(self._pytorch_job(plan))

    def _pytorch_job(self, plan) -> pytorch_task.DistributedPyTorchTrainingTask:
        raise NotImplementedError

    # -- per-node overrides -----------------------------------------------------------------------

    def with_task_config(self, task_config: Union[Elastic, PyTorch]) -> "_ConfigTask":
        """This task with another config: the task itself when the config is equal, else a variant.

        The variant runs the same function and is named ``<task name>-cfg<hash of the config>``; it
        carries its config to the pod through :data:`config_override_resolver`. Variants are cached
        per config, so two nodes with the same override share one task.
        """
        origin = self._ptj_origin or self
        if not isinstance(task_config, (Elastic, PyTorch)):
            raise TypeError(
                f"task_config={task_config!r} is not accepted for task {origin.name}; "
                "expected a ptjupyter.Elastic or ptjupyter.PyTorch"
            )
        if task_config == origin.task_config and type(task_config) is type(origin.task_config):
            return origin
        encoded = encode_config(task_config)
        digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
        variant = origin._ptj_variants.get(digest)
        if variant is None or variant.task_config != task_config:
            kwargs = {k: v for k, v in origin._ptj_init_kwargs.items() if k != "task_resolver"}
            cls = ElasticFunctionTask if isinstance(task_config, Elastic) else PyTorchFunctionTask
            variant = cls(task_config=task_config, task_function=origin.task_function, **kwargs)
            # set after construction: inside a workflow's compilation flytekit would pick the workflow as resolver
            variant._task_resolver = config_override_resolver
            variant._instantiated_in = origin.instantiated_in  # else flytekit prefixes the name with our caller
            variant._name = f"{origin.name}-cfg{digest}"
            variant._ptj_origin = origin
            origin._ptj_variants[digest] = variant
        return variant

    def __call__(self, *args, **kwargs):
        ctx = FlyteContextManager.current_context()
        cs = ctx.compilation_state
        start = len(cs.nodes) if cs is not None and cs.mode == 1 else None
        out = super().__call__(*args, **kwargs)
        if start is not None:
            for node in cs.nodes[start:]:
                if node.flyte_entity is self and type(node) is Node:
                    node.__class__ = _PerNodeConfigNode  # its with_overrides(task_config=) swaps in a variant
        return out

    def local_execute(self, ctx, **kwargs):
        # resolve first: a config that cannot run here fails now, in one line (flytekit would wrap the error)
        token = _LOCAL_PLAN.set((self, resolve(self.task_config)))
        try:
            out = super().local_execute(ctx, **kwargs)
        finally:
            _LOCAL_PLAN.reset(token)
        for p in out if isinstance(out, tuple) else (out,):
            if type(p) is Promise:
                p.__class__ = _RanLocallyPromise
                p._ptj_task = self
            elif type(p) is VoidPromise:
                p.__class__ = _RanLocallyVoidPromise
                p._ptj_task = self
        return out

    # -- execution (local, or in the pod) ---------------------------------------------------------

    def execute(self, **kwargs) -> Any:
        from flytekit.exceptions import scopes as exception_scopes

        from .execute import execute

        logger.debug("%s execute: task_config=%r", PREFIX, self.task_config)
        task, plan = _LOCAL_PLAN.get((None, None))
        if task is not self:
            plan = resolve(self.task_config)  # local target; a PyTorchJob pod's PET_* environment is honoured
        if plan.mode is Mode.DIRECT:
            return execute(plan, exception_scopes.user_entry_point(self._task_function), kwargs=kwargs)
        return self._elastic_execute(plan, execute, kwargs)

    def _elastic_execute(self, plan, execute, kwargs):
        import flytekit
        from flytekit.exceptions.user import FlyteRecoverableException

        ctx = flytekit.current_context()
        try:
            checkpoint_dest, checkpoint_src = ctx.checkpoint._checkpoint_dest, ctx.checkpoint._checkpoint_src
        except NotImplementedError:
            checkpoint_dest = checkpoint_src = None
        worker = functools.partial(
            _flyte_worker, self._task_function, ctx.raw_output_prefix, checkpoint_dest, checkpoint_src
        )
        try:
            result = execute(plan, worker, kwargs=kwargs)
        except RuntimeError as e:
            if "FlyteRecoverableException" in (getattr(e, "traceback_text", "") or ""):
                raise FlyteRecoverableException(str(e)) from e
            raise
        if result is None and plan.max_nodes > 1:
            from flytekit.extend import IgnoreOutputs

            raise IgnoreOutputs()  # a node without global rank 0 in a PyTorchJob: rank 0's node reports
        return_value, decks, om = result
        for deck in decks:
            if not isinstance(deck, flytekit.deck.deck.TimeLineDeck):
                ctx.decks.append(deck)
        if om is not None:
            FlyteContextManager.current_context().output_metadata_tracker.add(return_value, om)
        return return_value


class PyTorchFunctionTask(_ConfigTask):
    """A ``PyTorch`` (Master/Worker) task: a PyTorchJob on the cluster; locally a direct call, as upstream."""

    _CONFIG_TYPE = PyTorch

    def _pytorch_job(self, plan):
        cfg = self.task_config
        return pytorch_task.DistributedPyTorchTrainingTask(
            worker_replicas=_replica_spec(cfg.worker, cfg.replicas),
            master_replicas=_replica_spec(cfg.master, 1),
            run_policy=_run_policy(cfg.run_policy),
        )


class ElasticFunctionTask(_ConfigTask):
    """An ``Elastic`` (torchrun) task: one pod for a single node, a PyTorchJob with an elastic policy for more."""

    _CONFIG_TYPE = Elastic

    def _pytorch_job(self, plan):
        cfg = self.task_config
        return pytorch_task.DistributedPyTorchTrainingTask(
            worker_replicas=pytorch_task.DistributedPyTorchTrainingReplicaSpec(replicas=plan.max_nodes),
            elastic_config=pytorch_task.ElasticConfig(
                rdzv_backend=plan.rdzv_backend,
                min_replicas=plan.min_nodes,
                max_replicas=plan.max_nodes,
                nproc_per_node=plan.nproc_per_node,
                max_restarts=plan.max_restarts,
            ),
            run_policy=_run_policy(cfg.run_policy),
        )


def _resources(value):
    if isinstance(value, dict):
        return Resources(**value)
    return value


def _replica_spec(spec: Union[Master, Worker], replicas: int) -> pytorch_task.DistributedPyTorchTrainingReplicaSpec:
    resources = convert_resources_to_resource_model(requests=_resources(spec.requests), limits=_resources(spec.limits))
    return pytorch_task.DistributedPyTorchTrainingReplicaSpec(
        replicas=replicas,
        image=spec.image,
        resources=resources.to_flyte_idl() if resources else None,
        restart_policy=spec.restart_policy.value if spec.restart_policy else None,
    )


def _run_policy(policy: Optional[RunPolicy]) -> Optional[kubeflow_common.RunPolicy]:
    if policy is None:
        return None
    return kubeflow_common.RunPolicy(
        clean_pod_policy=policy.clean_pod_policy.value if policy.clean_pod_policy else None,
        ttl_seconds_after_finished=policy.ttl_seconds_after_finished,
        active_deadline_seconds=policy.active_deadline_seconds,
        backoff_limit=policy.backoff_limit,
    )


def _add_shared_mem_volume(template: PodTemplate) -> None:
    """Mount a memory-backed ``emptyDir`` at ``/dev/shm`` in the primary container (the upstream plugin's layout)."""
    from kubernetes.client import V1Container, V1EmptyDirVolumeSource, V1PodSpec, V1Volume, V1VolumeMount

    if template.pod_spec is None:
        template.pod_spec = V1PodSpec()
    spec = template.pod_spec
    if spec.containers is None:
        spec.containers = []
    if spec.volumes is None:
        spec.volumes = []
    if len(spec.containers) >= 2:
        raise ValueError(
            f"increase_shared_mem=True is not accepted with a pod template of {len(spec.containers)} containers; "
            "set increase_shared_mem=False and mount /dev/shm in the right container yourself"
        )
    spec.volumes.append(V1Volume(name="shm", empty_dir=V1EmptyDirVolumeSource(medium="Memory")))
    if not spec.containers:
        spec.containers.append(V1Container(name="primary"))
    container = spec.containers[0]
    if container.volume_mounts is None:
        container.volume_mounts = []
    if any(m.mount_path == SHM_MOUNT_PATH for m in container.volume_mounts):
        raise ValueError(
            "increase_shared_mem=True is not accepted: the pod template already mounts /dev/shm; "
            "set increase_shared_mem=False or remove that volume mount"
        )
    container.volume_mounts.append(V1VolumeMount(name="shm", mount_path=SHM_MOUNT_PATH))


def _flyte_worker(fn, raw_output_prefix, checkpoint_dest, checkpoint_src, **kwargs):
    """Runs in each elastic worker: the task function inside a flytekit execution context (decks, checkpoints)."""
    import flytekit
    from flytekit.bin.entrypoint import setup_execution

    with setup_execution(
        raw_output_data_prefix=raw_output_prefix, checkpoint_path=checkpoint_dest, prev_checkpoint=checkpoint_src
    ) as ctx:
        value = fn(**kwargs)
        omt = ctx.output_metadata_tracker
        return value, list(flytekit.current_context().decks), (omt.get(value) if omt else None)


# -- per-node with_overrides ----------------------------------------------------------------------

_NODE_OVERRIDES = inspect.signature(Node.with_overrides)


class _PerNodeConfigNode(Node):
    """A node of a ptjupyter task: ``with_overrides(task_config=...)`` gives this node its own task variant.

    flytekit's ``Node.with_overrides`` would assign the config to the task object, which every node
    calling that task shares (and which the pod would not see: it imports the task afresh).
    """

    def with_overrides(self, *args, **kwargs):
        bound = _NODE_OVERRIDES.bind(self, *args, **kwargs)
        task_config = bound.arguments.get("task_config")
        if task_config is not None:
            bound.arguments["task_config"] = None
            variant = self.flyte_entity.with_task_config(task_config)
            logger.debug(
                "%s with_overrides: node %s task_config=%r -> task %s (type %s)",
                PREFIX, self.id, task_config, variant.name, variant.task_type,
            )
            self._flyte_entity = variant
        return Node.with_overrides(*bound.args, **bound.kwargs)


def _warn_too_late(task, kwargs):
    if kwargs.get("task_config") is not None:
        warnings.warn(
            f"with_overrides(task_config=...) on a result of {task.name} has no effect here: in a local run "
            f"the task already ran, with task_config={task.task_config!r}. Overrides apply when the workflow is "
            f"serialized (pyflyte register / run --remote, a @dynamic on the cluster); to switch locally too, call "
            f"{task.name.rsplit('.', 1)[-1]}.with_task_config(config)(...)",
            UserWarning,
            stacklevel=3,
        )


class _RanLocallyPromise(Promise):
    def with_overrides(self, *args, **kwargs):
        _warn_too_late(self._ptj_task, kwargs)
        return super().with_overrides(*args, **kwargs)


class _RanLocallyVoidPromise(VoidPromise):
    def with_overrides(self, *args, **kwargs):
        _warn_too_late(self._ptj_task, kwargs)
        return super().with_overrides(*args, **kwargs)


# -- carrying a per-node config to the pod --------------------------------------------------------

_CODEC_CLASSES = {c.__name__: c for c in (Elastic, PyTorch, Worker, Master, RunPolicy, Resources)}
_CODEC_ENUMS = {e.__name__: e for e in (RestartPolicy, CleanPodPolicy)}


def _encode(value):
    if isinstance(value, Enum) and _CODEC_ENUMS.get(type(value).__name__) is type(value):
        return {"$enum": type(value).__name__, "name": value.name}
    if dataclasses.is_dataclass(value) and _CODEC_CLASSES.get(type(value).__name__) is type(value):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"$type": type(value).__name__, **fields}
    if isinstance(value, dict):
        return {"$dict": {str(k): _encode(v) for k, v in value.items()}}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"task_config value {value!r} ({type(value).__name__}) cannot be sent to the pod; expected JSON data"
    )


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "$enum" in value:
        return _CODEC_ENUMS[value["$enum"]][value["name"]]
    if "$dict" in value:
        return {k: _decode(v) for k, v in value["$dict"].items()}
    if "$tuple" in value:
        return tuple(_decode(v) for v in value["$tuple"])
    fields = {k: _decode(v) for k, v in value.items() if k != "$type"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # num_workers warned when the user wrote it
        return _CODEC_CLASSES[value["$type"]](**fields)


def encode_config(config: Union[Elastic, PyTorch]) -> str:
    """A config as compact, deterministic JSON (what a variant's pod receives)."""
    return json.dumps(_encode(config), sort_keys=True, separators=(",", ":"))


def decode_config(text: str) -> Union[Elastic, PyTorch]:
    """The inverse of :func:`encode_config`."""
    return _decode(json.loads(text))


class ConfigOverrideResolver(TaskResolverMixin):
    """Loads a per-node task variant in the pod: the original task (through its own resolver) + the node's config.

    Loader args: ``ptjupyter-task-config <json> base-resolver <location> <the base resolver's args...>``.
    """

    @property
    def location(self) -> str:
        return f"{__name__}.config_override_resolver"

    def name(self) -> str:
        return "ptjupyter.ConfigOverrideResolver"

    def loader_args(self, settings: SerializationSettings, t: _ConfigTask) -> List[str]:
        origin = t._ptj_origin
        if origin is None:
            raise ValueError(f"task {t.name} is not a per-node variant of a ptjupyter task")
        base = origin.task_resolver
        return [
            "ptjupyter-task-config", encode_config(t.task_config), "base-resolver", base.location,
            *base.loader_args(settings, origin),
        ]

    def load_task(self, loader_args: List[str]) -> _ConfigTask:
        from flytekit.tools.module_loader import load_object_from_module

        if len(loader_args) < 4 or loader_args[0] != "ptjupyter-task-config" or loader_args[2] != "base-resolver":
            raise ValueError(
                f"loader args {loader_args!r} are not accepted; expected "
                "['ptjupyter-task-config', <json>, 'base-resolver', <location>, ...]"
            )
        base = load_object_from_module(loader_args[3])
        origin = base.load_task(loader_args[4:])
        return origin.with_task_config(decode_config(loader_args[1]))

    def get_all_tasks(self) -> List[_ConfigTask]:
        raise NotImplementedError("per-node variants exist only in the workflows that override a task's config")


config_override_resolver = ConfigOverrideResolver()

TaskPlugins.register_pythontask_plugin(PyTorch, PyTorchFunctionTask)
TaskPlugins.register_pythontask_plugin(Elastic, ElasticFunctionTask)
logger.debug("%s plugin loaded: ptjupyter.flyte %s (task type follows the current config)", PREFIX, __version__)
