"""Worker output reaches the sink while the run goes on, every line, in order per rank."""
from __future__ import annotations

import dataclasses
import time

import pytest

from ptjupyter.errors import WorkerFailed
from tests.local import workloads as w
from tests.run_helpers import run

N = 100_000


def test_100k_lines_per_rank_none_lost(plan2, no_leftovers, tmp_path):
    sink = w.Sink()
    t0 = time.perf_counter()
    assert run(dataclasses.replace(plan2, log_dir=str(tmp_path)), w.many_lines, (N,), sink=sink) == N
    elapsed = time.perf_counter() - t0
    for rank in (0, 1):
        lines = sink.text(rank)
        assert len(lines) == N
        assert lines == [f"{rank} {i}" for i in range(N)]  # in order, none lost, none doubled
    print(f"relay: {2 * N} lines in {elapsed:.2f} s = {2 * N / elapsed:,.0f} lines/s (whole run)")
    (folder,) = tmp_path.iterdir()  # --log-dir: one folder per run, torchrun's layout, every line
    for rank in (0, 1):
        kept = (folder / "attempt_0" / str(rank) / "stdout.log").read_text().splitlines()
        assert kept == [f"{rank} {i}" for i in range(N)]


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


class RichSink(w.Sink):
    def __init__(self):
        super().__init__()
        self.redraws, self.displays = [], []

    def progress(self, rank, stream, text):
        self.redraws.append((time.monotonic(), rank, stream, text))

    def display(self, rank, bundle, metadata):
        self.displays.append((rank, bundle))
        self.line(rank, "stdout", "<display>")


def fast_bar_and_displays(n=5000):
    import sys
    import time

    from IPython.display import HTML, display

    print("before")
    display(HTML("<b>x</b>"))
    import matplotlib.pyplot as plt

    plt.plot([1, 2, 3])
    plt.show()
    print("after")
    t = time.monotonic()
    for i in range(n + 1):  # 5000 redraws/s for a second
        sys.stderr.write(f"\r{100 * i // n}% {i}/{n}")
        sys.stderr.flush()
        time.sleep(max(0.0, t + i / 5000 - time.monotonic()))
    sys.stderr.write("\n")
    return 0


def test_progress_is_throttled_and_displays_keep_their_place(plan2):
    """A 5000 redraws/s bar reaches the sink at most 10 times/s per rank and ends at 100 % as a line;
    display(obj) and plt.show() arrive as MIME bundles in order with the rank's text."""
    sink = RichSink()
    run(plan2, fast_bar_and_displays, sink=sink)
    for rank in (0, 1):
        times = [t for t, r, s, _ in sink.redraws if r == rank]
        assert 3 <= len(times) <= 10 * (times[-1] - times[0]) + 2, times
        assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.099
        assert sink.text(rank, "stderr") == ["100% 5000/5000"]  # the final state, once, as a line
        assert sink.text(rank) == ["before", "<display>", "<display>", "after"]
        html, fig = [b for r, b in sink.displays if r == rank]
        assert html["text/html"] == "<b>x</b>" and fig["image/png"].startswith("iVBOR")  # a PNG, base64
    print(f"progress: {len(sink.redraws)} redraws to the sink for 2 x 5001 writes")


def test_grace_sets_the_time_between_sigterm_and_sigkill():
    import subprocess
    import sys

    from ptjupyter.local import reaper

    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); " \
           "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    took = {}
    for grace in (0.2, 1.2):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        p.stdout.readline()
        t = time.monotonic()
        reaper.ladder([p.pid], int_wait=0.05, term_wait=grace, say=lambda m: None)
        took[grace] = time.monotonic() - t
        p.wait(5)
    assert 0.2 <= took[0.2] < 1.0 and took[1.2] >= 1.2, took
    from ptjupyter import Layer, resolve
    from ptjupyter.local.launch import Launch

    launch = Launch(resolve(layers=[Layer("f", {"nproc_per_node": 2, "grace": 3})]), None, (), {}, None)
    assert launch.grace == 3.0 and launch.launch_config("spawn").shutdown_timeout == 3  # --grace reaches both
