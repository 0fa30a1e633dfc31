"""Manifests: every generated PyTorchJob passes validate.py (CRD schema + operator rules); a few, literally."""
from __future__ import annotations

import pytest
from validate import validate

from ptjupyter import CleanPodPolicy, Elastic, Layer, Master, PyTorch, RestartPolicy, RunPolicy, Worker, resolve
from ptjupyter.errors import InvalidType, InvalidValue
from ptjupyter.k8s import manifest as mf
from ptjupyter.k8s.submit import prepare
from ptjupyter.plan import Mode

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
    """The CRD schema (strict) and the operator's rules accept every configuration; what the operator and the
    pods rely on is there in each replica."""
    _, job, cm, _ = _build(config, options)
    assert validate(job) == []
    for group in job["spec"]["pytorchReplicaSpecs"].values():
        pod = group["template"]["spec"]
        c = pod["containers"][0]
        assert c["name"] == "pytorch" and c["command"][0] == "torchrun" and c["command"][-1] == "/etc/ptjupyter/entrypoint.py"
        assert {"name": "ptjupyter-payload", "mountPath": "/etc/ptjupyter", "readOnly": True} in c["volumeMounts"]
        assert {v["name"]: v for v in pod["volumes"]}["ptjupyter-payload"]["secret"]["secretName"] == cm["metadata"]["name"]
        labels = group["template"]["metadata"]["labels"]
        assert labels["ptjupyter.io/job-name"] == job["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "ptjupyter"
    assert job["metadata"].get("namespace") == options.get("namespace")  # absent: the kubeconfig context's


def test_at_least_fifty_six_configurations_are_validated():
    assert len(CASES) >= 56


# -- literal manifests of representative configurations -------------------------------------------------
FILES = {"meta.json": "meta.json", "entrypoint.py": "entrypoint.py", "payload.pkl": "payload.pkl",
         "lib.cloudpickle.__init__.py": "lib/cloudpickle/__init__.py"}
ITEMS = [{"key": "entrypoint.py", "path": "entrypoint.py"},
         {"key": "lib.cloudpickle.__init__.py", "path": "lib/cloudpickle/__init__.py"},
         {"key": "meta.json", "path": "meta.json"}, {"key": "payload.pkl", "path": "payload.pkl"}]
ENV = [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "PTJUPYTER_PAYLOAD", "value": "/etc/ptjupyter"}]
PAYLOAD_MOUNT = {"name": "ptjupyter-payload", "mountPath": "/etc/ptjupyter", "readOnly": True}
SHM_MOUNT = {"name": "shm", "mountPath": "/dev/shm"}
PAYLOAD_VOLUME = {"name": "ptjupyter-payload", "secret": {"secretName": "ptj-lit-payload", "items": ITEMS}}
SHM_VOLUME = {"name": "shm", "emptyDir": {"medium": "Memory"}}
MANAGED = {"app.kubernetes.io/managed-by": "ptjupyter", "ptjupyter.io/job-name": "ptj-lit"}
ENTRY = "/etc/ptjupyter/entrypoint.py"

ELASTIC_2_4 = {
    "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
    "metadata": {"name": "ptj-lit", "labels": MANAGED,
                 "annotations": {"ptjupyter.io/world-size": "8", "ptjupyter.io/result-nonce": "n0nce"}},
    "spec": {
        "runPolicy": {"cleanPodPolicy": "None"},
        "elasticPolicy": {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 4, "maxRestarts": 0},
        "nprocPerNode": "2",
        "pytorchReplicaSpecs": {"Worker": {
            "replicas": 4, "restartPolicy": "Never",
            "template": {"metadata": {"labels": MANAGED}, "spec": {
                "containers": [{
                    "name": "pytorch", "image": IMG, "imagePullPolicy": "IfNotPresent",
                    "command": ["torchrun", "--start-method", "spawn", "--monitor-interval", "5",
                                "--rdzv-conf", "timeout=900,join_timeout=900", ENTRY],
                    "env": ENV, "volumeMounts": [PAYLOAD_MOUNT, SHM_MOUNT]}],
                "volumes": [PAYLOAD_VOLUME, SHM_VOLUME]}}}}},
}

ELASTIC_WITH_EVERY_OPTION = {
    "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
    "metadata": {"name": "ptj-lit", "labels": {"team": "ml", **MANAGED},
                 "annotations": {"a.io/b": "c", "ptjupyter.io/world-size": "2", "ptjupyter.io/result-nonce": "n0nce"}},
    "spec": {
        "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 3, "activeDeadlineSeconds": 3600,
                      "ttlSecondsAfterFinished": 600},
        "elasticPolicy": {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 2, "maxRestarts": 2},
        "nprocPerNode": "1",
        "pytorchReplicaSpecs": {"Worker": {
            "replicas": 2, "restartPolicy": "Never",
            "template": {"metadata": {"labels": {"team": "ml", **MANAGED}, "annotations": {"a.io/b": "c"}}, "spec": {
                "containers": [{
                    "name": "pytorch", "image": IMG, "imagePullPolicy": "IfNotPresent",
                    "command": ["torchrun", "--start-method", "fork", "--monitor-interval", "1", ENTRY],
                    "env": ENV + [{"name": "HF_HOME", "value": "/cache"}],
                    "volumeMounts": [PAYLOAD_MOUNT, SHM_MOUNT]}],
                "volumes": [PAYLOAD_VOLUME, SHM_VOLUME],
                "nodeSelector": {"pool": "gpu"}, "tolerations": TOL, "serviceAccountName": "trainer"}}}}},
}

MASTER_WORKER = {
    "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
    "metadata": {"name": "ptj-lit", "namespace": "team-a", "labels": MANAGED,
                 "annotations": {"ptjupyter.io/world-size": "3", "ptjupyter.io/result-nonce": "n0nce"}},
    "spec": {
        "runPolicy": {"cleanPodPolicy": "All", "backoffLimit": 3},
        "nprocPerNode": "1",
        "pytorchReplicaSpecs": {
            "Master": {"replicas": 1, "restartPolicy": "Always", "template": {
                "metadata": {"labels": {**MANAGED, "ptjupyter.io/has-master": "true"}}, "spec": {
                    "containers": [{
                        "name": "pytorch", "image": "ghcr.io/acme/master:2", "imagePullPolicy": "IfNotPresent",
                        "command": ["torchrun", "--start-method", "spawn", "--monitor-interval", "1", ENTRY],
                        "env": ENV, "volumeMounts": [PAYLOAD_MOUNT],
                        "resources": {"requests": {"cpu": "500m"}}}],
                    "volumes": [PAYLOAD_VOLUME]}}},
            "Worker": {"replicas": 2, "restartPolicy": "OnFailure", "template": {
                "metadata": {"labels": {**MANAGED, "ptjupyter.io/has-master": "true"}}, "spec": {
                    "containers": [{
                        "name": "pytorch", "image": IMG, "imagePullPolicy": "IfNotPresent",
                        "command": ["torchrun", "--start-method", "spawn", "--monitor-interval", "1", ENTRY],
                        "env": ENV, "volumeMounts": [PAYLOAD_MOUNT],
                        "resources": {"requests": {"nvidia.com/gpu": "1"},  # GPUs: requests == limits
                                      "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"}}}],
                    "volumes": [PAYLOAD_VOLUME]}}},
        }},
}

ONE_NODE_DIRECT = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "ptj-lit", "namespace": "default", "labels": MANAGED,
                 "annotations": {"ptjupyter.io/world-size": "1", "ptjupyter.io/result-nonce": "n0nce"}},
    "spec": {
        "backoffLimit": 0,
        "template": {"metadata": {"labels": MANAGED}, "spec": {
            "containers": [{"name": "pytorch", "image": IMG, "imagePullPolicy": "IfNotPresent",
                            "command": ["python", "-u", ENTRY], "env": ENV,
                            "volumeMounts": [PAYLOAD_MOUNT, SHM_MOUNT]}],
            "volumes": [PAYLOAD_VOLUME, SHM_VOLUME], "restartPolicy": "Never"}},
        "activeDeadlineSeconds": 600, "ttlSecondsAfterFinished": 60},
}

ONE_NODE_TORCHRUN = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "ptj-lit", "labels": MANAGED,
                 "annotations": {"ptjupyter.io/world-size": "3", "ptjupyter.io/result-nonce": "n0nce"}},
    "spec": {
        "backoffLimit": 0,
        "template": {"metadata": {"labels": MANAGED}, "spec": {
            "containers": [{"name": "pytorch", "image": IMG, "imagePullPolicy": "IfNotPresent",
                            "command": ["torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "3",
                                        "--max-restarts", "2", "--start-method", "spawn", "--monitor-interval", "5",
                                        ENTRY],
                            "env": ENV, "volumeMounts": [PAYLOAD_MOUNT],
                            "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}],
            "volumes": [PAYLOAD_VOLUME], "restartPolicy": "Never"}}},
}

LITERAL = [
    ("elastic-2-4", Elastic(nnodes="2:4", nproc_per_node=2), {}, ELASTIC_2_4),
    ("elastic-every-option",
     Elastic(nnodes=2, start_method="fork", monitor_interval=1, rdzv_configs={}, max_restarts=2,
             run_policy=RunPolicy(clean_pod_policy=CleanPodPolicy.RUNNING, backoff_limit=3,
                                  active_deadline_seconds=3600, ttl_seconds_after_finished=600)),
     {"env": {"HF_HOME": "/cache"}, "labels": {"team": "ml"}, "annotations": {"a.io/b": "c"},
      "node_selector": {"pool": "gpu"}, "tolerations": TOL, "service_account": "trainer"},
     ELASTIC_WITH_EVERY_OPTION),
    ("master-worker",
     PyTorch(master=Master(restart_policy=RestartPolicy.ALWAYS, image="ghcr.io/acme/master:2", requests={"cpu": "500m"}),
             worker=Worker(replicas=2, restart_policy=RestartPolicy.FAILURE, limits={"gpu": 1, "mem": "16Gi"}),
             run_policy=RunPolicy(clean_pod_policy=CleanPodPolicy.ALL, backoff_limit=3), increase_shared_mem=False),
     {"namespace": "team-a"}, MASTER_WORKER),
    ("one-node-direct", Elastic(run_policy=RunPolicy(active_deadline_seconds=600, ttl_seconds_after_finished=60)),
     {"namespace": "default"}, ONE_NODE_DIRECT),
    ("one-node-torchrun", Elastic(nnodes="1:1", nproc_per_node=3, max_restarts=2, increase_shared_mem=False),
     {"limits": {"nvidia.com/gpu": "1"}}, ONE_NODE_TORCHRUN),
]


@pytest.mark.parametrize("config,options,expected", [c[1:] for c in LITERAL], ids=[c[0] for c in LITERAL])
def test_manifest_is_exactly(config, options, expected):
    plan = resolve(config, [Layer("test", {"image": IMG, **options})], target="k8s")
    job = mf.build(plan, "ptj-lit", FILES, "n0nce")
    assert job == expected
    if job["kind"] == "PyTorchJob":
        assert validate(job) == []


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
    with pytest.raises((InvalidValue, InvalidType)) as e:
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
    with pytest.raises(InvalidValue) as e:
        prepare(plan, f)
    assert needle in str(e.value) and "\n" not in str(e.value) and e.value.render()[0] == f"ValueError: {e.value}"


@pytest.mark.parametrize("config", [Elastic(nnodes=2), Elastic(), PyTorch(worker=Worker(replicas=2, limits={"gpu": 1}))])
def test_gpus_go_into_every_training_container_and_set_nproc(config):
    plan = resolve(config, [Layer("test", {"image": IMG}), Layer("cell flags", {"gpus": 2})], target="k8s")
    job, _, _ = prepare(plan, f)
    if plan.mode is Mode.PYTORCHJOB:
        assert validate(job) == []
        pods = [g["template"]["spec"] for g in job["spec"]["pytorchReplicaSpecs"].values()]
    else:
        pods = [job["spec"]["template"]["spec"]]
    for pod in pods:
        res = pod["containers"][0]["resources"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "2"
    if isinstance(config, Elastic):
        assert plan.nproc_per_node == 2 and "--gpus 2" in plan.sources["nproc_per_node"]
    explicit = resolve(Elastic(nnodes=2), [Layer("t", {"image": IMG, "gpus": 4, "nproc_per_node": 1})], target="k8s")
    assert explicit.nproc_per_node == 1  # an explicit value wins over the GPU default
