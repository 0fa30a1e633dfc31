"""Fixtures for the Kubernetes tests: a fake API server + operator on 127.0.0.1 (fake_k8s.py)."""
from __future__ import annotations

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import fake_k8s  # noqa: E402
import k8s_cells  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _cells_by_value():
    import cloudpickle

    cloudpickle.register_pickle_by_value(k8s_cells)  # like a notebook cell: the pods do not have this module
    yield


def _infrastructure(p) -> bool:
    """multiprocessing's forkserver / resource tracker (a loaded ptjupyter extension keeps them warm by design)."""
    try:
        return "multiprocessing" in " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - gone meanwhile
        return True


def _cluster(**kw):
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with fake_k8s.FakeK8s(**kw) as f:
        yield f
    # every pod process (torchrun, its workers) is gone with the fake cluster: nothing orphaned
    deadline = time.monotonic() + 5
    while True:
        left = [p for p in psutil.Process().children(recursive=True)
                if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE and not _infrastructure(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, [p.cmdline()[:4] for p in left]


@pytest.fixture
def fake():
    """The fake cluster with the v1 training operator (PyTorchJob) only."""
    yield from _cluster()


@pytest.fixture
def fake_v2():
    """A cluster set up today: Kubeflow Trainer v2 (TrainJob, torch-distributed) and Kueue, no v1 PyTorchJob."""
    yield from _cluster(crd=False, trainer=True, kueue=True)


@pytest.fixture
def fake_both():
    """Both operators installed (api auto then prefers the TrainJob for a fixed node count)."""
    yield from _cluster(trainer=True)


@pytest.fixture
def api(fake):
    client = fake.api_client()
    yield client
    client.close()


@pytest.fixture
def no_kubeconfig(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return tmp_path


@pytest.fixture
def plan_for():
    """plan_for(config=None, **overrides) -> a k8s Plan with a (fake) image."""
    from ptjupyter import Layer, resolve

    def make(config=None, **overrides):
        values = {"image": "local/python:3.11", **overrides}
        return resolve(config, [Layer("test", values)], target="k8s")

    return make


class Recorder:
    """A sink: records (time, rank, text) and pod states; optional hook on each line."""

    def __init__(self, on_line=None):
        import time

        self.t0 = time.monotonic()
        self.lines, self.states, self.on_line = [], [], on_line

    def line(self, rank, stream, text):
        import time

        self.lines.append((time.monotonic() - self.t0, rank, text))
        if self.on_line:
            self.on_line(self, rank, text)

    def state(self, rank, state, detail=""):
        self.states.append((rank, state, detail))

    def texts(self, rank=None):
        return [t for _, r, t in self.lines if rank is None or r == rank]


@pytest.fixture
def recorder():
    return Recorder
