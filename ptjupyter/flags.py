"""Values of torchrun-style options, checked and turned into plan facts (used by :func:`ptjupyter.plan.resolve`).

Each function takes the value and where it came from, and raises a one-line ``InvalidValue``/``InvalidType``
naming the option, the value and what is accepted.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

from .errors import InvalidType, InvalidValue

__all__ = ["nproc_per_node", "rdzv_conf", "ranks", "grace", "log_dir", "gpus", "NPROC_WORDS", "check_run_options"]

NPROC_WORDS = ("auto", "gpu", "cpu")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def nproc_per_node(value: Any, source: str, *, target: str, gpus: Optional[int], env: Mapping[str, str]):
    """``(n, how)`` from ``N``, ``"N"``, ``"gpu"`` (visible GPUs), ``"cpu"`` (usable CPUs) or ``"auto"``."""
    accepted = "an int >= 1, or auto, gpu, cpu"
    if isinstance(value, int) and not isinstance(value, bool):
        return value, None  # Elastic's own check names a bad int
    if not isinstance(value, str):
        raise InvalidType(f"nproc_per_node={value!r} (from {source}) is not accepted; expected {accepted}")
    word = value.strip().lower()
    if word.isdigit():
        return int(word), None
    if word not in NPROC_WORDS:
        raise InvalidValue(f"nproc_per_node={value!r} (from {source}) is not accepted; expected {accepted}")
    if target == "k8s":  # this machine's devices say nothing about the cluster's nodes
        if word != "cpu" and gpus:
            return gpus, f"{word} -> --gpus {gpus}"
        raise InvalidValue(f"nproc_per_node={value!r} (from {source}) is not accepted with target='k8s'"
                           + (": set --gpus N (then nproc_per_node defaults to N)" if word != "cpu"
                              else "; expected a number of processes per pod"))
    from .devices import cpu_count, gpu_count

    n_gpu = gpu_count(env) if word in ("gpu", "auto") else 0
    if word == "gpu":
        if not n_gpu:
            raise InvalidValue(f"nproc_per_node={value!r} (from {source}) is not accepted: no GPU is visible "
                               "(NVML, CUDA_VISIBLE_DEVICES); use a number or cpu")
        return n_gpu, f"gpu -> {n_gpu} visible GPUs"
    if n_gpu:
        return n_gpu, f"auto -> {n_gpu} visible GPUs"
    n_cpu = cpu_count()
    return n_cpu, f"{word} -> {n_cpu} usable CPUs"


def rdzv_conf(value: Any, source: str, base: Mapping[str, Any]) -> dict:
    """``"timeout=60,join_timeout=30"`` merged over ``base`` (torchrun's ``--rdzv-conf``); a mapping replaces it."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        raise InvalidType(f"rdzv_configs={value!r} (from {source}) is not accepted; expected 'key=value,...' or a dict")
    out = dict(base)
    for item in filter(None, (p.strip() for p in value.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise InvalidValue(f"rdzv_configs={value!r} (from {source}) is not accepted: {item!r} is not key=value; "
                               "expected 'key=value,...' such as 'timeout=60,join_timeout=30'")
        out[key] = _scalar(raw.strip())
    return out


def _scalar(raw: str):
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def ranks(value: Any, source: str) -> Optional[tuple]:
    """``"0,2"``, ``1`` or ``[0, 2]`` -> ``(0, 2)``: the (local) ranks whose output the cell shows."""
    accepted = "rank numbers >= 0 such as 0 or '0,2'"
    if isinstance(value, bool):
        raise InvalidType(f"ranks={value!r} (from {source}) is not accepted; expected {accepted}")
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, str):
        items = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        raise InvalidType(f"ranks={value!r} (from {source}) is not accepted; expected {accepted}")
    out = []
    for item in items:
        if isinstance(item, str) and item.isdigit():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise InvalidValue(f"ranks={value!r} (from {source}) is not accepted; expected {accepted}")
        out.append(item)
    if not out:
        raise InvalidValue(f"ranks={value!r} (from {source}) is not accepted; expected {accepted}")
    return tuple(sorted(set(out)))


def grace(value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 86400:
        raise InvalidValue(f"grace={value!r} (from {source}) is not accepted; expected seconds between SIGTERM "
                           "and SIGKILL, a number > 0 (and < 86400)")
    return float(value)


def log_dir(value: Any, source: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise InvalidValue(f"log_dir={value!r} (from {source}) is not accepted; expected a directory path")
    path = os.path.abspath(os.path.expanduser(str(value)))
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidValue(f"log_dir={value!r} (from {source}) is not accepted: it is a file; expected a directory")
    return path


def gpus(value: Any, source: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValue(f"gpus={value!r} (from {source}) is not accepted; expected GPUs per node, an int >= 0")
    return value


def check_run_options(run: dict, sources: Mapping[str, str]) -> None:
    """Check (and normalise in place) the options of one run: timeout, fresh, detach, session, ranks, log_dir, grace."""
    timeout = run.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise InvalidValue(f"timeout={timeout!r} (from {sources['timeout']}) is not accepted; expected a number of "
                           "seconds > 0 or None")
    for key in ("fresh", "detach", "session"):
        if key in run and not isinstance(run[key], bool):
            raise InvalidType(f"{key}={run[key]!r} (from {sources[key]}) is not accepted; expected True or False")
    for key in ("ranks", "log_dir", "grace"):
        if key in run:
            run[key] = globals()[key](run[key], sources[key])
