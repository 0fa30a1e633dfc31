"""ptjupyter's flytekit plugin against the installed upstream flytekitplugins-kfpytorch, config by config.

Each valid configuration is built once with each plugin's own config classes, on the same task
function, and the whole serialized TaskTemplate (type, version, custom, pod template, container,
metadata) must be equal. The deliberate differences are asserted as such: ``nnodes="1"``/``"1:1"``
are single-node here (python-task), and bad values are one-line errors here where upstream
accepts them or fails later.
"""
import copy
import subprocess
import sys
import warnings

import flytekitplugins.kfpytorch as up
import pytest
from flytekit import PodTemplate, Resources, task
from kubernetes.client import V1Container, V1PodSpec, V1Volume, V1VolumeMount

import ptjupyter as ours
import ptjupyter.flyte  # noqa: F401 - registers the task classes (import flytekit does it too)


def train(x: int) -> int:
    return x


R1 = Resources(cpu="1", mem="1Gi")
R2 = Resources(cpu="2", mem="4Gi", gpu="1", ephemeral_storage="10Gi")


def user_pod_template():
    return PodTemplate(
        pod_spec=V1PodSpec(containers=[V1Container(name="primary")], volumes=[V1Volume(name="data")]),
        labels={"team": "ml"},
        annotations={"a": "b"},
    )


# (id, config builder taking the plugin module, @task kwargs)
VALID = [
    ("elastic-default", lambda m: m.Elastic(), {}),
    ("nnodes-int-1", lambda m: m.Elastic(nnodes=1), {}),
    ("nnodes-int-2", lambda m: m.Elastic(nnodes=2), {}),
    ("nnodes-str-2", lambda m: m.Elastic(nnodes="2"), {}),
    ("nnodes-1:4", lambda m: m.Elastic(nnodes="1:4"), {}),
    ("nnodes-2:4", lambda m: m.Elastic(nnodes="2:4"), {}),
    ("nproc-4", lambda m: m.Elastic(nnodes=2, nproc_per_node=4), {}),
    ("nproc-4-single", lambda m: m.Elastic(nnodes=1, nproc_per_node=4), {}),
    ("start-fork", lambda m: m.Elastic(nnodes=2, start_method="fork"), {}),
    ("start-forkserver", lambda m: m.Elastic(nnodes=2, start_method="forkserver"), {}),
    ("monitor-1", lambda m: m.Elastic(nnodes=2, monitor_interval=1), {}),
    ("max-restarts-3", lambda m: m.Elastic(nnodes="2:4", max_restarts=3), {}),
    ("rdzv-configs", lambda m: m.Elastic(nnodes=2, rdzv_configs={"timeout": 1200, "read_timeout": 900}), {}),
    ("elastic-no-shm", lambda m: m.Elastic(nnodes=2, increase_shared_mem=False), {}),
    ("elastic-single-no-shm", lambda m: m.Elastic(nnodes=1, increase_shared_mem=False), {}),
    ("elastic-task-shared-memory", lambda m: m.Elastic(nnodes=2), {"shared_memory": True}),
    ("elastic-user-pod-template", lambda m: m.Elastic(nnodes=2), {"pod_template": user_pod_template()}),
    ("elastic-run-policy-all-fields", lambda m: m.Elastic(nnodes=2, run_policy=m.RunPolicy(
        clean_pod_policy=m.CleanPodPolicy.ALL, ttl_seconds_after_finished=600, active_deadline_seconds=3600,
        backoff_limit=2)), {}),
    ("clean-pod-none", lambda m: m.Elastic(nnodes=2, run_policy=m.RunPolicy(clean_pod_policy=m.CleanPodPolicy.NONE)), {}),
    ("clean-pod-running", lambda m: m.Elastic(nnodes=2, run_policy=m.RunPolicy(clean_pod_policy=m.CleanPodPolicy.RUNNING)), {}),
    ("clean-pod-all", lambda m: m.Elastic(nnodes=2, run_policy=m.RunPolicy(clean_pod_policy=m.CleanPodPolicy.ALL)), {}),
    ("run-policy-single-node", lambda m: m.Elastic(nnodes=1, run_policy=m.RunPolicy(backoff_limit=1)), {}),
    ("elastic-task-resources", lambda m: m.Elastic(nnodes=2), {"requests": R1, "limits": R2, "container_image": "repo/img:1"}),
    ("pytorch-replicas-5", lambda m: m.PyTorch(worker=m.Worker(replicas=5)), {}),
    ("pytorch-worker-image", lambda m: m.PyTorch(worker=m.Worker(replicas=2, image="repo/worker:1")), {}),
    ("pytorch-worker-resources", lambda m: m.PyTorch(worker=m.Worker(replicas=2, requests=R1, limits=R2)), {}),
    ("restart-always", lambda m: m.PyTorch(worker=m.Worker(replicas=2, restart_policy=m.RestartPolicy.ALWAYS)), {}),
    ("restart-failure", lambda m: m.PyTorch(worker=m.Worker(replicas=2, restart_policy=m.RestartPolicy.FAILURE)), {}),
    ("restart-never", lambda m: m.PyTorch(worker=m.Worker(replicas=2, restart_policy=m.RestartPolicy.NEVER)), {}),
    ("pytorch-master-all-fields", lambda m: m.PyTorch(
        master=m.Master(image="repo/master:1", requests=R1, limits=R2, restart_policy=m.RestartPolicy.FAILURE),
        worker=m.Worker(replicas=3)), {}),
    ("pytorch-run-policy", lambda m: m.PyTorch(worker=m.Worker(replicas=2), run_policy=m.RunPolicy(
        clean_pod_policy=m.CleanPodPolicy.RUNNING, ttl_seconds_after_finished=0, active_deadline_seconds=60,
        backoff_limit=0)), {}),
    ("pytorch-no-shm", lambda m: m.PyTorch(worker=m.Worker(replicas=2), increase_shared_mem=False), {}),
    ("pytorch-task-shared-memory", lambda m: m.PyTorch(worker=m.Worker(replicas=2)), {"shared_memory": "2Gi"}),
    ("pytorch-user-pod-template", lambda m: m.PyTorch(worker=m.Worker(replicas=2)), {"pod_template": user_pod_template()}),
    ("pytorch-num-workers-deprecated", lambda m: m.PyTorch(num_workers=3), {}),
]

# deliberate difference: these are single-node, so no PyTorchJob (upstream: a 1-replica PyTorchJob)
SINGLE_NODE_STRINGS = [("nnodes-str-1", "1"), ("nnodes-1:1", "1:1"), ("nnodes-spaced-1:1", " 1 : 1 ")]


def build(module, make_config, task_kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # upstream's increase_shared_mem and num_workers deprecation warnings
        cfg = make_config(module)
        return task(task_config=cfg, **copy.deepcopy(task_kwargs))(train)  # upstream mutates a pod template


@pytest.mark.parametrize("make_config,task_kwargs", [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_same_task_template_as_upstream(make_config, task_kwargs, settings, template):
    theirs = build(up, make_config, task_kwargs)
    mine = build(ours, make_config, task_kwargs)
    assert type(mine).__module__ == "ptjupyter.flyte.tasks" and type(theirs).__module__.startswith("flytekitplugins")
    assert (mine.task_type, mine.task_type_version) == (theirs.task_type, theirs.task_type_version)
    assert mine.get_custom(settings) == theirs.get_custom(settings)
    assert (mine.pod_template is None) == (theirs.pod_template is None)
    if mine.pod_template is not None:
        assert mine.pod_template.pod_spec.to_dict() == theirs.pod_template.pod_spec.to_dict()
    assert template(mine) == template(theirs)


@pytest.mark.parametrize("nnodes", [c[1] for c in SINGLE_NODE_STRINGS], ids=[c[0] for c in SINGLE_NODE_STRINGS])
def test_single_node_strings_are_python_task_unlike_upstream(nnodes, settings, template):
    mine = build(ours, lambda m: m.Elastic(nnodes=nnodes, nproc_per_node=2), {})
    reference = build(ours, lambda m: m.Elastic(nnodes=1, nproc_per_node=2), {})
    assert (mine.task_type, mine.get_custom(settings)) == ("python-task", None)
    assert template(mine) == template(reference)
    if nnodes.strip() == nnodes:  # upstream: a PyTorchJob with one replica
        theirs = build(up, lambda m: m.Elastic(nnodes=nnodes, nproc_per_node=2), {})
        assert theirs.task_type == "pytorch"
        assert theirs.get_custom(settings)["workerReplicas"] == {"replicas": 1}


def test_num_workers_is_deprecated_and_serializes_like_worker_replicas(settings):
    with pytest.warns(DeprecationWarning, match="num_workers"):
        cfg = ours.PyTorch(num_workers=3)
    old = task(task_config=cfg)(train)
    new = task(task_config=ours.PyTorch(worker=ours.Worker(replicas=3)))(train)
    assert old.get_custom(settings) == new.get_custom(settings)
    assert old.get_custom(settings)["workerReplicas"]["replicas"] == 3


@pytest.mark.parametrize(
    "make_config,upstream_message",
    [
        (lambda m: m.PyTorch(num_workers=2, worker=m.Worker(replicas=2)), "Cannot specify both"),
        (lambda m: m.PyTorch(), "Must specify either"),
    ],
    ids=["both", "neither"],
)
def test_num_workers_and_replicas_both_or_neither_name_both_fields(make_config, upstream_message):
    with pytest.raises(ValueError) as mine:
        build(ours, make_config, {})
    assert "num_workers" in str(mine.value) and "worker.replicas" in str(mine.value)
    assert "\n" not in str(mine.value)
    with pytest.raises(ValueError, match=upstream_message):  # upstream: when the task is built
        build(up, make_config, {})


# (id, config builder, what upstream does with it: (task_type, custom) it serializes, or the error it raises)
INVALID = [
    ("nnodes-0", lambda m: m.Elastic(nnodes=0),
     ("pytorch", {"workerReplicas": {}, "elasticConfig": {"rdzvBackend": "c10d", "nprocPerNode": 1}})),
    ("nnodes-neg", lambda m: m.Elastic(nnodes=-1), ("pytorch", {
        "workerReplicas": {"replicas": -1},
        "elasticConfig": {"rdzvBackend": "c10d", "minReplicas": -1, "maxReplicas": -1, "nprocPerNode": 1}})),
    ("nnodes-4:2", lambda m: m.Elastic(nnodes="4:2"), ("pytorch", {
        "workerReplicas": {"replicas": 2},
        "elasticConfig": {"rdzvBackend": "c10d", "minReplicas": 4, "maxReplicas": 2, "nprocPerNode": 1}})),
    ("nnodes-a:b", lambda m: m.Elastic(nnodes="a:b"), ValueError),
    ("nnodes-empty", lambda m: m.Elastic(nnodes=""), ValueError),
    ("nnodes-float", lambda m: m.Elastic(nnodes=2.0), ValueError),
    ("nproc-0", lambda m: m.Elastic(nnodes=2, nproc_per_node=0), ("pytorch", {
        "workerReplicas": {"replicas": 2},
        "elasticConfig": {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 2}})),
    ("start-method", lambda m: m.Elastic(start_method="thread"), ("python-task", None)),
    ("max-restarts-neg", lambda m: m.Elastic(nnodes=2, max_restarts=-1), ("pytorch", {
        "workerReplicas": {"replicas": 2},
        "elasticConfig": {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 2, "nprocPerNode": 1,
                          "maxRestarts": -1}})),
    ("replicas-0", lambda m: m.PyTorch(worker=m.Worker(replicas=0)),
     ("pytorch", {"workerReplicas": {"resources": {}}, "masterReplicas": {"replicas": 1, "resources": {}}})),
    ("replicas-neg", lambda m: m.PyTorch(worker=m.Worker(replicas=-1)), ("pytorch", {
        "workerReplicas": {"replicas": -1, "resources": {}}, "masterReplicas": {"replicas": 1, "resources": {}}})),
    ("num-workers-0", lambda m: m.PyTorch(num_workers=0),
     ("pytorch", {"workerReplicas": {"resources": {}}, "masterReplicas": {"replicas": 1, "resources": {}}})),
    ("restart-policy-string", lambda m: m.PyTorch(worker=m.Worker(replicas=2, restart_policy="Always")),
     AttributeError),
    ("clean-pod-policy-string", lambda m: m.Elastic(nnodes=2, run_policy=m.RunPolicy(clean_pod_policy="All")),
     AttributeError),
    ("unknown-kwarg", lambda m: m.Elastic(nnodes=2, nodes=3), TypeError),
]


@pytest.mark.parametrize("make_config,upstream", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_configs_are_one_line_errors_here(make_config, upstream, settings):
    with pytest.raises((ValueError, TypeError)) as mine:
        make_config(ours)
    text = str(mine.value)
    assert "\n" not in text and "accepted" in text, text
    # record what upstream does with the same config
    if isinstance(upstream, type):
        with pytest.raises(upstream):
            theirs = build(up, make_config, {})
            theirs.get_custom(settings)
    else:
        theirs = build(up, make_config, {})
        assert (theirs.task_type, theirs.get_custom(settings)) == upstream


def test_pod_template_conflicts_are_one_line_errors():
    two = PodTemplate(pod_spec=V1PodSpec(containers=[V1Container(name="a"), V1Container(name="b")]))
    with pytest.raises(ValueError, match="increase_shared_mem") as e:
        task(task_config=ours.Elastic(nnodes=2), pod_template=two)(train)
    assert "\n" not in str(e.value)
    shm = PodTemplate(pod_spec=V1PodSpec(containers=[
        V1Container(name="primary", volume_mounts=[V1VolumeMount(name="x", mount_path="/dev/shm")])]))
    with pytest.raises(ValueError, match="/dev/shm"):
        task(task_config=ours.Elastic(nnodes=2), pod_template=shm)(train)


def test_a_user_pod_template_is_not_mutated():
    template = user_pod_template()
    before = template.pod_spec.to_dict()
    t = task(task_config=ours.Elastic(nnodes=2), pod_template=template)(train)
    assert [v.name for v in t.pod_template.pod_spec.volumes] == ["data", "shm"]
    assert template.pod_spec.to_dict() == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task(task_config=up.Elastic(nnodes=2), pod_template=template)(train)
    assert template.pod_spec.to_dict() != before  # upstream adds its shm volume to the user's template


def test_task_type_follows_the_current_config(settings):
    """No caching in __init__: changing the config object changes what is serialized."""
    t = task(task_config=ours.Elastic(nnodes=2, nproc_per_node=2))(train)
    assert t.task_type == "pytorch"
    t.task_config.nnodes = "1:1"
    assert (t.task_type, t.get_custom(settings)) == ("python-task", None)
    t.task_config.nnodes = "2:3"
    assert t.get_custom(settings)["elasticConfig"]["maxReplicas"] == 3
    t.task_config.increase_shared_mem = False
    assert t.pod_template is None


def test_enum_values_are_flyteidls():
    from flyteidl.plugins.kubeflow import common_pb2

    assert {e.name: e.value for e in ours.RestartPolicy} == {e.name: e.value for e in up.RestartPolicy} == {
        "ALWAYS": common_pb2.RESTART_POLICY_ALWAYS, "FAILURE": common_pb2.RESTART_POLICY_ON_FAILURE,
        "NEVER": common_pb2.RESTART_POLICY_NEVER}
    assert {e.name: e.value for e in ours.CleanPodPolicy} == {e.name: e.value for e in up.CleanPodPolicy}


def test_import_flytekit_loads_the_plugin_and_never_the_upstream_one():
    code = (
        "import sys, flytekit\n"
        "from flytekit.core.task import TaskPlugins\n"
        "from ptjupyter import Elastic, PyTorch\n"
        "assert TaskPlugins.find_pythontask_plugin(Elastic).__name__ == 'ElasticFunctionTask'\n"
        "assert TaskPlugins.find_pythontask_plugin(PyTorch).__name__ == 'PyTorchFunctionTask'\n"
        "assert 'flytekitplugins.kfpytorch' not in sys.modules\n"
        "assert 'torch' not in sys.modules, 'ptjupyter.flyte imports torch at import time'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_resources_as_a_dict_serialize_like_flytekit_resources(settings):
    """An addition: Worker/Master requests and limits may also be plain dicts."""
    as_dict = task(task_config=ours.PyTorch(worker=ours.Worker(replicas=2, requests={"cpu": "1", "mem": "1Gi"})))(train)
    as_res = task(task_config=ours.PyTorch(worker=ours.Worker(replicas=2, requests=Resources(cpu="1", mem="1Gi"))))(train)
    assert as_dict.get_custom(settings) == as_res.get_custom(settings)
