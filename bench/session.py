"""Session cells against ipyparallel's ``%%px --block`` and a plain cell, in one run, in real kernels.

    python -m bench.session [--reps 30] [--sizes 2,4] [--json PATH]

For each size N: an empty ``%%pytorch_elastic --session`` cell on N ranks, ``%%px --block`` of
``x = 1`` on N ipyparallel engines (skipped when ipyparallel is not installed), each measured as the
round trip execute request -> kernel idle; also a plain empty cell (the floor), today's fresh
``%%pytorch_elastic`` cell on 2 ranks, the session start time, and a DDP step loop split into
5 session cells of 20 steps against the same 100 steps in one session cell and in one fresh cell
(steps/s, medians of interleaved rounds).
On demand only; the test suite runs at most one repetition as a smoke test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.magic.magic_helpers import Kernel  # noqa: E402

STEPS = """import torch, time
torch.manual_seed(0)
if "m" not in globals():
    m = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
    o = torch.optim.SGD(m.parameters(), lr=0.01)
    x = torch.randn(128, 64)
t = time.perf_counter()
for _ in range({n}):
    o.zero_grad(); m(x).pow(2).mean().backward(); o.step()
time.perf_counter() - t
"""


def _timed(k: Kernel, code: str, reps: int) -> list:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        content, _ = k.run(code)
        out.append((time.perf_counter() - t) * 1000)
        assert content["status"] == "ok", content
    return out


def _row(ms: list) -> dict:
    return {"median_ms": round(statistics.median(ms), 2), "min_ms": round(min(ms), 2), "n": len(ms)}


def _ddp(k: Kernel, n: int, rounds: int) -> dict:
    """steps/s, rank 0's time in the loop: 5 session cells of 20, one session cell of 100, one fresh cell of 100.

    The three are interleaved, ``rounds`` times, and the medians compared: on a shared machine one
    sample of each differs by +-30 % from round to round (a single sample of each was this bench's
    first version, and showed the split session cells 24 % below the fresh cell). The session stays
    up (idle ranks use no CPU) while the fresh cells run.
    """
    fresh = (f"%%pytorch_elastic --nproc-per-node {n} --out _f\n"
             "import torch.distributed as dist\ndist.init_process_group('gloo')\n" + STEPS.format(n=100))
    _timed(k, "%%pytorch_elastic --session --out _s\n" + STEPS.format(n=1), 1)  # build
    samples: dict = {"split": [], "session": [], "fresh": []}
    for _ in range(rounds):
        split = 0.0
        for _ in range(5):
            _timed(k, "%%pytorch_elastic --session --out _s\n" + STEPS.format(n=20), 1)
            split += k.value("_s")
        samples["split"].append(100 / split)
        _timed(k, "%%pytorch_elastic --session --out _s\n" + STEPS.format(n=100), 1)
        samples["session"].append(100 / k.value("_s"))
        _timed(k, fresh, 1)
        samples["fresh"].append(100 / k.value("_f"))
    med = {key: round(statistics.median(v), 1) for key, v in samples.items()}
    return {"ddp steps/s, 5 session cells of 20": med["split"], "ddp steps/s, one session cell of 100": med["session"],
            "ddp steps/s, one fresh cell of 100": med["fresh"],
            "ddp samples": {key: [round(x) for x in v] for key, v in samples.items()}}


def measure(reps: int, sizes: list, ddp_rounds: int = 7) -> dict:
    res: dict = {"sizes": {}}
    k = Kernel(env={"PTJUPYTER_STATUS": "text"})
    try:
        k.run("%load_ext ptjupyter")
        res["plain cell"] = _row(_timed(k, "pass", reps))
        _timed(k, "%%pytorch_elastic --nproc-per-node 2\npass", 1)  # the forkserver warms up
        res["fresh 2-rank cell"] = _row(_timed(k, "%%pytorch_elastic --nproc-per-node 2\npass", max(3, reps // 5)))
        for n in sizes:
            row = res["sizes"][n] = {}
            t = time.perf_counter()
            content, _ = k.run(f"%pytorch_elastic_session start --nproc-per-node {n} --backend gloo")
            assert content["status"] == "ok", content
            row["session start_ms"] = round((time.perf_counter() - t) * 1000, 1)
            _timed(k, "%%pytorch_elastic --session\npass", 2)
            row["session cell"] = _row(_timed(k, "%%pytorch_elastic --session\npass", reps))
            if n == sizes[0]:
                row.update(_ddp(k, n, ddp_rounds))
            k.run("%pytorch_elastic_session stop")
    finally:
        k.stop()
    try:
        import ipyparallel  # noqa: F401
    except ImportError:
        res["ipyparallel"] = "not installed"
        return res
    for n in sizes:
        k = Kernel()
        try:
            content, _ = k.run(f"import ipyparallel as ipp\nrc = ipp.Cluster(n={n}, log_level=40).start_and_connect_sync()\n"
                               f"rc.wait_for_engines({n}, timeout=120)\nrc.activate()", timeout=180)
            assert content["status"] == "ok", content
            _timed(k, "%%px --block\nx = 1", 2)
            res["sizes"][n]["px --block"] = _row(_timed(k, "%%px --block\nx = 1", reps))
            k.run("rc.cluster.stop_cluster_sync()", timeout=60)
        finally:
            k.stop()
    return res


def table(res: dict) -> str:
    floor = res["plain cell"]["median_ms"]
    rows = ["| what | ranks | median ms | min ms | vs plain cell | vs %%px --block |", "|---|---|---|---|---|---|",
            f"| plain empty cell | - | {floor} | {res['plain cell']['min_ms']} | 1.0 | |",
            f"| fresh %%pytorch_elastic cell | 2 | {res['fresh 2-rank cell']['median_ms']} | "
            f"{res['fresh 2-rank cell']['min_ms']} | {res['fresh 2-rank cell']['median_ms'] / floor:.1f} | |"]
    for n, row in res["sizes"].items():
        px = row.get("px --block")
        s = row["session cell"]
        rows.append(f"| empty session cell | {n} | {s['median_ms']} | {s['min_ms']} | {s['median_ms'] / floor:.1f} | "
                    + (f"{s['median_ms'] / px['median_ms']:.2f} |" if px else "skipped |"))
        if px:
            rows.append(f"| %%px --block x = 1 | {n} | {px['median_ms']} | {px['min_ms']} | "
                        f"{px['median_ms'] / floor:.1f} | 1.0 |")
        rows.append(f"| session start | {n} | {row['session start_ms']} | | | |")
    for n, row in res["sizes"].items():
        for key, short in (("ddp steps/s, 5 session cells of 20", "split"),
                           ("ddp steps/s, one session cell of 100", "session"),
                           ("ddp steps/s, one fresh cell of 100", "fresh")):
            if key in row:
                v = row["ddp samples"][short]
                rows.append(f"| {key} (median of {len(v)}; range {min(v)}-{max(v)}) | {n} | {row[key]} | | | |")
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.session")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--sizes", default="2,4")
    ap.add_argument("--ddp-rounds", type=int, default=7, help="interleaved rounds of the DDP comparison")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = measure(a.reps, [int(s) for s in a.sizes.split(",")], a.ddp_rounds)
    print(table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
