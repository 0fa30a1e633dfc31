"""The benchmark's code paths, once each (timings are printed by `python -m bench`, never asserted)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_runs_every_launcher_and_workload_once(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "bench", "--reps", "1", "--relay-lines", "2000", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    from bench.run import ALL_LAUNCHERS

    for workload in ("hello", "train"):
        rows = data["workloads"][workload]
        assert set(rows) == set(ALL_LAUNCHERS)
        for name, row in rows.items():
            if name.startswith("ptjupyter"):  # ours must always run
                assert row.get("n") == 1 and row["median"] > 0, (workload, name, row)
            else:  # a peer's own flake (torchrun's gloo teardown aborts now and then) is reported, not fatal
                assert ("n" in row and row["median"] > 0) or "failed" in row.get("skipped", "") \
                    or "not installed" in row.get("skipped", ""), (workload, name, row)
        if "median" in rows["torchrun CLI"]:
            assert rows["torchrun CLI"]["ratio"] == 1.0
            assert rows["ptjupyter library call"]["ratio"] > 0
    assert data["workloads"]["train"]["ptjupyter library call"]["steps_per_s"] > 0
    assert data["extras"]["relay"]["received"] == {"0": 2000, "1": 2000}
    assert "| hello | ptjupyter first cell |" in res.stdout


def test_gpu_check_skips_with_one_line_without_a_gpu():
    import os

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever the machine has
    res = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=env)
    assert res.returncode == 0 and res.stdout.splitlines() == ["gpu_check: skipped: no GPU visible (NVML / "
                                                               "CUDA_VISIBLE_DEVICES)"], res.stdout + res.stderr
