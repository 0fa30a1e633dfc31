"""Wall time of a 2-process gloo hello: torchrun CLI vs ptjupyter's local launcher, in one run.

``python tests/local/scripts/timing.py [REPS]`` prints median/min/max per variant:
- torchrun: ``torchrun --standalone --nproc_per_node=2 hello.py`` (a whole process, like a fresh start);
- first call: a fresh ``python`` that imports ptjupyter and calls ``run`` once (torch not yet imported);
- later calls: the 2nd..6th ``run`` in that same process (warm forkserver).
Not a test: timings are not asserted anywhere.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HELLO = '''
import torch, torch.distributed as dist
def hello():
    dist.init_process_group("gloo")
    dist.barrier()
    r = dist.get_rank()
    if r == 0:
        print("hello from rank 0", flush=True)
    dist.destroy_process_group()
    return r
'''
TORCHRUN = HELLO + "\nhello()\n"
PTJ = '''
import json, sys, time
t0 = time.perf_counter()
from ptjupyter import Layer, resolve
from ptjupyter.execute import execute as run
''' + HELLO.replace("import torch, torch.distributed as dist", "") .replace(
    "def hello():", "def hello():\n    import torch.distributed as dist") + '''
if __name__ == "__main__":
    plan = resolve(layers=[Layer("bench", {"nproc_per_node": 2})])
    times = []
    for i in range(6):
        t = time.perf_counter()
        run(plan, hello)
        times.append(time.perf_counter() - t)
    print(json.dumps({"calls": times}))
'''


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    tmp = tempfile.mkdtemp(prefix="ptj-timing-")
    with open(os.path.join(tmp, "hello_torchrun.py"), "w") as f:
        f.write(TORCHRUN)
    with open(os.path.join(tmp, "hello_ptj.py"), "w") as f:
        f.write(PTJ)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    res = {"torchrun": [], "first": [], "later": []}
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", os.path.join(tmp, "hello_torchrun.py")],
                       check=True, capture_output=True)
        res["torchrun"].append(time.perf_counter() - t)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, os.path.join(tmp, "hello_ptj.py")], check=True, capture_output=True,
                             text=True).stdout
        data = json.loads(out.strip().splitlines()[-1])
        # process start to the first result, measured from outside like torchrun's (the later calls removed)
        res["first"].append(time.perf_counter() - t - sum(data["calls"][1:]))
        res["later"].extend(data["calls"][1:])
    base = statistics.median(res["torchrun"])
    for k, v in res.items():
        print(f"{k:9s} median {statistics.median(v):6.2f} s  min {min(v):6.2f}  max {max(v):6.2f}  "
              f"ratio {statistics.median(v) / base:5.2f}x torchrun  (n={len(v)})")


if __name__ == "__main__":
    main()
