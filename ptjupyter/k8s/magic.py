"""Registers the ``%pytorch_elastic_jobs`` line magic (list / attach / cancel ptjupyter's jobs).

The extension loader calls ``register(ipython)``; state lives nowhere but the cluster.
"""
from __future__ import annotations

__all__ = ["register", "pytorch_elastic_jobs"]


def pytorch_elastic_jobs(line: str = ""):
    """%pytorch_elastic_jobs [list] | attach NAME [--tail N] | cancel NAME   [-n NAMESPACE] [--context CTX]"""
    from .jobs import main

    return main(line, print)


def register(ipython) -> None:
    ipython.register_magic_function(pytorch_elastic_jobs, "line", "pytorch_elastic_jobs")
