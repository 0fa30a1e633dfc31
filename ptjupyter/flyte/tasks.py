"""The two task classes of the kfpytorch plugin's shape: :class:`PyTorchFunctionTask`, :class:`ElasticFunctionTask`.

What is serialized (task type, PyTorchJob custom, shared-memory pod template) is derived from the
*current* config every time, through :func:`ptjupyter.plan.resolve` (target ``k8s``). Execution,
locally or in the pod, goes through :func:`ptjupyter.execute.execute` with the local plan.
"""
from __future__ import annotations

import contextvars
import copy
import functools
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Optional, Union

from flyteidl.plugins.kubeflow import common_pb2 as kubeflow_common
from flyteidl.plugins.kubeflow import pytorch_pb2 as pytorch_task
from flytekit import PythonFunctionTask, Resources
from flytekit.configuration import SerializationSettings
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.pod_template import PodTemplate
from flytekit.core.resources import convert_resources_to_resource_model
from flytekit.extend import TaskPlugins
from google.protobuf.json_format import MessageToDict

from ..config import Elastic, Master, PyTorch, RunPolicy, Worker
from ..errors import RankFailed
from ..execute import execute
from ..plan import PREFIX, Mode, resolve
from .overrides import PerNodeConfig

__all__ = ["PyTorchFunctionTask", "ElasticFunctionTask"]

logger = logging.getLogger("ptjupyter")

PYTORCH_TASK_TYPE = "pytorch"
STANDALONE_TASK_TYPE = "python-task"
TASK_TYPE_VERSION = 1  # version of the PyTorchJob task template; the backend plugin reads it, do not change
SHM_MOUNT_PATH = "/dev/shm"
RECOVERABLE_MARK = "recoverable-{rank}"  # written by a rank whose error is a FlyteRecoverableException
_LOCAL_PLAN: contextvars.ContextVar = contextvars.ContextVar("ptjupyter_local_plan")  # (task, plan) of a local call


class _ConfigTask(PerNodeConfig, PythonFunctionTask):
    """Common part of the two task classes: everything that depends on the config is computed on demand."""

    _CONFIG_TYPE: type = object

    def __init__(self, task_config: Union[Elastic, PyTorch], task_function: Callable, **kwargs):
        if not isinstance(task_config, self._CONFIG_TYPE):
            raise TypeError(
                f"task_config={task_config!r} is not accepted by {type(self).__name__}; "
                f"expected a ptjupyter.{self._CONFIG_TYPE.__name__}"
            )
        self._ptj_init(kwargs)
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

    @staticmethod
    def _class_for(task_config: Union[Elastic, PyTorch]) -> type:
        return ElasticFunctionTask if isinstance(task_config, Elastic) else PyTorchFunctionTask

    # -- serialization: everything below reads the current config ---------------------------------

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

    # -- execution (local, or in the pod) ---------------------------------------------------------

    def local_execute(self, ctx, **kwargs):
        # resolve first: a config that cannot run here fails now, in one line (flytekit would wrap the error)
        token = _LOCAL_PLAN.set((self, resolve(self.task_config)))
        try:
            return super().local_execute(ctx, **kwargs)
        finally:
            _LOCAL_PLAN.reset(token)

    def execute(self, **kwargs) -> Any:
        logger.debug("%s execute: task_config=%r", PREFIX, self.task_config)
        task, plan = _LOCAL_PLAN.get((None, None))
        if task is not self:
            plan = resolve(self.task_config)  # local target; a PyTorchJob pod's PET_* environment is honoured
        if plan.mode is Mode.DIRECT and not self._fresh_context(plan):
            return execute(plan, self._task_function, kwargs=kwargs)
        return self._run_in_fresh_context(plan, kwargs)

    def _fresh_context(self, plan) -> bool:
        """Whether the function runs in a flytekit context rebuilt from the environment (as upstream's workers do)."""
        return False

    def _run_in_fresh_context(self, plan, kwargs):
        import flytekit
        from flytekit.exceptions.user import FlyteRecoverableException, FlyteUserRuntimeException

        ctx = flytekit.current_context()
        try:
            checkpoint_dest, checkpoint_src = ctx.checkpoint._checkpoint_dest, ctx.checkpoint._checkpoint_src
        except NotImplementedError:
            checkpoint_dest = checkpoint_src = None
        marks = tempfile.mkdtemp(prefix="ptjupyter-flyte-") if plan.mode is Mode.ELASTIC else None
        worker = functools.partial(
            _flyte_worker, self._task_function, ctx.raw_output_prefix, checkpoint_dest, checkpoint_src, marks
        )
        try:
            result = execute(plan, worker, kwargs=kwargs)
        except RankFailed as e:
            # as upstream: Flyte retries a FlyteRecoverableException; the worker's error time is kept
            if os.path.exists(os.path.join(marks, RECOVERABLE_MARK.format(rank=e.rank))):
                raise FlyteRecoverableException(str(e), timestamp=e.timestamp) from None
            raise FlyteUserRuntimeException(e, timestamp=e.timestamp) from None
        finally:
            if marks is not None:
                shutil.rmtree(marks, ignore_errors=True)
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

    def _fresh_context(self, plan) -> bool:
        # upstream's spawned workers rebuild the execution parameters (execution id, checkpoint) from the
        # environment; a forked one keeps the caller's. A one-process run is a direct call here, in the same context.
        return plan.start_method != "fork"

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


def _flyte_worker(fn, raw_output_prefix, checkpoint_dest, checkpoint_src, marks, **kwargs):
    """Runs on each rank: the task function inside a flytekit execution context built from the environment.

    A ``FlyteRecoverableException`` (or a subclass) leaves a mark in ``marks`` named after the rank,
    so the launching process can tell a recoverable error from another one (as upstream's
    ``spawn_helper`` does with its ``recoverable_error`` file).
    """
    import flytekit
    from flytekit.bin.entrypoint import setup_execution
    from flytekit.exceptions.user import FlyteRecoverableException

    with setup_execution(
        raw_output_data_prefix=raw_output_prefix, checkpoint_path=checkpoint_dest, prev_checkpoint=checkpoint_src
    ) as ctx:
        try:
            value = fn(**kwargs)
        except FlyteRecoverableException:
            if marks is not None:
                rank = os.environ.get("RANK", "0")
                open(os.path.join(marks, RECOVERABLE_MARK.format(rank=rank)), "w").close()
            raise
        omt = ctx.output_metadata_tracker
        return value, list(flytekit.current_context().decks), (omt.get(value) if omt else None)


TaskPlugins.register_pythontask_plugin(PyTorch, PyTorchFunctionTask)
TaskPlugins.register_pythontask_plugin(Elastic, ElasticFunctionTask)
