"""How many GPUs and CPUs this process may use, without creating a CUDA context (or importing torch).

``gpu_count()``: ``CUDA_VISIBLE_DEVICES`` when set (as CUDA reads it: entries up to the first invalid or
negative one), else NVML's device count (``libnvidia-ml``, through ctypes), else 0. Never
``torch.cuda.device_count()`` in the kernel: a CUDA context there breaks every later fork.
``cpu_count()``: the CPUs in this process's affinity mask, capped by a cgroup v2 ``cpu.max`` quota.
"""
from __future__ import annotations

import ctypes
import math
import os
import re
from typing import Mapping, Optional

__all__ = ["gpu_count", "cpu_count", "visible_devices", "nvml_count"]

_ENTRY = re.compile(r"^(\d+|GPU-[0-9A-Za-z-]+|MIG-[0-9A-Za-z/-]+)$")


def visible_devices(value: str) -> int:
    """Devices a ``CUDA_VISIBLE_DEVICES`` value leaves visible (``""``, ``"-1"``: none; ``"0,1,-1,2"``: 2)."""
    n = 0
    for entry in value.split(","):
        entry = entry.strip()
        if not _ENTRY.match(entry):
            break  # CUDA stops at the first invalid entry ("-1" included)
        n += 1
    return n


def nvml_count(lib=None) -> Optional[int]:
    """NVML's GPU count, or None without NVML (no driver). ``lib``: a loaded NVML (tests pass a fake)."""
    if lib is None:
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            return None
    count = ctypes.c_uint(0)
    try:
        if lib.nvmlInit_v2() != 0:
            return None
        try:
            if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
                return None
        finally:
            lib.nvmlShutdown()
    except (AttributeError, OSError):
        return None
    return int(count.value)


def gpu_count(env: Optional[Mapping[str, str]] = None, lib=None) -> int:
    """GPUs a rank started from here would see."""
    env = os.environ if env is None else env
    total = nvml_count(lib)
    if "CUDA_VISIBLE_DEVICES" in env:
        n = visible_devices(env["CUDA_VISIBLE_DEVICES"])
        return min(n, total) if total is not None else n
    return total or 0


def cpu_count(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 ``cpu.max`` quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open(os.path.join(cgroup_root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)
