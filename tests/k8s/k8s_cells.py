"""Cell functions shipped to the fake operator's pods (pickled by value, like a notebook cell)."""
import os
import sys
import time


def hello():
    """One process (POD mode, direct): a few lines on both streams, then a value."""
    for i in range(3):
        print(f"hello {i}", flush=True)
        time.sleep(0.2)
    print("to stderr", file=sys.stderr, flush=True)
    return {"answer": 42, "pid": os.getpid() > 0}


def ddp_sum():
    """Every rank: all_reduce over gloo; lines spaced in time (to see them arrive live); rank 0 returns."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    for i in range(4):
        print(f"rank {rank} step {i}", flush=True)
        time.sleep(0.4)
    dist.destroy_process_group()
    return {"sum": t.item(), "world": world} if rank == 0 else None


def fail_rank1():
    """Rank 1 raises after a line; rank 0 would wait in a barrier."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    print(f"rank {rank} started", flush=True)
    if rank == 1:
        raise ValueError("boom on rank 1")
    time.sleep(30)
    return "unreachable"


def slow(n=40):
    def run():
        for i in range(n):
            print(f"tick {i}", flush=True)
            time.sleep(0.25)
        return n
    return run


def big_result():
    return b"x" * (100 * 1024)


def fail_direct():
    print("about to fail", flush=True)
    raise KeyError("missing-key")


def corrupt_result():
    """Prints a result marker of this job that is not base64, then ends before the real one is written."""
    import json

    with open(os.path.join(os.environ["PTJUPYTER_PAYLOAD"], "meta.json")) as f:
        nonce = json.load(f)["nonce"]
    print("working", flush=True)
    print(f"##ptjupyter-result {nonce} 1/1 !!!not-base64", flush=True)
    os._exit(0)
