"""TrainJob end to end against the fake API server + fake Trainer v2 controller: real torchrun processes that
meet in one rendezvous through the PET_* env the torch plugin injects."""
from __future__ import annotations

import threading
import time

import fake_k8s
import k8s_cells
import pytest

from ptjupyter import Elastic
from ptjupyter.k8s import discovery, run
from ptjupyter.k8s.errors import JobFailed, K8sError

FAST = dict(monitor_interval=0.5)


@pytest.fixture(autouse=True)
def _fresh_discovery():
    discovery.refresh()  # each fake cluster serves other APIs on another port
    yield
    discovery.refresh()


def test_two_node_trainjob_all_reduce_returns_rank0_value(fake_v2, plan_for, recorder):
    """...while the watches drop and expire (410) and node-1's log stream is cut mid-line: nothing lost or doubled."""
    api = fake_v2.api_client()
    cut = threading.Event()

    def on_line(rec, rank, text):
        if text == "rank 0 step 1" and not cut.is_set():
            cut.set()
            node1 = next(n for n in fake_v2.names("pods") if n.startswith("ptj-tj2-node-0-1-"))
            fake_v2.drop_log(node1, after_lines=0, mid_line=True)
            fake_v2.compact(drop_watches=True)

    rec, out = recorder(on_line), []
    t0 = time.monotonic()
    value = run(plan_for(Elastic(nnodes=2, **FAST), job_name="ptj-tj2"), k8s_cells.ddp_sum, api_client=api, sink=rec,
                out=out.append)
    assert value == {"sum": 3.0, "world": 2}
    for rank in (0, 1):  # node 1's torchrun may add c10d warnings once node 0 (the static store's host) has exited
        steps = [t for t in rec.texts(rank) if t.startswith("rank ")]
        assert steps == [f"rank {rank} step {i}" for i in range(4)], rec.lines
    assert out[0].startswith("[ptjupyter] submitted TrainJob default/ptj-tj2") and out[-1].endswith("Succeeded")
    assert cut.is_set() and sum(1 for r in fake_v2.requests if r[1].endswith("/trainjobs") and "watch" not in r[2]) >= 2
    job = fake_v2.get("trainjobs", "ptj-tj2")
    assert job["spec"]["runtimeRef"] == {"name": "torch-distributed"} and job["spec"]["trainer"]["numNodes"] == 2
    assert fake_v2.names("pytorchjobs") == [] and fake_v2.names("jobsets") == ["ptj-tj2"]
    pods = [p for p in (fake_v2.get("pods", n) for n in fake_v2.names("pods")) if p]
    assert sorted(p["spec"]["hostname"] for p in pods) == ["ptj-tj2-node-0-0", "ptj-tj2-node-0-1"]
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["PET_MASTER_ADDR"] == "ptj-tj2-node-0-0.ptj-tj2" and env["PET_NNODES"] == "2"
    cm = fake_v2.get("secrets", "ptj-tj2-payload")
    assert cm["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    print(f"2-node TrainJob: submit -> first log line {rec.lines[0][0]:.2f} s, whole run {time.monotonic() - t0:.1f} s")


def test_failing_node_fails_the_cell_with_its_traceback(fake_v2, plan_for, recorder):
    api = fake_v2.api_client()
    rec = recorder()
    with pytest.raises(JobFailed) as e:
        run(plan_for(Elastic(nnodes=2, **FAST)), k8s_cells.fail_rank1, api_client=api, sink=rec, out=lambda s: None)
    msg = str(e.value)
    assert "failed (FailedJobs)" in msg.splitlines()[0] and "-node-0-1-" in msg.splitlines()[0]
    assert "ValueError: boom on rank 1" in msg


def test_queued_trainjob_waits_for_admission_then_runs(fake_v2, plan_for, recorder):
    api = fake_v2.api_client()
    out = []

    def say(line):
        out.append(line)
        if "waiting for admission in queue team-q" in line:
            threading.Timer(0.3, fake_v2.admit, ("ptj-q",)).start()

    value = run(plan_for(Elastic(nnodes=2, **FAST), job_name="ptj-q", queue="team-q"), k8s_cells.ddp_sum,
                api_client=api, sink=recorder(), out=say)
    assert value == {"sum": 3.0, "world": 2}
    assert any("ptj-q: waiting for admission in queue team-q" in line for line in out), out
    assert fake_v2.get("trainjobs", "ptj-q")["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-q"


def test_api_auto_picks_what_the_cluster_serves(fake_v2, plan_for):
    api = fake_v2.api_client()
    with pytest.raises(K8sError, match=r"nnodes='1:2' is elastic.*serves trainjobs"):
        run(plan_for(Elastic(nnodes="1:2")), k8s_cells.hello, api_client=api, out=lambda s: None)
    with pytest.raises(K8sError, match=r"api='pytorchjob' \(from test\) is not served.*it serves trainjobs"):
        run(plan_for(Elastic(nnodes=2), api="pytorchjob"), k8s_cells.hello, api_client=api, out=lambda s: None)
    with pytest.raises(K8sError, match=r"runtime='nope' is not accepted.*it has torch-distributed"):
        run(plan_for(Elastic(nnodes=2), runtime="nope"), k8s_cells.hello, api_client=api, out=lambda s: None)
    assert fake_v2.names("trainjobs") == [] and fake_v2.names("secrets") == []


def test_jobs_magic_lists_and_cancels_a_trainjob(fake_v2, plan_for):
    from ptjupyter.k8s import jobs

    api = fake_v2.api_client()
    ref = run(plan_for(Elastic(nnodes=2), job_name="ptj-list", queue="team-q"), k8s_cells.hello, api_client=api,
              detach=True, out=lambda s: None)
    assert ref.kind == "TrainJob"
    out = []
    jobs.main("", out=out.append, api_client=api)
    row = next(line for line in out if line.startswith("ptj-list"))
    assert "TrainJob" in row and "Queued" in row and "waiting for admission in queue team-q" in row, out
    jobs.main("cancel ptj-list", out=out.append, api_client=api)
    assert fake_v2.names("trainjobs") == [] and fake_v2.names("secrets") == []


def test_a_trainjob_cell_in_a_real_shell_shows_node_lines_and_returns_rank0(fake_v2, tmp_path, monkeypatch, capsys):
    """%%pytorch_elastic --target k8s --nnodes 2 (api auto on a Trainer-only cluster) through $KUBECONFIG."""
    from IPython.core.interactiveshell import InteractiveShell

    cfg = fake_k8s.write_kubeconfig(tmp_path / "kubeconfig", fake_v2.host, token="not-a-real-token")
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ptjupyter")
    shell.user_ns["ddp_sum"] = k8s_cells.ddp_sum
    value = shell.run_cell_magic("pytorch_elastic", "--target k8s --nnodes 2 --image local/python:3.11 "
                                 "--job-name ptj-tjcell", "ddp_sum()")
    assert value == {"sum": 3.0, "world": 2}
    out = capsys.readouterr().out
    assert "[ptjupyter] submitted TrainJob default/ptj-tjcell" in out, out
    assert "[node-0] rank 0 step 3" in out and "[node-1] rank 1 step 3" in out and "2/2 pods exited 0" in out, out
