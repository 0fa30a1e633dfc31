"""first_failure(): which rank a failed run blames, from what the relay learnt about each worker (no processes)."""
from __future__ import annotations

import types

from ptjupyter.errors import RankFailed
from ptjupyter.local.failure import first_failure
from ptjupyter.local.relay import WorkerInfo


def worker(rank, exitcode=None, *, attempt=0, record=None, fault="", died_at=None):
    proc = types.SimpleNamespace(_popen=types.SimpleNamespace(returncode=exitcode))
    return WorkerInfo(rank, attempt, 1000 + rank, proc=proc, record=record, fault=fault, died_at=died_at)


def exc(t, text, code=1):
    return {"kind": "exception", "code": code, "time": t, "traceback": text}


def test_the_earliest_real_failure_wins_over_a_peer_that_lost_its_connection():
    e = first_failure([
        worker(0, 1, record=exc(10.0, "RuntimeError: Connection closed by peer [127.0.0.1]:1\n")),
        worker(1, 1, record=exc(11.0, "Traceback ...\nKeyError: 'missing'\n")),
    ], {})
    assert isinstance(e, RankFailed)
    assert (e.rank, e.exitcode, e.timestamp) == (1, 1, 11.0)
    assert e.headline == "rank 1 failed (exit 1): KeyError: 'missing'"
    assert e.others == {0: "exit 1"}


def test_between_two_real_failures_the_first_in_time():
    e = first_failure([worker(0, 1, record=exc(12.5, "ValueError: late\n")),
                       worker(1, 3, record=exc(12.0, "ValueError: early\n", code=3))], {})
    assert (e.rank, e.exitcode) == (1, 3) and e.headline.endswith("ValueError: early")


def test_a_killed_rank_beats_the_ranks_the_agent_stopped():
    e = first_failure([worker(0, -15), worker(1, -9, died_at=5.0)], {})
    assert (e.rank, e.signal_name, e.timestamp) == (1, "SIGKILL", 5.0)
    assert e.details[0] == "(the worker was killed by SIGKILL; no Python traceback)"


def test_a_fatal_signal_seen_by_faulthandler_gives_the_signal_when_no_exit_code_is_known():
    e = first_failure([worker(0, None, fault="Fatal Python error: Segmentation fault\n\nCurrent thread ...")], {})
    assert (e.rank, e.exitcode, e.signal_name) == (0, -11, "SIGSEGV")
    assert e.traceback_text.startswith("Fatal Python error: Segmentation fault")


def test_only_the_last_attempt_counts():
    e = first_failure([worker(0, 1, attempt=0, record=exc(1.0, "ValueError: first attempt\n")),
                       worker(0, 0, attempt=1, record={"kind": "ok", "code": 0, "time": 2.0}),
                       worker(1, 2, attempt=1, record=exc(3.0, "ValueError: second attempt\n", code=2))],
                      {}, max_restarts=1)
    assert (e.rank, e.attempt) == (1, 1)
    assert e.headline == "rank 1 failed (exit 2): ValueError: second attempt on attempt 2 of 2"


def test_torch_report_when_no_worker_says_why():
    e = first_failure([], {1: (-6, "<N/A>"), 0: (1, "torch said so")})
    assert (e.rank, e.exitcode, e.traceback_text) == (0, 1, "torch said so")


def test_a_rank_that_finished_is_not_listed_as_failed_when_the_teardown_signals_it():
    e = first_failure([worker(0, -15, record={"kind": "ok", "code": 0, "time": 1.0}),
                       worker(1, 1, record=exc(2.0, "OSError: [Errno 98] Address already in use\n"))], {})
    assert (e.rank, e.others) == (1, {})
