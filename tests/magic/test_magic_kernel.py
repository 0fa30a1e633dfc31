"""%%pytorch_elastic in a real kernel (jupyter_client): live output, errors, interrupt, shutdown."""
from __future__ import annotations

import re
import time

import pytest
from magic_helpers import Kernel, needs_launcher, stream_text, worker_processes

pytestmark = [needs_launcher, pytest.mark.timeout(240)]

HELLO = """%%pytorch_elastic --nproc-per-node 2
import torch.distributed as dist
dist.init_process_group("gloo")
print("hello from", dist.get_rank())
dist.barrier()
dist.get_world_size() * 10 + dist.get_rank()
"""


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    content, _ = k.run("%load_ext ptjupyter")
    assert content["status"] == "ok", content
    yield k
    k.stop()


def test_hello_result_live_lines_and_status(kernel):
    content, msgs = kernel.run(HELLO)
    assert content["status"] == "ok", content
    out = stream_text(msgs)
    assert "[rank0] hello from 0" in out and "[rank1] hello from 1" in out
    assert re.search(r"pytorch_elastic: 2/2 ranks exited 0 in \d+\.\d s", out)
    results = [m for m in msgs if m["msg_type"] == "execute_result"]
    assert results and results[0]["content"]["data"]["text/plain"] == "20"
    displays = [m for m in msgs if m["msg_type"] == "display_data"]
    assert displays and "text/html" in displays[0]["content"]["data"]  # the live status, updated in place
    ids = {m["content"]["transient"]["display_id"] for m in displays}
    updates = [m for m in msgs if m["msg_type"] == "update_display_data"]
    assert updates and {m["content"]["transient"]["display_id"] for m in updates} <= ids
    assert "exited 0" in updates[-1]["content"]["data"]["text/html"]


def test_100k_lines_from_each_of_two_ranks_all_arrive_in_the_cell(kernel):
    n = 100_000
    code = ("%%pytorch_elastic --nproc-per-node 2\nimport os, sys\nr = os.environ['RANK']\n"
            f"sys.stdout.writelines(f'r{{r}} {{i}}\\n' for i in range({n}))\n'done'")
    t = time.monotonic()
    content, msgs = kernel.run(code, timeout=180)
    wall = time.monotonic() - t
    assert content["status"] == "ok", content
    seen = {"0": [], "1": []}
    for line in stream_text(msgs).splitlines():
        m = re.fullmatch(r"\[rank(\d)\] r(\d) (\d+)", line)
        if m:
            assert m.group(1) == m.group(2)
            seen[m.group(1)].append(int(m.group(3)))
    for rank in ("0", "1"):
        assert seen[rank] == list(range(n)), f"rank {rank}: {len(seen[rank])} lines, in order: {seen[rank] == sorted(seen[rank])}"
    print(f"relay: {2 * n} lines in {wall:.1f} s ({2 * n / wall:,.0f} lines/s incl. start-up)")


def test_failing_rank_is_a_short_cell_error_with_its_traceback(kernel):
    code = ("%%pytorch_elastic --nproc-per-node 2\nimport os, time\ndef inner():\n"
            "    raise ValueError('boom on rank one')\nif os.environ['RANK'] == '1':\n    inner()\ntime.sleep(30)\n")
    t = time.monotonic()
    content, msgs = kernel.run(code)
    assert time.monotonic() - t < 25  # rank 0 was stopped, not waited for
    assert content["status"] == "error" and content["ename"] == "RankFailed"
    tb = "\n".join(content["traceback"])
    assert tb.startswith("rank 1 failed") and "ValueError: boom on rank one" in tb
    assert 'File "<pytorch_elastic cell>", line 4, in inner' in tb and 'line 6, in pytorch_elastic_cell' in tb
    assert "Root Cause" not in tb and "ChildFailedError" not in tb and "magics.py" not in tb
    assert len(content["traceback"]) < 25
    assert re.search(r"pytorch_elastic: rank 1 failed .* after \d+\.\d s", stream_text(msgs))
    content, _ = kernel.run("1 + 1")
    assert content["status"] == "ok"


def test_interrupt_stops_every_worker_and_the_next_cell_runs(kernel):
    code = ("%%pytorch_elastic --nproc-per-node 2\nimport time, torch.distributed as dist\n"
            "dist.init_process_group('gloo')\nprint('ready', flush=True)\ntime.sleep(120)\n")
    ready = set()

    def watch(msg):
        if msg["msg_type"] == "stream":
            ready.update(re.findall(r"\[rank(\d)\] ready", msg["content"]["text"]))

    msg_id = kernel.submit(code)
    deadline = time.monotonic() + 90
    # read iopub until both ranks are running, then interrupt the kernel
    msgs = []
    while ready != {"0", "1"}:
        assert time.monotonic() < deadline, "ranks never became ready"
        msg = kernel.kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id:
            msgs.append(msg)
            watch(msg)
    running = worker_processes(kernel.pid, set())
    assert len(running) >= 2
    t_int = time.monotonic()
    kernel.km.interrupt_kernel()
    content, rest = kernel.collect(msg_id, timeout=60)
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt"
    infra = set(kernel.value("sorted(__import__('ptjupyter.local.warm', fromlist=['x']).helper_pids())"))
    left = worker_processes(kernel.pid, infra)
    while left and time.monotonic() - t_int < 2.0:
        time.sleep(0.05)
        left = worker_processes(kernel.pid, infra)
    assert not left, f"left after 2 s: {[(p.pid, p.name(), p.cmdline()[:3]) for p in left]}"
    assert "interrupted" in stream_text(rest)
    time.sleep(1.0)  # the agent must not respawn anything
    assert not worker_processes(kernel.pid, infra)
    content, msgs = kernel.run("%%pytorch_elastic --nproc-per-node 2 --rank0-only\nimport os\nprint('after', os.environ['RANK'])\n7")
    assert content["status"] == "ok", content
    out = stream_text(msgs)
    assert "[rank0] after 0" in out and "[rank1]" not in out  # --rank0-only


def test_kernel_shutdown_during_a_run_leaves_nothing():
    import psutil

    k = Kernel()
    try:
        k.run("%load_ext ptjupyter")
        msg_id = k.submit("%%pytorch_elastic --nproc-per-node 2\nimport time\nprint('up', flush=True)\ntime.sleep(120)\n")
        up = 0
        deadline = time.monotonic() + 90
        while up < 2 and time.monotonic() < deadline:
            msg = k.kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                up += msg["content"]["text"].count("] up")
        assert up == 2
        pids = [p.pid for p in psutil.Process(k.pid).children(recursive=True)]
    finally:
        k.stop()
    deadline = time.monotonic() + 5
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left after kernel shutdown: {alive}"


def _progress_ids(msgs):
    return {m["content"]["transient"]["display_id"] for m in msgs if m["msg_type"] == "display_data"
            and m["content"]["metadata"].get("ptjupyter", {}).get("progress")}


def test_a_tqdm_bar_updates_in_place_while_the_loop_runs(kernel):
    code = ("%%pytorch_elastic --nproc-per-node 2 --ranks 1\nimport os, time\nfrom tqdm.auto import tqdm\n"
            "print('rank', os.environ['RANK'])\nfor i in tqdm(range(6)):\n    time.sleep(0.3)\n")
    content, msgs = kernel.run(code)
    assert content["status"] == "ok", content
    ids = _progress_ids(msgs)
    assert len(ids) == 1  # one live line: rank 1's stderr
    states, end = [], None
    for m in msgs:
        if m["msg_type"] in ("display_data", "update_display_data") and m["content"]["transient"]["display_id"] in ids:
            states.append(m["content"]["data"]["text/plain"])
        if m["msg_type"] == "stream" and "6/6" in m["content"]["text"]:
            end = end if end is not None else len(states)
    live = {s for s in states[:end] if s.startswith("[rank1]")}
    assert len(live) >= 3, states  # distinct redraws arrived before the loop ended
    assert states[-1] == ""  # cleared: the final state is an ordinary line
    out, err = stream_text(msgs), stream_text(msgs, "stderr")
    assert re.search(r"\[rank1\] 100%.*6/6", err) and "[rank0]" not in out + err and "[rank1] rank 1" in out


def test_display_and_plt_show_on_a_rank_are_display_data(kernel):
    code = ("%%pytorch_elastic --nproc-per-node 2 --rank0-only\nimport os\nfrom IPython.display import HTML, display\n"
            "import matplotlib.pyplot as plt\ndisplay(HTML('<b>x' + os.environ['RANK'] + '</b>'))\n"
            "plt.plot([1, 2, 3])\nplt.show()\n")
    content, msgs = kernel.run(code)
    assert content["status"] == "ok", content
    shown = [m["content"] for m in msgs if m["msg_type"] == "display_data"
             and m["content"]["metadata"].get("ptjupyter", {}).get("rank") is not None]
    assert [c["metadata"]["ptjupyter"]["rank"] for c in shown] == [0, 0]  # rank 1's are filtered
    assert shown[0]["data"]["text/html"] == "<b>x0</b>" and shown[0]["data"]["text/plain"].startswith("[rank0] ")
    assert shown[1]["data"]["image/png"].startswith("iVBOR")
    assert "<b>x1</b>" not in str(msgs)
