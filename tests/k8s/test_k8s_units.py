"""The pieces of a follow, each alone (no server, no follower): watch, logs, result, status, errors."""
from __future__ import annotations

import base64
import pickle
import threading

import cloudpickle
import pytest
from kubernetes.client.exceptions import ApiException

from ptjupyter.errors import PtjupyterError
from ptjupyter.k8s import entrypoint, result, watch
from ptjupyter.k8s.errors import JobDeleted, JobFailed, K8sError, ResultUnreadable
from ptjupyter.k8s.follow import Follower, JobRef, reattach_hint
from ptjupyter.k8s.logs import LogCursor, LogTail
from ptjupyter.k8s.status import job_state, pod_label, pod_state, status_text, traceback_lines

T1, T2, T3, T4 = "2026-11-26T08:00:00.1Z", "2026-11-26T08:00:00.200000000Z", "2026-11-26T08:00:01Z", "2026-11-26T08:00:02Z"


# -- watch ---------------------------------------------------------------------------------------
class FakeWatch:
    """Plays ``kubernetes.watch.Watch``: each ``stream`` call takes the next script entry (events or an error)."""

    def __init__(self, script, calls):
        self.script, self.calls = script, calls

    def stream(self, fn, *args, resource_version=None, **kw):
        self.calls.append(resource_version)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        yield from step

    def stop(self):
        pass


def ev(typ, rv, name="j"):
    return {"type": typ, "object": {"metadata": {"name": name, "resourceVersion": str(rv)}}}


def _watch(script, relists, stop, **kw):
    calls, seen, errors = [], [], []

    def relist():
        return relists.pop(0)

    def on_event(typ, obj):
        seen.append((typ, obj["metadata"]["resourceVersion"]))
        if not script:
            stop.set()

    w = watch.ResumableWatch("jobs", None, (), {}, relist=relist, on_event=on_event, on_error=errors.append,
                             stop=stop, job="j", namespace="default", new_watch=lambda: FakeWatch(script, calls), **kw)
    return w, calls, seen, errors


def test_watch_resumes_from_the_last_version_and_relists_on_410(monkeypatch):
    monkeypatch.setattr(watch, "backoff", lambda n, *a: 0)
    stop = threading.Event()
    script = [
        [ev("ADDED", 6), ev("MODIFIED", 7)],  # then the server ends the watch (its timeout)
        [ev("BOOKMARK", 9)],  # moves the version on, not handed over
        ApiException(status=410, reason="Expired"),  # version 9 compacted away: relist
        [ev("MODIFIED", 21)],
    ]
    w, calls, seen, errors = _watch(script, ["5", "20"], stop)
    w.run()
    assert calls == ["5", "7", "9", "20"]  # resumed from 7 and 9; after the 410 from the new list's version
    assert seen == [("ADDED", "6"), ("MODIFIED", "7"), ("MODIFIED", "21")] and errors == []


def test_watch_gives_up_after_max_failures_in_a_row_with_one_line(monkeypatch):
    waits = []
    monkeypatch.setattr(watch, "backoff", lambda n, *a: waits.append(n) or 0)
    script = [ConnectionResetError("reset by peer")] * 3
    w, calls, seen, errors = _watch(script, ["5"], threading.Event(), max_failures=2)
    w.run()
    assert calls == ["5", "5", "5"] and waits == [1, 2]
    assert isinstance(errors[0], K8sError) and "\n" not in str(errors[0])
    assert str(errors[0]).startswith("watching jobs of job j failed 3 times in a row: ")


def test_watch_reports_a_forbidden_watch_at_once():
    w, calls, seen, errors = _watch([ApiException(status=403, reason="Forbidden")], ["1"], threading.Event())
    w.run()
    assert len(calls) == 1 and errors[0].status == 403 and "forbidden (403)" in str(errors[0])


def test_one_backoff_everywhere():
    assert [watch.backoff(n) for n in range(1, 7)] == [0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert [watch.backoff(n, 0.25) for n in range(4)] == [0.25, 0.5, 1.0, 2.0]  # client retries


# -- logs ----------------------------------------------------------------------------------------
def test_cursor_skips_what_was_shown_even_with_equal_timestamps():
    c, shown = LogCursor(), []
    for ts, text in [(T1, "a"), (T2, "b"), (T2, "c")]:  # first connection, then it drops
        shown.append(c.accept(f"{ts} {text}".encode()))
    c.reconnected()  # sinceSeconds reaches back before T1
    for ts, text in [(T1, "a"), (T2, "b"), (T2, "c"), (T2, "d"), (T3, "e")]:
        shown.append(c.accept(f"{ts} {text}".encode()))
    assert [s for s in shown if s is not None] == ["a", "b", "c", "d", "e"]
    assert c.since_seconds() >= 10


class FakeResp:
    def __init__(self, chunks, drop=None):
        self.chunks, self.drop = chunks, drop

    def stream(self, amt, decode_content=False):
        yield from self.chunks
        if self.drop:
            raise self.drop

    def release_conn(self):
        pass


def _tail(streams, states):
    opened, lines, notes, changes = [], [], [], []

    def open_stream(**kw):
        opened.append(kw)
        return streams.pop(0)

    t = LogTail("j-worker-0", container="pytorch", open_stream=open_stream, wait_started=lambda: True,
                pod_now=lambda: states.pop(0), wait_change=changes.append, on_line=lines.append,
                on_note=notes.append, on_done=lambda: None, stop=threading.Event(), max_failures=2)
    return t, opened, lines, notes, changes


def test_tail_resumes_after_a_stream_cut_mid_line_without_duplicates_or_gaps():
    first = FakeResp([f"{T1} a\n{T2} b\n".encode(), f"{T2} c\n{T3} d is cut he".encode()],
                     drop=ConnectionResetError("cut"))
    second = FakeResp([f"{T1} a\n{T2} b\n{T2} c\n{T3} d is cut here\n{T4} e\n".encode()])
    t, opened, lines, notes, _ = _tail([first, second], ["running", "final"])
    t.run()
    assert lines == ["a", "b", "c", "d is cut here", "e"] and notes == []
    assert "since_seconds" not in opened[0] and opened[1]["since_seconds"] >= 10
    assert opened[1]["timestamps"] is True and opened[1]["container"] == "pytorch"


def test_tail_follows_a_restarted_container_and_keeps_a_final_unterminated_line():
    old = FakeResp([f"{T1} tick 0\n{T2} tick 1\n".encode()])
    new = FakeResp([f"{T1} tick 0\n{T2} tick 1\n{T3} tick 0\n{T4} no newline".encode()])
    t, opened, lines, notes, changes = _tail([old, new], ["restarting", "final"])
    t.run()
    assert lines == ["tick 0", "tick 1", "tick 0", "no newline"] and changes == [5.0]


def test_tail_that_keeps_failing_says_so_once():
    drops = [FakeResp([], drop=ConnectionResetError("x")) for _ in range(4)]
    t, opened, lines, notes, _ = _tail(drops, ["running"] * 4)
    t.stop.wait = lambda timeout=None: False  # no backoff sleeps
    t.run()
    assert len(opened) == 3 and notes == ["log stream of j-worker-0 keeps failing; stopped tailing it"]


# -- result --------------------------------------------------------------------------------------
def test_marker_constants_are_the_entrypoints():
    assert result.MARK is entrypoint.MARK and result.RESULT_LIMIT is entrypoint.RESULT_LIMIT


def test_marker_lines_are_taken_and_decoded():
    b64 = base64.b64encode(cloudpickle.dumps({"x": 1})).decode()
    half = len(b64) // 2
    r = result.ResultReader("n0nce")
    assert r.feed(f"##ptjupyter-result n0nce 1/2 {b64[:half]}")
    assert not r.feed("##ptjupyter-result other 1/1 AAAA")  # not our nonce: a user's line, shown
    assert not r.feed("plain output")
    assert r.b64 is None and r.feed(f"##ptjupyter-result n0nce 2/2 {b64[half:]}")
    assert result.decode(r.b64, "default/j") == {"x": 1}


@pytest.mark.parametrize("line,why", [
    ("##ptjupyter-result n0nce x/y AAAA", "is not '<i>/<n> <chunk>'"),
    ("##ptjupyter-result n0nce 3/2 AAAA", "does not fit"),
    ("##ptjupyter-result n0nce 1/1", "does not fit"),
])
def test_a_corrupt_marker_is_recorded_not_raised(line, why):
    r = result.ResultReader("n0nce")
    assert r.feed(line) and r.b64 is None and why in r.corrupt


@pytest.mark.parametrize("b64,needle", [("!!!not base64", "not valid base64"),
                                        (base64.b64encode(b"not a pickle").decode(), "could not be unpickled")])
def test_undecodable_value_is_a_k8s_error_naming_the_job(b64, needle):
    with pytest.raises(ResultUnreadable) as e:
        result.decode(b64, "team-a/ptj-x")
    assert isinstance(e.value, K8sError) and not isinstance(e.value, ValueError)
    assert str(e.value).startswith("job team-a/ptj-x ran, but rank 0's return value") and needle in str(e.value)


def test_too_large_and_unpicklable_values_are_notes():
    r = result.ResultReader("n")
    assert r.feed("##ptjupyter-result n too-large 99999") and "99999 bytes pickled" in r.note and "64 KiB" in r.note
    r = result.ResultReader("n")
    assert r.feed("##ptjupyter-result n error cannot pickle the return value: x")
    assert r.note == "rank 0's return value could not be sent back: cannot pickle the return value: x"


# -- status --------------------------------------------------------------------------------------
def test_job_states():
    assert job_state(None, "pytorchjobs")[0] == "Pending"
    conds = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
             {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed", "message": "m"}]
    assert job_state({"status": {"conditions": conds}}, "pytorchjobs") == ("Failed", "PyTorchJobFailed", "m")
    assert job_state({"status": {"conditions": conds[:1]}}, "pytorchjobs")[0] == "Created"
    assert job_state({"status": {"active": 1}}, "jobs")[0] == "Running"
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}, "jobs")[0] == "Succeeded"


def _pod(rtype, index, master=False, phase="Pending", **status):
    labels = {"training.kubeflow.org/replica-type": rtype, "training.kubeflow.org/replica-index": str(index)}
    if master:
        labels["ptjupyter.io/has-master"] = "true"
    return {"metadata": {"name": f"j-{rtype}-{index}", "labels": labels}, "status": {"phase": phase, **status}}


def test_pod_labels_and_ranks():
    assert pod_label(_pod("worker", 1)) == ("worker-1", 1)
    assert pod_label(_pod("master", 0, True)) == ("master-0", 0)
    assert pod_label(_pod("worker", 0, True)) == ("worker-0", 1)
    assert pod_label({"metadata": {"labels": {"job-name": "x"}}}) == ("worker-0", 0)  # a batch Job's pod


def test_pod_states():
    def cs(**state):
        return [{"name": "pytorch", "state": state}]

    assert pod_state(_pod("worker", 0)) == ("starting", "")
    assert pod_state(_pod("worker", 0, phase="Running", containerStatuses=cs(running={}))) == ("running", "")
    assert pod_state(_pod("worker", 0, phase="Succeeded")) == ("exited 0", "")
    assert pod_state(_pod("worker", 0, phase="Running", containerStatuses=cs(terminated={"exitCode": 3}))) == \
        ("failed", "exit 3")
    assert pod_state(_pod("worker", 0), deleted=True) == ("failed", "pod deleted")


def test_status_text():
    running = _pod("worker", 0, phase="Running")
    unsched = _pod("worker", 1, conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                             "message": "0/3 nodes"}])
    state = ("Running", "", "")
    assert status_text("j", state, [running, unsched], {}) == \
        "Running, 1/2 pods running; waiting: worker-1: Unschedulable (0/3 nodes)"
    events = {"j-worker-1": ("FailedScheduling", "Insufficient nvidia.com/gpu")}
    assert status_text("j", state, [running, unsched], events).endswith(
        "worker-1: Unschedulable (FailedScheduling: Insufficient nvidia.com/gpu)")
    assert status_text("j", ("Created", "", ""), [], {}) == "Created; waiting: no pods yet"
    assert status_text("j", ("Created", "", ""), [], {}, pods_synced=False) is None
    assert status_text("j", ("Failed", "R", "1 Worker replica(s) failed"), [running], {}) == \
        "Failed: 1 Worker replica(s) failed"
    assert status_text("j", ("Succeeded", "", "done"), [running], {}) == "Succeeded"


def test_traceback_extraction_stops_at_the_exception_line():
    lines = ["[ptjupyter] rank 1 failed:", "Traceback (most recent call last):", '  File "x", line 1, in f',
             "KeyError: 'a'", "", "During handling of the above exception, another exception occurred:", "",
             "Traceback (most recent call last):", '  File "y", line 2, in g', "ValueError: b",
             "E1126 torchrun noise", "more noise"]
    assert traceback_lines(lines) == lines[:10]


# -- errors --------------------------------------------------------------------------------------
def test_k8s_errors_are_in_the_family_and_render_with_their_class_name():
    e = K8sError("Kubernetes API: forbidden (403): ...", status=403)
    assert isinstance(e, PtjupyterError) and isinstance(e, RuntimeError) and e.status == 403
    assert e.render() == ["K8sError: Kubernetes API: forbidden (403): ..."]
    assert JobDeleted("job default/j was deleted").render() == ["JobDeleted: job default/j was deleted"]
    f = JobFailed("j", "ns", "PyTorchJobFailed", "1 Worker replica(s) failed", "j-worker-1", ["boom", "ValueError: x"])
    assert not isinstance(f, K8sError) and isinstance(f, RuntimeError)
    assert f.render() == ["JobFailed: job ns/j failed (PyTorchJobFailed): 1 Worker replica(s) failed; failing pod "
                          "j-worker-1", "--- log of j-worker-1 (2 lines) ---", "boom", "ValueError: x"]
    assert str(f) == "\n".join(f.render())[len("JobFailed: "):]  # str(): what it always was
    again = pickle.loads(pickle.dumps(f))
    assert again.render() == f.render() and again.pod == "j-worker-1"
    assert pickle.loads(pickle.dumps(e)).status == 403


def test_follower_is_constructible_without_a_cluster():
    f = Follower(object(), JobRef("j", "default", "jobs"), out=lambda s: None)
    assert f.state[0] == "Pending" and f.logs == {}


def test_reattach_hint_names_the_namespace_unless_it_is_the_default_one():
    ref = JobRef("j", "team-a", "jobs")
    assert reattach_hint(ref, "team-a") == "%pytorch_elastic_jobs attach j   Cancel: %pytorch_elastic_jobs cancel j"
    assert reattach_hint(ref, "default").endswith("cancel j -n team-a") and "attach j -n team-a" in reattach_hint(ref)
