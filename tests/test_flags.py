"""torchrun's flags in resolve() (--ranks, --log-dir, --nproc-per-node auto|gpu|cpu, --rdzv-conf, --grace, --gpus)
and GPU/CPU counting without a CUDA context (fake NVML, CUDA_VISIBLE_DEVICES)."""
from __future__ import annotations

import ctypes

import pytest

from ptjupyter import Elastic, Layer, resolve
from ptjupyter.devices import cpu_count, gpu_count, nvml_count, visible_devices
from ptjupyter.errors import InvalidType, InvalidValue


class FakeNVML:
    def __init__(self, count=0, init=0):
        self.count, self.init, self.shut = count, init, False

    def nvmlInit_v2(self):
        return self.init

    def nvmlDeviceGetCount_v2(self, ref):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_uint)).contents.value = self.count
        return 0

    def nvmlShutdown(self):
        self.shut = True
        return 0


def plan(env=None, **values):
    return resolve(layers=[Layer("cell flags", values)], env=env or {})


@pytest.mark.parametrize("value,n", [("0,1", 2), ("", 0), ("-1", 0), ("0,-1,2", 1), ("3", 1), ("GPU-8a1b-c2,1", 2),
                                     ("0,x", 1), ("MIG-GPU-1/0/0", 1)])
def test_cuda_visible_devices_counts_as_cuda_reads_it(value, n):
    assert visible_devices(value) == n
    assert gpu_count({"CUDA_VISIBLE_DEVICES": value}, lib=FakeNVML(8)) == n


def test_nvml_counts_when_cuda_visible_devices_is_unset():
    lib = FakeNVML(4)
    assert nvml_count(lib) == 4 and lib.shut
    assert gpu_count({}, lib=lib) == 4
    assert gpu_count({"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5"}, lib=FakeNVML(2)) == 2  # no more than exist
    assert nvml_count(FakeNVML(4, init=9)) is None  # NVML_ERROR_DRIVER_NOT_LOADED and the like
    assert gpu_count({}, lib=FakeNVML(0)) == 0


def test_cpu_count_follows_affinity_and_the_cgroup_quota(tmp_path):
    import os

    mine = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_count(str(tmp_path)) == mine
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cpu_count(str(tmp_path)) == 1
    assert cpu_count(str(tmp_path / "none")) == mine


def test_nproc_per_node_words(monkeypatch):
    import ptjupyter.devices as dev

    monkeypatch.setattr(dev, "nvml_count", lambda lib=None: 3)
    p = plan(nproc_per_node="gpu")
    assert p.nproc_per_node == 3 and "gpu -> 3 visible GPUs" in p.sources["nproc_per_node"]
    assert plan({"CUDA_VISIBLE_DEVICES": "1"}, nproc_per_node="auto").nproc_per_node == 1
    assert plan(nproc_per_node="4").nproc_per_node == 4
    monkeypatch.setattr(dev, "nvml_count", lambda lib=None: None)
    assert plan(nproc_per_node="auto").nproc_per_node == plan(nproc_per_node="cpu").nproc_per_node == cpu_count()
    with pytest.raises(InvalidValue, match=r"^nproc_per_node='gpu' \(from cell flags\) is not accepted: no GPU"):
        plan(nproc_per_node="gpu")
    with pytest.raises(InvalidValue, match="expected an int >= 1, or auto, gpu, cpu"):
        plan(nproc_per_node="tpu")
    with pytest.raises(InvalidValue, match="set --gpus N"):
        resolve(layers=[Layer("f", {"nproc_per_node": "gpu"})], target="k8s")
    assert resolve(layers=[Layer("f", {"nproc_per_node": "gpu", "gpus": 8})], target="k8s").nproc_per_node == 8


def test_rdzv_conf_merges_over_the_config():
    p = resolve(Elastic(nproc_per_node=2), [Layer("cell flags", {"rdzv_configs": "timeout=60, close=true,x=a"})])
    assert p.rdzv_configs == {"timeout": 60, "join_timeout": 900, "close": True, "x": "a"}
    for bad in ("timeout", "=1", "a b=1"):
        with pytest.raises(InvalidValue, match=r"^rdzv_configs=.*is not key=value"):
            plan(nproc_per_node=2, rdzv_configs=bad)


def test_ranks_grace_log_dir_values_and_precedence(tmp_path):
    assert plan(nproc_per_node=4, ranks="2, 0").ranks == (0, 2)
    p = resolve(layers=[Layer("%config", {"nproc_per_node": 2, "ranks": (0,)}), Layer("cell flags", {"ranks": "1"})])
    assert p.ranks == (1,) and p.sources["ranks"] == "cell flags"
    assert plan(nproc_per_node=2).ranks is None
    for bad, kind in (("0,-1", InvalidValue), ("x", InvalidValue), ("", InvalidValue), (True, InvalidType)):
        with pytest.raises(kind, match=r"^ranks=.*expected rank numbers >= 0"):
            plan(nproc_per_node=2, ranks=bad)
    with pytest.raises(InvalidValue, match=r"^ranks=3 \(from cell flags\) is not accepted: the run has 2 rank"):
        plan(nproc_per_node=2, ranks="3")
    assert plan(nproc_per_node=2, grace=30).grace == 30.0 and plan(nproc_per_node=2).grace is None
    for bad in (0, -1, "5", True):
        with pytest.raises(InvalidValue, match=r"^grace=.*seconds between SIGTERM and SIGKILL"):
            plan(nproc_per_node=2, grace=bad)
    assert plan(nproc_per_node=2, log_dir=str(tmp_path)).log_dir == str(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(InvalidValue, match="it is a file"):
        plan(nproc_per_node=2, log_dir=str(tmp_path / "f"))
    assert plan(log_dir=str(tmp_path)).log_dir is None and "applies to runs with several" in plan(log_dir="x").warnings[0]
    k8s = resolve(layers=[Layer("f", {"grace": 5, "log_dir": "x", "ranks": "1", "nnodes": 2})], target="k8s")
    assert k8s.grace is None and k8s.log_dir is None and k8s.ranks == (1,) and len(k8s.warnings) == 2
    local = plan(nproc_per_node=2, gpus=1)
    assert local.gpus is None and "every local rank sees every visible GPU" in local.warnings[0]
    with pytest.raises(InvalidValue, match=r"^gpus=-1 .*expected GPUs per node"):
        resolve(layers=[Layer("f", {"gpus": -1})], target="k8s")
