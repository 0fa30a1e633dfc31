"""``with_overrides(task_config=...)`` changes the node it is called on, and only that node.

flytekit 1.16's ``Node.with_overrides`` does ``self.run_entity._task_config = task_config``: it
assigns the config to the task object that every node calling the task shares. ptjupyter's nodes
swap in a per-node variant of the task instead (see ptjupyter.flyte).
"""
import datetime
import warnings

import flytekitplugins.kfpytorch as up
import pytest
from flytekit import conditional, dynamic, task, workflow
from flytekit.core.context_manager import ExecutionState, FlyteContextManager

from ptjupyter import Elastic, PyTorch, Worker
from ptjupyter.flyte import config_override_resolver, decode_config, encode_config

MULTI = Elastic(nnodes=2, nproc_per_node=2)


@task(task_config=Elastic(nnodes=2, nproc_per_node=2))
def train(epochs: int) -> float:
    return float(epochs)


@workflow
def two_calls(epochs: int) -> float:
    train(epochs=epochs)
    return train(epochs=epochs).with_overrides(task_config=Elastic(nnodes=1, nproc_per_node=2))


def node_tasks(spec):
    return [n.task_node.reference_id.name for n in spec.template.nodes]


def test_override_changes_that_node_only(wf_spec, template):
    spec, tasks = wf_spec(two_calls)
    first, second = node_tasks(spec)
    assert first == train.name and second.startswith(train.name + "-cfg")
    assert tasks[first].type == "pytorch" and tasks[second].type == "python-task"
    assert '"maxReplicas": 2' not in str(tasks[second].custom)
    # the task's own default is untouched, and serializes as before
    assert train.task_config == MULTI
    assert template(train).type == "pytorch"
    spec_again, tasks_again = wf_spec(two_calls)
    assert tasks_again == tasks


with warnings.catch_warnings():
    warnings.simplefilter("ignore")

    @task(task_config=up.Elastic(nnodes=2, nproc_per_node=2))
    def up_train(epochs: int) -> float:
        return float(epochs)


def test_upstream_override_mutates_the_shared_task(wf_spec):
    """The upstream plugin, same workflow: one task for both nodes, and its default is gone afterwards."""

    @workflow
    def up_two_calls(epochs: int) -> float:
        up_train(epochs=epochs)
        return up_train(epochs=epochs).with_overrides(task_config=up.Elastic(nnodes=1, nproc_per_node=2))

    spec, tasks = wf_spec(up_two_calls)
    first, second = node_tasks(spec)
    assert first == second  # both nodes run the same task template...
    assert tasks[first].type == "pytorch"  # ...typed in __init__, with the custom of the override
    assert up_train.task_config.nnodes == 1  # the task's own default was overwritten


def test_the_pod_of_an_overridden_node_loads_the_overridden_config(wf_spec):
    """The variant's container args name ptjupyter's resolver, which rebuilds the node's config in the pod."""
    from flytekit.tools.module_loader import load_object_from_module

    _, tasks = wf_spec(two_calls)
    variant = next(t for name, t in tasks.items() if "-cfg" in name)
    pod = variant.k8s_pod.pod_spec  # increase_shared_mem: the container lives in the pod template
    args = list(pod["containers"][0]["args"])
    resolver = args[args.index("--resolver") + 1]
    loader_args = args[args.index("--") + 1:] if "--" in args else args[args.index("--resolver") + 2:]
    assert resolver == "ptjupyter.flyte.config_override_resolver"
    loaded = load_object_from_module(resolver).load_task(loader_args)
    assert loaded.task_config == Elastic(nnodes=1, nproc_per_node=2)
    assert loaded.task_type == "python-task" and loaded.name == variant.id.name
    assert loaded.task_function is train.task_function


def test_variants_are_shared_per_config_and_equal_config_keeps_the_task():
    assert train.with_task_config(Elastic(nnodes=2, nproc_per_node=2)) is train
    a = train.with_task_config(Elastic(nnodes=1))
    assert train.with_task_config(Elastic(nnodes=1)) is a
    assert a.with_task_config(MULTI) is train  # back to the original from a variant


def test_override_may_switch_config_class(wf_spec):
    @workflow
    def wf(epochs: int) -> float:
        return train(epochs=epochs).with_overrides(task_config=PyTorch(worker=Worker(replicas=3)))

    _, tasks = wf_spec(wf)
    (variant,) = tasks.values()
    assert variant.type == "pytorch"
    assert "masterReplicas" in str(variant.custom) and "elasticConfig" not in str(variant.custom)


def test_override_with_a_foreign_config_is_a_one_line_error():
    with pytest.raises(TypeError, match="ptjupyter.Elastic or ptjupyter.PyTorch") as e:
        @workflow
        def wf(epochs: int) -> float:
            return train(epochs=epochs).with_overrides(task_config=up.Elastic(nnodes=1))

        wf.compile()
    assert "\n" not in str(e.value)


def test_other_overrides_still_apply_with_task_config(wf_spec):
    @workflow
    def wf(epochs: int) -> float:
        return train(epochs=epochs).with_overrides(
            node_name="single", retries=3, timeout=datetime.timedelta(minutes=5), task_config=Elastic(nnodes="1:1"))

    spec, tasks = wf_spec(wf)
    (node,) = spec.template.nodes
    assert node.id == "single" and node.metadata.retries.retries == 3
    assert tasks[node.task_node.reference_id.name].type == "python-task"


@pytest.mark.parametrize("value", [
    Elastic(nnodes="2:4", nproc_per_node=8, rdzv_configs={"timeout": 60, "x": [1, 2]}),
    PyTorch(worker=Worker(replicas=3, requests={"cpu": "1"})),
])
def test_config_codec_round_trips(value):
    assert decode_config(encode_config(value)) == value


# -- the seed's example, done so flytekit accepts it ----------------------------------------------


@task(task_config=Elastic(nnodes=2, nproc_per_node=2))
def train_model(epochs: int, batch_size: int) -> float:
    return float(epochs * batch_size)


@dynamic
def adaptive_dynamic(use_single_node: bool) -> float:
    if use_single_node:  # a real bool inside @dynamic
        return train_model(epochs=10, batch_size=32).with_overrides(task_config=Elastic(nnodes=1, nproc_per_node=1))
    return train_model(epochs=10, batch_size=32)


@workflow
def adaptive_conditional(use_single_node: bool) -> float:
    return (
        conditional("nodes")
        .if_(use_single_node.is_true())
        .then(train_model(epochs=10, batch_size=32).with_overrides(task_config=Elastic(nnodes=1, nproc_per_node=1)))
        .else_()
        .then(train_model(epochs=10, batch_size=32))
    )


def test_python_if_on_a_promise_is_rejected_by_flytekit():
    with pytest.raises(Exception, match="truth value testing"):
        @workflow
        def seed_example(use_single_node: bool) -> float:
            if use_single_node:
                return train_model(epochs=10, batch_size=32).with_overrides(task_config=Elastic(nnodes=1))
            return train_model(epochs=10, batch_size=32)

        seed_example.compile()


def dynamic_job(settings, use_single_node):
    """What a @dynamic task does on the cluster: compile its body with real inputs into a DynamicJobSpec."""
    from flytekit.core.type_engine import TypeEngine
    from flytekit.models.literals import LiteralMap

    adaptive_dynamic._wf = None  # flytekit caches the compiled body per process; a pod compiles it once
    ctx = FlyteContextManager.current_context()
    with FlyteContextManager.with_context(ctx.with_serialization_settings(settings)) as ctx:
        es = ctx.execution_state.with_params(mode=ExecutionState.Mode.TASK_EXECUTION)
        with FlyteContextManager.with_context(ctx.with_execution_state(es)) as ctx:
            inputs = LiteralMap({"use_single_node": TypeEngine.to_literal(ctx, use_single_node, bool,
                                                                          TypeEngine.to_literal_type(bool))})
            return adaptive_dynamic.dispatch_execute(ctx, inputs)


@pytest.mark.parametrize("single,expected", [(True, "python-task"), (False, "pytorch")])
def test_dynamic_override_at_cluster_serialization(settings, single, expected):
    job = dynamic_job(settings, single)
    assert [t.type for t in job.tasks] == [expected]
    assert train_model.task_config == Elastic(nnodes=2, nproc_per_node=2)


def test_conditional_serializes_one_node_per_branch(wf_spec):
    spec, tasks = wf_spec(adaptive_conditional)
    (branch,) = spec.template.nodes
    if_else = branch.branch_node.if_else
    then_task = if_else.case.then_node.task_node.reference_id.name
    else_task = if_else.else_node.task_node.reference_id.name
    assert (tasks[then_task].type, tasks[else_task].type) == ("python-task", "pytorch")


def test_a_task_config_override_after_a_local_run_warns():
    """Locally a task runs when called: the override on its result cannot apply, and says so."""

    @task(task_config=Elastic(nnodes=1))
    def small(x: int) -> int:
        return x + 1

    @workflow
    def wf(x: int) -> int:
        return small(x=x).with_overrides(task_config=Elastic(nnodes=2))

    with pytest.warns(UserWarning, match="already ran"):
        assert wf(x=1) == 2


def test_resolver_rejects_foreign_loader_args():
    with pytest.raises(ValueError, match="ptjupyter-task-config") as e:
        config_override_resolver.load_task(["task-module", "m", "task-name", "t"])
    assert "\n" not in str(e.value)


def test_create_node_overrides_are_per_node_too(wf_spec):
    from flytekit.core.node_creation import create_node

    @workflow
    def wf():
        create_node(train, epochs=1)
        create_node(train, epochs=2).with_overrides(task_config=Elastic(nnodes=1))

    spec, tasks = wf_spec(wf)
    assert [tasks[name].type for name in node_tasks(spec)] == ["pytorch", "python-task"]
