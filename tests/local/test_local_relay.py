"""Worker output reaches the sink while the run goes on, every line, in order per rank."""
from __future__ import annotations

import time

import pytest

from ptjupyter.errors import WorkerFailed
from tests.local import workloads as w
from tests.run_helpers import run

N = 100_000


def test_100k_lines_per_rank_none_lost(plan2, no_leftovers):
    sink = w.Sink()
    t0 = time.perf_counter()
    assert run(plan2, w.many_lines, (N,), sink=sink) == N
    elapsed = time.perf_counter() - t0
    for rank in (0, 1):
        lines = sink.text(rank)
        assert len(lines) == N
        assert lines == [f"{rank} {i}" for i in range(N)]  # in order, none lost, none doubled
    print(f"relay: {2 * N} lines in {elapsed:.2f} s = {2 * N / elapsed:,.0f} lines/s (whole run)")


def test_lines_arrive_while_running(plan2):
    seen_at = {}

    def mark(rank, stream, text):
        seen_at.setdefault(text, time.monotonic())

    sink = w.Sink(on_line=mark)
    sink_states = sink.states
    run(plan2, lambda: (print("early", flush=True), __import__("time").sleep(1.5), print("late"))[0], sink=sink)
    assert seen_at["late"] - seen_at["early"] > 1.0  # the first line was relayed before the worker ended
    assert [s for r, s, d in sink_states if r == 1] == ["starting", "running", "exited 0"]


@pytest.mark.parametrize("kind", ["exit", "segv", "raise"])
def test_lines_before_a_crash_are_kept(plan2, kind, no_leftovers):
    sink = w.Sink()
    with pytest.raises(WorkerFailed) as info:
        run(plan2, w.fail_on, (1, kind, 2000, "no newline at the end"), sink=sink)
    assert info.value.rank == 1
    assert sink.text(1) == [f"r1 line {i}" for i in range(2000)] + ["no newline at the end"]
    assert sink.text(0)[:2000] == [f"r0 line {i}" for i in range(2000)]
    assert (1, "failed", {"exit": "exit 3", "segv": "SIGSEGV", "raise": "exit 1"}[kind]) in sink.states


def test_stderr_is_relayed_separately(plan2):
    sink = w.Sink()

    def both():
        import sys

        print("to out")
        print("to err", file=sys.stderr)

    run(plan2, both, sink=sink)
    assert sink.text(0, "stdout") == ["to out"] and sink.text(1, "stderr") == ["to err"]


def test_carriage_returns_and_endless_lines(plan2):
    sink = w.Sink()

    def progress():
        import sys

        for i in range(5):
            sys.stderr.write(f"\rstep {i}/5")
        sys.stderr.write("\r\n")
        print("windows line\r")
        sys.stdout.write("x" * (3 << 20))  # 3 MiB, no newline
        return 0

    run(plan2, progress, sink=sink)
    assert sink.text(0, "stderr") == ["step 4/5"]
    out = sink.text(0)
    assert out[0] == "windows line" and "".join(out[1:]) == "x" * (3 << 20)
