"""flytekit task plugin for ptjupyter's ``PyTorch`` and ``Elastic`` configs (drop-in for flytekitplugins-kfpytorch).

``@task(task_config=Elastic(...))`` / ``@task(task_config=PyTorch(...))`` build the task classes below.
flytekit imports this package through the ``flytekit.plugins`` entry point, so ``import flytekit`` is enough.

Differences from the upstream plugin, all deliberate:

- The task type, the PyTorchJob custom and the shared-memory pod template are derived from the
  *current* config at every serialization, through :func:`ptjupyter.plan.resolve` (target ``k8s``):
  mode ``POD`` -> ``"python-task"``, mode ``PYTORCHJOB`` -> ``"pytorch"``. ``nnodes`` ``1``, ``"1"``
  and ``"1:1"`` are all single-node.
- ``node.with_overrides(task_config=...)`` changes *that node only*: the node gets its own variant
  of the task (named ``<task>-cfg<hash>``, carrying the config to the pod through
  :data:`config_override_resolver`); the task object and its other nodes keep their config.
  flytekit's own ``Node.with_overrides`` assigns the new config to the task object shared by all
  of its nodes.
- Local execution goes through :func:`ptjupyter.execute.execute`: a world size of one is a direct
  call, ``nproc_per_node > 1`` an in-process elastic launch, several nodes a one-line error. An
  ``Elastic`` task's direct call with ``start_method`` ``"spawn"``/``"forkserver"`` still runs in a
  flytekit context rebuilt from the environment (execution id, checkpoint), as upstream's spawned
  worker does; with ``"fork"`` it keeps the caller's, as upstream's forked worker does.
- The ``rdzv_configs`` dict given to torch is a copy: torch's ``LaunchConfig`` adds ``timeout=900``
  to the dict it gets, and upstream hands it the config's own dict, which a run thus changes.

As upstream, a rank's error is a ``FlyteRecoverableException`` (Flyte retries it) when the rank
raised one or a subclass, else a ``FlyteUserRuntimeException`` (its ``value`` is ptjupyter's
:class:`~ptjupyter.errors.RankFailed`); both carry the time of the rank's error as ``timestamp``.
A direct call (one process) raises the function's own error, as a plain flytekit task does.

Local workflow runs: flytekit executes a task the moment it is called in a locally running
``@workflow``/``@dynamic``, so a ``.with_overrides(task_config=...)`` on its result comes too late
there (it applies when the workflow is serialized: ``pyflyte register``/``run --remote`` or a
``@dynamic`` running on a cluster). ptjupyter warns when that happens. To switch the config of a
call that runs locally as well, call a variant: ``train.with_task_config(Elastic(...))(x=1)``.
"""
import logging

from .. import __version__
from ..plan import PREFIX
from .overrides import ConfigOverrideResolver, config_override_resolver, decode_config, encode_config
from .tasks import ElasticFunctionTask, PyTorchFunctionTask

__all__ = [
    "PyTorchFunctionTask", "ElasticFunctionTask", "ConfigOverrideResolver", "config_override_resolver",
    "encode_config", "decode_config",
]

logging.getLogger("ptjupyter").debug("%s plugin loaded: ptjupyter.flyte %s (task type follows the current config)",
                                     PREFIX, __version__)
