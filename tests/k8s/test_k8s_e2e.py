"""End to end against the fake API server + operator: real processes, real torchrun, real HTTP on 127.0.0.1."""
from __future__ import annotations

import _thread
import threading
import time

import fake_k8s
import k8s_cells
import pytest

from ptjupyter import Elastic, PyTorch, Worker
from ptjupyter.k8s import jobs, run
from ptjupyter.k8s.errors import JobFailed

FAST = dict(monitor_interval=0.5)  # torchrun notices the end of its workers at once


def test_two_nodes_live_ordered_result_with_dropped_log_and_watch(fake, api, plan_for, recorder):
    """2 nodes x 1 process, c10d rendezvous on 127.0.0.1: both workers' lines arrive live and in order, the
    result comes back; worker-1's log stream is cut mid-line and the watches drop / expire (410) meanwhile:
    no line is lost or shown twice."""
    plan = plan_for(Elastic(nnodes=2, **FAST), job_name="ptj-two")
    fake.drop_log("ptj-two-worker-1", after_lines=2, mid_line=True)
    cut = threading.Event()

    def on_line(rec, rank, text):
        if text == "rank 0 step 1" and not cut.is_set():
            cut.set()
            # one step: the next watch from an old resourceVersion gets 410 Gone -> relist
            fake.compact(drop_watches=True)

    out, rec = [], recorder(on_line)
    submitted = []

    def say(line):
        out.append(line)
        if line.startswith("[ptjupyter] submitted "):
            submitted.append(time.monotonic() - rec.t0)  # on the sink's clock

    value = run(plan, k8s_cells.ddp_sum, api_client=api, sink=rec, out=say)
    assert value == {"sum": 3.0, "world": 2}
    for rank in (0, 1):
        assert rec.texts(rank) == [f"rank {rank} step {i}" for i in range(4)], rec.lines
    times = [t for t, r, text in rec.lines if r == 0]
    assert times[-1] - times[0] > 0.8  # printed 0.4 s apart: they came as they were printed, not at the end
    assert cut.is_set() and submitted and rec.lines[0][0] > submitted[0]
    print(f"submit -> first log line: {rec.lines[0][0] - submitted[0]:.2f} s; whole run "
          f"{time.monotonic() - rec.t0:.1f} s")
    log_gets = [r for r in fake.requests if r[1].endswith("ptj-two-worker-1/log")]
    assert len(log_gets) >= 2 and "sinceSeconds" in log_gets[-1][2]  # resumed, not restarted
    relists = [r for r in fake.requests if r[1].endswith("/pytorchjobs") and r[0] == "GET" and "watch" not in r[2]]
    assert len(relists) == 2  # the first list, and one after 410 Gone (then the watch resumed from the new version)
    assert any("Running" in line for line in out) and out[-1].endswith("Succeeded")
    states = {(r, s) for r, s, _ in rec.states}
    assert {(0, "running"), (1, "running"), (0, "exited 0"), (1, "exited 0")} <= states


def test_failing_worker_fails_with_its_traceback(fake, api, plan_for, recorder):
    rec = recorder()
    t0 = time.monotonic()
    with pytest.raises(JobFailed) as e:
        run(plan_for(Elastic(nnodes=2, **FAST)), k8s_cells.fail_rank1, api_client=api, sink=rec, out=lambda s: None)
    msg = str(e.value)
    head = msg.splitlines()[0]
    assert "failed (PyTorchJobFailed)" in head and "1 Worker replica(s) failed" in head and head.endswith("-worker-1")
    assert "[ptjupyter] rank 1 failed:" in msg and "ValueError: boom on rank 1" in msg
    assert "rank 1 started" in rec.texts(1)
    assert time.monotonic() - t0 < 25  # rank 0 sleeps 30 s: the cell does not wait for it


def test_single_node_job_returns_value_and_both_streams(fake, api, plan_for):
    out = []
    assert run(plan_for(Elastic()), k8s_cells.hello, api_client=api, out=out.append) == {"answer": 42, "pid": True}
    lines = [line for line in out if line.startswith("[worker-0]")]
    assert lines == ["[worker-0] hello 0", "[worker-0] hello 1", "[worker-0] hello 2", "[worker-0] to stderr"]
    assert not any("##ptjupyter-result" in line for line in out)
    job = fake.get("jobs", fake.names("jobs")[0])
    assert job["kind"] == "Job" and fake.names("pytorchjobs") == []
    cm = fake.get("secrets", fake.names("secrets")[0])
    assert cm["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]


def test_interrupt_leaves_the_job_running_then_attach_and_cancel(fake, api, plan_for, recorder):
    plan = plan_for(Elastic(), job_name="ptj-long")

    def on_line(rec, rank, text):
        if text == "tick 2":
            _thread.interrupt_main()

    out = []
    with pytest.raises(KeyboardInterrupt):
        run(plan, k8s_cells.slow(14), api_client=api, sink=recorder(on_line), out=out.append)
        time.sleep(5)  # the interrupt lands here at the latest
    hint = out[-1]
    assert "keeps running" in hint and "%pytorch_elastic_jobs attach ptj-long" in hint and "cancel ptj-long" in hint
    pod = next(n for n in fake.names("pods") if n.startswith("ptj-long-"))
    assert fake.proc_alive(pod) and fake.get("jobs", "ptj-long") is not None

    out2 = []
    value = jobs.main("attach ptj-long --tail 2", out=out2.append, api_client=api)
    assert value == 14
    lines = [line for line in out2 if line.startswith("[worker-0]")]
    assert lines[-1] == "[worker-0] tick 13"
    ticks = [int(line.split()[-1]) for line in lines]
    assert ticks == list(range(ticks[0], 14)) and ticks[0] >= 1  # --tail: not from the start, then no gap

    out3 = []
    jobs.main("", out=out3.append, api_client=api)
    assert out3[0].split()[:3] == ["NAME", "KIND", "STATE"] and any("ptj-long" in ln and "Succeeded" in ln for ln in out3)


def test_cancel_deletes_job_pods_and_payload(fake, api, plan_for):
    ref = run(plan_for(Elastic(), job_name="ptj-cancel"), k8s_cells.slow(200), api_client=api, detach=True,
              out=lambda s: None)
    assert ref.name == "ptj-cancel"
    deadline = time.monotonic() + 20
    while not any(n.startswith("ptj-cancel-") for n in fake.names("pods")) and time.monotonic() < deadline:
        time.sleep(0.05)
    pod = next(n for n in fake.names("pods") if n.startswith("ptj-cancel-"))
    out = []
    jobs.main("cancel ptj-cancel", out=out.append, api_client=api)
    assert "cancelled default/ptj-cancel" in out[-1]
    assert fake.get("jobs", "ptj-cancel") is None and fake.names("secrets") == [] and fake.names("pods") == []
    assert not fake.proc_alive(pod)


@pytest.mark.parametrize("reason,message,expect", [
    ("FailedScheduling", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
     "waiting: worker-0: Unschedulable (FailedScheduling: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.)"),
    ("ImagePullBackOff", "manifest unknown",
     'waiting: worker-0: ImagePullBackOff (Failed: Failed to pull image "local/python:3.11": manifest unknown)'),
])
def test_pending_job_says_why_it_waits(fake, api, plan_for, reason, message, expect):
    fake.hold_pods(reason, message)
    seen = []

    def out(line):
        seen.append(line)
        if expect in line or len(seen) > 30:
            raise KeyboardInterrupt  # the user gives up waiting

    with pytest.raises(KeyboardInterrupt):
        run(plan_for(Elastic(nnodes=2), job_name="ptj-wait"), k8s_cells.hello, api_client=api, out=out)
    status = next((line for line in seen if expect in line), seen)
    assert status.startswith("[ptjupyter] ptj-wait: "), status
    assert fake.get("pytorchjobs", "ptj-wait") is not None and "keeps running" in seen[-1]


def test_master_worker_job(fake, api, plan_for, recorder):
    """PyTorch config: Master(1) + Worker(1), the operator's MASTER_ADDR/RANK/WORLD_SIZE, static rendezvous."""
    rec = recorder()
    value = run(plan_for(PyTorch(worker=Worker(replicas=1))), k8s_cells.ddp_sum, api_client=api, sink=rec,
                out=lambda s: None)
    assert value == {"sum": 3.0, "world": 2}
    assert rec.texts(0)[0] == "rank 0 step 0" and rec.texts(1)[0] == "rank 1 step 0"


def test_line_magic_in_a_real_shell(fake, api, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from ptjupyter.k8s import magic

    shell = InteractiveShell.instance()
    shell.register_magics(magic.PytorchElasticJobs)
    calls = []
    monkeypatch.setattr(jobs, "main", lambda line, out, api_client=None, sink=None: calls.append(line) or "ok")
    assert shell.run_line_magic("pytorch_elastic_jobs", "attach ptj-x --tail 5") == "ok"
    assert calls == ["attach ptj-x --tail 5"]


def test_job_deleted_from_outside_while_followed(fake, api, plan_for, recorder):
    from ptjupyter.k8s.errors import JobDeleted

    def on_line(rec, rank, text):
        if text == "tick 1":
            fake.call(fake._delete, ("jobs", "default", "ptj-gone"))

    with pytest.raises(JobDeleted) as e:
        run(plan_for(Elastic(), job_name="ptj-gone"), k8s_cells.slow(40), api_client=api, sink=recorder(on_line),
            out=lambda s: None)
    assert "ptj-gone was deleted while it was followed" in str(e.value)
    assert fake.names("pods") == [] and fake.names("secrets") == []


def test_k8s_cell_in_a_real_shell_through_the_kubeconfig(fake, tmp_path, monkeypatch, capsys):
    """%%pytorch_elastic --target k8s in an InteractiveShell; the client finds the server through $KUBECONFIG."""
    from IPython.core.interactiveshell import InteractiveShell

    cfg = fake_k8s.write_kubeconfig(tmp_path / "kubeconfig", fake.host, token="not-a-real-token")
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ptjupyter")
    shell.user_ns["factor"] = 6
    value = shell.run_cell_magic("pytorch_elastic", "--target k8s --image local/python:3.11 --job-name ptj-shell",
                                 "print('hello from the pod')\nfactor * 7")
    assert value == 42
    out = capsys.readouterr().out
    assert "[worker-0] hello from the pod" in out and "1/1 pods exited 0" in out, out
    assert "not-a-real-token" not in out
    assert fake.get("jobs", "ptj-shell")["metadata"]["annotations"]["ptjupyter.io/world-size"] == "1"
    jobs_out = []
    jobs.main("", out=jobs_out.append)  # through the kubeconfig too
    assert any(line.startswith("ptj-shell") and "Succeeded" in line for line in jobs_out)


def test_container_restart_resumes_without_duplicates(fake, api, plan_for, recorder):
    """The kubelet restarts the container: the old container's lines once, then the new container's, then its value."""
    restarted = threading.Event()

    def on_line(rec, rank, text):
        if text == "tick 3" and not restarted.is_set():
            restarted.set()
            pod = next(n for n in fake.names("pods") if n.startswith("ptj-restart-"))
            threading.Thread(target=fake.restart_container, args=(pod,)).start()

    rec = recorder(on_line)
    assert run(plan_for(Elastic(), job_name="ptj-restart"), k8s_cells.slow(8), api_client=api, sink=rec,
               out=lambda s: None) == 8
    ticks = [int(t.split()[1]) for t in rec.texts(0)]
    cut = ticks.index(0, 1)  # where the second container starts over
    assert ticks[:cut] == list(range(cut)) and cut >= 4 and ticks[cut:] == list(range(8))


def test_single_node_failure_shows_the_traceback(fake, api, plan_for):
    out = []
    with pytest.raises(JobFailed) as e:
        run(plan_for(Elastic()), k8s_cells.fail_direct, api_client=api, out=out.append)
    lines = str(e.value).splitlines()
    assert "failed (BackoffLimitExceeded): Job has reached the specified backoff limit" in lines[0]
    assert lines[2] == "[ptjupyter] rank 0 failed:" and lines[-1] == "KeyError: 'missing-key'"
    assert "[worker-0] about to fail" in out
