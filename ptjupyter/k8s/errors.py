"""Errors of a Kubernetes run, with messages a notebook user can act on (one line each, except the
failure of a job, which carries the failing pod's last log lines)."""
from __future__ import annotations

import json
from typing import Optional, Sequence

from ..errors import PtjupyterError

__all__ = ["K8sError", "JobFailed", "JobDeleted", "ResultUnreadable", "translate", "short_reason"]


class K8sError(PtjupyterError, RuntimeError):
    """A Kubernetes API or configuration problem, said in one line; ``status`` is the HTTP status, if any."""

    label = "K8sError"

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class JobDeleted(K8sError):
    """The job disappeared while it was followed (cancelled from elsewhere, or TTL)."""

    label = "JobDeleted"


class ResultUnreadable(K8sError):
    """The job ran, but rank 0's return value could not be read back from its log."""

    label = "ResultUnreadable"


class JobFailed(PtjupyterError, RuntimeError):
    """The job ended Failed. ``headline``: the job, its condition reason/message and the failing pod;
    ``details``: that pod's last log lines."""

    label = "JobFailed"

    def __init__(self, job: str, namespace: str, reason: str, message: str, pod: Optional[str] = None,
                 last_lines: Sequence[str] = ()):
        self.job, self.namespace, self.reason, self.condition_message = job, namespace, reason, message
        self.pod, self.last_lines = pod, list(last_lines)
        head = f"job {namespace}/{job} failed ({reason or 'Failed'}): {message or 'no message'}"
        if pod:
            head += f"; failing pod {pod}"
        details = [f"--- log of {pod} ({len(self.last_lines)} lines) ---", *self.last_lines] if self.last_lines else []
        super().__init__(head, details)


_KINDS = {
    "pytorchjobs": ("PyTorchJob", "kubeflow.org"),
    "trainjobs": ("TrainJob", "trainer.kubeflow.org"),
    "clustertrainingruntimes": ("ClusterTrainingRuntime", "trainer.kubeflow.org"),
    "trainingruntimes": ("TrainingRuntime", "trainer.kubeflow.org"),
    "jobs": ("Job", "batch"),
    "configmaps": ("ConfigMap", ""),
    "secrets": ("Secret", ""),
    "pods": ("Pod", ""),
    "events": ("Event", ""),
}


def _body(exc) -> dict:
    try:
        data = json.loads(getattr(exc, "body", None) or "{}")
        return data if isinstance(data, dict) else {}
    except (TypeError, ValueError):
        return {}


def translate(exc, verb: str, resource: str, namespace: str, name: Optional[str] = None) -> K8sError:
    """Turn an ``ApiException`` into a ``K8sError`` whose message says what to do."""
    status = getattr(exc, "status", None)
    body = _body(exc)
    server = (body.get("message") or getattr(exc, "reason", None) or "").strip()
    kind, group = _KINDS.get(resource, (resource, ""))
    full = f"{resource}.{group}" if group else resource
    what = f"{kind} {name!r}" if name else full
    if status == 401:
        msg = (f"Kubernetes API: unauthorized (401) to {verb} {full} in namespace {namespace!r}: the cluster rejected "
               "your credentials; log in again / refresh the kubeconfig token")
    elif status == 403:
        msg = (f"Kubernetes API: forbidden (403): you may not {verb} {full} in namespace {namespace!r}; ask for RBAC "
               f"(a Role/RoleBinding granting '{verb}' on {full}); check with: kubectl auth can-i {verb} {full} "
               f"-n {namespace}" + (f" [server: {server}]" if server else ""))
    elif status == 404:
        details = body.get("details") or {}
        if details.get("kind") == "namespaces" or "namespaces" in server and "not found" in server:
            msg = f"Kubernetes API: namespace {namespace!r} not found (404); create it or pass another --namespace"
        elif resource == "trainjobs" and (not name or not details.get("name")) and (
                "could not find the requested resource" in server or not details):
            msg = ("Kubernetes API: the TrainJob resource (trainjobs.trainer.kubeflow.org/v1alpha1) is not installed on "
                   "this cluster (404): install Kubeflow Trainer v2, or use --api pytorchjob / --api auto")
        elif resource == "pytorchjobs" and (not name or not details.get("name")) and (
                "could not find the requested resource" in server or not details):
            msg = ("Kubernetes API: the PyTorchJob resource (pytorchjobs.kubeflow.org/v1) is not installed on this cluster "
                   "(404): install the Kubeflow training operator (kubectl apply --server-side -k "
                   "\"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0\"), "
                   "or use nnodes=1 (a plain Job needs no operator)")
        else:
            msg = f"Kubernetes API: {what} not found in namespace {namespace!r} (404)"
    elif status == 409:
        msg = (f"Kubernetes API: a {kind} named {name!r} already exists in namespace {namespace!r} (409): choose another "
               f"job name (job_name=/--job-name) or cancel it: %pytorch_elastic_jobs cancel {name}")
    elif status == 422:
        causes = ((body.get("details") or {}).get("causes")) or []
        fields = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}" for c in causes if isinstance(c, dict))
        msg = f"Kubernetes API rejected {what} (422 Invalid): {fields or server}"
    elif status == 410:
        msg = f"Kubernetes API: resource version expired (410) while watching {full}: {server}"
    else:
        msg = f"Kubernetes API: {verb} {full} in namespace {namespace!r} failed ({status} {getattr(exc, 'reason', '')}): {server}"
    return K8sError(" ".join(msg.split()), status=status)


def short_reason(e: BaseException) -> str:
    """A connection error in a few words (``connection refused``, ``timed out``), never its headers."""
    reason = getattr(e, "reason", None) or e
    text = str(reason)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "host name not found"
    return text.splitlines()[0][:160] if text else type(e).__name__
