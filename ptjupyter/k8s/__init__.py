"""Run a cell on Kubernetes: a Kubeflow Trainer v2 TrainJob or v1 PyTorchJob (several nodes) or a batch/v1 Job.

``run(plan, fn)`` submits, follows (status line, live ``[worker-i]`` logs) and returns rank 0's value;
``dry_run(plan, fn)`` shows what would be sent. The ``kubernetes`` client is imported only when used.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional

from .errors import JobFailed, K8sError
from .ref import JobRef

__all__ = ["run", "dry_run", "JobRef"]


@contextlib.contextmanager
def _as_k8s_error(what: str) -> Iterator[None]:
    """Past the option checks, whatever goes wrong is a cluster-side problem: a ``K8sError`` saying ``what``."""
    try:
        yield
    except (K8sError, JobFailed):
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a ValueError of the client: not the user's options
        first = (str(e).splitlines() or [""])[0][:300]
        raise K8sError(f"{what}: {type(e).__name__}: {first}" if first else f"{what}: {type(e).__name__}") from e


def run(plan, fn: Callable[[], Any], *, sink=None, detach: bool = False, api_client=None,
        shipped: Optional[Mapping[str, Any]] = None, out: Callable[[str], Any] = print) -> Any:
    """Submit ``fn`` as ``plan`` says and follow it; return rank 0's value (``JobRef`` when ``detach``).

    Raises ``InvalidValue``/``InvalidType`` for bad options before anything is sent, ``K8sError`` (or a
    subclass: ``JobDeleted``, ``ResultUnreadable``) for API or cluster problems and anything that goes wrong
    once the job was submitted, ``JobFailed`` when the job fails, ``KeyboardInterrupt`` when interrupted
    (the job keeps running; the hint to reattach or cancel is printed).
    """
    from .client import connect
    from .discovery import settle
    from .follow import Follower, reattach_hint
    from .submit import prepare, submit

    prepared = prepare(plan, fn, shipped)  # every option and the payload size, before connecting
    with _as_k8s_error("the Kubernetes configuration cannot be used (nothing was submitted)"):
        kube = connect(plan.k8s.namespace, plan.k8s.context, api_client)
        if kube.namespace != plan.k8s.namespace:  # the kubeconfig context's namespace, as kubectl would use it
            # checked like an option: a kubeconfig may name a namespace the API server would refuse
            plan = dataclasses.replace(plan, k8s=dataclasses.replace(plan.k8s, namespace=kube.namespace))
            for manifest in prepared[:2]:
                manifest["metadata"]["namespace"] = kube.namespace
    with _as_k8s_error("asking the cluster which job APIs it serves failed (nothing was submitted)"):
        settled = settle(kube, plan)
    if settled.mode is not plan.mode:  # api auto: a TrainJob after all (plan carries the namespace by now)
        plan = settled
        prepared = prepare(plan, fn, shipped, name=prepared[0]["metadata"]["name"], payload=prepared[2])
    name = prepared[0]["metadata"]["name"]
    with _as_k8s_error(f"submitting job {kube.namespace}/{name} failed (%pytorch_elastic_jobs shows whether it exists)"):
        ref = submit(kube, plan, fn, shipped, out=out, prepared=prepared)
    out(f"[ptjupyter] submitted {ref.kind} {ref.namespace}/{ref.name} ({plan.min_nodes}:{plan.max_nodes} nodes x "
        f"{plan.nproc_per_node} processes)")
    if detach:
        out(f"[ptjupyter] detached. Follow: {reattach_hint(ref, kube.default_namespace)}")
        return ref
    with _as_k8s_error(f"job {ref.namespace}/{ref.name} was submitted, but following it failed"):
        return Follower(kube, ref, sink=sink, out=out).run()


def dry_run(plan, fn: Callable[[], Any], shipped: Optional[Mapping[str, Any]] = None) -> str:
    """The manifests as YAML plus the shipped names and payload size; nothing is sent anywhere."""
    import yaml

    from ..plan import Mode
    from .payload import human
    from .submit import prepare

    job, cm, payload = prepare(plan, fn, shipped)
    cm_summary = {k: v for k, v in cm.items() if k not in ("data", "stringData")}  # never the values
    lines = [f"# ptjupyter dry run ({plan.mode.value}): nothing was sent to the cluster"]
    if plan.k8s.namespace is None:
        lines.append("# namespace: none given, so the kubeconfig context's (the service account's in a cluster, "
                     "else default)")
    if plan.api_open:
        lines.append("# api auto: this PyTorchJob if the cluster serves no trainjobs.trainer.kubeflow.org/v1alpha1")
    lines += ["---", yaml.safe_dump(job, sort_keys=False).rstrip(), "---",
              yaml.safe_dump(cm_summary, sort_keys=False).rstrip(),
              "# data: names and sizes only (mounted at /etc/ptjupyter, owned by the job once it exists):"]
    for key in sorted(payload.files):
        size = payload.pickled if key == "payload.pkl" else len(payload.data[key].encode())
        lines.append(f"#   {key}: {human(size)}")
    shipped_txt = ", ".join(f"{k} ({human(v) if v >= 0 else 'unpicklable'})" for k, v in sorted(payload.sizes.items()))
    lines.append(f"# shipped: {shipped_txt or 'nothing'}")
    lines.append(f"# payload: {human(payload.size)} of the 1.0 MiB Secret limit (pickled cell {human(payload.pickled)})")
    if plan.api_open:  # the cluster's discovery decides; show both
        alt = prepare(dataclasses.replace(plan, mode=Mode.TRAINJOB), fn, shipped, name=job["metadata"]["name"],
                      payload=payload)[0]
        lines += ["# ... else (Kubeflow Trainer v2 served) this TrainJob, with the same payload:", "---",
                  yaml.safe_dump(alt, sort_keys=False).rstrip()]
    return "\n".join(lines) + "\n"
