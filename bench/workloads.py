"""The two benchmark workloads, identical for every launcher.

Each prints ``BENCH_FIRST <unix time>`` from rank 0 as its first line, so the runner can measure
the latency from the launch call to rank 0's first line, and returns a small value.
"""
import os
import time


def _first_line():
    if os.environ.get("RANK", "0") == "0":
        print(f"BENCH_FIRST {time.time():.6f}", flush=True)


def hello():
    """Init a gloo process group, one barrier, rank 0 prints a line."""
    _first_line()
    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    rank = dist.get_rank()
    if rank == 0:
        print(f"hello from rank 0 of {dist.get_world_size()}", flush=True)
    dist.destroy_process_group()
    return rank


def train(steps: int = 50):
    """A small DDP MLP for ``steps`` steps, then one all_reduce of 1M floats; rank 0 reports steps/s."""
    _first_line()
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    big = torch.ones(1_000_000)
    dist.all_reduce(big)
    elapsed = time.perf_counter() - t0
    if dist.get_rank() == 0:
        print(f"BENCH_TRAIN {steps / elapsed:.3f}", flush=True)
    dist.barrier()  # nobody tears gloo down while a peer still talks to it
    dist.destroy_process_group()
    return round(float(loss), 4)


WORKLOADS = {"hello": hello, "train": train}
