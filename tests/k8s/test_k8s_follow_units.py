"""Follower pieces without a server: log resume de-duplication, job states, pod labels, tracebacks."""
from __future__ import annotations

import queue
import threading

from ptjupyter.k8s.follow import Follower, JobRef, _Tail, _traceback, job_state, pod_label


class _F:
    """Just what a _Tail needs of its Follower."""

    def __init__(self):
        self.q = queue.Queue()
        self.ref = JobRef("j", "default", "pytorchjobs", nonce="n0nce")
        self.stop = threading.Event()
        self.result_b64 = self.result_note = None


def _tail():
    pod = {"metadata": {"name": "j-worker-1", "uid": "u1", "labels": {"training.kubeflow.org/replica-type": "worker",
                                                                        "training.kubeflow.org/replica-index": "1"}}}
    return _Tail(_F(), pod, None)


def _shown(t):
    out = []
    while not t.f.q.empty():
        out.append(t.f.q.get()[2])
    return out


T1, T2, T3 = "2026-11-26T08:00:00.1Z", "2026-11-26T08:00:00.200000000Z", "2026-11-26T08:00:01Z"


def test_resume_skips_what_was_shown_even_with_equal_timestamps():
    t = _tail()
    for ts, text in [(T1, "a"), (T2, "b"), (T2, "c")]:  # first connection, then it drops
        t._line(f"{ts} {text}".encode())
    t.conn_count = 0  # a new connection (sinceSeconds reaches back before T1)
    for ts, text in [(T1, "a"), (T2, "b"), (T2, "c"), (T2, "d"), (T3, "e")]:
        t._line(f"{ts} {text}".encode())
    assert _shown(t) == ["a", "b", "c", "d", "e"]


def test_result_lines_are_stripped_and_decoded():
    import base64

    import cloudpickle

    t = _tail()
    b64 = base64.b64encode(cloudpickle.dumps({"x": 1})).decode()
    half = len(b64) // 2
    t._line(f"{T1} ##ptjupyter-result n0nce 1/2 {b64[:half]}".encode())
    t._line(f"{T2} ##ptjupyter-result other 1/1 AAAA".encode())  # not our nonce: a user's line, shown
    t._line(f"{T3} ##ptjupyter-result n0nce 2/2 {b64[half:]}".encode())
    assert _shown(t) == ["##ptjupyter-result other 1/1 AAAA"]
    assert cloudpickle.loads(base64.b64decode(t.f.result_b64)) == {"x": 1}


def test_job_states():
    assert job_state(None, "pytorchjobs")[0] == "Pending"
    conds = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
             {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed", "message": "m"}]
    assert job_state({"status": {"conditions": conds}}, "pytorchjobs") == ("Failed", "PyTorchJobFailed", "m")
    assert job_state({"status": {"conditions": conds[:1]}}, "pytorchjobs")[0] == "Created"
    assert job_state({"status": {"active": 1}}, "jobs")[0] == "Running"
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}, "jobs")[0] == "Succeeded"


def test_pod_labels_and_ranks():
    def pod(rtype, index, master=False):
        labels = {"training.kubeflow.org/replica-type": rtype, "training.kubeflow.org/replica-index": str(index)}
        if master:
            labels["ptjupyter.io/has-master"] = "true"
        return {"metadata": {"labels": labels}}

    assert pod_label(pod("worker", 1)) == ("worker-1", 1)
    assert pod_label(pod("master", 0, True)) == ("master-0", 0)
    assert pod_label(pod("worker", 0, True)) == ("worker-0", 1)
    assert pod_label({"metadata": {"labels": {"job-name": "x"}}}) == ("worker-0", 0)  # a batch Job's pod


def test_traceback_extraction_stops_at_the_exception_line():
    lines = ["[ptjupyter] rank 1 failed:", "Traceback (most recent call last):", '  File "x", line 1, in f',
             "KeyError: 'a'", "", "During handling of the above exception, another exception occurred:", "",
             "Traceback (most recent call last):", '  File "y", line 2, in g', "ValueError: b",
             "E1126 torchrun noise", "more noise"]
    assert _traceback(lines) == lines[:10]


def test_follower_is_constructible_without_a_cluster():
    f = Follower(object(), JobRef("j", "default", "jobs"), out=lambda s: None)
    assert f.state[0] == "Pending" and f.tails == {}
