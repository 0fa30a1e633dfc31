"""The local launcher with real processes and a real rendezvous (2 ranks, gloo, CPU)."""
from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from ptjupyter import Layer, resolve
from ptjupyter.errors import RunTimeout, WorkerFailed
from ptjupyter.local import warm
from tests.conftest import leftover_processes, listening_sockets
from tests.local import workloads as w
from tests.local.conftest import plan_for
from tests.run_helpers import run


def test_direct_call_is_a_plain_call():
    plan = resolve()
    seen = {}

    def fn(a, b=0):
        seen["pid"] = os.getpid()
        seen["children"] = psutil.Process().children(recursive=True)
        return a + b

    before = psutil.Process().children(recursive=True)
    sink = w.Sink()
    assert run(plan, fn, (1,), {"b": 2}, sink=sink) == 3
    assert seen["pid"] == os.getpid()
    assert seen["children"] == before  # no process, hence no rendezvous or port
    assert sink.states == [(0, "running", f"pid {os.getpid()} (direct call)"), (0, "exited 0", "")]
    dist = sys.modules.get("torch.distributed")
    assert dist is None or not dist.is_initialized()
    t0 = time.perf_counter()
    for _ in range(200):
        run(plan, fn, (1,))
    per_call = (time.perf_counter() - t0) / 200
    print(f"direct call: {per_call * 1e6:.0f} us per run() including fn")


def test_direct_call_errors_are_the_callers():
    with pytest.raises(ZeroDivisionError):
        run(resolve(), lambda: 1 / 0)


def test_direct_call_timeout():
    t0 = time.monotonic()
    with pytest.raises(RunTimeout):
        run(resolve(), time.sleep, (30,), timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("bad, match", [
    (dict(sink=object()), "sink=.* is not accepted"),
    (dict(fn=3), "fn=3 is not accepted"),
    (dict(args=5), "args=5 is not accepted"),
])
def test_bad_input_one_line(plan2, bad, match):
    kw = {"fn": w.allreduce_rank, **bad}
    before = psutil.Process().children(recursive=True)
    with pytest.raises((TypeError, ValueError), match=match) as info:
        run(plan2, kw.pop("fn"), kw.pop("args", ()), **kw)
    assert "\n" not in str(info.value)
    assert psutil.Process().children(recursive=True) == before


def test_bad_timeout_is_refused_by_resolve_before_anything_starts():
    before = psutil.Process().children(recursive=True)
    with pytest.raises(ValueError, match=r"^timeout=-1 \(from test\) is not accepted; expected a number of seconds > 0"):
        resolve(layers=[Layer("test", {"nproc_per_node": 2, "timeout": -1})])
    assert psutil.Process().children(recursive=True) == before


def test_two_ranks_warm_reuses_forkserver(plan2, no_leftovers):
    sink = w.Sink()
    value, pid0, world = run(plan2, w.allreduce_rank, (10,), sink=sink)
    assert (value, world) == (11, 2)
    server = warm.server_pid()
    assert server and psutil.Process(pid0).ppid() if psutil.pid_exists(pid0) else True
    value2, pid0b, _ = run(plan2, w.allreduce_rank, (20,))
    assert value2 == 21
    assert warm.server_pid() == server  # the same warm server ...
    assert pid0b != pid0  # ... but fresh worker processes
    assert sorted(s for r, s, d in sink.states if r == 0) == sorted(["starting", "running", "exited 0"])
    assert [s for r, s, d in sink.states if r == 1] == ["starting", "running", "exited 0"]
    assert sink.text(0) == [f"rank 0 sum 1 pid {pid0}"]
    assert len(sink.threads) == 1  # every sink call from the one relay thread


def test_worker_environment_and_process_group(plan2, monkeypatch):
    monkeypatch.setenv("PTJ_TEST_MARK", "set-after-prewarm")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    warm.wait_ready()
    env = run(plan2, w.env_probe)
    assert env["PTJ_TEST_MARK"] == "set-after-prewarm"  # the caller's current environment, not the server's
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["GLOO_SOCKET_IFNAME"] == "lo"
    assert env["pgid"] == env["pid"]  # each worker leads its own process group
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert run(plan2, w.env_probe)["OMP_NUM_THREADS"] == "3"


def test_handlers_restored_and_ports_free(plan2):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    listening = listening_sockets()
    run(plan2, w.allreduce_rank)
    assert {s: signal.getsignal(s) for s in before} == before
    assert "TORCHELASTIC_SIGNALS_TO_HANDLE" not in os.environ
    assert listening_sockets() == listening


def test_failing_rank_names_rank_code_and_traceback(plan2, no_leftovers):
    sink = w.Sink()
    with pytest.raises(WorkerFailed) as info:
        run(plan2, w.fail_on, (1, "raise"), sink=sink)
    e = info.value
    assert (e.rank, e.exitcode, e.signal_name) == (1, 1, None)
    header = str(e).splitlines()[0]
    assert header == "rank 1 failed (exit 1): ValueError: boom on rank 1"
    assert 'raise ValueError(f"boom on rank {r}")' in e.traceback_text
    assert "Root Cause" not in str(e) and "elastic" not in e.traceback_text
    assert (1, "failed", "exit 1") in sink.states
    assert ("ValueError" in str(e)) and isinstance(e, RuntimeError)


def test_os_exit_code(plan2, no_leftovers):
    with pytest.raises(WorkerFailed) as info:
        run(plan2, w.fail_on, (1, "exit"))
    assert (info.value.rank, info.value.exitcode) == (1, 3)
    assert str(info.value).startswith("rank 1 failed (exit 3)")


def test_segfault_named(plan2, no_leftovers):
    with pytest.raises(WorkerFailed) as info:
        run(plan2, w.fail_on, (0, "segv"))
    e = info.value
    assert (e.rank, e.signal_name, e.exitcode) == (0, "SIGSEGV", -signal.SIGSEGV)
    assert "Segmentation fault" in e.traceback_text and "fail_on" in e.traceback_text


def test_sigkill_from_outside(plan2, no_leftovers):
    def kill(rank, stream, text):
        if text.startswith("KILLME "):
            os.kill(int(text.split()[1]), signal.SIGKILL)

    sink = w.Sink(on_line=kill)
    with pytest.raises(WorkerFailed) as info:
        run(plan2, w.fail_on, (1, "sigkill-outside", 3), sink=sink)
    assert (info.value.rank, info.value.signal_name) == (1, "SIGKILL")
    assert str(info.value).startswith("rank 1 failed (SIGKILL)")
    assert sink.text(1)[:3] == ["r1 line 0", "r1 line 1", "r1 line 2"]


def test_max_restarts(no_leftovers):
    sink = w.Sink()
    assert run(plan_for(max_restarts=1), w.flaky_first_attempt, sink=sink) == 1
    assert (1, "running", "") not in sink.states and any("restart 1" in d for r, s, d in sink.states)
    with pytest.raises(WorkerFailed) as info:
        run(plan_for(max_restarts=0), w.flaky_first_attempt)
    assert info.value.rank == 1 and "first attempt fails" in info.value.traceback_text


def test_timeout_on_hung_barrier(plan2, no_leftovers, capfd):
    t0 = time.monotonic()
    with pytest.raises(RunTimeout, match="timeout=2 s"):
        run(plan2, w.hang_at_barrier, timeout=2)
    assert time.monotonic() - t0 < 10
    assert "timeout after 2 s: sending SIGINT" in capfd.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert run(plan2, w.allreduce_rank)[0] == 1  # the next run goes normally


def test_unpicklable_function_refused_before_start(plan2):
    import threading

    lock = threading.Lock()
    before = psutil.Process().children(recursive=True)
    with pytest.raises(TypeError, match="cannot be shipped"):
        run(plan2, lambda: lock)
    assert psutil.Process().children(recursive=True) == before


def test_no_worker_left_after_runs():
    assert not leftover_processes(wait=1.0)


def test_fork_on_request(no_leftovers):
    value, pid, world = run(plan_for(start_method="fork"), w.allreduce_rank, (5,))
    assert (value, world) == (6, 2)


def test_forkserver_restarts_when_killed(plan2):
    warm.wait_ready()
    server = warm.server_pid()
    os.kill(server, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while warm.server_pid() == server and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run(plan2, w.allreduce_rank)[0] == 1
    assert warm.server_pid() not in (None, server)


def test_in_pod_plan_uses_the_operator_rendezvous(no_leftovers):
    """In a PyTorchJob pod the plan comes from PET_* variables; one node of it runs like a local one."""
    plan = resolve(layers=[Layer("test", {"nproc_per_node": 2})], env={"PET_NNODES": "1"})
    assert run(plan, w.allreduce_rank, (1,))[0] == 2


def test_errors_pickle_round_trip():
    import pickle

    e = pickle.loads(pickle.dumps(WorkerFailed(1, -9, "", others={0: "SIGTERM"})))
    assert (e.rank, e.signal_name, e.others) == (1, "SIGKILL", {0: "SIGTERM"})
    assert str(e).splitlines() == ["rank 1 failed (SIGKILL)", "(the worker was killed by SIGKILL; no Python "
                                   "traceback)", "other ranks: rank 0 (SIGTERM)"]
    t = pickle.loads(pickle.dumps(RunTimeout(2, "ranks 0, 1 were running")))
    assert t.timeout == 2 and "ranks 0, 1" in str(t)


def test_unpicklable_return_value_explained(plan2):
    with pytest.raises(WorkerFailed) as info:
        run(plan2, lambda: __import__("threading").Lock())
    e = info.value
    assert e.rank == 0 and "cannot pickle" in e.traceback_text
    assert e.hint and "cannot be pickled" in e.hint


def test_timeout_off_the_main_thread(plan2, no_leftovers):
    """No signal handler can be installed there: the timer stops the workers itself."""
    import threading

    box = {}

    def target():
        try:
            run(plan_for(max_restarts=2), w.hang_at_barrier, timeout=2)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            box["e"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    assert isinstance(box.get("e"), RunTimeout), box


def test_children_of_workers_are_stopped_too(plan2, no_leftovers):
    sink = w.Sink()
    with pytest.raises(WorkerFailed, match="failing with a child running"):
        run(plan2, w.child_then_fail, sink=sink)
    children = [int(t.split()[1]) for r in (0, 1) for t in sink.text(r) if t.startswith("child ")]
    assert len(children) == 2
    assert not [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_timeout_kills_what_ignores_sigint_and_sigterm(plan2, no_leftovers, capfd):
    with pytest.raises(RunTimeout):
        run(plan2, w.deaf, timeout=1)
    err = capfd.readouterr().err
    assert "sending SIGINT" in err and "sending SIGTERM" in err and "sending SIGKILL" in err
    assert "all workers stopped" in err
