"""Plays the notebook kernel for tests that need a real ``__main__`` or must signal/kill the caller.

``python kernel.py MODE TMPDIR``; prints ``READY`` when the workers run and one JSON line at the end.
The functions run on the workers are defined here, in ``__main__``, as notebook functions are.
"""
import dataclasses
import json
import os
import signal
import sys
import threading
import time

from ptjupyter import Layer, resolve
from ptjupyter.execute import execute
from ptjupyter.local import warm
from ptjupyter.local.relay import PrintSink

PLAN = resolve(layers=[Layer("test", {"nproc_per_node": 2})])


def allreduce(extra):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([dist.get_rank()])
    dist.all_reduce(t)
    dist.barrier()
    dist.destroy_process_group()
    return int(t) + extra, os.getpid()


def sleeper(tmp):
    """Starts a child (like a DataLoader worker), notes both pids, then sleeps."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.path.join(tmp, f"pids.{os.environ['RANK']}"), "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    print("started", flush=True)
    if os.environ["RANK"] == "1":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # this rank only stops at SIGTERM
    time.sleep(600)


class ReadySink(PrintSink):
    def __init__(self, n):
        self.n, self.seen = n, 0

    def line(self, rank, stream, text):
        if text == "started":
            self.seen += 1
            if self.seen == self.n:
                print("READY", flush=True)


def steps(n):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    for i in range(n):
        dist.all_reduce(torch.ones(1000))
        print("step", i, flush=True)
        time.sleep(0.01)
    dist.barrier()
    return 1


class Quiet(PrintSink):
    def line(self, rank, stream, text):
        pass


def interrupts(n, seed):
    """Ctrl-C at a random moment of n runs (start-up, rendezvous, training, teardown)."""
    import random

    import psutil

    rng = random.Random(seed)
    plan = resolve(layers=[Layer("test", {"nproc_per_node": 2, "max_restarts": 1})])
    execute(plan, steps, (1,), sink=Quiet())
    stats = {"interrupted": 0, "completed": 0, "bad": []}
    for i in range(n):
        delay = rng.uniform(0, 1.0)
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            execute(plan, steps, (50,), sink=Quiet())
            stats["completed"] += 1
            timer.cancel()
        except KeyboardInterrupt:
            stats["interrupted"] += 1
        except BaseException as e:  # noqa: BLE001 - reported
            stats["bad"].append(f"{i}: {type(e).__name__}: {str(e)[:200]}")
        timer.join()
        infra = warm.helper_pids()
        deadline = time.monotonic() + 2
        while True:
            left = [p.pid for p in psutil.Process().children(recursive=True)
                    if p.pid not in infra and p.status() != psutil.STATUS_ZOMBIE]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if left:
            stats["bad"].append(f"{i}: left {left}")
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            stats["bad"].append(f"{i}: SIGINT handler not restored")
    stats["next"] = execute(plan, steps, (1,), sink=Quiet())
    return stats


def listeners(stop, seen):
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        for p in [me] + me.children(recursive=True):
            try:
                seen.update(c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN)
            except psutil.Error:
                pass
        time.sleep(0.05)


def main():
    mode, tmp = sys.argv[1], sys.argv[2]
    out = {}
    if mode == "allreduce":
        stop, seen = threading.Event(), set()
        threading.Thread(target=listeners, args=(stop, seen), daemon=True).start()
        out["warm"] = execute(PLAN, allreduce, (100,))
        out["server"] = warm.server_pid()
        out["warm2"] = execute(PLAN, allreduce, (200,))
        out["server2"] = warm.server_pid()
        out["fresh"] = execute(dataclasses.replace(PLAN, fresh=True), allreduce, (300,))
        out["closure"] = execute(PLAN, lambda: (lambda y: y * 2)(int(os.environ["RANK"]) + 21))
        stop.set()
        out["listen_ips"] = sorted(seen)
    elif mode == "interrupt":
        restartable = resolve(layers=[Layer("test", {"nproc_per_node": 2, "max_restarts": 3})])
        try:  # max_restarts=3: the agent must not start new workers after the interrupt
            execute(restartable, sleeper, (tmp,), sink=ReadySink(2))
            out["error"] = "returned"
        except KeyboardInterrupt:
            out["interrupted"] = True
        out["sigint_restored"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        out["sigterm_restored"] = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        out["next"] = execute(PLAN, allreduce, (7,))
    elif mode == "interrupts":
        out = interrupts(int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "hold":
        execute(PLAN, sleeper, (tmp,), sink=ReadySink(2))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
