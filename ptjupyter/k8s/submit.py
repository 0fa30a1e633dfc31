"""Submit a cell: payload Secret, then the job, then the Secret's ownerReference to the job
(so deleting the job deletes the payload too). A TrainJob's runtime is checked first."""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional

from ..errors import InvalidValue
from ..plan import Mode, Plan
from . import manifest as mf
from . import payload as pl
from . import trainjob as tj
from .errors import K8sError
from .ref import JobRef

__all__ = ["prepare", "submit", "resource_of"]

log = logging.getLogger("ptjupyter")
MERGE_PATCH = "application/merge-patch+json"


def resource_of(plan: Plan) -> str:
    """The API resource of ``plan``'s job: ``trainjobs``, ``pytorchjobs`` or ``jobs`` (one node)."""
    return {Mode.PYTORCHJOB: "pytorchjobs", Mode.TRAINJOB: "trainjobs"}.get(plan.mode, "jobs")


def prepare(plan: Plan, fn: Callable[[], Any], shipped: Optional[Mapping[str, Any]] = None,
            name: Optional[str] = None, payload: Optional[pl.Payload] = None) -> tuple:
    """(job manifest, payload Secret manifest, Payload): everything is checked here, before anything is sent."""
    if plan.mode not in (Mode.POD, Mode.PYTORCHJOB, Mode.TRAINJOB):
        raise InvalidValue(f"mode={plan.mode.value!r} is not accepted by ptjupyter.k8s; expected a plan resolved with "
                         "target='k8s' (mode pod, pytorchjob or trainjob)")
    name = name or plan.k8s.job_name or mf.new_job_name()
    mf.image_for(plan)  # fail on a missing image before pickling anything
    if plan.mode is Mode.TRAINJOB or plan.api_open:
        tj.check_name(name)  # api auto may pick a TrainJob once connected: refuse now what it would refuse
    payload = payload or pl.build(fn, shipped)
    builder = tj.build if plan.mode is Mode.TRAINJOB else mf.build
    job = builder(plan, name, payload.files, payload.nonce)
    cm = mf.secret(name, plan.k8s.namespace, payload.data, payload.binary,
                   {mf.LABEL_MANAGED: "ptjupyter", mf.LABEL_JOB: name})
    return job, cm, payload


def submit(kube, plan: Plan, fn: Callable[[], Any], shipped: Optional[Mapping[str, Any]] = None,
           out: Callable[[str], Any] = print, prepared: Optional[tuple] = None) -> JobRef:
    job, cm, payload = prepared or prepare(plan, fn, shipped)
    name, resource = job["metadata"]["name"], resource_of(plan)
    if resource == "trainjobs":
        check_runtime(kube, plan)
    try:
        kube.request("POST", "secrets", body=cm)
    except K8sError as e:
        if e.status != 409:
            raise
        try:  # is it the payload of a live job of that name, or a leftover of an interrupted submit?
            kube.request("GET", resource, name, attempts=1)
        except K8sError as e2:
            if e2.status != 404:
                raise
            kube.request("DELETE", "secrets", cm["metadata"]["name"])
            kube.request("POST", "secrets", body=cm)
        else:
            raise K8sError(f"Kubernetes API: a {job['kind']} named {name!r} already exists in namespace "
                           f"{kube.namespace!r} (409): choose another job name (job_name=/--job-name) or cancel it: "
                           f"%pytorch_elastic_jobs cancel {name}", status=409) from None
    try:
        created = _create_job(kube, resource, job, payload.nonce)
    except BaseException:
        try:
            kube.request("DELETE", "secrets", cm["metadata"]["name"], attempts=2)
        except K8sError:
            pass
        raise
    md = created.get("metadata") or {}
    owner = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": name, "uid": md.get("uid"),
             "blockOwnerDeletion": False, "controller": False}
    try:
        kube.request("PATCH", "secrets", cm["metadata"]["name"], body={"metadata": {"ownerReferences": [owner]}},
                     content_type=MERGE_PATCH)
    except K8sError as e:
        out(f"[ptjupyter] warning: the payload Secret {cm['metadata']['name']} could not be tied to the job ({e}); "
            "%pytorch_elastic_jobs cancel deletes it too")
    return JobRef(name, kube.namespace, resource, payload.nonce, md.get("uid"))


def _create_job(kube, resource: str, job: dict, nonce: str) -> dict:
    name = job["metadata"]["name"]
    try:
        return kube.request("POST", resource, body=job)
    except K8sError as e:
        if e.status != 409:
            raise
        conflict = K8sError(f"Kubernetes API: a {job['kind']} named {name!r} already exists in namespace "
                            f"{kube.namespace!r} (409): choose another job name (job_name=/--job-name) or cancel it: "
                            f"%pytorch_elastic_jobs cancel {name}", status=409)
        # a retried create (after a 5xx) may meet the job its first attempt made: ours if the nonce matches
        try:
            existing = kube.request("GET", resource, name, attempts=1)
        except K8sError:
            raise conflict from None
        if ((existing.get("metadata") or {}).get("annotations") or {}).get(mf.ANNOTATION_NONCE) == nonce:
            return existing
        raise conflict from None


def check_runtime(kube, plan: Plan) -> None:
    """The TrainJob's runtime exists (else name those that do: admission would refuse it less helpfully)."""
    kind, name = plan.k8s.runtime_kind, plan.k8s.runtime
    resource = "clustertrainingruntimes" if kind == "ClusterTrainingRuntime" else "trainingruntimes"
    try:
        kube.request("GET", resource, name, attempts=3)
        return
    except K8sError as e:
        if e.status != 404:
            raise
    try:
        names = [o["metadata"]["name"] for o in kube.request("GET", resource, attempts=3).get("items") or []]
    except K8sError:
        names = []
    where = "this cluster" if resource == "clustertrainingruntimes" else f"namespace {kube.namespace!r}"
    raise K8sError(f"runtime={name!r} is not accepted: {where} has no {kind} {name!r}; it has "
                   f"{', '.join(sorted(names)) or 'none'} (--runtime NAME, --runtime-kind TrainingRuntime for one in "
                   "the namespace)", status=404)
