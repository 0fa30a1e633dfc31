"""Which job APIs a cluster serves, asked once per kernel, and the plan's ``api='auto'`` settled with it.

The rule (``--api auto``): one node -> a batch Job (``plan.resolve`` already chose it); an elastic range
(``nnodes`` min < max) or a PyTorch (Master/Worker) config -> PyTorchJob (Kubeflow Trainer v2 has no elastic
training yet); a fixed node count -> TrainJob when ``trainjobs.trainer.kubeflow.org/v1alpha1`` is served,
else PyTorchJob. An explicit ``--api`` the cluster does not serve is one line naming what it does serve.
"""
from __future__ import annotations

import dataclasses
import threading

from ..plan import Mode, Plan
from .errors import K8sError

__all__ = ["served", "settle", "refresh", "describe"]

GROUPS = {  # discovery path -> the job resource it may serve
    "apis:trainer.kubeflow.org/v1alpha1": "trainjobs",
    "apis:kubeflow.org/v1": "pytorchjobs",
}
NAMES = {"trainjobs": "trainjobs (trainer.kubeflow.org/v1alpha1, Kubeflow Trainer v2)",
         "pytorchjobs": "pytorchjobs (kubeflow.org/v1, the training operator)", "jobs": "jobs (batch/v1)"}
_cache: dict = {}  # API server host -> frozenset of served job resources (this kernel's)
_lock = threading.Lock()


def refresh() -> None:
    """Forget what every cluster serves: the next run asks discovery again (after installing an operator)."""
    with _lock:
        _cache.clear()


def served(kube, fresh: bool = False) -> frozenset:
    """The job resources ``kube``'s cluster serves, among ``trainjobs``, ``pytorchjobs``, ``jobs`` (cached)."""
    key = kube.host
    with _lock:
        if not fresh and key in _cache:
            return _cache[key]
    found = {"jobs"}
    for path, resource in GROUPS.items():
        try:
            data = kube.request("GET", path, attempts=3)
        except K8sError as e:
            if e.status == 404:
                continue
            raise
        if any(r.get("name") == resource for r in data.get("resources") or []):
            found.add(resource)
    with _lock:
        _cache[key] = frozenset(found)
    return _cache[key]


def describe(resources) -> str:
    return ", ".join(NAMES[r] for r in ("trainjobs", "pytorchjobs", "jobs") if r in resources)


def settle(kube, plan: Plan, fresh: bool = False) -> Plan:
    """``plan`` with the API the cluster serves (mode TRAINJOB/PYTORCHJOB), or a one-line ``K8sError``."""
    if plan.mode is Mode.POD:
        return plan  # batch/v1 is always there
    have = served(kube, fresh)
    source = plan.sources.get("api", "default")  # only to name it in the message, as describe() would
    if plan.api != "auto":
        resource = "trainjobs" if plan.mode is Mode.TRAINJOB else "pytorchjobs"
        if resource not in have:
            raise K8sError(f"api={plan.api!r} (from {source}) is not served by this cluster ({kube.host}): it serves "
                           f"{describe(have)}; use --api auto" + (", or install the operator" if len(have) == 1 else ""))
        return plan
    mode = Mode.TRAINJOB if plan.api_open and "trainjobs" in have else Mode.PYTORCHJOB
    if mode is Mode.PYTORCHJOB and "pytorchjobs" not in have:
        nn = f"{plan.min_nodes}:{plan.max_nodes}" if plan.min_nodes < plan.max_nodes else str(plan.max_nodes)
        if "trainjobs" in have:
            why = ("is elastic, and Kubeflow Trainer v2 (TrainJob) has no elastic training yet"
                   if plan.min_nodes < plan.max_nodes else "is a PyTorch (Master/Worker) config, the v1 PyTorchJob shape")
            raise K8sError(f"nnodes={nn!r} {why}; this cluster serves {describe(have)}, not the v1 PyTorchJob: use a "
                           "fixed nnodes (e.g. --nnodes 2) with Elastic(), which runs as a TrainJob")
        raise K8sError(f"no training operator on this cluster ({kube.host}): it serves only {describe(have)}; install "
                       "Kubeflow Trainer v2 (TrainJob) or the v1 training operator, or use nnodes=1 (a plain Job)")
    return dataclasses.replace(plan, mode=mode) if mode is not plan.mode else plan
