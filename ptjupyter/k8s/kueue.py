"""Kueue: the labels that queue a job (TrainJob, PyTorchJob and Job alike), and what a held job waits for.

Kueue's webhook suspends a job labelled ``kueue.x-k8s.io/queue-name`` (``spec.suspend`` of a TrainJob or
Job, ``spec.runPolicy.suspend`` of a PyTorchJob) and unsuspends it at admission; until then it looks
idle, so the follower says "waiting for admission in queue NAME" instead.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["LABEL_QUEUE", "LABEL_PRIORITY", "labels", "waiting"]

LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_PRIORITY = "kueue.x-k8s.io/priority-class"


def labels(plan) -> dict:
    """The Kueue labels of ``plan``'s job ({} without ``queue``/``priority_class``)."""
    out = {}
    if plan.k8s.queue:
        out[LABEL_QUEUE] = plan.k8s.queue
    if plan.k8s.priority_class:
        out[LABEL_PRIORITY] = plan.k8s.priority_class
    return out


def waiting(obj: dict, reason: str = "", message: str = "") -> Optional[str]:
    """"waiting for admission in queue NAME (reason)" for a suspended job Kueue holds; None when it has no queue."""
    queue = (((obj.get("metadata") or {}).get("labels")) or {}).get(LABEL_QUEUE)
    if not queue:
        return None
    why = message if message and message not in ("TrainJob is suspended", "Job suspended") else ""
    return f"waiting for admission in queue {queue}" + (f" ({why})" if why else "")
