"""execute(plan, fn): the one dispatcher, keyed by plan.mode."""
from __future__ import annotations

import os

import pytest

from ptjupyter import Elastic, Layer, execute, resolve
from ptjupyter.errors import InvalidType, RunTimeout


def test_direct_mode_calls_here_and_reports_to_the_sink():
    states = []

    class Sink:
        def line(self, rank, stream, text):
            pass

        def state(self, rank, state, detail=""):
            states.append((rank, state))

    assert execute(resolve(), lambda a, b=0: (os.getpid(), a + b), (1,), {"b": 2}, sink=Sink()) == (os.getpid(), 3)
    assert states == [(0, "running"), (0, "exited 0")]


def test_the_plans_timeout_stops_a_direct_call():
    import time

    plan = resolve(None, [Layer("test", {"timeout": 0.3})])
    t0 = time.monotonic()
    with pytest.raises(RunTimeout, match=r"^timeout=0\.3 s passed; all ranks were stopped"):
        execute(plan, time.sleep, (20,))
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("plan, fn, args, match", [
    ("not a plan", print, (), r"^plan='not a plan' is not accepted; expected a ptjupyter.Plan"),
    (None, 3, (), r"^fn=3 is not accepted; expected a callable$"),
    (None, print, 5, r"^args=5 is not accepted; expected a tuple"),
    ("k8s", print, (1,), r"^args/kwargs are not accepted for a Kubernetes run"),
])
def test_bad_calls_are_one_line_before_anything_starts(plan, fn, args, match):
    if plan is None:
        plan = resolve()
    elif plan == "k8s":
        plan = resolve(Elastic(nnodes=2), target="k8s")
    with pytest.raises(InvalidType, match=match) as e:
        execute(plan, fn, args)
    assert "\n" not in str(e.value)
