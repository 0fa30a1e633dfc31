"""Manifests: every generated PyTorchJob passes shared/k8s/validate.py; the Flyte mapping holds."""
from __future__ import annotations

import pytest

import fake_k8s
from ptjupyter import CleanPodPolicy, Elastic, Layer, Master, PyTorch, RestartPolicy, RunPolicy, Worker, resolve
from ptjupyter.k8s import manifest as mf
from ptjupyter.k8s.submit import prepare
from ptjupyter.plan import Mode

validate = fake_k8s.load_validate()
IMG = "ghcr.io/acme/train:1.0"
TOL = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def f():
    return 1


ELASTIC = [
    Elastic(nnodes=2),
    Elastic(nnodes="2"),
    Elastic(nnodes="2:4"),
    Elastic(nnodes="1:3", nproc_per_node=4),
    Elastic(nnodes=8, nproc_per_node=8, max_restarts=3),
    Elastic(nnodes=2, start_method="fork", monitor_interval=1),
    Elastic(nnodes=2, rdzv_configs={"timeout": 60}),
    Elastic(nnodes=2, rdzv_configs={}),
    Elastic(nnodes=2, increase_shared_mem=False),
    Elastic(nnodes=2, run_policy=RunPolicy()),
    Elastic(nnodes=2, run_policy=RunPolicy(clean_pod_policy=CleanPodPolicy.ALL)),
    Elastic(nnodes=2, run_policy=RunPolicy(clean_pod_policy=CleanPodPolicy.RUNNING, backoff_limit=3,
                                           active_deadline_seconds=3600, ttl_seconds_after_finished=600)),
    Elastic(nnodes="3:3", nproc_per_node=2, run_policy=RunPolicy(ttl_seconds_after_finished=0)),
]
PYTORCH = [
    PyTorch(worker=Worker(replicas=1)),
    PyTorch(worker=Worker(replicas=3)),
    PyTorch(worker=Worker(replicas=2, restart_policy=RestartPolicy.FAILURE)),
    PyTorch(master=Master(restart_policy=RestartPolicy.ALWAYS), worker=Worker(replicas=2, restart_policy=RestartPolicy.NEVER)),
    PyTorch(master=Master(image="ghcr.io/acme/master:2"), worker=Worker(replicas=2, image="ghcr.io/acme/worker:2")),
    PyTorch(worker=Worker(replicas=2, requests={"cpu": "2", "mem": "8Gi"}, limits={"cpu": "4", "mem": "16Gi", "gpu": 1})),
    PyTorch(master=Master(requests={"cpu": "500m"}), worker=Worker(replicas=4, limits={"gpu": "2", "ephemeral_storage": "20Gi"})),
    PyTorch(worker=Worker(replicas=2), run_policy=RunPolicy(clean_pod_policy=CleanPodPolicy.NONE, backoff_limit=0)),
    PyTorch(worker=Worker(replicas=2), increase_shared_mem=False),
]
OPTIONS = [
    {},
    {"namespace": "team-a", "job_name": "my-run-1"},
    {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"nvidia.com/gpu": "1"}},
    {"env": {"HF_HOME": "/cache", "NCCL_DEBUG": "INFO"}, "labels": {"team": "ml"}, "annotations": {"a.io/b": "c"}},
    {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}, "tolerations": TOL, "service_account": "trainer"},
]
CASES = [(c, o) for c in ELASTIC for o in OPTIONS[:2]] + [(c, o) for c in PYTORCH for o in OPTIONS[::2]] + \
        [(ELASTIC[2], o) for o in OPTIONS[2:]]


def _build(config, options):
    plan = resolve(config, [Layer("test", {"image": IMG, **options})], target="k8s")
    assert plan.mode is Mode.PYTORCHJOB
    job, cm, payload = prepare(plan, f)
    return plan, job, cm, payload


@pytest.mark.parametrize("config,options", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_every_generated_pytorchjob_validates(config, options):
    plan, job, cm, _ = _build(config, options)
    assert validate(job) == []
    spec, tmpls = job["spec"], job["spec"]["pytorchReplicaSpecs"]
    for group in tmpls.values():
        pod = group["template"]["spec"]
        c = pod["containers"][0]
        assert c["name"] == "pytorch" and c["command"][0] == "torchrun"
        assert group["restartPolicy"] in ("Never", "OnFailure", "Always")
        assert {"name": "ptjupyter-payload", "mountPath": mf.PAYLOAD_DIR, "readOnly": True} in c["volumeMounts"]
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["ptjupyter-payload"]["configMap"]["name"] == cm["metadata"]["name"]
        assert ("shm" in vols) == config.increase_shared_mem
        labels = group["template"]["metadata"]["labels"]
        assert labels[mf.LABEL_JOB] == job["metadata"]["name"] and labels[mf.LABEL_MANAGED] == "ptjupyter"
        for k, v in options.get("labels", {}).items():
            assert labels[k] == v
        assert pod.get("nodeSelector") == (options.get("node_selector") or None)
        assert pod.get("tolerations") == (options.get("tolerations") or None)
        assert pod.get("serviceAccountName") == options.get("service_account")
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["PYTHONUNBUFFERED"] == "1" and all(env[k] == v for k, v in options.get("env", {}).items())
    assert job["metadata"].get("namespace") == options.get("namespace")  # absent: the kubeconfig context's
    assert isinstance(spec["nprocPerNode"], str) and spec["nprocPerNode"] == str(plan.nproc_per_node)
    rp = getattr(config, "run_policy", None)
    assert spec["runPolicy"]["cleanPodPolicy"] == (rp.clean_pod_policy.k8s if rp and rp.clean_pod_policy else "None")
    for attr, key in (("backoff_limit", "backoffLimit"), ("active_deadline_seconds", "activeDeadlineSeconds"),
                      ("ttl_seconds_after_finished", "ttlSecondsAfterFinished")):
        value = getattr(rp, attr) if rp else None
        assert spec["runPolicy"].get(key) == value and ((key in spec["runPolicy"]) == (value is not None))
    if isinstance(config, Elastic):
        assert set(tmpls) == {"Worker"} and tmpls["Worker"]["replicas"] == plan.max_nodes
        assert tmpls["Worker"]["restartPolicy"] == "Never"
        assert spec["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": plan.min_nodes,
                                         "maxReplicas": plan.max_nodes, "maxRestarts": config.max_restarts}
        assert "nProcPerNode" not in spec["elasticPolicy"]
    else:
        assert set(tmpls) == {"Master", "Worker"} and tmpls["Master"]["replicas"] == 1
        assert tmpls["Worker"]["replicas"] == config.replicas
        assert tmpls["Master"]["restartPolicy"] == (config.master.restart_policy or RestartPolicy.NEVER).k8s
        assert tmpls["Worker"]["restartPolicy"] == (config.worker.restart_policy or RestartPolicy.NEVER).k8s
        assert "elasticPolicy" not in spec


def test_at_least_twenty_manifests_are_validated():
    assert len(CASES) >= 20


def test_resources_map_like_flyte():
    _, job, _, _ = _build(PYTORCH[5], {})
    w = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]
    assert w == {"requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
                 "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}}
    m = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "resources" not in m
    _, job, _, _ = _build(PYTORCH[4], {})
    images = {k: g["template"]["spec"]["containers"][0]["image"] for k, g in job["spec"]["pytorchReplicaSpecs"].items()}
    assert images == {"Master": "ghcr.io/acme/master:2", "Worker": "ghcr.io/acme/worker:2"}


def test_elastic_command_carries_what_the_operator_does_not_inject():
    _, job, _, _ = _build(Elastic(nnodes=2, start_method="forkserver", monitor_interval=2, rdzv_configs={"timeout": 60}), {})
    cmd = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    assert cmd == ["torchrun", "--start-method", "forkserver", "--monitor-interval", "2", "--rdzv-conf", "timeout=60",
                   "/etc/ptjupyter/entrypoint.py"]


@pytest.mark.parametrize("config,cmd0", [(Elastic(), ["python", "-u"]), (Elastic(nnodes="1:1", nproc_per_node=3),
                                                                          ["torchrun", "--standalone"])])
def test_single_node_is_a_batch_job_not_a_pytorchjob(config, cmd0):
    plan = resolve(config, [Layer("test", {"image": IMG})], target="k8s")
    assert plan.mode is Mode.POD
    job, cm, _ = prepare(plan, f)
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["template"]["spec"]["restartPolicy"] == "Never"
    c = spec["template"]["spec"]["containers"][0]
    assert c["command"][:2] == cmd0 and c["command"][-1] == "/etc/ptjupyter/entrypoint.py"
    if plan.nproc_per_node > 1:
        assert c["command"][c["command"].index("--nproc-per-node") + 1] == "3"
    from kubernetes import client

    assert client.ApiClient()._ApiClient__deserialize(job, "V1Job").spec.template.spec.containers[0].name == "pytorch"


@pytest.mark.parametrize("config,options,needle", [
    (Elastic(nnodes=2), {"image": None}, "image=None"),
    (PyTorch(worker=Worker(replicas=1, requests={"cpu": "lots"})), {}, "Worker.requests['cpu']='lots'"),
])
def test_bad_values_are_rejected_before_anything_is_sent(config, options, needle):
    plan = resolve(config, [Layer("test", {"image": IMG, **options})], target="k8s")
    with pytest.raises((ValueError, TypeError)) as e:
        prepare(plan, f)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("key,value,needle", [
    ("namespace", "Team_A", "namespace='Team_A'"),
    ("image", "bad image!", "image='bad image!'"),
    ("job_name", "1-starts-with-digit", "job_name='1-starts-with-digit'"),
    ("requests", {"cpu": "two"}, "requests['cpu']='two'"),
])
def test_bad_options_fail_in_resolve_with_one_line(key, value, needle):
    with pytest.raises((ValueError, TypeError)) as e:
        resolve(Elastic(nnodes=2), [Layer("test", {"image": IMG, key: value})], target="k8s")
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("options,needle", [
    ({"labels": {"team": "ml/vision"}}, "labels['team']='ml/vision' is not accepted"),
    ({"labels": {"-bad": "x"}}, "labels key '-bad' is not accepted"),
    ({"annotations": {"UPPER.example.com/x": "y"}}, "annotations key 'UPPER.example.com/x'"),
    ({"node_selector": {"pool": "a" * 64}}, "node_selector['pool']="),
    ({"env": {"1ABC": "x"}}, "env name '1ABC' is not accepted"),
    ({"tolerations": [{"key": "gpu", "operator": "Maybe"}]}, "tolerations entry"),
    ({"tolerations": [{"key": "gpu", "effect": "NoSchedule", "colour": "red"}]}, "tolerations entry"),
    ({"service_account": "Trainer_SA"}, "service_account='Trainer_SA'"),
    ({"rdzv_backend": "static"}, "rdzv_backend='static' is not accepted for an elastic PyTorchJob"),
])
def test_values_the_api_server_would_reject_fail_first(options, needle):
    plan = resolve(Elastic(nnodes=2), [Layer("test", {"image": IMG, **options})], target="k8s")
    with pytest.raises(ValueError) as e:
        prepare(plan, f)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_cached_validator_agrees_with_shared_validate_py():
    """Our schema-loaded-once wrapper gives what `python ../shared/k8s/validate.py` gives."""
    import yaml

    _, job, _, _ = _build(Elastic(nnodes="2:4", nproc_per_node=2), OPTIONS[4])
    assert validate.module.validate(job) == validate(job) == []
    bad = yaml.safe_load((fake_k8s.shared_k8s_dir() / "examples" / "bad.yaml").read_text())
    assert validate(bad) == validate.module.validate(bad) and len(validate(bad)) >= 5
