"""Run a cell on Kubernetes: a Kubeflow PyTorchJob (several nodes) or a batch/v1 Job (one node).

``run(plan, fn)`` submits, follows (status line, live ``[worker-i]`` logs) and returns rank 0's value;
``dry_run(plan, fn)`` shows what would be sent. The ``kubernetes`` client is imported only when used.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Optional

__all__ = ["run", "dry_run", "JobRef"]

from .follow import JobRef  # noqa: E402  (light: no kubernetes import at module level)


def run(plan, fn: Callable[[], Any], *, sink=None, detach: bool = False, api_client=None,
        shipped: Optional[Mapping[str, Any]] = None, out: Callable[[str], Any] = print) -> Any:
    """Submit ``fn`` as ``plan`` says and follow it; return rank 0's value (``JobRef`` when ``detach``).

    Raises ``ValueError``/``TypeError`` for bad options before anything is sent, ``K8sError`` for API
    problems, ``JobFailed`` when the job fails, ``KeyboardInterrupt`` when interrupted (the job keeps
    running; the hint to reattach or cancel is printed).
    """
    from .client import connect
    from .follow import Follower
    from .submit import prepare, submit
    prepared = prepare(plan, fn, shipped)  # every option and the payload size, before connecting
    kube = connect(plan.k8s.namespace, plan.k8s.context, api_client)
    if kube.namespace != plan.k8s.namespace:  # the kubeconfig context's namespace, as kubectl would use it
        plan = dataclasses.replace(plan, k8s=dataclasses.replace(plan.k8s, namespace=kube.namespace))
        for manifest in prepared[:2]:
            manifest["metadata"]["namespace"] = kube.namespace
    t0 = time.monotonic()
    ref = submit(kube, plan, fn, shipped, out=out, prepared=prepared)
    kind = "PyTorchJob" if ref.resource == "pytorchjobs" else "Job"
    ns = "" if ref.namespace == "default" else f" -n {ref.namespace}"
    out(f"[ptjupyter] submitted {kind} {ref.namespace}/{ref.name} ({plan.min_nodes}:{plan.max_nodes} nodes x "
        f"{plan.nproc_per_node} processes)")
    if detach:
        out(f"[ptjupyter] detached. Follow: %pytorch_elastic_jobs attach {ref.name}{ns}   "
            f"Cancel: %pytorch_elastic_jobs cancel {ref.name}{ns}")
        return ref
    follower = Follower(kube, ref, sink=sink, out=out)
    try:
        return follower.run()
    finally:
        if follower.first_line_at is not None:
            run.last_first_line_s = follower.first_line_at - t0  # submit -> first log line (measured in tests)


run.last_first_line_s = None


def dry_run(plan, fn: Callable[[], Any], shipped: Optional[Mapping[str, Any]] = None) -> str:
    """The manifests as YAML plus the shipped names and payload size; nothing is sent anywhere."""
    import yaml

    from .payload import human
    from .submit import prepare

    job, cm, payload = prepare(plan, fn, shipped)
    cm_summary = {k: v for k, v in cm.items() if k not in ("data", "binaryData")}
    lines = [f"# ptjupyter dry run ({plan.mode.value}): nothing was sent to the cluster", "---",
             yaml.safe_dump(job, sort_keys=False).rstrip(), "---",
             yaml.safe_dump(cm_summary, sort_keys=False).rstrip(),
             "# data/binaryData (mounted at /etc/ptjupyter, owned by the job once it exists):"]
    for key in sorted(payload.files):
        size = payload.pickled if key == "payload.pkl" else len(payload.data[key].encode())
        lines.append(f"#   {key}: {human(size)}")
    shipped_txt = ", ".join(f"{k} ({human(v) if v >= 0 else 'unpicklable'})" for k, v in sorted(payload.sizes.items()))
    lines.append(f"# shipped: {shipped_txt or 'nothing'}")
    lines.append(f"# payload: {human(payload.size)} of the 1.0 MiB ConfigMap limit (pickled cell {human(payload.pickled)})")
    return "\n".join(lines) + "\n"
