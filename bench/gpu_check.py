"""GPU check for a machine that has GPUs: ``python bench/gpu_check.py [--steps N] [--json FILE]``.

(a) NCCL all_reduce across one rank per visible GPU (ptjupyter's library call); (b) a DDP step loop
through ``%%pytorch_elastic --nproc-per-node gpu`` in a real kernel against ``torchrun --standalone
--nproc-per-node gpu`` on the same script (steps/s ratio, wall ratio); (c) the kernel holds no CUDA context
after the cells; (d) an interrupt frees every rank's GPU memory (no process of the kernel left on a GPU
after 2 s). Without a GPU it prints one line and exits 0. GPUs are counted without a CUDA context.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DDP = r'''
import os, time, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
local = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local)
dist.init_process_group("nccl")
model = DDP(torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).cuda(),
            device_ids=[local])
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(256, 1024, device="cuda")
for i in range(STEPS + 10):
    if i == 10:
        torch.cuda.synchronize(); t = time.perf_counter()
    opt.zero_grad(); model(x).square().mean().backward(); opt.step()
torch.cuda.synchronize()
rate = STEPS / (time.perf_counter() - t)
if dist.get_rank() == 0:
    print(f"steps/s {rate:.1f}", flush=True)
dist.destroy_process_group()
'''


def allreduce():
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    t = torch.ones(1 << 20, device="cuda")
    dist.all_reduce(t)
    torch.cuda.synchronize()
    value = t[0].item()
    dist.destroy_process_group()
    return value


def gpu_pids() -> set:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=30).stdout
    return {int(p) for p in out.split() if p.strip().isdigit()}


def kernel_cell(kc, code: str, timeout: float = 300) -> tuple:
    msg_id = kc.execute(code)
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=timeout)
    return reply["content"], "".join(out)


def main(argv=None) -> int:
    from ptjupyter.devices import gpu_count

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    n = gpu_count()
    if n == 0:
        print("gpu_check: skipped: no GPU visible (NVML / CUDA_VISIBLE_DEVICES)")
        return 0
    res: dict = {"gpus": n}
    from ptjupyter import Layer, execute, resolve

    t = time.perf_counter()
    value = execute(resolve(layers=[Layer("gpu_check", {"nproc_per_node": "gpu"})]), allreduce)
    res["a_allreduce"] = {"ok": value == float(n), "value": value, "wall_s": round(time.perf_counter() - t, 2)}

    script = DDP.replace("STEPS", str(args.steps))
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "gpu",
                          f.name], capture_output=True, text=True, timeout=600)
    tr_wall = time.perf_counter() - t
    tr_rate = float(re.search(r"steps/s ([\d.]+)", run.stdout).group(1))

    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kernel_cell(kc, "%load_ext ptjupyter")
        kernel_cell(kc, "%%pytorch_elastic --nproc-per-node gpu\n" + script)  # first cell: start-up
        t = time.perf_counter()
        content, out = kernel_cell(kc, "%%pytorch_elastic --nproc-per-node gpu\n" + script)
        pj_wall = time.perf_counter() - t
        pj_rate = float(re.search(r"steps/s ([\d.]+)", out).group(1))
        res["b_ddp"] = {"torchrun_steps_s": tr_rate, "ptjupyter_steps_s": pj_rate,
                        "steps_ratio": round(pj_rate / tr_rate, 3), "torchrun_wall_s": round(tr_wall, 2),
                        "ptjupyter_wall_s": round(pj_wall, 2), "wall_ratio": round(pj_wall / tr_wall, 3)}
        _, ctx = kernel_cell(kc, "import sys; print('cuda ctx', 'torch' in sys.modules and "
                                 "sys.modules['torch'].cuda.is_initialized())")
        kernel_pid = km.provisioner.process.pid if km.provisioner else None
        res["c_no_cuda_context"] = {"ok": "cuda ctx False" in ctx and kernel_pid not in gpu_pids()}

        hold = ("%%pytorch_elastic --nproc-per-node gpu\nimport os, time, torch\n"
                "torch.cuda.set_device(int(os.environ['LOCAL_RANK']))\nx = torch.empty(1 << 28, device='cuda')\n"
                "print('ready', flush=True)\ntime.sleep(300)\n")
        msg_id, ready, deadline = kc.execute(hold), 0, time.monotonic() + 120
        while ready < n and time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                ready += msg["content"]["text"].count("] ready")
        before = gpu_pids()
        km.interrupt_kernel()
        t = time.monotonic()
        while gpu_pids() and time.monotonic() - t < 2.0:
            time.sleep(0.1)
        left = gpu_pids()
        res["d_interrupt_frees_gpus"] = {"ok": not left, "on_gpu_before": len(before), "left_after_2s": sorted(left),
                                         "freed_s": round(time.monotonic() - t, 2)}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        os.unlink(f.name)
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as out_f:
            json.dump(res, out_f, indent=1)
    ok = all(v.get("ok", True) for v in res.values() if isinstance(v, dict))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
