"""``%pytorch_elastic_jobs``: list ptjupyter's jobs, reattach to one, cancel one (the magic is in magic.py).

    %pytorch_elastic_jobs [list] [-n NAMESPACE] [--context CTX]
    %pytorch_elastic_jobs attach NAME [--tail N] [-n NAMESPACE] [--context CTX]
    %pytorch_elastic_jobs cancel NAME [-n NAMESPACE] [--context CTX]
"""
from __future__ import annotations

import argparse
import datetime
import shlex
from typing import Any, Callable, Optional

from .errors import K8sError
from .manifest import LABEL_MANAGED, secret_name
from .ref import JobRef
from .status import job_state

__all__ = ["main", "list_jobs", "find", "attach", "cancel", "USAGE", "parse"]

USAGE = __doc__.split("\n\n", 1)[1]
RESOURCES = ("trainjobs", "pytorchjobs", "jobs")


def list_jobs(kube) -> list:
    """Rows (name, kind, state, age, message) of the namespace's ptjupyter jobs, newest first."""
    rows = []
    for resource in RESOURCES:
        try:
            data = kube.request("GET", resource, query=[("labelSelector", f"{LABEL_MANAGED}=ptjupyter")])
        except K8sError as e:
            if e.status == 404 and resource != "jobs":
                continue  # no training operator on this cluster: only plain Jobs can exist
            raise
        for obj in data.get("items") or []:
            md = obj.get("metadata") or {}
            state, _, message = job_state(obj, resource)
            rows.append((md.get("name", "?"), JobRef("", "", resource).kind, state,
                         md.get("creationTimestamp", ""), message))
    rows.sort(key=lambda r: r[3], reverse=True)
    return rows


def _age(ts: str) -> str:
    try:
        t = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "?"
    s = int((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds())
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h" if s < 172800 else f"{s // 86400}d"


def find(kube, name: str) -> JobRef:
    """The ptjupyter job ``name`` (a PyTorchJob or a Job) in the namespace."""
    for resource in RESOURCES:
        try:
            obj = kube.request("GET", resource, name)
        except K8sError as e:
            if e.status == 404:
                continue
            raise
        return JobRef.from_object(obj, resource, kube.namespace)
    raise K8sError(f"job {name!r} not found in namespace {kube.namespace!r}; list them with %pytorch_elastic_jobs",
                   status=404)


def attach(kube, name: str, tail: Optional[int] = None, sink=None, out: Callable[[str], Any] = print) -> Any:
    """Follow an existing job (logs from the start, or the last ``tail`` lines of each pod)."""
    from .follow import Follower

    ref = find(kube, name)
    return Follower(kube, ref, sink=sink, out=out, tail=tail).run()


def cancel(kube, name: str, out: Callable[[str], Any] = print) -> None:
    """Delete the job (its pods and payload Secret go with it)."""
    ref = find(kube, name)
    kube.request("DELETE", ref.resource, name, body={"kind": "DeleteOptions", "apiVersion": "v1",
                                                      "propagationPolicy": "Background"})
    try:  # owned by the job already; delete explicitly in case the submit was cut before the ownerReference
        kube.request("DELETE", "secrets", secret_name(name), attempts=2)
    except K8sError as e:
        if e.status != 404:
            raise
    out(f"[ptjupyter] cancelled {ref.namespace}/{name}: job, pods and payload Secret deleted")


def _usage_line() -> str:
    return " | ".join(line.strip() for line in USAGE.strip().splitlines())


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no SystemExit inside a kernel
        from ..usage import OptionError

        raise OptionError(f"%pytorch_elastic_jobs: {message}; usage: {_usage_line()}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="%pytorch_elastic_jobs", add_help=False)
    p.add_argument("command", nargs="?", default="list", choices=("list", "attach", "cancel"))
    p.add_argument("name", nargs="?")
    p.add_argument("--tail", type=int, default=None)
    p.add_argument("-n", "--namespace", default=None)  # None: the kubeconfig context's, as for a cell
    p.add_argument("--context", default=None)
    return p


def parse(line: str) -> argparse.Namespace:
    """The subcommand and options of ``line``; ``ptjupyter.usage.OptionError`` (one line) when not accepted."""
    from ..cluster import K8sOptions
    from ..usage import OptionError

    try:
        words = shlex.split(line or "")
    except ValueError as e:  # an unclosed quote
        raise OptionError(f"%pytorch_elastic_jobs: {e}; usage: {_usage_line()}") from None
    args = _parser().parse_args(words)
    try:
        K8sOptions(namespace=args.namespace)  # the same one-line check as everywhere else
    except (TypeError, ValueError) as e:
        raise OptionError(str(e).splitlines()[0]) from None
    if args.command in ("attach", "cancel") and not args.name:
        raise OptionError(f"%pytorch_elastic_jobs {args.command}: NAME is missing; list the jobs with "
                          "%pytorch_elastic_jobs")
    if args.tail is not None and args.tail < 0:
        raise OptionError(f"--tail={args.tail!r} is not accepted; expected a number of lines >= 0")
    return args


def main(line: str, out: Callable[[str], Any] = print, api_client=None, sink=None) -> Any:
    """Entry point of the line magic; returns the reattached job's rank-0 value for ``attach``.

    ``OptionError`` for a bad line (before connecting), ``K8sError``/``JobFailed`` from the cluster.
    """
    from .client import connect

    args = parse(line)
    kube = connect(args.namespace, args.context, api_client)
    if args.command == "attach":
        return attach(kube, args.name, args.tail, sink=sink, out=out)
    if args.command == "cancel":
        return cancel(kube, args.name, out=out)
    rows = list_jobs(kube)
    if not rows:
        out(f"no ptjupyter jobs in namespace {kube.namespace!r}")
        return None
    w = max(len(r[0]) for r in rows)
    out(f"{'NAME':<{w}}  {'KIND':<10}  {'STATE':<10}  {'AGE':>5}  MESSAGE")
    for name, kind, state, created, message in rows:
        out(f"{name:<{w}}  {kind:<10}  {state:<10}  {_age(created):>5}  {message}")
    return None
