"""Worker faults injected at random moments of a real 2-rank run.

Each run must fail with the right rank and cause, keep every line printed before the fault,
leave no process or listening socket behind, and let the next run go normally.
Short form in CI; ``pytest -m soak`` repeats every fault many more times.
"""
from __future__ import annotations

import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter

import cloudpickle
import pytest

from ptjupyter import Elastic, resolve
from tests.conftest import leftover_processes, listening_sockets

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MOMENTS = ("startup", "rendezvous", "training", "teardown")
LINES = 50
SHORT_REPS, SOAK_REPS = 2, 12
COUNTS: Counter = Counter()


class Sink:
    """Collects what the launcher relays: lines per rank and state changes."""

    def __init__(self):
        self.lines, self.states, self._lock = {}, [], threading.Lock()

    def line(self, rank, stream, text):
        with self._lock:
            self.lines.setdefault(rank, []).append(text)

    def state(self, rank, state, detail=""):
        with self._lock:
            self.states.append((rank, state, detail))


def faulty(kind, fault_ranks, moment, lines, piddir):
    """Print ``lines`` lines, then run a tiny gloo job and inject ``kind`` at ``moment`` on ``fault_ranks``."""
    import os
    import time

    rank = int(os.environ["RANK"])
    for i in range(lines):
        print(f"r{rank} line {i}", flush=True)

    def fault():
        if rank not in fault_ranks:
            return
        print(f"r{rank} fault {kind} at {moment}", flush=True)
        if kind == "raise":
            raise RuntimeError(f"injected fault on rank {rank}")
        if kind == "exit":
            os._exit(3)
        if kind == "segv":
            import ctypes

            ctypes.string_at(0)
        if kind == "sigkill":
            with open(os.path.join(piddir, f"{rank}.pid"), "w") as f:
                f.write(str(os.getpid()))
            time.sleep(120)

    if moment == "startup":
        fault()
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if moment == "rendezvous":
        fault()
    t = torch.ones(4)
    for step in range(3):
        dist.all_reduce(t)
        if moment == "training" and step == 1:
            fault()
    dist.destroy_process_group()
    if moment == "teardown":
        fault()
    return rank


def _kill_when_pid_appears(piddir, stop):
    while not stop.is_set():
        for name in os.listdir(piddir):
            try:
                os.kill(int(open(os.path.join(piddir, name)).read()), signal.SIGKILL)
                return
            except (ValueError, ProcessLookupError):
                pass
        time.sleep(0.02)


EXPECT = {
    "raise": lambda e: e.exitcode == 1 and "injected fault on rank" in e.traceback_text,
    "exit": lambda e: e.exitcode == 3,
    "segv": lambda e: e.signal_name == "SIGSEGV",
    "sigkill": lambda e: e.signal_name == "SIGKILL",
}


def run_fault(kind, fault_ranks, moment):
    from ptjupyter.errors import WorkerFailed
    from tests.run_helpers import run

    sink, stop = Sink(), threading.Event()
    before = listening_sockets()
    with tempfile.TemporaryDirectory() as piddir:
        if kind == "sigkill":
            threading.Thread(target=_kill_when_pid_appears, args=(piddir, stop), daemon=True).start()
        try:
            with pytest.raises(WorkerFailed) as info:
                run(resolve(Elastic(nproc_per_node=2)), faulty, (kind, fault_ranks, moment, LINES, piddir),
                    sink=sink, timeout=60)
        finally:
            stop.set()
    e = info.value
    assert e.rank in fault_ranks, (kind, moment, e.rank, str(e))
    assert EXPECT[kind](e), (kind, moment, e.exitcode, e.signal_name, str(e)[:2000])
    assert f"rank {e.rank}" in str(e).splitlines()[0].lower() or f"rank{e.rank}" in str(e).splitlines()[0].lower()
    for rank in (0, 1):
        got = [t for t in sink.lines.get(rank, []) if t.startswith(f"r{rank} line ")]
        assert got == [f"r{rank} line {i}" for i in range(LINES)], (kind, moment, rank, len(got))
    assert not leftover_processes(), (kind, moment)
    assert not (listening_sockets() - before), (kind, moment)
    COUNTS[kind] += 1


def healthy_run():
    from tests.run_helpers import run

    assert run(resolve(Elastic(nproc_per_node=2)), faulty, ("none", (), "training", 1, "/nonexistent")) == 0


def _cases(reps, seed):
    rng = random.Random(seed)
    cases = []
    for kind in ("raise", "exit", "sigkill", "segv"):
        for _ in range(reps):
            cases.append((kind, (rng.choice((0, 1)),), rng.choice(MOMENTS)))
    cases.append(("raise", (0, 1), rng.choice(MOMENTS)))  # two ranks fail at once
    cases.append(("exit", (0, 1), rng.choice(MOMENTS)))
    return cases


@pytest.mark.parametrize("kind,fault_ranks,moment", _cases(SHORT_REPS, seed=7))
def test_fault_is_reported_nothing_lost_nothing_left(kind, fault_ranks, moment):
    run_fault(kind, fault_ranks, moment)


def test_next_run_after_faults_is_normal():
    run_fault("exit", (1,), "training")
    healthy_run()


def test_hung_barrier_ends_at_the_timeout_with_every_rank_stopped():
    from ptjupyter.errors import RunTimeout
    from tests.run_helpers import run

    before = listening_sockets()
    t0 = time.monotonic()
    with pytest.raises(RunTimeout):
        run(resolve(Elastic(nproc_per_node=2)), hang_at_barrier, sink=Sink(), timeout=4)
    assert time.monotonic() - t0 < 30
    assert not leftover_processes()
    assert not (listening_sockets() - before)
    healthy_run()


def hang_at_barrier():
    import os
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo")
    if os.environ["RANK"] == "1":
        time.sleep(300)
    dist.barrier()


def fail_first_attempts(n_faults):
    import os

    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if os.environ["RANK"] == "1" and attempt < n_faults:
        raise RuntimeError(f"fault on attempt {attempt}")
    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    dist.destroy_process_group()
    return attempt


@pytest.mark.parametrize("restarts", [1, 2])
def test_max_restarts_recovers_from_n_faults_and_fails_on_n_plus_1(restarts):
    from ptjupyter.errors import WorkerFailed
    from tests.run_helpers import run

    plan = resolve(Elastic(nproc_per_node=2, max_restarts=restarts))
    assert run(plan, fail_first_attempts, (restarts,), sink=Sink()) == restarts
    with pytest.raises(WorkerFailed) as info:
        run(plan, fail_first_attempts, (restarts + 1,), sink=Sink())
    assert info.value.rank == 1 and f"fault on attempt {restarts}" in info.value.traceback_text
    assert not leftover_processes()


@pytest.mark.soak
@pytest.mark.parametrize("kind,fault_ranks,moment", _cases(SOAK_REPS, seed=int(os.environ.get("SOAK_SEED", "1"))))
def test_soak_faults(kind, fault_ranks, moment):
    run_fault(kind, fault_ranks, moment)
