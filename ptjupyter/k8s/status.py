"""The state of a job and of its pods as a user reads it: job conditions, pod labels and ranks, per-pod
states, the one status line (and why it waits), and the failing pod's traceback. Pure functions of the
objects the API server sends."""
from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

from . import kueue
from .manifest import CONTAINER, LABEL_HAS_MASTER, LABEL_JOB

__all__ = ["job_state", "pod_selector", "container_name", "pod_label", "container_status", "started", "pod_state", "status_text", "failure_lines",
           "traceback_lines", "FINAL", "LAST_LINES", "WAIT_REASONS"]

FINAL = ("Succeeded", "Failed")
LAST_LINES = 20  # log lines of the failing pod shown in JobFailed when it has no traceback
WAIT_REASONS = ("FailedScheduling", "FailedMount", "FailedAttachVolume", "FailedCreatePodSandBox", "Failed",
                "BackOff", "ErrImagePull", "ImagePullBackOff", "InspectFailed", "Evicted", "Preempted")
_FAILED_LINE = re.compile(r"^(\[rank\d+\] )?\[ptjupyter\] rank \d+ failed:")
_RANK_PREFIX = re.compile(r"^\[rank\d+\] ")
LABEL_JOBSET = "jobset.sigs.k8s.io/jobset-name"  # on every pod of a TrainJob's JobSet
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # label (PodIndexLabel) and annotation


def pod_selector(resource: str, name: str) -> str:
    """The label selector of a job's pods: the JobSet's name for a TrainJob, ptjupyter's own label otherwise."""
    return f"{LABEL_JOBSET}={name}" if resource == "trainjobs" else f"{LABEL_JOB}={name}"


def container_name(pod: dict) -> str:
    """The training container of ``pod``: ``node`` in a TrainJob's pods, ``pytorch`` otherwise."""
    return "node" if LABEL_JOBSET in ((pod.get("metadata") or {}).get("labels") or {}) else CONTAINER


def job_state(obj: Optional[dict], resource: str) -> tuple:
    """(state, reason, message): state is Created/Pending/Running/Restarting/Succeeded/Failed."""
    if not obj:
        return "Pending", "", ""
    status = obj.get("status") or {}
    conds = [c for c in status.get("conditions") or [] if str(c.get("status")) == "True"]
    by_type = {c.get("type"): c for c in conds}
    if "Suspended" in by_type and not set(by_type) & {"Failed", "Complete", "Succeeded"}:
        c = by_type["Suspended"]
        held = kueue.waiting(obj, c.get("reason", ""), c.get("message", ""))
        return ("Queued", c.get("reason", ""), held) if held else ("Suspended", c.get("reason", ""), c.get("message", ""))
    if resource == "trainjobs":  # conditions Suspended/Complete/Failed only: Running comes from the child Jobs
        for t, state in (("Failed", "Failed"), ("Complete", "Succeeded")):
            if t in by_type:
                return state, by_type[t].get("reason", ""), by_type[t].get("message", "")
        active = any(j.get("active") for j in status.get("jobsStatus") or [])
        return ("Running" if active else "Created"), "", ""
    if resource == "jobs":
        for t, state in (("Failed", "Failed"), ("Complete", "Succeeded")):
            if t in by_type:
                return state, by_type[t].get("reason", ""), by_type[t].get("message", "")
        return ("Running" if status.get("active") else "Created"), "", ""
    for t in FINAL:
        if t in by_type:
            return t, by_type[t].get("reason", ""), by_type[t].get("message", "")
    if conds:
        c = conds[-1]
        return c.get("type", "Created"), c.get("reason", ""), c.get("message", "")
    return "Created", "", ""


def pod_label(pod: dict) -> tuple:
    """(label, rank): ``worker-1``/1 for elastic workers, ``master-0``/0 + ``worker-i``/i+1 for Master jobs."""
    md = pod.get("metadata") or {}
    labels = md.get("labels") or {}
    if LABEL_JOBSET in labels:  # a TrainJob's node: its completion index is PET_NODE_RANK
        raw = labels.get(COMPLETION_INDEX) or (md.get("annotations") or {}).get(COMPLETION_INDEX, "0")
        index = int(raw) if str(raw).isdigit() else 0
        return f"node-{index}", index
    rtype = labels.get("training.kubeflow.org/replica-type", "worker").lower()
    try:
        index = int(labels.get("training.kubeflow.org/replica-index", "0"))
    except ValueError:
        index = 0
    has_master = labels.get(LABEL_HAS_MASTER) == "true"
    rank = index + 1 if (rtype == "worker" and has_master) else index
    return f"{rtype}-{index}", rank


def container_status(pod: dict) -> dict:
    """The training container's status ({} before the kubelet reported one)."""
    want = container_name(pod)
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == want:
            return cs
    return {}


def started(pod: dict) -> bool:
    """Whether the container has started at least once (so it has a log)."""
    state = container_status(pod).get("state") or {}
    return "running" in state or "terminated" in state or (pod.get("status") or {}).get("phase") in FINAL


def pod_state(pod: dict, deleted: bool = False) -> tuple:
    """(state, detail) a sink shows for a pod: starting, running, exited 0, failed (exit N / pod deleted)."""
    phase = (pod.get("status") or {}).get("phase", "Pending")
    term = (container_status(pod).get("state") or {}).get("terminated")
    if deleted:
        return "failed", "pod deleted"
    if term is not None or phase in FINAL:
        code = (term or {}).get("exitCode", 0 if phase == "Succeeded" else 1)
        return ("exited 0", "") if code == 0 else ("failed", f"exit {code}")
    if started(pod):
        return "running", ""
    return "starting", ""


def _why_pending(pod: dict, event: Optional[tuple]) -> str:
    waiting = (container_status(pod).get("state") or {}).get("waiting") or {}
    sched = [c for c in (pod.get("status") or {}).get("conditions") or []
             if c.get("type") == "PodScheduled" and c.get("status") == "False"]
    if waiting.get("reason"):
        reason, detail = waiting["reason"], waiting.get("message", "")
    elif sched:
        reason, detail = sched[0].get("reason", "Unschedulable"), sched[0].get("message", "")
    else:
        reason, detail = "Pending", ""
    if event:  # the latest warning event usually says the most (FailedScheduling, Failed to pull image, ...)
        detail = f"{event[0]}: {event[1]}"
    return f"{pod_label(pod)[0]}: {reason}" + (f" ({detail})" if detail else "")


def status_text(job: str, state: tuple, pods: Sequence[dict], events: Mapping[str, tuple],
                pods_synced: bool = True) -> Optional[str]:
    """The status line of job ``job``: ``Running, 1/2 pods running; waiting: worker-1: ...`` (None: nothing to
    say yet). ``events`` maps an object name to its latest (reason, message) warning."""
    name, _, message = state
    if name == "Queued":  # Kueue holds the job: no pods until it is admitted
        return message
    if not pods and not pods_synced:
        return None
    if name in FINAL:
        return name + (f": {message}" if message and name == "Failed" else "")
    why = ""
    for p in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if (p.get("status") or {}).get("phase", "Pending") == "Pending":
            why = _why_pending(p, events.get(p["metadata"]["name"]))
            break
    if not pods:
        ev = events.get(job)
        why = f"{ev[0]}: {ev[1]}" if ev else "no pods yet"
    running = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")
    return name + (f", {running}/{len(pods)} pods running" if pods else "") + (f"; waiting: {why}" if why else "")


def failure_lines(lines: Sequence[str]) -> Optional[list]:
    """The last ``[ptjupyter] rank N failed:`` traceback in a pod's recent lines (None: there is none)."""
    starts = [i for i, line in enumerate(lines) if _FAILED_LINE.match(line)]
    return traceback_lines(list(lines[starts[-1]:])) if starts else None


def traceback_lines(lines: list) -> list:
    """From ``[ptjupyter] rank N failed:`` to the end of that Python traceback (chained ones included)."""
    out = lines[:1]
    rest = lines[1:4 * LAST_LINES]
    for i, line in enumerate(rest):
        out.append(line)
        body = _RANK_PREFIX.sub("", line)
        if body and not body.startswith((" ", "\t", "Traceback", "During handling", "The above exception")):
            nxt = _RANK_PREFIX.sub("", rest[i + 1]) if i + 1 < len(rest) else ""
            if not nxt.startswith(("During handling", "The above exception")) and nxt.strip():
                break
    return out
