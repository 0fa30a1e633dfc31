"""``JobRef``: which job a run submitted (or ``%pytorch_elastic_jobs`` found), enough to follow or cancel it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .manifest import ANNOTATION_NONCE

__all__ = ["JobRef"]


@dataclass
class JobRef:
    """A submitted job: ``resource`` is ``"trainjobs"``, ``"pytorchjobs"`` or ``"jobs"``; ``nonce`` marks its result lines."""

    name: str
    namespace: str
    resource: str
    nonce: str = ""
    uid: Optional[str] = None

    @property
    def kind(self) -> str:
        return {"pytorchjobs": "PyTorchJob", "trainjobs": "TrainJob"}.get(self.resource, "Job")

    @classmethod
    def from_object(cls, obj: dict, resource: str, namespace: str = "default") -> "JobRef":
        """The reference to a job object as the server returned it (``namespace``: when it carries none)."""
        md = obj.get("metadata") or {}
        return cls(md["name"], md.get("namespace") or namespace, resource,
                   (md.get("annotations") or {}).get(ANNOTATION_NONCE, ""), md.get("uid"))
