"""One launch of a workload on 2 local processes through one launcher, as a fresh script.

    python bench/peers/launch.py LAUNCHER WORKLOAD [REPEATS]

LAUNCHER: elastic_spawn | elastic_fork | accelerate | flyte_upstream | ptjupyter_lib.
With REPEATS > 1 the same process launches again; each launch prints ``BENCH_CALL <t0> <t1>``
(unix times around the launch call) so warm launches can be timed too.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench.workloads import WORKLOADS  # noqa: E402

NPROC = 2


def elastic(fn, start_method):
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=NPROC, rdzv_backend="c10d",
                       rdzv_endpoint="localhost:0", run_id=str(uuid.uuid4()), max_restarts=0,
                       start_method=start_method)
    return elastic_launch(cfg, fn)()[0]


def accelerate(fn):
    from accelerate import notebook_launcher

    return notebook_launcher(fn, num_processes=NPROC)


def flyte_upstream(fn):
    from flytekit import task
    from flytekitplugins.kfpytorch import Elastic

    return task(task_config=Elastic(nnodes=1, nproc_per_node=NPROC))(fn)()


def ptjupyter_lib(fn):
    from ptjupyter import Elastic, resolve
    from ptjupyter.execute import execute as run

    return run(resolve(Elastic(nproc_per_node=NPROC)), fn)


LAUNCHERS = {
    "elastic_spawn": lambda fn: elastic(fn, "spawn"),
    "elastic_fork": lambda fn: elastic(fn, "fork"),
    "accelerate": accelerate,
    "flyte_upstream": flyte_upstream,
    "ptjupyter_lib": ptjupyter_lib,
}

if __name__ == "__main__":
    launcher, workload = sys.argv[1], sys.argv[2]
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    fn = WORKLOADS[workload]
    if launcher == "flyte_upstream":
        # flytekit wants a typed, module-level task function
        def fn():  # noqa: F811
            WORKLOADS[workload]()
        fn.__qualname__ = fn.__name__ = f"bench_{workload}"
    for _ in range(repeats):
        t0 = time.time()
        LAUNCHERS[launcher](fn)
        print(f"BENCH_CALL {t0:.6f} {time.time():.6f}", flush=True)
