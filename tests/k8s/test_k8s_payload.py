"""Payload: size limit, metadata checked before unpickling, result lines, dry run."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys

import k8s_cells
import pytest

from ptjupyter import Elastic
from ptjupyter.errors import InvalidType, InvalidValue
from ptjupyter.k8s import dry_run, payload
from ptjupyter.k8s.entrypoint import MARK


def _materialise(p: payload.Payload, d) -> str:
    """Write the Secret files as the kubelet would mount them; return the mount dir."""
    for key, path in p.files.items():
        target = d / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if key in p.binary:
            target.write_bytes(base64.b64decode(p.binary[key]))
        else:
            target.write_text(p.data[key])
    return str(d)


def _run_entry(d, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_WORLD_SIZE", "PYTHONPATH")}
    e.update(env or {})
    e["PTJUPYTER_PAYLOAD"] = d
    return subprocess.run([sys.executable, "-I", os.path.join(d, "entrypoint.py")], capture_output=True, text=True,
                          env=e, timeout=60, cwd=d)


def test_payload_over_one_mib_names_the_largest_captured_values():
    blob, small = os.urandom(2 * 1024 * 1024), list(range(10))

    def cell():
        return len(blob) + len(small)

    with pytest.raises(InvalidValue) as e:
        payload.build(cell, {"blob": blob, "small": small})
    msg = str(e.value)
    assert "\n" not in msg and "1.0 MiB" in msg and msg.index("blob (2.0 MiB)") < msg.index("small")


def test_payload_records_versions_and_runs_in_a_bare_python(tmp_path):
    """The entrypoint needs no ptjupyter and brings its own cloudpickle (python -I: no site, no user paths)."""
    p = payload.build(k8s_cells.hello, {"x": 1})
    meta = json.loads(p.data["meta.json"])
    import platform

    import cloudpickle

    assert meta["format"] == payload.FORMAT and meta["python"] == platform.python_version()
    assert meta["cloudpickle"] == cloudpickle.__version__ and meta["nonce"] == p.nonce and meta["shipped"] == {"x": 5}
    assert meta["sha256"] == hashlib.sha256(base64.b64decode(p.binary["payload.pkl"])).hexdigest()
    d = _materialise(p, tmp_path)
    r = _run_entry(d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:3] == ["hello 0", "hello 1", "hello 2"] and "to stderr" in r.stderr
    marks = [line for line in r.stdout.splitlines() if line.startswith(MARK)]
    assert len(marks) == 1 and marks[0].split()[1] == p.nonce and marks[0].split()[2] == "1/1"
    assert cloudpickle.loads(base64.b64decode(marks[0].split()[3])) == {"answer": 42, "pid": True}


def test_other_python_minor_fails_with_a_clear_message(tmp_path):
    p = payload.build(k8s_cells.hello)
    meta = json.loads(p.data["meta.json"])
    meta["python"] = "3.99.0"
    p.data["meta.json"] = json.dumps(meta)
    r = _run_entry(_materialise(p, tmp_path))
    assert r.returncode == 3
    assert "pickled by Python 3.99.0 but this image runs Python" in r.stderr and "use an image with Python 3.99" in r.stderr
    assert "hello" not in r.stdout  # nothing was unpickled


@pytest.mark.parametrize("change,needle", [("format", "payload format 99 is not readable"),
                                           ("sha256", "does not match its checksum")])
def test_payload_is_checked_before_unpickling(tmp_path, change, needle):
    p = payload.build(k8s_cells.hello)
    meta = json.loads(p.data["meta.json"])
    meta[change] = 99 if change == "format" else "0" * 64
    p.data["meta.json"] = json.dumps(meta)
    r = _run_entry(_materialise(p, tmp_path))
    assert r.returncode == 3 and needle in r.stderr and "hello" not in r.stdout


def test_large_result_is_reported_not_sent(tmp_path):
    p = payload.build(k8s_cells.big_result)
    r = _run_entry(_materialise(p, tmp_path))
    assert r.returncode == 0 and f"{MARK} {p.nonce} too-large" in r.stdout


def test_failing_cell_prints_its_traceback_and_exits_1(tmp_path):
    def cell():
        raise KeyError("missing-key")

    r = _run_entry(_materialise(payload.build(cell), tmp_path))
    assert r.returncode == 1 and "[ptjupyter] rank 0 failed:" in r.stderr and "KeyError: 'missing-key'" in r.stderr


def test_dry_run_sends_nothing(fake, plan_for, no_kubeconfig):
    import yaml

    text = dry_run(plan_for(Elastic(nnodes=2), job_name="ptj-dry"), k8s_cells.hello, {"weights": b"x" * 2048})
    assert fake.requests == []
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs[0]["kind"] == "PyTorchJob" and docs[0]["metadata"]["name"] == "ptj-dry"
    assert docs[1]["kind"] == "Secret" and docs[1]["type"] == "Opaque" and "data" not in docs[1] and docs[1]["metadata"]["name"] == "ptj-dry-payload"
    assert "# shipped: weights (2.0 KiB)" in text and "# payload: " in text and "nothing was sent" in text


def test_dry_run_with_no_namespace_says_the_kubeconfig_context_decides(fake, plan_for, no_kubeconfig):
    import yaml

    text = dry_run(plan_for(Elastic(nnodes=2), job_name="ptj-dry"), k8s_cells.hello)
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert "namespace" not in docs[0]["metadata"] and "namespace" not in docs[1]["metadata"]
    assert "# namespace: none given, so the kubeconfig context's" in text
    text = dry_run(plan_for(Elastic(nnodes=2), job_name="ptj-dry", namespace="default"), k8s_cells.hello)
    assert [d for d in yaml.safe_load_all(text) if d][0]["metadata"]["namespace"] == "default"
    assert "none given" not in text and fake.requests == []


def test_a_cell_that_cannot_be_pickled_is_an_invalid_type():
    import threading

    lock = threading.Lock()
    with pytest.raises(InvalidType) as e:
        payload.build(lambda: lock)
    assert str(e.value).startswith("the cell function cannot be pickled for the pods: TypeError")
    with pytest.raises(InvalidType, match="fn=3 is not accepted"):
        payload.build(3)
