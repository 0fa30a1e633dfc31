"""Fixtures of the local-launcher tests."""
import cloudpickle
import pytest

from ptjupyter import Layer, resolve
from tests.local import workloads

# ship the workloads by value, as a notebook function would be: workers need not import tests/
cloudpickle.register_pickle_by_value(workloads)


def plan_for(**values):
    return resolve(layers=[Layer("test", {"nproc_per_node": 2, **values})])


@pytest.fixture
def plan2():
    """One node, two processes, warm start."""
    return plan_for()
