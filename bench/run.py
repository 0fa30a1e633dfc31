"""ptjupyter against torchrun and the peers, measured in one run on this machine.

    python -m bench [--reps 5] [--workloads hello,train] [--launchers ...] [--json PATH] [--quick]

Every launcher runs the same workloads (bench/workloads.py) on 2 local CPU processes (gloo).
Reported per launcher and workload: wall time (median, min, max over --reps), the ratio of the
median to the torchrun CLI's, the latency from the launch call to rank 0's first line, peak RSS of
the launching process and its workers together, and (train) the ratio of training steps/s.
Also: ``%load_ext ptjupyter`` time, the direct-call overhead, and the log relay rate into a cell.
Peers that are not installed are reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
PY = sys.executable
FIRST = re.compile(r"BENCH_FIRST (\d+\.\d+)")
TRAIN = re.compile(r"BENCH_TRAIN (\d+\.\d+)")

SCRIPT_LAUNCHERS = {
    "elastic_launch (spawn)": "elastic_spawn",
    "elastic_launch (fork)": "elastic_fork",
    "accelerate notebook_launcher": "accelerate",
    "flytekit kfpytorch Elastic": "flyte_upstream",
    "ptjupyter library call": "ptjupyter_lib",
}
KERNEL_LAUNCHERS = ("ptjupyter first cell", "ptjupyter next cells")
ALL_LAUNCHERS = ("torchrun CLI",) + tuple(SCRIPT_LAUNCHERS) + KERNEL_LAUNCHERS
REQUIRES = {"accelerate notebook_launcher": "accelerate", "flytekit kfpytorch Elastic": "flytekitplugins.kfpytorch"}


class PeakRSS:
    """Samples the summed RSS of a process and all its descendants every 20 ms."""

    def __init__(self, pid: int):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak / 2**20


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.pop("PTJUPYTER_DEBUG", None)
    return env


def run_process(cmd: list[str]) -> dict:
    """Wall time of a whole launcher process, first-line latency, peak RSS, train rate."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env())
    rss = PeakRSS(p.pid)
    out = p.communicate(timeout=600)[0]
    wall = time.time() - t0
    mem = rss.stop()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({p.returncode}):\n{out[-2000:]}")
    return _parse(out, t0, wall, mem)


def _parse(out: str, t0: float, wall: float, mem: float) -> dict:
    first = FIRST.search(out)
    train = TRAIN.search(out)
    return {
        "wall": wall,
        "first_line": float(first.group(1)) - t0 if first else None,
        "rss_mb": mem,
        "steps_per_s": float(train.group(1)) if train else None,
    }


class Kernel:
    """A real Jupyter kernel (this interpreter) with ptjupyter loaded, driven over jupyter_client."""

    def __init__(self):
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(ROOT), env=_env())
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.pid = self.km.provisioner.process.pid

    def execute(self, code: str, timeout: float = 600) -> tuple[float, str, float]:
        """Run one cell; return (seconds until idle, its stream text, the start time)."""
        t0 = time.time()
        msg_id = self.kc.execute(code)
        text = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                text.append(content["text"])
            elif kind == "error":
                raise RuntimeError("cell failed: " + "\n".join(content["traceback"])[-3000:])
            elif kind == "status" and content["execution_state"] == "idle":
                break
        return time.time() - t0, "".join(text), t0

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def cell_code(workload: str) -> str:
    return f"%%pytorch_elastic --nproc-per-node 2 --rank0-only\nfrom bench.workloads import {workload}\n{workload}()\n"


def kernel_runs(workload: str, reps: int) -> tuple[list[dict], list[dict]]:
    """First cells (a fresh kernel each) and next cells (one kernel, after its first cell)."""
    first, nxt = [], []
    for i in range(reps):
        k = Kernel()
        try:
            k.execute("%load_ext ptjupyter")
            rss = PeakRSS(k.pid)
            wall, out, t0 = k.execute(cell_code(workload))
            first.append(_parse(out, t0, wall, rss.stop()))
            if i == 0:
                for _ in range(reps):
                    rss = PeakRSS(k.pid)
                    wall, out, t0 = k.execute(cell_code(workload))
                    nxt.append(_parse(out, t0, wall, rss.stop()))
        finally:
            k.close()
    return first, nxt


def load_ext_seconds(reps: int) -> list[float]:
    code = (
        "import time; from IPython.core.interactiveshell import InteractiveShell; ip = InteractiveShell.instance();"
        "t = time.perf_counter(); ip.run_line_magic('load_ext', 'ptjupyter'); d = time.perf_counter() - t;"
        "import sys; heavy = [m for m in ('torch', 'flytekit', 'kubernetes') if m in sys.modules];"
        "print(d, ','.join(heavy) or '-')"
    )
    out = []
    for _ in range(reps):
        res = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env(), check=True)
        secs, heavy = res.stdout.split()
        if heavy != "-":
            raise RuntimeError(f"%load_ext ptjupyter imported {heavy}")
        out.append(float(secs))
    return out


def direct_overhead_ms() -> float:
    code = r"""
import time
from ptjupyter import resolve
from ptjupyter.execute import execute as run
def f(): return 1
n = 2000
t = time.perf_counter()
for _ in range(n): f()
base = time.perf_counter() - t
t = time.perf_counter()
for _ in range(n): run(resolve(), f)
print((time.perf_counter() - t - base) / n * 1000)
"""
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env(), check=True)
    return float(res.stdout.split()[-1])


def relay_rate(lines: int) -> dict:
    k = Kernel()
    try:
        k.execute("%load_ext ptjupyter")
        code = (f"%%pytorch_elastic --nproc-per-node 2\nimport os\nr = os.environ['RANK']\n"
                f"for i in range({lines}):\n    print(f'line {{i}}')\n")
        wall, out, _ = k.execute(code)
        got = {r: len(re.findall(rf"^\[rank{r}\] line \d+$", out, re.M)) for r in (0, 1)}
        return {"lines_per_rank": lines, "received": got, "seconds": wall, "lines_per_s": sum(got.values()) / wall}
    finally:
        k.close()


def summarize(samples: list[dict]) -> dict:
    walls = [s["wall"] for s in samples]
    firsts = [s["first_line"] for s in samples if s["first_line"] is not None]
    rates = [s["steps_per_s"] for s in samples if s["steps_per_s"] is not None]
    return {
        "n": len(walls), "median": statistics.median(walls), "min": min(walls), "max": max(walls),
        "first_line": statistics.median(firsts) if firsts else None,
        "rss_mb": max(s["rss_mb"] for s in samples),
        "steps_per_s": statistics.median(rates) if rates else None,
    }


def available(name: str) -> bool:
    mod = REQUIRES.get(name)
    if mod is None:
        return True
    import importlib.util

    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


def measure(workload: str, launchers: list[str], reps: int) -> dict:
    rows = {}
    for name in launchers:
        if name in KERNEL_LAUNCHERS:
            continue
        if not available(name):
            rows[name] = {"skipped": f"{REQUIRES[name]} is not installed"}
            continue
        if name == "torchrun CLI":
            torchrun = shutil.which("torchrun", path=str(Path(PY).parent)) or "torchrun"
            cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(PEERS / "torchrun_target.py"), workload]
        else:
            cmd = [PY, str(PEERS / "launch.py"), SCRIPT_LAUNCHERS[name], workload]
        samples, failures = [], []
        for _ in range(reps):
            try:
                samples.append(run_process(cmd))
            except RuntimeError as e:  # a peer's flake is reported, and the run goes on
                failures.append(str(e).splitlines()[0][:200])
        if not samples:
            rows[name] = {"skipped": f"every run failed: {failures[0]}"}
            continue
        rows[name] = summarize(samples)
        rows[name]["failures"] = len(failures)
        print(f"  {workload:5s} {name:30s} {rows[name]['median']:.2f} s", file=sys.stderr, flush=True)
    if any(n in launchers for n in KERNEL_LAUNCHERS):
        first, nxt = kernel_runs(workload, reps)
        for name, samples in zip(KERNEL_LAUNCHERS, (first, nxt), strict=True):
            if name in launchers:
                rows[name] = summarize(samples)
                print(f"  {workload:5s} {name:30s} {rows[name]['median']:.2f} s", file=sys.stderr, flush=True)
    base = rows.get("torchrun CLI", {})
    for row in rows.values():
        if "median" in row and "median" in base:
            row["ratio"] = row["median"] / base["median"]
            if row["steps_per_s"] and base.get("steps_per_s"):
                row["train_ratio"] = row["steps_per_s"] / base["steps_per_s"]
    return rows


def table(results: dict) -> str:
    lines = ["| workload | launcher | wall median (min-max) s | x torchrun | first line s | peak RSS MB | steps/s x torchrun |",
             "|---|---|---|---|---|---|---|"]
    for workload, rows in results["workloads"].items():
        for name, r in rows.items():
            if "skipped" in r:
                lines.append(f"| {workload} | {name} | skipped: {r['skipped']} | | | | |")
                continue
            fl = f"{r['first_line']:.2f}" if r["first_line"] is not None else "-"
            tr = f"{r['train_ratio']:.2f}" if r.get("train_ratio") else "-"
            failed = f" ({r['failures']} of {r['n'] + r['failures']} runs failed)" if r.get("failures") else ""
            lines.append(f"| {workload} | {name}{failed} | {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) | "
                         f"{r.get('ratio', float('nan')):.2f} | {fl} | {r['rss_mb']:.0f} | {tr} |")
    x = results["extras"]
    lines.append("")
    if "load_ext_ms" in x:
        lines.append(f"- `%load_ext ptjupyter`: {x['load_ext_ms']:.0f} ms (median; imports no torch/flytekit/kubernetes)")
    if "direct_overhead_ms" in x:
        lines.append(f"- direct call (world size 1) overhead over calling the function: {x['direct_overhead_ms']:.3f} ms")
    if "relay" in x:
        r = x["relay"]
        lines.append(f"- log relay: {r['lines_per_rank']} lines x 2 ranks, received {r['received']}, "
                     f"{r['lines_per_s']:.0f} lines/s into the cell (whole cell {r['seconds']:.2f} s)")
    lines.append(f"- machine: {results['machine']}")
    return "\n".join(lines)


def machine() -> str:
    import platform

    import torch

    return f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions per launcher and workload (default 5)")
    ap.add_argument("--workloads", default="hello,train", help="comma-separated: hello,train")
    ap.add_argument("--launchers", default=",".join(ALL_LAUNCHERS), help="comma-separated launcher names")
    ap.add_argument("--relay-lines", type=int, default=100_000, help="lines per rank for the log relay test")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"), help="where to write the JSON")
    a = ap.parse_args(argv)
    launchers = [n.strip() for n in a.launchers.split(",") if n.strip()]
    unknown = [n for n in launchers if n not in ALL_LAUNCHERS]
    if unknown:
        ap.error(f"--launchers: unknown {unknown}; accepted: {', '.join(ALL_LAUNCHERS)}")
    results = {"machine": machine(), "reps": a.reps, "workloads": {}, "extras": {}}
    for workload in [w.strip() for w in a.workloads.split(",") if w.strip()]:
        results["workloads"][workload] = measure(workload, launchers, a.reps)
    results["extras"]["load_ext_ms"] = statistics.median(load_ext_seconds(max(a.reps, 1))) * 1000
    results["extras"]["direct_overhead_ms"] = direct_overhead_ms()
    if a.relay_lines:
        results["extras"]["relay"] = relay_rate(a.relay_lines)
    text = table(results)
    print(text)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=2))
    print(f"\n(JSON: {a.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
