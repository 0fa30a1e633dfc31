"""Per-node task configs: every place ptjupyter reaches into flytekit's node and promise objects.

flytekit's ``Node.with_overrides(task_config=...)`` assigns the config to the task object, which
all nodes calling that task share (and which a pod never sees: it imports the task afresh). Here
a node of a ptjupyter task is given :class:`_PerNodeConfigNode` as its class, whose
``with_overrides(task_config=...)`` swaps in a *variant* of the task for that node only. The
variant (``<task>-cfg<hash>``) carries its config to the pod through
:data:`config_override_resolver`, which encodes it with :func:`encode_config`.

In a local run a task has already run when ``.with_overrides`` is called on its result: the
promise classes below warn about it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import warnings
from enum import Enum
from typing import Dict, List, Optional, Union

from flytekit import Resources
from flytekit.configuration import SerializationSettings
from flytekit.core.base_task import TaskResolverMixin
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.node import Node
from flytekit.core.promise import Promise, VoidPromise

from ..config import CleanPodPolicy, Elastic, Master, PyTorch, RestartPolicy, RunPolicy, Worker
from ..plan import PREFIX

__all__ = ["PerNodeConfig", "ConfigOverrideResolver", "config_override_resolver", "encode_config", "decode_config"]

logger = logging.getLogger("ptjupyter")
RESOLVER_LOCATION = "ptjupyter.flyte.config_override_resolver"  # in registered tasks' loader args: do not change
_COMPILE = 1  # flytekit's CompilationState mode while a workflow is compiled


class PerNodeConfig:
    """Mixin of the ptjupyter task classes: per-node ``with_overrides(task_config=...)`` and ``with_task_config``.

    The task class provides ``_class_for(config)``: the task class that runs a config.
    """

    _ptj_origin: Optional["PerNodeConfig"] = None  # the task a variant was made from

    def _ptj_init(self, init_kwargs: dict) -> None:
        self._ptj_init_kwargs = dict(init_kwargs)  # to build variants with another config
        self._ptj_variants: Dict[str, PerNodeConfig] = {}

    def with_task_config(self, task_config: Union[Elastic, PyTorch]):
        """This task with another config: the task itself when the config is equal, else a variant.

        The variant runs the same function and is named ``<task name>-cfg<hash of the config>``; it
        carries its config to the pod through :data:`config_override_resolver`. Variants are cached
        per config, so two nodes with the same override share one task.
        """
        origin = self._ptj_origin or self
        if not isinstance(task_config, (Elastic, PyTorch)):
            raise TypeError(
                f"task_config={task_config!r} is not accepted for task {origin.name}; "
                "expected a ptjupyter.Elastic or ptjupyter.PyTorch"
            )
        if task_config == origin.task_config and type(task_config) is type(origin.task_config):
            return origin
        digest = hashlib.sha256(encode_config(task_config).encode()).hexdigest()[:10]
        variant = origin._ptj_variants.get(digest)
        if variant is None or variant.task_config != task_config:
            kwargs = {k: v for k, v in origin._ptj_init_kwargs.items() if k != "task_resolver"}
            cls = origin._class_for(task_config)
            variant = cls(task_config=task_config, task_function=origin.task_function, **kwargs)
            # set after construction: inside a workflow's compilation flytekit would pick the workflow as resolver
            variant._task_resolver = config_override_resolver
            variant._instantiated_in = origin.instantiated_in  # else flytekit prefixes the name with our caller
            variant._name = f"{origin.name}-cfg{digest}"
            variant._ptj_origin = origin
            origin._ptj_variants[digest] = variant
        return variant

    def __call__(self, *args, **kwargs):
        cs = FlyteContextManager.current_context().compilation_state
        start = len(cs.nodes) if cs is not None and cs.mode == _COMPILE else None
        out = super().__call__(*args, **kwargs)
        if start is not None:
            for node in cs.nodes[start:]:
                if node.flyte_entity is self and type(node) is Node:
                    node.__class__ = _PerNodeConfigNode  # its with_overrides(task_config=) swaps in a variant
        return out

    def local_execute(self, ctx, **kwargs):
        out = super().local_execute(ctx, **kwargs)
        for p in out if isinstance(out, tuple) else (out,):
            if type(p) is Promise:
                p.__class__ = _RanLocallyPromise
                p._ptj_task = self
            elif type(p) is VoidPromise:
                p.__class__ = _RanLocallyVoidPromise
                p._ptj_task = self
        return out


_NODE_OVERRIDES = inspect.signature(Node.with_overrides)


class _PerNodeConfigNode(Node):
    """A node of a ptjupyter task: ``with_overrides(task_config=...)`` gives this node its own task variant."""

    def with_overrides(self, *args, **kwargs):
        bound = _NODE_OVERRIDES.bind(self, *args, **kwargs)
        task_config = bound.arguments.get("task_config")
        if task_config is not None:
            bound.arguments["task_config"] = None
            variant = self.flyte_entity.with_task_config(task_config)
            logger.debug(
                "%s with_overrides: node %s task_config=%r -> task %s (type %s)",
                PREFIX, self.id, task_config, variant.name, variant.task_type,
            )
            self._flyte_entity = variant
        return Node.with_overrides(*bound.args, **bound.kwargs)


def _warn_too_late(task, kwargs):
    if kwargs.get("task_config") is not None:
        warnings.warn(
            f"with_overrides(task_config=...) on a result of {task.name} has no effect here: in a local run "
            f"the task already ran, with task_config={task.task_config!r}. Overrides apply when the workflow is "
            f"serialized (pyflyte register / run --remote, a @dynamic on the cluster); to switch locally too, call "
            f"{task.name.rsplit('.', 1)[-1]}.with_task_config(config)(...)",
            UserWarning,
            stacklevel=3,
        )


class _RanLocallyPromise(Promise):
    def with_overrides(self, *args, **kwargs):
        _warn_too_late(self._ptj_task, kwargs)
        return super().with_overrides(*args, **kwargs)


class _RanLocallyVoidPromise(VoidPromise):
    def with_overrides(self, *args, **kwargs):
        _warn_too_late(self._ptj_task, kwargs)
        return super().with_overrides(*args, **kwargs)


# -- carrying a per-node config to the pod --------------------------------------------------------

_CODEC_CLASSES = {c.__name__: c for c in (Elastic, PyTorch, Worker, Master, RunPolicy, Resources)}
_CODEC_ENUMS = {e.__name__: e for e in (RestartPolicy, CleanPodPolicy)}


def _encode(value):
    if isinstance(value, Enum) and _CODEC_ENUMS.get(type(value).__name__) is type(value):
        return {"$enum": type(value).__name__, "name": value.name}
    if dataclasses.is_dataclass(value) and _CODEC_CLASSES.get(type(value).__name__) is type(value):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"$type": type(value).__name__, **fields}
    if isinstance(value, dict):
        return {"$dict": {str(k): _encode(v) for k, v in value.items()}}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"task_config value {value!r} ({type(value).__name__}) cannot be sent to the pod; expected JSON data"
    )


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "$enum" in value:
        return _CODEC_ENUMS[value["$enum"]][value["name"]]
    if "$dict" in value:
        return {k: _decode(v) for k, v in value["$dict"].items()}
    if "$tuple" in value:
        return tuple(_decode(v) for v in value["$tuple"])
    fields = {k: _decode(v) for k, v in value.items() if k != "$type"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # num_workers warned when the user wrote it
        return _CODEC_CLASSES[value["$type"]](**fields)


def encode_config(config: Union[Elastic, PyTorch]) -> str:
    """A config as compact, deterministic JSON (what a variant's pod receives)."""
    return json.dumps(_encode(config), sort_keys=True, separators=(",", ":"))


def decode_config(text: str) -> Union[Elastic, PyTorch]:
    """The inverse of :func:`encode_config`."""
    return _decode(json.loads(text))


class ConfigOverrideResolver(TaskResolverMixin):
    """Loads a per-node task variant in the pod: the original task (through its own resolver) + the node's config.

    Loader args: ``ptjupyter-task-config <json> base-resolver <location> <the base resolver's args...>``.
    """

    @property
    def location(self) -> str:
        return RESOLVER_LOCATION

    def name(self) -> str:
        return "ptjupyter.ConfigOverrideResolver"

    def loader_args(self, settings: SerializationSettings, t) -> List[str]:
        origin = t._ptj_origin
        if origin is None:
            raise ValueError(f"task {t.name} is not a per-node variant of a ptjupyter task")
        base = origin.task_resolver
        return [
            "ptjupyter-task-config", encode_config(t.task_config), "base-resolver", base.location,
            *base.loader_args(settings, origin),
        ]

    def load_task(self, loader_args: List[str]):
        from flytekit.tools.module_loader import load_object_from_module

        if len(loader_args) < 4 or loader_args[0] != "ptjupyter-task-config" or loader_args[2] != "base-resolver":
            raise ValueError(
                f"loader args {loader_args!r} are not accepted; expected "
                "['ptjupyter-task-config', <json>, 'base-resolver', <location>, ...]"
            )
        base = load_object_from_module(loader_args[3])
        origin = base.load_task(loader_args[4:])
        return origin.with_task_config(decode_config(loader_args[1]))

    def get_all_tasks(self) -> List:
        raise NotImplementedError("per-node variants exist only in the workflows that override a task's config")


config_override_resolver = ConfigOverrideResolver()
