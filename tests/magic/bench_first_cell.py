"""First ``%%pytorch_elastic`` cell in a fresh kernel vs ``torchrun --standalone --nproc_per_node=2``, same code.

    .venv/bin/python tests/magic/bench_first_cell.py [repetitions]

Per repetition, interleaved: torchrun on a script, then a fresh kernel where ``%load_ext ptjupyter`` runs and
the hello cell is submitted (a) at once ("first cell, immediately": the background warm-up is still
importing torch) and, in another fresh kernel, (b) after a 5 s pause ("first cell, after 5 s": the user
typed the cell). The cell's wall time is submit -> kernel idle, as a notebook user sees it; a second cell
in the same kernel is timed too. Prints medians and ratios to torchrun.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

HELLO = """import torch.distributed as dist
dist.init_process_group("gloo")
print(f"hello from rank {dist.get_rank()}")
dist.barrier()
dist.destroy_process_group()
"""


def torchrun(path: str) -> float:
    exe = os.path.join(os.path.dirname(sys.executable), "torchrun")
    t = time.monotonic()
    subprocess.run([exe, "--standalone", "--nproc_per_node=2", path], check=True, capture_output=True)
    return time.monotonic() - t


def first_cell(pause: float) -> tuple[float, float]:
    from magic_helpers import Kernel

    k = Kernel()
    try:
        content, _ = k.run("%load_ext ptjupyter")
        assert content["status"] == "ok"
        time.sleep(pause)
        t = time.monotonic()
        content, _ = k.run("%%pytorch_elastic --nproc-per-node 2\n" + HELLO)
        first = time.monotonic() - t
        assert content["status"] == "ok", content
        t = time.monotonic()
        content, _ = k.run("%%pytorch_elastic --nproc-per-node 2\n" + HELLO)
        second = time.monotonic() - t
        return first, second
    finally:
        k.stop()


def main(reps: int = 3):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(HELLO)
    rows = {"torchrun": [], "first cell, immediately": [], "first cell, after 5 s": [], "second cell": []}
    for _ in range(reps):
        rows["torchrun"].append(torchrun(f.name))
        a, s1 = first_cell(0)
        rows["first cell, immediately"].append(a)
        b, s2 = first_cell(5)
        rows["first cell, after 5 s"].append(b)
        rows["second cell"] += [s1, s2]
    os.unlink(f.name)
    base = statistics.median(rows["torchrun"])
    for name, vals in rows.items():
        med = statistics.median(vals)
        print(f"{name:26s} median {med:5.2f} s  (min {min(vals):.2f}, max {max(vals):.2f}, n={len(vals)})  "
              f"{med / base:.2f}x torchrun")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
