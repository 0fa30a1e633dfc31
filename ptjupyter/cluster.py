"""Cluster-side settings of a Kubernetes run (image, namespace, resources, ...), checked when built.

Part of a :class:`~ptjupyter.plan.Plan` (``plan.k8s``); local runs ignore them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from .errors import InvalidType, InvalidValue

__all__ = ["K8sOptions", "QUANTITY", "RUNTIME_KINDS"]

RUNTIME_KINDS = ("ClusterTrainingRuntime", "TrainingRuntime")

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")


@dataclass(frozen=True)
class K8sOptions:
    """Cluster-side settings of a Kubernetes run (ignored by local runs)."""

    image: Optional[str] = None
    namespace: Optional[str] = None  # None: the kubeconfig context's namespace (as kubectl uses it)
    context: Optional[str] = None
    job_name: Optional[str] = None
    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    service_account: Optional[str] = None
    runtime: str = "torch-distributed"  # TrainJob: runtimeRef.name
    runtime_kind: str = "ClusterTrainingRuntime"  # TrainJob: or TrainingRuntime (in the job's namespace)
    queue: Optional[str] = None  # Kueue LocalQueue: label kueue.x-k8s.io/queue-name on the job
    priority_class: Optional[str] = None  # Kueue WorkloadPriorityClass: label kueue.x-k8s.io/priority-class

    def __post_init__(self):
        if self.image is not None and (not isinstance(self.image, str) or not _IMAGE.match(self.image)):
            raise InvalidValue(f"image={self.image!r} is not accepted; expected an image reference like 'repo/name:tag'")
        if self.namespace is not None and (
            not isinstance(self.namespace, str) or not _DNS1123_LABEL.match(self.namespace) or len(self.namespace) > 63
        ):
            raise InvalidValue(
                f"namespace={self.namespace!r} is not accepted; expected a DNS-1123 label "
                "(lower-case letters, digits and '-', at most 63 characters)"
            )
        if self.job_name is not None and (
            not isinstance(self.job_name, str) or not _DNS1035_LABEL.match(self.job_name) or len(self.job_name) > 50
        ):
            raise InvalidValue(
                f"job_name={self.job_name!r} is not accepted; expected a DNS-1035 label (starts with a letter; "
                "lower-case letters, digits and '-'; at most 50 characters so pod names fit)"
            )
        for name in ("runtime", "queue", "priority_class"):
            value = getattr(self, name)
            if value is None and name != "runtime":
                continue
            if not isinstance(value, str) or not _DNS1123_LABEL.match(value) or len(value) > 63:
                raise InvalidValue(f"{name}={value!r} is not accepted; expected a DNS-1123 name (lower-case letters, "
                                   "digits and '-', at most 63 characters)")
        if self.runtime_kind not in RUNTIME_KINDS:
            raise InvalidValue(f"runtime_kind={self.runtime_kind!r} is not accepted; expected one of "
                               f"{', '.join(RUNTIME_KINDS)}")
        for name in ("requests", "limits"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise InvalidType(f"{name}={value!r} is not accepted; expected a mapping like {{'cpu': '1', 'memory': '2Gi'}}")
            for k, v in value.items():
                if not isinstance(k, str) or not k or not QUANTITY.match(str(v)):
                    raise InvalidValue(
                        f"{name}[{k!r}]={v!r} is not accepted; expected a Kubernetes quantity such as '500m', '2', '4Gi'"
                    )
        for name in ("env", "labels", "annotations", "node_selector"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise InvalidType(f"{name}={value!r} is not accepted; expected a mapping of strings to strings")


