"""The task-config API: fields, defaults, enum values, and one-line errors for bad input."""
import dataclasses
import warnings

import pytest

from ptjupyter import CleanPodPolicy, Elastic, Master, PyTorch, RestartPolicy, RunPolicy, Worker
from ptjupyter.config import parse_nnodes


def test_defaults_match_the_kfpytorch_plugin():
    e = Elastic()
    assert (e.nnodes, e.nproc_per_node, e.start_method, e.monitor_interval, e.max_restarts) == (1, 1, "spawn", 5, 0)
    assert e.rdzv_configs == {"timeout": 900, "join_timeout": 900} and e.increase_shared_mem and e.run_policy is None
    assert [f.name for f in dataclasses.fields(PyTorch)] == [
        "master", "worker", "run_policy", "num_workers", "increase_shared_mem"]
    assert [f.name for f in dataclasses.fields(Worker)] == ["image", "requests", "limits", "replicas", "restart_policy"]
    assert [f.name for f in dataclasses.fields(Master)] == ["image", "requests", "limits", "restart_policy"]
    assert [f.name for f in dataclasses.fields(RunPolicy)] == [
        "clean_pod_policy", "ttl_seconds_after_finished", "active_deadline_seconds", "backoff_limit"]


def test_enum_values_are_flyteidls_and_map_to_manifest_strings():
    from flyteidl.plugins.kubeflow import common_pb2 as c

    assert RestartPolicy.ALWAYS.value == c.RESTART_POLICY_ALWAYS
    assert RestartPolicy.FAILURE.value == c.RESTART_POLICY_ON_FAILURE
    assert RestartPolicy.NEVER.value == c.RESTART_POLICY_NEVER
    assert CleanPodPolicy.NONE.value == c.CLEANPOD_POLICY_NONE
    assert CleanPodPolicy.ALL.value == c.CLEANPOD_POLICY_ALL
    assert CleanPodPolicy.RUNNING.value == c.CLEANPOD_POLICY_RUNNING
    assert [p.k8s for p in RestartPolicy] == ["Always", "OnFailure", "Never"]
    assert [p.k8s for p in CleanPodPolicy] == ["None", "All", "Running"]


@pytest.mark.parametrize("nnodes,expected", [
    (1, (1, 1)), ("1", (1, 1)), ("1:1", (1, 1)), (2, (2, 2)), ("2", (2, 2)), ("1:4", (1, 4)), ("2:4", (2, 4)),
])
def test_nnodes_forms(nnodes, expected):
    assert parse_nnodes(nnodes) == expected
    assert (Elastic(nnodes=nnodes).min_nodes, Elastic(nnodes=nnodes).max_nodes) == expected


@pytest.mark.parametrize("kwargs,exc,words", [
    ({"nnodes": 0}, ValueError, ["nnodes=0", "MIN:MAX"]),
    ({"nnodes": -1}, ValueError, ["nnodes=-1"]),
    ({"nnodes": "a:b"}, ValueError, ["nnodes='a:b'"]),
    ({"nnodes": "4:2"}, ValueError, ["nnodes='4:2'", "MIN <= MAX"]),
    ({"nnodes": ""}, ValueError, ["nnodes=''"]),
    ({"nnodes": "1:2:3"}, ValueError, ["nnodes='1:2:3'"]),
    ({"nnodes": 1.5}, TypeError, ["nnodes=1.5"]),
    ({"nnodes": True}, TypeError, ["nnodes=True"]),
    ({"nproc_per_node": 0}, ValueError, ["nproc_per_node=0", ">= 1"]),
    ({"nproc_per_node": "2"}, TypeError, ["nproc_per_node='2'"]),
    ({"start_method": "thread"}, ValueError, ["start_method='thread'", "spawn | fork | forkserver"]),
    ({"max_restarts": -1}, ValueError, ["max_restarts=-1", ">= 0"]),
    ({"monitor_interval": 0}, ValueError, ["monitor_interval=0"]),
    ({"rdzv_configs": "timeout=1"}, TypeError, ["rdzv_configs="]),
    ({"run_policy": "never"}, TypeError, ["run_policy='never'", "RunPolicy"]),
    ({"increase_shared_mem": "yes"}, TypeError, ["increase_shared_mem='yes'"]),
    ({"nnode": 2}, TypeError, ["unknown argument nnode=2", "accepted: nnodes"]),
])
def test_bad_elastic_values_give_one_line_naming_field_value_and_accepted(kwargs, exc, words):
    with pytest.raises(exc) as info:
        Elastic(**kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("make,exc,words", [
    (lambda: Worker(replicas=-1), ValueError, ["Worker.replicas=-1"]),
    (lambda: Worker(replicas=0), ValueError, ["Worker.replicas=0", ">= 1"]),
    (lambda: Worker(restart_policy="OnFailure"), TypeError, ["Worker.restart_policy='OnFailure'", "RestartPolicy.FAILURE"]),
    (lambda: Master(restart_policy=1), TypeError, ["Master.restart_policy=1"]),
    (lambda: Master(replicas=2), TypeError, ["unknown argument replicas=2"]),
    (lambda: Worker(requests={"cpus": "1"}), ValueError, ["Worker.requests=", "cpu, mem, gpu"]),
    (lambda: Worker(image=""), ValueError, ["Worker.image=''"]),
    (lambda: RunPolicy(clean_pod_policy="All"), TypeError, ["RunPolicy.clean_pod_policy='All'", "CleanPodPolicy.ALL"]),
    (lambda: RunPolicy(backoff_limit=-2), ValueError, ["RunPolicy.backoff_limit=-2"]),
    (lambda: RunPolicy(active_deadline_seconds=0), ValueError, ["RunPolicy.active_deadline_seconds=0"]),
    (lambda: PyTorch(), ValueError, ["worker.replicas", "num_workers"]),
    (lambda: PyTorch(num_workers=2, worker=Worker(replicas=2)), ValueError, ["num_workers=2", "worker.replicas=2"]),
    (lambda: PyTorch(worker=Worker(replicas=2), workers=3), TypeError, ["unknown argument workers=3"]),
])
def test_bad_replica_and_policy_values(make, exc, words):
    with pytest.raises(exc) as info:
        make()
    assert "\n" not in str(info.value)
    for w in words:
        assert w in str(info.value)


def test_num_workers_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="worker=Worker"):
        cfg = PyTorch(num_workers=3)
    assert cfg.replicas == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PyTorch(worker=Worker(replicas=2)).replicas == 2


def test_flytekit_resources_are_accepted_without_importing_flytekit_here():
    from flytekit import Resources

    w = Worker(requests=Resources(cpu="1", mem="1Gi"), limits=Resources(gpu="1"))
    assert w.requests.cpu == "1"
