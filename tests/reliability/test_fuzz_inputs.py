"""Property-based bad input: every input is accepted or gets one clear line, before anything starts.

The line names the field (or option) and the value. Never a traceback from inside torch, never an
exception type other than TypeError/ValueError, never a process started.
"""
from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptjupyter import CleanPodPolicy, Elastic, Layer, Master, PyTorch, RestartPolicy, RunPolicy, Worker, resolve
from ptjupyter.plan import OVERRIDE_KEYS
from tests.conftest import leftover_processes

TRIED: Counter = Counter()
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))

values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["1", "1:1", "2:4", "4:2", "0", "-1", "a:b", "", "1:", ":2", " 2 ", "１"]),
    st.sampled_from(["spawn", "fork", "forkserver", "thread", "local", "k8s", "Never", "OnFailure"]),
    st.sampled_from(list(RestartPolicy) + list(CleanPodPolicy)),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.builds(RunPolicy),
)

FIELDS = {
    Elastic: ["nnodes", "nproc_per_node", "start_method", "monitor_interval", "max_restarts", "rdzv_configs",
              "increase_shared_mem", "run_policy"],
    Worker: ["image", "requests", "limits", "replicas", "restart_policy"],
    Master: ["image", "requests", "limits", "restart_policy"],
    RunPolicy: ["clean_pod_policy", "ttl_seconds_after_finished", "active_deadline_seconds", "backoff_limit"],
    PyTorch: ["run_policy", "num_workers", "increase_shared_mem"],
}


def check_one_line(exc: BaseException, names: list[str]):
    assert isinstance(exc, (TypeError, ValueError)), repr(exc)
    msg = str(exc)
    assert msg and "\n" not in msg, msg
    assert any(n in msg for n in names), (names, msg)


def _kwargs_strategy(cls):
    keys = st.sampled_from(FIELDS[cls] + ["bogus", "nnode", "replica"])
    return st.dictionaries(keys, values, max_size=4)


def _fuzz_constructor(cls, kwargs):
    TRIED[cls.__name__] += 1
    if cls is PyTorch and "num_workers" not in kwargs:
        kwargs = dict(kwargs, worker=Worker(replicas=1))
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cfg = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - the property is about which exceptions escape
        check_one_line(e, list(kwargs) + ["worker.replicas"])
        return
    if isinstance(cfg, (Elastic, PyTorch)):
        for target in ("local", "k8s"):
            try:
                resolve(cfg, target=target)
            except Exception as e:  # noqa: BLE001
                check_one_line(e, ["nnodes", "start_method"])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(cls=st.sampled_from(list(FIELDS)), data=st.data())
def test_config_constructors_accept_or_say_one_line(cls, data):
    _fuzz_constructor(cls, data.draw(_kwargs_strategy(cls)))


override_keys = st.sampled_from(list(OVERRIDE_KEYS) + ["nodes", "gpus", "nproc-per-node"])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(layers=st.lists(st.dictionaries(override_keys, values, max_size=4), max_size=3))
def test_override_layers_resolve_or_say_one_line(layers):
    TRIED["override layers"] += 1
    try:
        resolve(None, [Layer(f"layer{i}", values) for i, values in enumerate(layers)])
    except Exception as e:  # noqa: BLE001
        names = [k for layer in layers for k in layer]
        check_one_line(e, names)


def test_fuzzing_started_no_process():
    assert not leftover_processes(wait=0)
