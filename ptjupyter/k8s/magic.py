"""The ``%pytorch_elastic_jobs`` line magic: list, reattach to or cancel ptjupyter's jobs on a cluster.

Registered by the extension loader with ``ip.register_magics(PytorchElasticJobs)``; state lives nowhere
but the cluster. Importing this module imports IPython, not ``kubernetes``.
"""
from __future__ import annotations

from IPython.core.magic import Magics, line_magic, magics_class

__all__ = ["PytorchElasticJobs"]


@magics_class
class PytorchElasticJobs(Magics):
    """Holds ``%pytorch_elastic_jobs``."""

    @line_magic
    def pytorch_elastic_jobs(self, line: str = ""):
        """List, reattach to or cancel the jobs ``%%pytorch_elastic --target k8s`` submitted.

        Usage::

            %pytorch_elastic_jobs [list] [-n NAMESPACE] [--context CTX]
            %pytorch_elastic_jobs attach NAME [--tail N] [-n NAMESPACE] [--context CTX]
            %pytorch_elastic_jobs cancel NAME [-n NAMESPACE] [--context CTX]

        list
            Name, kind, state, age and message of each ptjupyter job in the namespace, newest first.
        attach NAME
            Follow the job like the cell that submitted it (live logs, status line) and return rank 0's
            value. ``--tail N``: start from the last N lines of each pod instead of the beginning.
            Interrupting stops following only; the job keeps running.
        cancel NAME
            Delete the job, its pods and its payload Secret.

        ``-n/--namespace``: the namespace (default: the kubeconfig context's, as for a cell and kubectl).
        ``--context``: the kubeconfig context (default: the current one).
        """
        __tracebackhide__ = True  # noqa: F841
        from .jobs import main

        try:
            return main(line, print)
        except KeyboardInterrupt:
            # the follower printed how to reattach; one line instead of the follower's frames
            raise KeyboardInterrupt("stopped following; the job keeps running") from None

