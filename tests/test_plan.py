"""The one mode decision: resolve(config, layers) -> Plan."""
import logging
import subprocess
import sys

import pytest

from ptjupyter import Elastic, Layer, Mode, PyTorch, Worker, resolve


@pytest.mark.parametrize("nnodes,nproc,target,mode", [
    (1, 1, "local", Mode.DIRECT), ("1", 1, "local", Mode.DIRECT), ("1:1", 1, "local", Mode.DIRECT),
    (1, 2, "local", Mode.ELASTIC), ("1:1", 4, "local", Mode.ELASTIC),
    (1, 1, "k8s", Mode.POD), ("1", 4, "k8s", Mode.POD), ("1:1", 2, "k8s", Mode.POD),
    (2, 1, "k8s", Mode.PYTORCHJOB), ("2", 2, "k8s", Mode.PYTORCHJOB), ("1:4", 1, "k8s", Mode.PYTORCHJOB),
    ("2:4", 8, "k8s", Mode.PYTORCHJOB),
])
def test_mode_follows_nodes_processes_and_target(nnodes, nproc, target, mode):
    plan = resolve(Elastic(nnodes=nnodes, nproc_per_node=nproc), target=target)
    assert plan.mode is mode
    assert plan.world_size == plan.max_nodes * nproc


def test_pytorch_config_is_a_pytorchjob_on_k8s_and_a_direct_call_locally():
    cfg = PyTorch(worker=Worker(replicas=3))
    assert resolve(cfg, target="k8s").mode is Mode.PYTORCHJOB
    assert resolve(cfg, target="k8s").max_nodes == 4
    assert resolve(cfg).mode is Mode.DIRECT


@pytest.mark.parametrize("nnodes", [2, "2", "1:4", "2:4"])
def test_several_nodes_locally_is_refused_with_one_line(nnodes):
    with pytest.raises(ValueError) as info:
        resolve(Elastic(nnodes=nnodes))
    msg = str(info.value)
    assert "\n" not in msg and f"nnodes={nnodes!r}" in msg and "--target k8s" in msg


def test_inside_a_pytorchjob_pod_the_operator_environment_decides_the_nodes():
    env = {"PET_NNODES": "2:2", "PET_RDZV_ENDPOINT": "job-worker-0:23456", "PET_RDZV_BACKEND": "c10d"}
    plan = resolve(Elastic(nnodes=2, nproc_per_node=1), env=env)
    assert plan.mode is Mode.ELASTIC and (plan.min_nodes, plan.max_nodes) == (2, 2)
    assert plan.rdzv_endpoint == "job-worker-0:23456"
    assert plan.run_id == "none"  # torchrun's default: every pod of the job names the same rendezvous
    assert resolve(Elastic(nnodes=2), env=dict(env, PET_RDZV_ID="job-7")).run_id == "job-7"
    assert resolve(Elastic(nproc_per_node=2), env={}).run_id is None  # local: a fresh id per run


def test_precedence_and_sources():
    layers = [
        Layer("%config", {"nproc_per_node": 2, "max_restarts": 1, "start_method": "fork", "namespace": "team-a"}),
        Layer("widget panel", {"nproc_per_node": 3, "max_restarts": 2}),
        Layer("--config cfg", Elastic(nproc_per_node=4)),
        Layer("cell flags", {"nproc_per_node": 5}),
    ]
    plan = resolve(None, layers)
    assert plan.nproc_per_node == 5 and plan.sources["nproc_per_node"] == "cell flags"
    # the --config object sets all of its fields over the lower layers
    assert plan.max_restarts == 0 and plan.sources["max_restarts"] == "--config cfg"
    assert plan.start_method == "spawn"
    # keys a config object does not hold still come from below
    assert plan.k8s.namespace == "team-a" and plan.sources["namespace"] == "%config"
    assert "[cell flags]" in plan.describe()


@pytest.mark.parametrize("layer,words", [
    ({"nnodes": 0}, ["nnodes=0", "cell flags"]),
    ({"nproc_per_node": 0}, ["nproc_per_node=0", "cell flags"]),
    ({"start_method": "thread"}, ["start_method='thread'"]),
    ({"max_restarts": -1}, ["max_restarts=-1"]),
    ({"target": "slurm"}, ["target='slurm'", "local, k8s"]),
    ({"namespace": "Team_A"}, ["namespace='Team_A'", "DNS-1123"]),
    ({"job_name": "1job"}, ["job_name='1job'", "DNS-1035"]),
    ({"image": "my image"}, ["image='my image'"]),
    ({"requests": {"cpu": "lots"}}, ["requests['cpu']='lots'", "quantity"]),
    ({"nodes": 2}, ["nodes=2", "accepted"]),
])
def test_bad_overrides_name_the_value_and_its_source(layer, words):
    with pytest.raises((ValueError, TypeError)) as info:
        resolve(None, [Layer("cell flags", layer)])
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_elastic_keys_over_a_pytorch_config_are_refused():
    with pytest.raises(ValueError, match="nproc_per_node=2 .*Elastic configs only"):
        resolve(None, [Layer("--config cfg", PyTorch(worker=Worker(replicas=1))), Layer("cell flags", {"nproc_per_node": 2})])
    # lower layers do not apply to a PyTorch config and are not an error
    plan = resolve(None, [Layer("%config", {"nproc_per_node": 2}), Layer("--config cfg", PyTorch(worker=Worker(replicas=1)))])
    assert plan.mode is Mode.DIRECT


def test_local_runs_poll_fast_unless_the_user_chose_an_interval():
    assert resolve(Elastic(nproc_per_node=2)).monitor_interval == 0.1
    assert resolve(Elastic(nproc_per_node=2, monitor_interval=2)).monitor_interval == 2
    assert resolve(Elastic(nnodes=2), target="k8s").monitor_interval == 5


@pytest.mark.parametrize("how", ["config object", "%config layer", "--config object layer", "cell flags"])
def test_an_explicit_monitor_interval_equal_to_the_plugin_default_is_kept_locally(how):
    """Bug: resolve() compared the value with the 5 s default instead of asking whether it was set."""
    if how == "config object":
        plan = resolve(Elastic(nproc_per_node=2, monitor_interval=5))
    elif how == "--config object layer":
        plan = resolve(None, [Layer("--config cfg", Elastic(nproc_per_node=2, monitor_interval=5))])
    else:
        plan = resolve(None, [Layer(how, {"nproc_per_node": 2, "monitor_interval": 5})])
    assert plan.monitor_interval == 5
    # a config object that does not set it still polls fast, whatever a lower layer said
    plan = resolve(None, [Layer("%config", {"monitor_interval": 5}), Layer("--config cfg", Elastic(nproc_per_node=2))])
    assert plan.monitor_interval == 0.1


def test_run_options_are_plan_facts_and_the_ones_that_do_not_apply_are_noted():
    plan = resolve(None, [Layer("cell flags", {"nproc_per_node": 2, "timeout": 3, "fresh": True, "detach": True})])
    assert (plan.timeout, plan.fresh, plan.detach) == (3, True, False)
    assert plan.warnings == ("detach=True (from cell flags) does not apply to a local run; ignored",)
    plan = resolve(None, [Layer("%config", {"timeout": 30.0}), Layer("cell flags", {"fresh": True, "detach": True})],
                   target="k8s")
    assert (plan.timeout, plan.fresh, plan.detach) == (None, False, True)
    assert plan.warnings == ("timeout=30.0 (from %config) does not apply to a Kubernetes job; ignored",
                             "fresh=True (from cell flags) does not apply to a Kubernetes job; ignored")
    assert resolve().warnings == ()
    with pytest.raises(TypeError, match=r"^fresh='yes' \(from x\) is not accepted; expected True or False$"):
        resolve(None, [Layer("x", {"fresh": "yes"})])


def test_the_rendezvous_is_a_plan_fact():
    from ptjupyter.plan import Rendezvous

    assert resolve(Elastic(nproc_per_node=2)).rendezvous is Rendezvous.LOOPBACK
    pod = resolve(Elastic(nnodes=2, nproc_per_node=2), env={"PET_NNODES": "2", "PET_RDZV_ENDPOINT": "master:23456"})
    assert (pod.mode, pod.rendezvous, pod.rdzv_endpoint, pod.run_id) == (Mode.ELASTIC, Rendezvous.POD_ENV,
                                                                         "master:23456", "none")


def test_bad_input_is_one_error_family_and_still_a_builtin_error():
    from ptjupyter.errors import InvalidType, InvalidValue, PtjupyterError

    with pytest.raises(InvalidValue) as e:
        resolve(target="moon")
    assert isinstance(e.value, ValueError) and isinstance(e.value, PtjupyterError)
    assert e.value.render() == ["ValueError: target='moon' (from argument) is not accepted; expected one of local, k8s"]
    with pytest.raises(InvalidType):
        resolve(None, [Layer("x", {"bogus": 1})])


def test_decision_is_logged_with_the_seed_prefix_and_bypass_only_when_bypassed(caplog):
    with caplog.at_level(logging.DEBUG, logger="ptjupyter"):
        resolve(Elastic(nnodes="1:1"))
    text = caplog.text
    assert "[PYTORCH_ELASTIC] decision: mode=direct" in text
    assert "[PYTORCH_ELASTIC] *** SINGLE-NODE DETECTED - BYPASSING ELASTIC LAUNCH ***" in text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="ptjupyter"):
        resolve(Elastic(nproc_per_node=2))
    assert "mode=elastic" in caplog.text and "BYPASSING" not in caplog.text


def test_importing_ptjupyter_imports_no_heavy_library():
    code = "import sys, ptjupyter; print(sorted(m for m in ('torch','flytekit','kubernetes') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
