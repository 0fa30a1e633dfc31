"""TrainJob manifests (ptjupyter.k8s.trainjob) validated offline against the vendored Trainer v2 CRD, and the
--api choice (plan.resolve + discovery.settle) without a cluster."""
from __future__ import annotations

import pytest
import validate_trainjob

from ptjupyter import Elastic, Layer, Mode, PyTorch, Worker, resolve
from ptjupyter.config import RunPolicy
from ptjupyter.errors import InvalidValue
from ptjupyter.k8s import discovery, dry_run
from ptjupyter.k8s import trainjob as tj
from ptjupyter.k8s.errors import K8sError
from ptjupyter.k8s.submit import prepare

FILES = {"meta.json": "meta.json", "entrypoint.py": "entrypoint.py", "payload.pkl": "payload.pkl"}
TOL = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

CONFIGS = [  # (config, overrides): every one must be a TrainJob the cluster accepts
    (Elastic(nnodes=2), {}),
    (Elastic(nnodes=1), {}),
    (Elastic(nnodes="3:3", nproc_per_node=4), {}),
    (Elastic(nnodes=2, max_restarts=3, start_method="forkserver"), {}),
    (Elastic(nnodes=2, increase_shared_mem=False), {}),
    (Elastic(nnodes=2, run_policy=RunPolicy(active_deadline_seconds=3600)), {}),
    (Elastic(nnodes=4), {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}),
    (Elastic(nnodes=2), {"limits": {"nvidia.com/gpu": "1"}}),
    (Elastic(nnodes=2), {"env": {"HF_HOME": "/cache", "NCCL_DEBUG": "INFO"}}),
    (Elastic(nnodes=2), {"labels": {"team": "ml"}, "annotations": {"example.com/note": "x"}}),
    (Elastic(nnodes=2), {"queue": "team-q"}),
    (Elastic(nnodes=2), {"queue": "team-q", "priority_class": "high"}),
    (Elastic(nnodes=2), {"node_selector": {"pool": "gpu"}, "tolerations": [TOL]}),
    (Elastic(nnodes=2), {"service_account": "trainer"}),
    (Elastic(nnodes=2), {"runtime": "torch-cuda", "runtime_kind": "TrainingRuntime", "namespace": "team-a"}),
    (Elastic(nnodes=2), {"job_name": "a" * 48}),
    (Elastic(nnodes=10, nproc_per_node=8), {"limits": {"nvidia.com/gpu": "8"}, "api": "trainjob"}),
]


def _plan(config, **over):
    return resolve(config, [Layer("test", {"image": "local/python:3.11", "api": "trainjob", **over})], target="k8s")


@pytest.mark.parametrize("config,over", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_every_trainjob_validates_against_the_crd(config, over):
    plan = _plan(config, **over)
    assert plan.mode is Mode.TRAINJOB
    doc = tj.build(plan, plan.k8s.job_name or "ptj-0123abcd", FILES, "nonce")
    assert validate_trainjob.validate(doc) == [], doc
    t = doc["spec"]["trainer"]
    assert t["numNodes"] == plan.max_nodes and t["numProcPerNode"] == plan.nproc_per_node
    assert t["command"][0] == "torchrun" and t["command"][-1] == "/etc/ptjupyter/entrypoint.py"
    assert not {e["name"] for e in t["env"]} & set(tj.RESERVED_ENV)
    patch = doc["spec"]["runtimePatches"][0]
    assert patch["manager"] == tj.MANAGER
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["spec"]["containers"][0]["name"] == "node" and pod["spec"]["volumes"][0]["name"] == "ptjupyter-payload"
    if over.get("queue"):
        assert doc["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == over["queue"]


def test_the_validator_catches_what_the_cluster_refuses():
    doc = tj.build(_plan(Elastic(nnodes=2)), "ptj-x", FILES)
    doc["spec"]["trainer"]["numNodes"] = -1
    doc["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "3"})
    doc["spec"]["trainer"]["unknown"] = 1
    doc["spec"]["runtimePatches"][0]["manager"] = "ptjupyter"
    errs = "\n".join(validate_trainjob.validate(doc))
    for part in ("numNodes", "reserved envs", "unknown", "domain-prefixed"):
        assert part in errs, errs


@pytest.mark.parametrize("over,match", [
    ({"env": {"PET_NNODES": "4"}}, r"env name 'PET_NNODES' is not accepted for a TrainJob"),
    ({"job_name": "a" * 49}, r"job_name='a{49}' \(49 characters\) is not accepted for a TrainJob; expected at most 48"),
])
def test_trainjob_refusals_are_one_line(over, match):
    with pytest.raises(InvalidValue, match=match):
        prepare(_plan(Elastic(nnodes=2), **over), lambda: 1)


@pytest.mark.parametrize("config,api,mode,open_", [
    (Elastic(), "auto", Mode.POD, False),
    (Elastic(nnodes=2), "auto", Mode.PYTORCHJOB, True),
    (Elastic(nnodes="1:3"), "auto", Mode.PYTORCHJOB, False),
    (PyTorch(worker=Worker(replicas=1)), "auto", Mode.PYTORCHJOB, False),
    (Elastic(), "trainjob", Mode.TRAINJOB, False),
    (Elastic(nnodes=2), "pytorchjob", Mode.PYTORCHJOB, False),
    (Elastic(), "pytorchjob", Mode.PYTORCHJOB, False),
    (Elastic(), "job", Mode.POD, False),
])
def test_api_choice_in_resolve(config, api, mode, open_):
    plan = _plan(config, api=api)
    assert (plan.mode, plan.api_open, plan.api) == (mode, open_, api)
    assert f"api: {api}" in plan.describe()


@pytest.mark.parametrize("config,api,match", [
    (Elastic(nnodes="1:3"), "trainjob", r"api='trainjob' \(from test\) is not accepted with nnodes='1:3': Kubeflow "
                                        r"Trainer v2 has no elastic training"),
    (Elastic(nnodes=2), "job", r"api='job' \(from test\) is not accepted with nnodes='2'"),
    (Elastic(), "v2", r"api='v2' \(from test\) is not accepted; expected one of auto, trainjob, pytorchjob, job"),
    (PyTorch(worker=Worker(replicas=1)), "trainjob", r"PyTorch \(Master/Worker\) config"),
])
def test_bad_api_is_one_line(config, api, match):
    with pytest.raises(InvalidValue, match=match):
        _plan(config, api=api)


def test_api_on_a_local_run_is_a_warning():
    plan = resolve(None, [Layer("cell flags", {"api": "trainjob"})])
    assert plan.warnings == ("api='trainjob' (from cell flags) does not apply to a local run; ignored",)


class _Kube:
    def __init__(self, served):
        self.host, self.served, self.calls = f"fake://{sorted(served)}", served, 0

    def request(self, method, path, name=None, **kw):
        self.calls += 1
        if path.split(":", 1)[1].split("/")[0] in self.served:
            return {"resources": [{"name": "trainjobs" if "trainer" in path else "pytorchjobs"}]}
        raise K8sError("404", status=404)


@pytest.mark.parametrize("served,config,expect", [
    ({"trainer.kubeflow.org", "kubeflow.org"}, Elastic(nnodes=2), Mode.TRAINJOB),
    ({"kubeflow.org"}, Elastic(nnodes=2), Mode.PYTORCHJOB),
    ({"trainer.kubeflow.org", "kubeflow.org"}, Elastic(nnodes="1:2"), Mode.PYTORCHJOB),
    ({"trainer.kubeflow.org"}, Elastic(nnodes="1:2"), "elastic, and Kubeflow Trainer v2"),
    (set(), Elastic(nnodes=2), "no training operator on this cluster"),
])
def test_settle_auto_by_discovery_cached_per_kernel(served, config, expect):
    discovery.refresh()
    kube, plan = _Kube(served), _plan(config, api="auto")
    if not isinstance(expect, Mode):
        with pytest.raises(K8sError, match=expect):
            discovery.settle(kube, plan)
        return
    assert discovery.settle(kube, plan).mode is expect
    calls = kube.calls
    discovery.settle(kube, plan)
    assert kube.calls == calls  # cached
    discovery.settle(kube, plan, fresh=True)
    assert kube.calls == 2 * calls
    discovery.refresh()


def test_dry_run_with_api_auto_shows_both_without_a_cluster():
    text = dry_run(_plan(Elastic(nnodes=2), api="auto", job_name="ptj-dry"), lambda: 1)
    assert "kind: PyTorchJob" in text and "kind: TrainJob" in text and "# ... else (Kubeflow Trainer v2 served)" in text
