"""Task configs of the kfpytorch plugin: ``PyTorch``, ``Elastic`` and their parts.

Drop-in for ``flytekitplugins.kfpytorch`` 1.16: same fields, defaults and enum values, but
stricter: every bad value is a one-line ``InvalidValue``/``InvalidType`` (a ``ValueError``/``TypeError``) raised when the config is
built, naming the field, the value and what is accepted. Nothing heavy is imported here.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Optional, Union

from .errors import InvalidType, InvalidValue

__all__ = [
    "RestartPolicy", "CleanPodPolicy", "RunPolicy", "Worker", "Master", "PyTorch", "Elastic",
    "START_METHODS", "parse_nnodes", "given_fields",
]

START_METHODS = ("spawn", "fork", "forkserver")
_NNODES_RE = re.compile(r"^\s*(\d+)\s*(?::\s*(\d+)\s*)?$")
_RESOURCE_KEYS = ("cpu", "mem", "gpu", "ephemeral_storage")


class RestartPolicy(Enum):
    """How the replicas of a group restart. Values are flyteidl's ``RestartPolicy`` numbers."""

    ALWAYS = 2
    FAILURE = 1
    NEVER = 0

    @property
    def k8s(self) -> str:
        """The value the PyTorchJob's ``restartPolicy`` field takes."""
        return {2: "Always", 1: "OnFailure", 0: "Never"}[self.value]


class CleanPodPolicy(Enum):
    """What happens to pods when the job finishes. Values are flyteidl's ``CleanPodPolicy`` numbers."""

    NONE = 0
    ALL = 2
    RUNNING = 1

    @property
    def k8s(self) -> str:
        """The value the PyTorchJob's ``runPolicy.cleanPodPolicy`` field takes."""
        return {0: "None", 2: "All", 1: "Running"}[self.value]


def parse_nnodes(value: Union[int, str], name: str = "nnodes") -> tuple[int, int]:
    """``(min_nodes, max_nodes)`` from ``2``, ``"2"`` or ``"1:4"``, as ``torchrun --nnodes`` reads it.

    Stricter than ``torch.distributed.run.parse_min_max_nnodes``: zero, negatives and
    ``min > max`` are rejected.
    """
    accepted = 'a positive int, "N" or "MIN:MAX" with 1 <= MIN <= MAX'
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidType(f"{name}={value!r} ({type(value).__name__}) is not accepted; expected {accepted}")
    if isinstance(value, int):
        lo = hi = value
    else:
        m = _NNODES_RE.match(value)
        if not m:
            raise InvalidValue(f"{name}={value!r} is not accepted; expected {accepted}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo < 1 or hi < lo:
        raise InvalidValue(f"{name}={value!r} is not accepted; expected {accepted}")
    return lo, hi


# -- field checks: each raises a one-line error naming owner.field, the value and what is accepted


def _fail(exc, owner, name, value, accepted):
    raise exc(f"{owner}.{name}={value!r} is not accepted; expected {accepted}")


def _check_int(owner, name, value, minimum, optional=False):
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(InvalidType, owner, name, value, f"an int >= {minimum}" + (" or None" if optional else ""))
    if value < minimum:
        _fail(InvalidValue, owner, name, value, f"an int >= {minimum}" + (" or None" if optional else ""))


def _check_enum(owner, name, value, enum, optional=True):
    if value is None and optional:
        return
    if not isinstance(value, enum):
        members = ", ".join(f"{enum.__name__}.{m.name}" for m in enum)
        _fail(InvalidType, owner, name, value, members + (" or None" if optional else ""))


def _check_resources(owner, name, value):
    if value is None:
        return
    if isinstance(value, dict):
        bad = [k for k in value if k not in _RESOURCE_KEYS]
        if bad:
            _fail(InvalidValue, owner, name, value, f"keys among {', '.join(_RESOURCE_KEYS)}")
        return
    if type(value).__name__ == "Resources" and type(value).__module__.startswith("flytekit"):
        return
    _fail(InvalidType, owner, name, value, "flytekit.Resources, a dict with keys cpu/mem/gpu/ephemeral_storage, or None")


def _check_type(owner, name, value, types, accepted):
    if not isinstance(value, types):
        _fail(InvalidType, owner, name, value, accepted)


def _strict_init(cls):
    """Make unknown or surplus constructor arguments a one-line error that lists the accepted ones."""
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise InvalidType(
                f"{cls.__name__}: unknown argument {unknown[0]}={kwargs[unknown[0]]!r}; "
                f"accepted: {', '.join(names)}"
            )
        if len(args) > len(names):
            raise InvalidType(f"{cls.__name__} takes at most {len(names)} positional arguments ({', '.join(names)})")
        init(self, *args, **kwargs)
        # which fields the caller set: an explicit value equal to the default still counts (see given_fields)
        object.__setattr__(self, "_given", frozenset(names[: len(args)]) | frozenset(kwargs))

    cls.__init__ = __init__
    return cls


def given_fields(cfg) -> frozenset:
    """The fields a config's constructor was given explicitly (``Elastic(monitor_interval=5)`` -> that one)."""
    return getattr(cfg, "_given", frozenset())


@_strict_init
@dataclass
class RunPolicy:
    """Policy of a PyTorchJob run: pod clean-up, TTL, deadline and retries."""

    clean_pod_policy: CleanPodPolicy = None
    ttl_seconds_after_finished: Optional[int] = None
    active_deadline_seconds: Optional[int] = None
    backoff_limit: Optional[int] = None

    def __post_init__(self):
        _check_enum("RunPolicy", "clean_pod_policy", self.clean_pod_policy, CleanPodPolicy)
        _check_int("RunPolicy", "ttl_seconds_after_finished", self.ttl_seconds_after_finished, 0, optional=True)
        _check_int("RunPolicy", "active_deadline_seconds", self.active_deadline_seconds, 1, optional=True)
        _check_int("RunPolicy", "backoff_limit", self.backoff_limit, 0, optional=True)


@_strict_init
@dataclass
class Worker:
    """The Worker replica group: image, resources, replica count and restart policy."""

    image: Optional[str] = None
    requests: Optional[Any] = None
    limits: Optional[Any] = None
    replicas: Optional[int] = None
    restart_policy: Optional[RestartPolicy] = None

    def __post_init__(self):
        _replica_checks("Worker", self)
        _check_int("Worker", "replicas", self.replicas, 1, optional=True)


@_strict_init
@dataclass
class Master:
    """The Master replica group; it always has exactly one replica."""

    image: Optional[str] = None
    requests: Optional[Any] = None
    limits: Optional[Any] = None
    restart_policy: Optional[RestartPolicy] = None

    def __post_init__(self):
        _replica_checks("Master", self)


def _replica_checks(owner, spec):
    if spec.image is not None:
        _check_type(owner, "image", spec.image, str, "an image reference string or None")
        if not spec.image.strip():
            _fail(InvalidValue, owner, "image", spec.image, "a non-empty image reference or None")
    _check_resources(owner, "requests", spec.requests)
    _check_resources(owner, "limits", spec.limits)
    _check_enum(owner, "restart_policy", spec.restart_policy, RestartPolicy)


@_strict_init
@dataclass
class PyTorch:
    """A classic PyTorchJob: one Master and ``worker.replicas`` Workers.

    ``num_workers`` is the v0 spelling of ``worker.replicas``; it still works, with a
    ``DeprecationWarning``. Exactly one of the two must be given.
    """

    master: Master = field(default_factory=lambda: Master())
    worker: Worker = field(default_factory=lambda: Worker())
    run_policy: Optional[RunPolicy] = None
    num_workers: Optional[int] = None
    increase_shared_mem: bool = True

    def __post_init__(self):
        _check_type("PyTorch", "master", self.master, Master, "a ptjupyter.Master")
        _check_type("PyTorch", "worker", self.worker, Worker, "a ptjupyter.Worker")
        if self.run_policy is not None:
            _check_type("PyTorch", "run_policy", self.run_policy, RunPolicy, "a ptjupyter.RunPolicy or None")
        _check_int("PyTorch", "num_workers", self.num_workers, 1, optional=True)
        _check_type("PyTorch", "increase_shared_mem", self.increase_shared_mem, bool, "True or False")
        if self.num_workers is not None and self.worker.replicas is not None:
            raise InvalidValue(
                f"PyTorch: num_workers={self.num_workers!r} and worker.replicas={self.worker.replicas!r} are both set; "
                "use only worker.replicas (num_workers is deprecated)"
            )
        if self.num_workers is None and self.worker.replicas is None:
            raise InvalidValue("PyTorch: set worker.replicas (or the deprecated num_workers); neither is set")
        if self.num_workers is not None:
            warnings.warn(
                "PyTorch(num_workers=...) is deprecated; use PyTorch(worker=Worker(replicas=...))",
                DeprecationWarning,
                stacklevel=3,
            )

    @property
    def replicas(self) -> int:
        """Worker replicas, whichever of ``worker.replicas`` and ``num_workers`` set them."""
        return self.worker.replicas if self.worker.replicas is not None else self.num_workers


ELASTIC_DEFAULT_MONITOR_INTERVAL = 5


@_strict_init
@dataclass
class Elastic:
    """torch elastic (``torchrun``) training on one node or, with ``nnodes`` > 1, as a PyTorchJob.

    ``nnodes`` is ``N`` or ``"MIN:MAX"``; ``1``, ``"1"`` and ``"1:1"`` mean a single node, which
    never needs the training operator.
    """

    nnodes: Union[int, str] = 1
    nproc_per_node: int = 1
    start_method: str = "spawn"
    monitor_interval: int = ELASTIC_DEFAULT_MONITOR_INTERVAL
    max_restarts: int = 0
    rdzv_configs: Dict[str, Any] = field(default_factory=lambda: {"timeout": 900, "join_timeout": 900})
    increase_shared_mem: bool = True
    run_policy: Optional[RunPolicy] = None

    def __post_init__(self):
        parse_nnodes(self.nnodes, "Elastic.nnodes")
        _check_int("Elastic", "nproc_per_node", self.nproc_per_node, 1)
        if self.start_method not in START_METHODS:
            _fail(InvalidValue, "Elastic", "start_method", self.start_method, " | ".join(START_METHODS))
        if isinstance(self.monitor_interval, bool) or not isinstance(self.monitor_interval, (int, float)) \
                or not self.monitor_interval > 0:
            _fail(InvalidValue, "Elastic", "monitor_interval", self.monitor_interval, "a number of seconds > 0")
        _check_int("Elastic", "max_restarts", self.max_restarts, 0)
        _check_type("Elastic", "rdzv_configs", self.rdzv_configs, dict, "a dict of rendezvous settings")
        _check_type("Elastic", "increase_shared_mem", self.increase_shared_mem, bool, "True or False")
        if self.run_policy is not None:
            _check_type("Elastic", "run_policy", self.run_policy, RunPolicy, "a ptjupyter.RunPolicy or None")

    @property
    def min_nodes(self) -> int:
        return parse_nnodes(self.nnodes)[0]

    @property
    def max_nodes(self) -> int:
        return parse_nnodes(self.nnodes)[1]
