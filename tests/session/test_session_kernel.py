"""Sessions in a real kernel (jupyter_client): state across cells, errors, deaths, interrupts, shutdown.

One kernel and one session are shared by the tests of this module, in order; the last test shuts
the kernel down and checks that no rank process is left.
"""
from __future__ import annotations

import re
import time

import psutil
import pytest

from tests.magic.magic_helpers import Kernel, stream_text

pytestmark = pytest.mark.timeout(90)

S = "%%pytorch_elastic --session\n"
BUILD = S + """import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
torch.manual_seed(0)
g = torch.Generator().manual_seed(dist.get_rank())
X = torch.randn(256, 8, generator=g)
Y = X @ torch.arange(8.0).unsqueeze(1)
model = DDP(torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
def train(steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(X) - Y) ** 2).mean()
        loss.backward()
        opt.step()
    return loss.item()
print("built on", os.environ["RANK"], "of", os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"])
dist.get_world_size()
"""


@pytest.fixture(scope="module")
def kernel():
    k = Kernel(env={"PTJUPYTER_STATUS": "text"})
    content, _ = k.run("%load_ext ptjupyter\nimport os")
    assert content["status"] == "ok", content
    content, msgs = k.run("%pytorch_elastic_session start --nproc-per-node 2 --backend gloo")
    assert content["status"] == "ok", content
    assert re.search(r"session: 2 ranks \(gloo\) started in \d+\.\d s", stream_text(msgs))
    yield k
    if k.km.is_alive():
        k.stop()


def run_ok(kernel, code, timeout=120):
    content, msgs = kernel.run(code, timeout)
    assert content["status"] == "ok", (content, stream_text(msgs), stream_text(msgs, "stderr"))
    results = [m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "execute_result"]
    return (results[0] if results else None), stream_text(msgs)


def rank_pids(kernel):
    return kernel.value("sorted(__import__('ptjupyter.session', fromlist=['x']).current().ranks.pids.values())")


def alive(pids, wait):
    deadline = time.monotonic() + wait
    while True:
        left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def submit_and_wait_for(kernel, code, marker, count=2):
    msg_id = kernel.submit(code)
    seen, deadline = 0, time.monotonic() + 60
    while seen < count:
        assert time.monotonic() < deadline, f"never saw {marker!r} {count} times"
        msg = kernel.kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            seen += msg["content"]["text"].count(marker)
    return msg_id


def test_ddp_model_trained_across_cells_and_state_dicts_equal(kernel):
    value, out = run_ok(kernel, BUILD)
    assert value == "2"
    assert "[rank0] built on 0 of 2 127.0.0.1" in out and "[rank1] built on 1 of 2 127.0.0.1" in out
    assert re.search(r"pytorch_elastic session: 2/2 ranks done in \d+\.\d s", out)
    losses = [float(run_ok(kernel, S + "train(20)")[0]) for _ in range(2)]
    run_ok(kernel, "%%pytorch_elastic --session --out last\ntrain(20)")
    losses.append(kernel.value("last"))
    assert losses[0] > losses[1] > losses[2], losses  # the model kept its state between cells
    run_ok(kernel, S + "sd = model.module.state_dict()\nNone")
    value, _ = run_ok(kernel, "%pytorch_elastic_session pull sd --all\n"
                              "import torch\nsorted(sd), all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])")
    assert value == "([0, 1], True)"


def test_exception_fails_the_cell_and_keeps_the_state(kernel):
    before, _ = run_ok(kernel, S + "float(model.module.bias)")
    code = S + "import os\ndef inner():\n    raise ValueError('boom on rank one')\nif os.environ['RANK'] == '1':\n" \
               "    inner()\n"
    content, msgs = kernel.run(code)
    assert content["status"] == "error" and content["ename"] == "SessionCellFailed", content
    tb = "\n".join(content["traceback"])
    assert tb.startswith("rank 1 raised ValueError: boom on rank one (the session's ranks keep their state)")
    assert 'File "<pytorch_elastic cell>", line 4, in inner' in tb and "rank.py" not in tb
    after, _ = run_ok(kernel, S + "dist.barrier()\nfloat(model.module.bias)")
    assert after == before


def test_fd_level_and_subprocess_output_reaches_the_cell_in_order(kernel):
    content, msgs = kernel.run(S + "import os, subprocess, sys\nprint('py-a')\nos.write(1, b'fd-b\\n')\n"
                               "subprocess.run(['echo', 'sub-c'])\nprint('py-d')\n"
                               "subprocess.run('echo err-e >&2', shell=True)\n"
                               "import ctypes\nctypes.CDLL(None).printf(b'printf-f\\n')\nNone")
    assert content["status"] == "ok", content
    out, err = stream_text(msgs), stream_text(msgs, "stderr")
    assert "[rank0] err-e" in err and "[rank1] err-e" in err, err
    for r in (0, 1):
        lines = [line for line in out.splitlines() if line.startswith(f"[rank{r}] ")]
        assert lines == [f"[rank{r}] {t}" for t in ("py-a", "fd-b", "sub-c", "py-d", "printf-f")], out
    content, msgs = kernel.run(S + "None")
    assert "err-e" not in stream_text(msgs)  # every line came with its own cell


def test_interrupt_during_sleep_keeps_the_session(kernel):
    msg_id = submit_and_wait_for(kernel, S + "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n",
                                 "] sleeping")
    t = time.monotonic()
    kernel.km.interrupt_kernel()
    content, msgs = kernel.collect(msg_id, timeout=30)
    assert time.monotonic() - t < 5
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt", content
    assert "idle with their state" in stream_text(msgs)
    value, _ = run_ok(kernel, S + "isinstance(train(1), float)")
    assert value == "True"


def test_timeout_on_a_session_cell_names_the_unfinished_ranks(kernel):
    content, _ = kernel.run("%%pytorch_elastic --session --timeout 1\nimport time\n"
                            "if dist.get_rank() == 1:\n    time.sleep(30)\n")
    assert content["status"] == "error" and content["ename"] == "SessionTimeout", content
    assert content["traceback"][0].startswith("timeout=1 s passed; ranks 1 had not finished")
    assert run_ok(kernel, S + "dist.get_rank()")[0] == "0"


def test_interrupt_in_a_collective_escalates_and_restart_works(kernel):
    pids = rank_pids(kernel)
    code = S + "import time\nprint('in', flush=True)\nif dist.get_rank() == 0:\n    dist.barrier()\n" \
               "else:\n    time.sleep(60)\n"
    msg_id = submit_and_wait_for(kernel, code, "] in")
    kernel.km.interrupt_kernel()
    content, msgs = kernel.collect(msg_id, timeout=30)
    assert content["status"] == "error" and content["ename"] == "SessionBroken", content
    assert "rank 0 did not leave the cell" in content["traceback"][0]
    assert not alive(pids, 2.0), "rank processes left 2 s after the escalation"
    content, _ = kernel.run(S + "1")
    assert content["ename"] == "SessionBroken" and len(content["traceback"]) == 1
    assert "restart" in content["traceback"][0]
    _, out = run_ok(kernel, "%pytorch_elastic_session restart")
    assert "state (names) is lost" in out
    assert run_ok(kernel, S + "'model' in globals()")[0] == "False"


def test_rank_exit_3_breaks_the_session_naming_it_and_restart_works(kernel):
    content, _ = kernel.run(S + "import os, time\nif os.environ['RANK'] == '1':\n    os._exit(3)\ntime.sleep(30)\n")
    assert content["status"] == "error" and content["ename"] == "SessionBroken", content
    assert content["traceback"][0].startswith("rank 1 died (exit 3) during the cell")
    content, _ = kernel.run(S + "1")
    assert content["traceback"] == ["the session is broken (rank 1 died (exit 3)): run %pytorch_elastic_session "
                                    "restart (the ranks' state is lost)"]
    _, out = run_ok(kernel, "%pytorch_elastic_session restart --grace 0.5")
    assert "restarted" in out and "2 ranks" in out
    _, out = run_ok(kernel, "%pytorch_elastic_session status")
    assert "interrupt grace 0.5 s" in out and re.search(r"rank 1  pid \d+  idle  RSS \d+\.\d MB", out), out
    content, _ = kernel.run("%pytorch_elastic_session start")
    assert content["status"] == "error" and "already running" in content["traceback"][0]
    content, _ = kernel.run("%pytorch_elastic_session start --grace -1")
    assert content["status"] == "error" and len(content["traceback"]) == 1, content
    assert content["traceback"][0].startswith("UsageError: --grace -1 is not accepted"), content


def test_kernel_shutdown_with_a_live_session_leaves_nothing(kernel):
    pids = rank_pids(kernel)
    assert len(pids) == 2 and not set(pids) & {kernel.pid}
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=False)
    assert not alive(pids, 5.0), "rank processes left after the kernel shut down"
