"""Plan -> a Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``) on a torch runtime.

The runtime (``runtimeRef``, default ClusterTrainingRuntime ``torch-distributed``) gives the JobSet with one
replicated job ``node``; the TrainJob sets ``trainer.image``/``command``/``numNodes``/``numProcPerNode``/
``resourcesPerNode``/``env`` and mounts the cell payload through a ``runtimePatches`` entry of its own manager
(volumes and pod labels can go nowhere else). The command is the shipped entrypoint under plain ``torchrun``:
torchrun takes nnodes, nproc-per-node, node rank and the master address/port from the ``PET_*`` variables the
Trainer's torch plugin injects. Pure data in, dicts out: nothing here talks to a cluster.
"""
from __future__ import annotations

from typing import Mapping

from ..errors import InvalidValue
from ..plan import Mode, Plan
from . import manifest as mf

__all__ = ["API_VERSION", "KIND", "CONTAINER", "MANAGER", "RESERVED_ENV", "MAX_NAME", "build", "check_name"]

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
CONTAINER = "node"  # the torch runtimes' trainer container (and replicated job)
MANAGER = "ptjupyter.io/notebook"  # our runtimePatches entry (a domain-prefixed path, as the webhook requires)
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
MAX_NAME = 48  # JobSet: <name>-node-0-<i>-<5 random> must fit 63 characters (up to 10 nodes)


def check_name(name: str) -> None:
    """Refuse here what the cluster would only report as a Warning event (``TrainJobResourcesCreationFailed``)."""
    if len(name) > MAX_NAME:
        raise InvalidValue(f"job_name={name!r} ({len(name)} characters) is not accepted for a TrainJob; expected at most "
                           f"{MAX_NAME} characters (its pods are named <name>-node-0-<i>-xxxxx, at most 63)")


def command(plan: Plan) -> list:
    cmd = ["torchrun", "--start-method", plan.start_method, "--monitor-interval", mf.num(plan.monitor_interval)]
    if plan.max_restarts:
        cmd += ["--max-restarts", str(plan.max_restarts)]
    return cmd + [f"{mf.PAYLOAD_DIR}/entrypoint.py"]


def _env(plan: Plan) -> list:
    reserved = [k for k in plan.k8s.env if k in RESERVED_ENV]
    if reserved:
        raise InvalidValue(f"env name {reserved[0]!r} is not accepted for a TrainJob: the Trainer's torch plugin sets "
                           f"{', '.join(RESERVED_ENV)} itself; use nnodes/nproc_per_node instead")
    return mf.container_env(plan)


def _patch(plan: Plan, name: str, files: Mapping[str, str]) -> dict:
    """Our runtimePatches entry: pod labels, the payload volume, node selector, tolerations, service account."""
    volumes, mounts = mf.payload_volumes(plan, name, files)
    pod_spec: dict = {"volumes": volumes, "containers": [{"name": CONTAINER, "volumeMounts": mounts}],
                      **mf.pod_placement(plan)}
    pod = {"metadata": mf.pod_metadata(plan, name), "spec": pod_spec}
    rjob = {"name": CONTAINER, "template": {"spec": {"template": pod}}}
    return {"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [rjob]}}}}


def build(plan: Plan, name: str, files: Mapping[str, str], nonce: str = "") -> dict:
    """The TrainJob manifest of a ``Mode.TRAINJOB`` plan; ``files`` as for :func:`manifest.build`."""
    if plan.mode is not Mode.TRAINJOB:
        raise InvalidValue(f"mode={plan.mode.value!r} is not accepted for a TrainJob manifest; expected trainjob")
    mf.check_options(plan)
    check_name(name)
    meta = mf.job_metadata(plan, name, nonce)
    runtime = {"name": plan.k8s.runtime}
    if plan.k8s.runtime_kind != "ClusterTrainingRuntime":
        runtime.update(apiGroup="trainer.kubeflow.org", kind=plan.k8s.runtime_kind)
    trainer: dict = {"image": mf.image_for(plan), "command": command(plan), "numNodes": plan.max_nodes,
                     "numProcPerNode": plan.nproc_per_node, "env": _env(plan)}
    resources = mf.merge_resources(plan)
    if resources:
        trainer["resourcesPerNode"] = resources
    spec: dict = {"runtimeRef": runtime, "trainer": trainer, "runtimePatches": [_patch(plan, name, files)]}
    deadline = getattr(getattr(plan.config, "run_policy", None), "active_deadline_seconds", None)
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}
