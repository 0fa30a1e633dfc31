"""``--log-dir``: every rank's complete stdout/stderr kept as files, in torchrun's layout.

``keep(run_dir, log_dir)`` copies the run's per-rank files (``r{rank}.a{attempt}.out|err``, see
``worker.py``) to ``log_dir/<run>/attempt_{attempt}/{rank}/stdout.log|stderr.log`` (``<run>``: the cell's
start time and a short id) and returns that run folder. Shown or filtered, every line is there.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import uuid

__all__ = ["keep", "run_folder", "log_file"]

_NAME = re.compile(r"^r(\d+)\.a(\d+)\.(out|err)$")


def run_folder(log_dir: str) -> str:
    return os.path.join(log_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")


def log_file(folder: str, rank: int, attempt: int = 0, stream: str = "stderr") -> str:
    return os.path.join(folder, f"attempt_{attempt}", str(rank), f"{stream}.log")


def keep(run_dir: str, folder: str) -> str:
    """Copy the run's output files into ``folder`` (created); returns it."""
    os.makedirs(folder, exist_ok=True)
    for name in sorted(os.listdir(run_dir)):
        m = _NAME.match(name)
        if not m:
            continue
        dest = log_file(folder, int(m.group(1)), int(m.group(2)), "stdout" if m.group(3) == "out" else "stderr")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(run_dir, name), dest)
    return folder
