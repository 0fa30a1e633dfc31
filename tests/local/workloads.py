"""Functions the local-launcher tests run on every rank (shipped by value, like notebook code)."""
from __future__ import annotations

import os
import signal
import threading
import time


class Sink:
    """Collects relayed lines per (rank, stream) and state changes; optional per-line hook."""

    def __init__(self, on_line=None):
        self.lines: dict = {}
        self.states: list = []
        self.on_line = on_line
        self.threads: set = set()

    def line(self, rank, stream, text):
        self.threads.add(threading.get_ident())
        self.lines.setdefault((rank, stream), []).append(text)
        if self.on_line is not None:
            self.on_line(rank, stream, text)

    def state(self, rank, state, detail=""):
        self.threads.add(threading.get_ident())
        self.states.append((rank, state, detail))

    def text(self, rank, stream="stdout"):
        return self.lines.get((rank, stream), [])


def rank() -> int:
    return int(os.environ["RANK"])


def allreduce_rank(extra=0):
    """gloo all_reduce of the ranks; returns (sum + extra, pid, the world size)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([dist.get_rank()])
    dist.all_reduce(t)
    print(f"rank {dist.get_rank()} sum {int(t)} pid {os.getpid()}", flush=True)
    world = dist.get_world_size()
    dist.destroy_process_group()
    return int(t) + extra, os.getpid(), world


def env_probe():
    """What a worker sees: a few environment variables and its process group."""
    return {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME", "PTJ_TEST_MARK",
                                            "TORCHELASTIC_RESTART_COUNT")} | {"pgid": os.getpgid(0),
                                                                              "pid": os.getpid()}


def fail_on(bad_rank, kind, lines=0, partial=""):
    """Print ``lines`` lines, then on ``bad_rank`` fail by ``kind``; the other ranks wait at a barrier."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    r = dist.get_rank()
    for i in range(lines):
        print(f"r{r} line {i}")
    if r == bad_rank:
        if partial:
            print(partial, end="", flush=True)
        if kind == "raise":
            raise ValueError(f"boom on rank {r}")
        if kind == "exit":
            os._exit(3)
        if kind == "segv":
            import ctypes

            ctypes.string_at(0)
        if kind == "sigkill-outside":
            print(f"KILLME {os.getpid()}", flush=True)
            time.sleep(60)
    dist.barrier()
    return r


def flaky_first_attempt(bad_rank=1):
    """Fails on ``bad_rank`` in the first attempt only."""
    import torch.distributed as dist

    attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    dist.init_process_group("gloo")
    if dist.get_rank() == bad_rank and attempt == 0:
        raise RuntimeError("first attempt fails")
    dist.barrier()
    return attempt


def hang_at_barrier(skip_rank=1):
    """Every rank but ``skip_rank`` waits at a barrier that never completes."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    print(f"waiting {os.getpid()}", flush=True)
    if dist.get_rank() == skip_rank:
        time.sleep(600)
    dist.barrier()


def many_lines(n):
    r = rank()
    write = __import__("sys").stdout.write
    for i in range(n):
        write(f"{r} {i}\n")
    return n


def child_then_fail(bad_rank=1):
    """Every rank starts a long-lived child (as DataLoader workers are); ``bad_rank`` then fails."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"child {child.pid}", flush=True)
    time.sleep(0.3)
    if rank() == bad_rank:
        raise RuntimeError("failing with a child running")
    time.sleep(60)


def deaf(seconds=60):
    """Ignores SIGINT and SIGTERM: only SIGKILL stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("deaf", flush=True)
    time.sleep(seconds)
