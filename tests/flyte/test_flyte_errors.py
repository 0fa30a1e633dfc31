"""What a failing rank, the rendezvous settings and the execution context look like from a flytekit task."""
import copy
import os
import sys
import time
from unittest import mock

import cloudpickle
import flytekit
import pytest
from flytekit import task
from flytekit.exceptions.user import FlyteRecoverableException, FlyteUserRuntimeException

from ptjupyter import Elastic, PyTorch, Worker
from ptjupyter.errors import RankFailed

pytest.importorskip("ptjupyter.local.launch")
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class OutOfCapacity(FlyteRecoverableException):
    """A user's own recoverable error: Flyte retries the task on it."""


@task(task_config=Elastic(nproc_per_node=2))
def recoverable_on_rank_1() -> int:
    if os.environ["RANK"] == "1":
        raise OutOfCapacity("no GPU left")
    return 0


@task(task_config=Elastic(nproc_per_node=2))
def fails_on_rank_1() -> int:
    if os.environ["RANK"] == "1":
        raise ValueError("not a FlyteRecoverableException")  # the class name in the text makes no difference
    return 0


def test_a_rank_raising_a_recoverable_subclass_is_a_flyte_recoverable_exception():
    before = time.time()
    with pytest.raises(FlyteRecoverableException) as e:
        recoverable_on_rank_1()
    assert before < e.value.timestamp < time.time()  # the rank's own time of the error
    text = str(e.value)
    assert "rank 1 failed" in text and "OutOfCapacity" in text and "no GPU left" in text


def test_any_other_rank_error_is_a_flyte_user_runtime_exception_with_the_rank_failure():
    before = time.time()
    with pytest.raises(FlyteUserRuntimeException) as e:
        fails_on_rank_1()
    assert not isinstance(e.value, FlyteRecoverableException)
    assert before < e.value.timestamp < time.time()
    failure = e.value.value
    assert isinstance(failure, RankFailed)
    assert (failure.rank, failure.exitcode) == (1, 1)
    assert "ValueError: not a FlyteRecoverableException" in failure.traceback_text


def test_rdzv_configs_reach_torch_as_given_and_the_config_is_left_unchanged():
    from torch.distributed.launcher.api import LaunchConfig

    seen = []

    def capture(**kwargs):
        seen.append(copy.deepcopy(kwargs["rdzv_configs"]))  # as given, before torch adds its own timeout
        return LaunchConfig(**kwargs)

    @task(task_config=Elastic(nproc_per_node=2, rdzv_configs={"join_timeout": 10}))
    def two_ranks() -> int:
        return 1

    with mock.patch("torch.distributed.launcher.api.LaunchConfig", side_effect=capture):
        assert two_ranks() == 1
    assert seen == [{"join_timeout": 10}]
    assert two_ranks.task_config.rdzv_configs == {"join_timeout": 10}


@pytest.mark.parametrize("start_method,execution_id", [("spawn", "f12345678"), ("forkserver", "f12345678"),
                                                       ("fork", "local")])
def test_one_process_is_a_direct_call_in_the_context_upstreams_worker_would_have(
        start_method, execution_id, monkeypatch):
    """spawn/forkserver: a context built from the environment (as upstream's spawned worker); fork: the caller's."""
    monkeypatch.setenv("FLYTE_INTERNAL_EXECUTION_ID", "f12345678")

    @task(task_config=Elastic(nproc_per_node=1, start_method=start_method))
    def one() -> str:
        ctx = flytekit.current_context()
        ctx.checkpoint.write(b"1")
        return f"{ctx.execution_id.name} {os.getpid()}"

    assert one() == f"{execution_id} {os.getpid()}"


@pytest.mark.parametrize("config", [PyTorch(worker=Worker(replicas=1)), Elastic(start_method="fork"),
                                    Elastic(start_method="spawn")], ids=["PyTorch", "Elastic-fork", "Elastic-spawn"])
def test_a_direct_call_raises_the_functions_own_error(config):
    """Not SystemExit: flytekit's deprecated user_entry_point exits the process on a user error outside pyflyte."""

    @task(task_config=config)
    def lookup(key: str) -> int:
        return {}[key]

    with pytest.raises(KeyError, match="no such key"):
        lookup(key="no such key")
