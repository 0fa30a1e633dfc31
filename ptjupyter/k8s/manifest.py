"""Plan -> Kubernetes manifests: a Kubeflow ``PyTorchJob`` (several nodes) or a ``batch/v1`` Job (one node).

The PyTorchJob mirrors what Flyte's kfpytorch backend builds from the same config (container
``pytorch``, Worker-only + ``elasticPolicy`` for ``Elastic``, Master(1) + Worker for ``PyTorch``,
``restartPolicy`` per group with unset = ``Never``, ``runPolicy`` fields only when set, a memory
``emptyDir`` at ``/dev/shm``), so a job looks the same whether it came from a notebook or from Flyte.
Two deliberate differences: ``spec.nprocPerNode`` (string) instead of the deprecated
``elasticPolicy.nProcPerNode``, and the cell payload Secret mounted at :data:`PAYLOAD_DIR`.
Pure data in, dicts out: nothing here talks to a cluster.
"""
from __future__ import annotations

import base64
import re
import secrets
from typing import Any, Mapping, Optional

from ..cluster import QUANTITY
from ..config import Elastic, PyTorch, RestartPolicy
from ..errors import InvalidValue
from ..plan import Mode, Plan
from . import kueue

__all__ = [
    "PAYLOAD_DIR", "CONTAINER", "LABEL_MANAGED", "LABEL_JOB", "ANNOTATION_NONCE", "new_job_name",
    "secret_name", "command", "build", "payload_volume_items", "job_metadata", "container_env", "payload_volumes",
    "pod_placement", "pod_metadata", "merge_resources", "num",
]

PAYLOAD_DIR = "/etc/ptjupyter"  # where the payload Secret is mounted in every pod
CONTAINER = "pytorch"  # the training operator requires this container name
LABEL_MANAGED = "app.kubernetes.io/managed-by"  # = "ptjupyter": how %pytorch_elastic_jobs finds its jobs
LABEL_JOB = "ptjupyter.io/job-name"  # on the job and on every pod (pod template): selects a job's pods
LABEL_HAS_MASTER = "ptjupyter.io/has-master"
ANNOTATION_NONCE = "ptjupyter.io/result-nonce"  # marks rank 0's result lines in the log
ANNOTATION_WORLD = "ptjupyter.io/world-size"
_GPU = "nvidia.com/gpu"
_RESOURCE_NAMES = {"cpu": "cpu", "mem": "memory", "gpu": _GPU, "ephemeral_storage": "ephemeral-storage"}


def new_job_name(prefix: str = "ptj") -> str:
    """A fresh DNS-1035 job name such as ``ptj-3f9a1c2b``."""
    return f"{prefix}-{secrets.token_hex(4)}"


def secret_name(job: str) -> str:
    return f"{job}-payload"


def payload_volume_items(files: Mapping[str, str]) -> list:
    """Secret keys cannot hold '/', so nested files (the shipped cloudpickle) are mapped with items."""
    return [{"key": key, "path": path} for key, path in sorted(files.items())]


def command(plan: Plan) -> list:
    """The container command: the shipped entrypoint under ``torchrun`` (or plain python for one process).

    ``torchrun`` reads the rest from the ``PET_*`` variables the training operator injects
    (nnodes, rendezvous endpoint/backend, max restarts, nproc per node, node rank, master address).
    """
    entry = f"{PAYLOAD_DIR}/entrypoint.py"
    if plan.mode is Mode.POD:
        if plan.node_mode is Mode.DIRECT:
            return ["python", "-u", entry]
        return [
            "torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", str(plan.nproc_per_node),
            "--max-restarts", str(plan.max_restarts), "--start-method", plan.start_method,
            "--monitor-interval", num(plan.monitor_interval), entry,
        ]
    cmd = ["torchrun", "--start-method", plan.start_method, "--monitor-interval", num(plan.monitor_interval)]
    if isinstance(plan.config, Elastic) and plan.rdzv_configs:
        cmd += ["--rdzv-conf", ",".join(f"{k}={v}" for k, v in plan.rdzv_configs.items())]
    return cmd + [entry]


def num(x: float) -> str:
    """``5.0`` -> ``"5"``, ``0.5`` -> ``"0.5"`` (as a torchrun flag takes it)."""
    return str(int(x)) if float(x).is_integer() else str(x)


def _resources(owner: str, value: Any) -> dict:
    """kfpytorch ``requests``/``limits`` (dict with cpu/mem/gpu/ephemeral_storage or flytekit Resources)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        value = {k: getattr(value, k, None) for k in _RESOURCE_NAMES}
    out = {}
    for key, v in value.items():
        if v is None:
            continue
        s = str(v)
        if not QUANTITY.match(s):
            raise InvalidValue(f"{owner}[{key!r}]={v!r} is not accepted; expected a Kubernetes quantity such as '500m', '2', '4Gi'")
        out[_RESOURCE_NAMES.get(key, key)] = s
    return out


def merge_resources(plan: Plan, requests: Any = None, limits: Any = None, owner: str = "") -> dict:
    req = {**plan.k8s.requests, **_resources(f"{owner}.requests", requests)}
    lim = {**plan.k8s.limits, **_resources(f"{owner}.limits", limits)}
    if getattr(plan, "gpus", None):  # --gpus N: every training container, requests == limits
        req[_GPU] = lim[_GPU] = str(plan.gpus)
    if _GPU in lim and _GPU not in req:
        req[_GPU] = lim[_GPU]  # extended resources must have requests == limits
    if _GPU in req and _GPU not in lim:
        lim[_GPU] = req[_GPU]
    res = {}
    if req:
        res["requests"] = dict(sorted(req.items()))
    if lim:
        res["limits"] = dict(sorted(lim.items()))
    return res


def _labels(plan: Plan, name: str, pod: bool = False) -> dict:
    labels = {**plan.k8s.labels, LABEL_MANAGED: "ptjupyter", LABEL_JOB: name}
    if pod and isinstance(plan.config, PyTorch):
        labels[LABEL_HAS_MASTER] = "true"  # workers' ranks start at 1
    return labels


def job_metadata(plan: Plan, name: str, nonce: str = "") -> dict:
    """A job's metadata (every kind): name, namespace unless the kubeconfig's, labels (Kueue's too), annotations."""
    annotations = {**plan.k8s.annotations, ANNOTATION_WORLD: str(plan.world_size)}
    if nonce:
        annotations[ANNOTATION_NONCE] = nonce
    meta = {"name": name, "namespace": plan.k8s.namespace, "labels": {**_labels(plan, name), **kueue.labels(plan)},
            "annotations": annotations}
    if meta["namespace"] is None:  # the kubeconfig context's: filled in once connected
        del meta["namespace"]
    return meta


def container_env(plan: Plan) -> list:
    """The training container's env: unbuffered output, where the payload is, then the user's (ours win)."""
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "PTJUPYTER_PAYLOAD", "value": PAYLOAD_DIR}]
    return env + [{"name": k, "value": v} for k, v in plan.k8s.env.items()
                  if k not in ("PYTHONUNBUFFERED", "PTJUPYTER_PAYLOAD")]


def payload_volumes(plan: Plan, name: str, files: Mapping[str, str]) -> tuple[list, list]:
    """``(volumes, volumeMounts)``: the payload Secret at :data:`PAYLOAD_DIR`, and ``/dev/shm`` in memory."""
    volumes = [{"name": "ptjupyter-payload", "secret": {"secretName": secret_name(name), "items": payload_volume_items(files)}}]
    mounts = [{"name": "ptjupyter-payload", "mountPath": PAYLOAD_DIR, "readOnly": True}]
    if getattr(plan.config, "increase_shared_mem", True):
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    return volumes, mounts


def pod_placement(plan: Plan) -> dict:
    """The pod spec's node selector, tolerations and service account, those that are set."""
    k, spec = plan.k8s, {}
    if k.node_selector:
        spec["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        spec["tolerations"] = [dict(t) for t in k.tolerations]
    if k.service_account:
        spec["serviceAccountName"] = k.service_account
    return spec


def pod_metadata(plan: Plan, name: str) -> dict:
    meta: dict = {"labels": _labels(plan, name, pod=True)}
    if plan.k8s.annotations:
        meta["annotations"] = dict(plan.k8s.annotations)
    return meta


def _pod_template(plan: Plan, name: str, image: str, resources: dict, files: Mapping[str, str],
                  restart_policy: Optional[str] = None) -> dict:
    volumes, mounts = payload_volumes(plan, name, files)
    container = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command(plan),
        "env": container_env(plan),
        "volumeMounts": mounts,
    }
    if resources:
        container["resources"] = resources
    spec: dict = {"containers": [container], "volumes": volumes}
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    spec.update(pod_placement(plan))
    return {"metadata": pod_metadata(plan, name), "spec": spec}


def _run_policy(plan: Plan) -> dict:
    rp = getattr(plan.config, "run_policy", None)
    if rp is None:
        return {"cleanPodPolicy": "None"}
    out = {"cleanPodPolicy": rp.clean_pod_policy.k8s if rp.clean_pod_policy is not None else "None"}
    for attr, key in (("backoff_limit", "backoffLimit"), ("active_deadline_seconds", "activeDeadlineSeconds"),
                      ("ttl_seconds_after_finished", "ttlSecondsAfterFinished")):
        if getattr(rp, attr) is not None:
            out[key] = getattr(rp, attr)
    return out


def _restart(policy: Optional[RestartPolicy]) -> str:
    return (policy or RestartPolicy.NEVER).k8s


def image_for(plan: Plan, group: Any = None) -> str:
    image = (getattr(group, "image", None) if group is not None else None) or plan.k8s.image
    if not image:
        raise InvalidValue(
            "image=None is not accepted for target='k8s'; expected an image reference like "
            "'pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime' (--image, K8sOptions.image or Worker(image=...)) "
            "with the notebook's Python minor version and torch"
        )
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$", image):
        raise InvalidValue(f"image={image!r} is not accepted; expected an image reference like 'repo/name:tag'")
    return image


_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS1123_SUB = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")


def _check_key(what: str, key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _DNS1123_SUB.match(prefix))) or len(name) > 63 or not _LABEL_NAME.match(name):
        raise InvalidValue(f"{what} key {key!r} is not accepted; expected [prefix/]name, name at most 63 characters of "
                         "letters, digits, '-', '_', '.' (starting and ending with a letter or digit)")


def check_options(plan: Plan) -> None:
    """What the API server would reject in labels, annotations, env, node selector and tolerations: here, in one
    line, before anything is sent."""
    k = plan.k8s
    if plan.mode is Mode.PYTORCHJOB and isinstance(plan.config, Elastic) and plan.rdzv_backend not in ("c10d", "etcd", "etcd-v2"):
        raise InvalidValue(f"rdzv_backend={plan.rdzv_backend!r} is not accepted for an elastic PyTorchJob; expected c10d, "
                         "etcd or etcd-v2 (the training operator's elasticPolicy.rdzvBackend)")
    for what, mapping in (("labels", k.labels), ("node_selector", k.node_selector)):
        for key, value in mapping.items():
            _check_key(what, key)
            if len(value) > 63 or (value and not _LABEL_NAME.match(value)):
                raise InvalidValue(f"{what}[{key!r}]={value!r} is not accepted; expected at most 63 characters of "
                                 "letters, digits, '-', '_', '.' (starting and ending with a letter or digit), or ''")
    for key in k.annotations:
        _check_key("annotations", key)
    for key in k.env:
        if not _ENV_NAME.match(key):
            raise InvalidValue(f"env name {key!r} is not accepted; expected letters, digits, '_', '-', '.' "
                             "(not starting with a digit)")
    for t in k.tolerations:
        bad = [x for x in t if x not in _TOLERATION_KEYS] if isinstance(t, Mapping) else ["(not a mapping)"]
        if bad or t.get("operator", "Equal") not in ("Equal", "Exists") or \
                t.get("effect", "NoSchedule") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise InvalidValue(f"tolerations entry {dict(t) if isinstance(t, Mapping) else t!r} is not accepted; expected "
                             "keys among key, operator (Equal|Exists), value, effect (NoSchedule|PreferNoSchedule|"
                             "NoExecute), tolerationSeconds")
    if k.service_account is not None and not _DNS1123_SUB.match(k.service_account):
        raise InvalidValue(f"service_account={k.service_account!r} is not accepted; expected a DNS-1123 name")


def build(plan: Plan, name: str, files: Mapping[str, str], nonce: str = "") -> dict:
    """The job manifest for ``plan``: a PyTorchJob for ``Mode.PYTORCHJOB``, a batch/v1 Job for ``Mode.POD``.

    ``files`` maps Secret keys to their paths under :data:`PAYLOAD_DIR` (see ``payload.files``).
    """
    if plan.mode not in (Mode.POD, Mode.PYTORCHJOB):
        raise InvalidValue(f"mode={plan.mode.value!r} is not accepted for a Kubernetes manifest; expected pod or pytorchjob")
    check_options(plan)
    meta = job_metadata(plan, name, nonce)
    rp = _run_policy(plan)
    if plan.mode is Mode.POD:
        template = _pod_template(plan, name, image_for(plan), merge_resources(plan), files, "Never")
        spec: dict = {"backoffLimit": rp.get("backoffLimit", 0), "template": template}
        if "activeDeadlineSeconds" in rp:
            spec["activeDeadlineSeconds"] = rp["activeDeadlineSeconds"]
        if "ttlSecondsAfterFinished" in rp:
            spec["ttlSecondsAfterFinished"] = rp["ttlSecondsAfterFinished"]
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}

    cfg = plan.config
    if isinstance(cfg, PyTorch):
        groups = {
            "Master": (1, cfg.master, "Master"),
            "Worker": (cfg.replicas, cfg.worker, "Worker"),
        }
        specs = {}
        for key, (replicas, group, owner) in groups.items():
            res = merge_resources(plan, group.requests, group.limits, owner)
            specs[key] = {
                "replicas": replicas,
                "restartPolicy": _restart(group.restart_policy),
                "template": _pod_template(plan, name, image_for(plan, group), res, files),
            }
        spec = {"runPolicy": rp, "nprocPerNode": str(plan.nproc_per_node), "pytorchReplicaSpecs": specs}
    else:
        spec = {
            "runPolicy": rp,
            "elasticPolicy": {
                "rdzvBackend": plan.rdzv_backend,
                "minReplicas": plan.min_nodes,
                "maxReplicas": plan.max_nodes,
                "maxRestarts": plan.max_restarts,
            },
            "nprocPerNode": str(plan.nproc_per_node),
            "pytorchReplicaSpecs": {
                "Worker": {
                    "replicas": plan.max_nodes,
                    "restartPolicy": "Never",
                    "template": _pod_template(plan, name, image_for(plan), merge_resources(plan), files),
                }
            },
        }
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": meta, "spec": spec}


def secret(name: str, namespace: str, data: Mapping[str, str], binary: Mapping[str, str], labels: Mapping[str, str]) -> dict:
    """The payload Secret (Opaque; ``data`` is base64: ``binary`` values already are, text is encoded here);
    its ownerReference is added after the job exists."""
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": secret_name(name), "labels": dict(labels), **({"namespace": namespace} if namespace else {})},
        "data": {**encoded, **binary},
    }
