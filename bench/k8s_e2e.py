"""On-demand e2e timings (not part of the test suite): a 2-node TrainJob cell vs a 2-node PyTorchJob cell against the
fake API server + fake operators on 127.0.0.1 (tests/k8s), 3 runs each, interleaved, in one process.

    .venv/bin/python bench/k8s_e2e.py [--runs 3]

Prints, per API, submit -> first log line and the whole cell's wall time (medians), side by side.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "k8s"))

import cloudpickle  # noqa: E402
import fake_k8s  # noqa: E402
import k8s_cells  # noqa: E402
from conftest import Recorder  # noqa: E402

from ptjupyter import Elastic, Layer, resolve  # noqa: E402
from ptjupyter.k8s import run  # noqa: E402


def one(fake, api: str, i: int) -> tuple:
    plan = resolve(Elastic(nnodes=2, monitor_interval=0.5),
                   [Layer("bench", {"image": "local/python:3.11", "api": api, "job_name": f"ptj-bench-{api[:2]}-{i}"})],
                   target="k8s")
    rec, submitted = Recorder(), []

    def say(line):
        if line.startswith("[ptjupyter] submitted "):
            submitted.append(time.monotonic())

    client = fake.api_client()
    try:
        t0 = time.monotonic()
        value = run(plan, k8s_cells.ddp_sum, api_client=client, sink=rec, out=say)
        wall = time.monotonic() - t0
    finally:
        client.close()
    assert value == {"sum": 3.0, "world": 2}, value
    first = rec.t0 + rec.lines[0][0]  # the sink's clock started just before t0
    return first - submitted[0], wall


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    n = ap.parse_args().runs
    cloudpickle.register_pickle_by_value(k8s_cells)  # like a notebook cell: the pods do not have this module
    res: dict = {"trainjob": [], "pytorchjob": []}
    with fake_k8s.FakeK8s(trainer=True) as fake:  # both operators served; --api picks one per cell
        for i in range(n):
            for api in ("trainjob", "pytorchjob"):
                first, wall = one(fake, api, i)
                res[api].append((first, wall))
                print(f"run {i + 1} {api:10s}: submit -> first log line {first:.2f} s, wall {wall:.2f} s", flush=True)
    print(f"\nmedians of {n} (2 nodes x 1 process, ddp_sum cell)   TrainJob   PyTorchJob")
    for label, k in (("submit -> first log line (s)", 0), ("wall (s)", 1)):
        tj, pj = (statistics.median(r[k] for r in res[a]) for a in ("trainjob", "pytorchjob"))
        print(f"{label:44s} {tj:8.2f}   {pj:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
