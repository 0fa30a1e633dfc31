"""ptjupyter: PyTorch distributed (torch elastic) training from a Jupyter cell, locally or on Kubernetes.

``%load_ext ptjupyter`` registers the ``%%pytorch_elastic`` magic. The kfpytorch-compatible task
configs (``PyTorch``, ``Elastic``, ...) work with flytekit's ``@task(task_config=...)``.
Importing this package imports no torch, flytekit or kubernetes.
"""
from .config import CleanPodPolicy, Elastic, Master, PyTorch, RestartPolicy, RunPolicy, Worker
from .errors import PtjupyterError
from .execute import execute
from .plan import Layer, Mode, Plan, resolve, set_debug

__all__ = [
    "PyTorch", "Elastic", "Worker", "Master", "RunPolicy", "RestartPolicy", "CleanPodPolicy",
    "Plan", "Mode", "Layer", "resolve", "execute", "set_debug", "PtjupyterError",
    "load_ipython_extension", "unload_ipython_extension",
]
__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """``%load_ext ptjupyter``: register the ``%%pytorch_elastic`` magics on this shell."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):
    """``%unload_ext ptjupyter``: remove the magics from this shell."""
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)
