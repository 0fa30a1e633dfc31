"""What the pod of an overridden node runs: ``pyflyte-execute`` with the serialized container args.

The pod imports the task module afresh, so a config that only lived on the task object at
serialization time (the upstream plugin's with_overrides) would be lost there.
"""
import os
import socket
import subprocess
import sys
import textwrap

from flytekit.models.literals import LiteralMap

MODULE = '''
import os

from flytekit import task, workflow
from ptjupyter import Elastic


@task(task_config=Elastic(nnodes=2, nproc_per_node=2))
def where(x: int) -> str:
    return os.environ.get("WORLD_SIZE", "direct") + "-" + str(x)


@task(task_config=Elastic(nnodes=2, nproc_per_node=1, rdzv_configs={"timeout": 8, "join_timeout": 8}))
def two_nodes(x: int) -> str:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([dist.get_rank() + x])
    dist.all_reduce(t)
    return str(dist.get_world_size()) + "-" + str(int(t.item()))


@workflow
def wf(x: int) -> str:
    where(x=x)
    return where(x=x).with_overrides(task_config=Elastic(nnodes=1, nproc_per_node=1))
'''


def run_pod(template, tmp_path, x, env=None, name=None):
    """Run a serialized task template's container command here, as its pod would.

    Returns (exit code, the error message or the output, the string output o0 or None).
    """
    from flyteidl.core import literals_pb2
    from flytekit.core.context_manager import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    args = list(template.k8s_pod.pod_spec["containers"][0]["args"])  # increase_shared_mem: a pod template
    assert args[0] == "pyflyte-execute"
    ctx = FlyteContextManager.current_context()
    inputs = LiteralMap({"x": TypeEngine.to_literal(ctx, x, int, TypeEngine.to_literal_type(int))})
    (tmp_path / "inputs.pb").write_bytes(inputs.to_flyte_idl().SerializeToString())
    out = tmp_path / f"out-{name or template.id.name}"
    out.mkdir()
    subst = {"{{.input}}": str(tmp_path / "inputs.pb"), "{{.outputPrefix}}": str(out),
             "{{.rawOutputDataPrefix}}": str(tmp_path / "raw"), "{{.checkpointOutputPrefix}}": str(tmp_path / "ckpt"),
             "{{.prevCheckpointPrefix}}": ""}
    exe = os.path.join(os.path.dirname(sys.executable), "pyflyte-execute")
    base = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
    env = dict(base, PYTHONPATH=str(tmp_path), FLYTE_INTERNAL_EXECUTION_ID="e1", **(env or {}))
    proc = subprocess.run([exe, *[subst.get(a, a) for a in args[1:]]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    value = None
    if (out / "error.pb").exists():  # pyflyte-execute reports a task's error there and exits 0
        from flyteidl.core import errors_pb2

        error = errors_pb2.ErrorDocument()
        error.ParseFromString((out / "error.pb").read_bytes())
        return proc.returncode, error.error.message, None
    if (out / "outputs.pb").exists():
        outputs = literals_pb2.LiteralMap()
        outputs.ParseFromString((out / "outputs.pb").read_bytes())
        value = outputs.literals["o0"].scalar.primitive.string_value
    return proc.returncode, proc.stdout + proc.stderr, value


def test_the_overridden_node_runs_its_own_config_in_the_pod(tmp_path, wf_spec, monkeypatch):
    (tmp_path / "pod_mod.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import pod_mod

    _, tasks = wf_spec(pod_mod.wf)
    variant = next(t for name, t in tasks.items() if "-cfg" in name)
    code, output, value = run_pod(variant, tmp_path, 3)
    assert code == 0, output[-3000:]
    assert value == "direct-3"  # nnodes=1, one process: a direct call with the node's config

    # the other node keeps the task's nnodes=2: outside a PyTorchJob it fails at once, in words
    code, output, value = run_pod(tasks["pod_mod.where"], tmp_path, 3)
    assert value is None
    assert "nnodes=2 (from Elastic config) asks for 2 nodes" in output


def test_the_pods_of_a_two_node_pytorchjob_meet_in_one_rendezvous(tmp_path, template, monkeypatch):
    """Two pods of a PyTorchJob, played by two pyflyte-execute processes with the operator's PET_* environment."""
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "pod_mod.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import pod_mod

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = template(pod_mod.two_nodes)
    pet = {"PET_NNODES": "2:2", "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}", "PET_RDZV_BACKEND": "c10d"}
    with ThreadPoolExecutor(2) as pool:
        pods = [pool.submit(run_pod, spec, tmp_path, 1, dict(pet, PET_NODE_RANK=str(n)), f"node{n}") for n in (0, 1)]
        (code0, output0, value0), (code1, output1, value1) = [p.result() for p in pods]
    # the rendezvous, not the pod, decides which node holds rank 0: exactly one pod reports the value
    # (world size 2, ranks 0 + 1 + 2 * x); the other ends with IgnoreOutputs and writes no error report
    values = {"node0": value0, "node1": value1}
    winners = [n for n, v in values.items() if v is not None]
    assert len(winners) == 1 and values[winners[0]] == "2-3", (values, output0[-2000:], output1[-2000:])
    loser = "node1" if winners == ["node0"] else "node0"
    assert not (tmp_path / f"out-{loser}" / "error.pb").exists()
