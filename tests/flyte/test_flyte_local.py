"""Local execution of ptjupyter flytekit tasks: through ptjupyter.plan.resolve and ptjupyter.local.launch.run."""
import logging
import os
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest
from flytekit import task, workflow

from ptjupyter import Elastic, PyTorch, Worker

pytest.importorskip("ptjupyter.local.launch")

# the workers unpickle the task functions: ship this module's functions by value (tests/flyte is not on their path)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

VENV_BIN = os.path.dirname(sys.executable)


@task(task_config=Elastic(nproc_per_node=2))
def allreduce(scale: int) -> int:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    t = torch.tensor([rank + 1]) * scale
    dist.all_reduce(t)
    dist.destroy_process_group()
    return int(t.item()) * 100 + rank  # rank 0 returns 300 * scale, rank 1 300 * scale + 1


@task(task_config=Elastic(nproc_per_node=2))
def fails_on_rank_1() -> int:
    if os.environ["RANK"] == "1":
        raise ValueError("boom on rank 1")
    return 0


@task(task_config=Elastic(nnodes=1, nproc_per_node=1))
def single(x: int) -> int:
    return os.getpid()


@task(task_config=PyTorch(worker=Worker(replicas=2)))
def classic(x: int) -> int:
    return os.getpid()


@task(task_config=Elastic(nnodes=2, nproc_per_node=2))
def multi_node(x: int) -> int:
    return x


@workflow
def wf(scale: int) -> int:
    return allreduce(scale=scale)


def test_two_process_elastic_task_returns_rank_0s_value():
    assert allreduce(scale=1) == 300


def test_two_process_elastic_task_in_a_local_workflow():
    assert wf(scale=2) == 600


def test_a_failing_rank_is_a_clear_error_naming_the_rank():
    with pytest.raises(Exception) as e:
        fails_on_rank_1()
    text = str(e.value)
    assert "rank 1" in text and "boom on rank 1" in text


def test_single_node_single_process_is_a_direct_call(caplog):
    caplog.set_level(logging.DEBUG, logger="ptjupyter")
    assert single(x=1) == os.getpid()
    text = caplog.text
    assert "[PYTORCH_ELASTIC] execute: task_config=Elastic(nnodes=1, nproc_per_node=1" in text
    assert "[PYTORCH_ELASTIC] *** SINGLE-NODE DETECTED - BYPASSING ELASTIC LAUNCH ***" in text


def test_pytorch_config_runs_the_function_directly_locally():
    assert classic(x=1) == os.getpid()


def test_multi_node_locally_is_a_one_line_error_without_waiting():
    start = time.monotonic()
    with pytest.raises(ValueError) as e:
        multi_node(x=1)
    assert time.monotonic() - start < 10
    text = str(e.value)
    assert "\n" not in text and "nnodes=2" in text and "target='k8s'" in text


def test_multi_node_in_a_local_workflow_fails_at_the_call():
    @workflow
    def wf_multi(x: int) -> int:
        return multi_node(x=x)

    with pytest.raises(ValueError, match="nnodes=2"):
        wf_multi(x=1)


def test_with_task_config_switches_a_local_call():
    """The locally effective switch: call a variant of the task."""
    assert single(x=1) == os.getpid()
    assert single.with_task_config(Elastic(nnodes="1:1", nproc_per_node=2))(x=1) != os.getpid()
    assert single.task_config.nproc_per_node == 1


SCRIPT = """
from flytekit import task
from ptjupyter import Elastic


@task(task_config=Elastic(nproc_per_node=2))
def hello(scale: int) -> int:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([dist.get_rank() + 1]) * scale
    dist.all_reduce(t)
    dist.destroy_process_group()
    return int(t.item())
"""


def test_pyflyte_run_locally(tmp_path):
    """`pyflyte run` loads the plugin through the flytekit.plugins entry point and runs two ranks."""
    script = tmp_path / "hello_elastic.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = dict(os.environ, FLYTE_SDK_LOGGING_LEVEL="40", PTJUPYTER_DEBUG="1")
    proc = subprocess.run(
        [os.path.join(VENV_BIN, "pyflyte"), "run", str(script), "hello", "--scale", "7"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "21" in proc.stdout.split()  # (1 + 2) * 7, rank 0's value
    assert "[PYTORCH_ELASTIC] decision: mode=elastic" in proc.stderr
