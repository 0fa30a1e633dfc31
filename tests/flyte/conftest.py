"""Shared helpers of the flytekit plugin tests: serialization settings and the task template of a task."""
from collections import OrderedDict

import pytest


@pytest.fixture(scope="session")
def settings():
    from flytekit.configuration import ImageConfig, SerializationSettings

    return SerializationSettings(image_config=ImageConfig.auto_default_image())


def task_template(task, settings):
    """The TaskTemplate protobuf pyflyte would register for ``task``."""
    from flytekit.tools.translator import get_serializable

    return get_serializable(OrderedDict(), settings, task).template.to_flyte_idl()


def workflow_spec(wf, settings):
    """(workflow spec, {task name: TaskTemplate protobuf}) as pyflyte serializes ``wf``."""
    from flytekit.models.task import TaskSpec
    from flytekit.tools.translator import get_serializable

    mapping = OrderedDict()
    spec = get_serializable(mapping, settings, wf)
    tasks = {v.template.id.name: v.template.to_flyte_idl() for v in mapping.values() if isinstance(v, TaskSpec)}
    return spec, tasks


@pytest.fixture
def template(settings):
    return lambda task: task_template(task, settings)


@pytest.fixture
def wf_spec(settings):
    return lambda wf: workflow_spec(wf, settings)
