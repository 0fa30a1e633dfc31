"""The payload travels in a Secret (Opaque, base64 ``data``) owned by the job: never a ConfigMap, gone with the job,
and a dry run lists its keys with sizes, never their values."""
from __future__ import annotations

import base64
import json
import time

import k8s_cells

from ptjupyter import Elastic
from ptjupyter.k8s import dry_run, jobs, run

FAST = dict(monitor_interval=0.5)


def _wait_pod(fake, prefix):
    deadline = time.monotonic() + 20
    while not any(n.startswith(prefix) for n in fake.names("pods")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return next(n for n in fake.names("pods") if n.startswith(prefix))


def test_payload_is_an_opaque_secret_owned_by_the_job_and_owner_gc_removes_it(fake, api, plan_for):
    ref = run(plan_for(Elastic(nnodes=2, **FAST), job_name="ptj-sec"), k8s_cells.slow(200), api_client=api,
              detach=True, out=lambda s: None)
    sec = fake.get("secrets", "ptj-sec-payload")
    job = fake.get("pytorchjobs", "ptj-sec")
    assert sec["kind"] == "Secret" and sec["type"] == "Opaque" and fake.names("configmaps") == []
    assert "binaryData" not in sec and "stringData" not in sec
    meta = json.loads(base64.b64decode(sec["data"]["meta.json"]))
    assert meta["nonce"] == ref.nonce and base64.b64decode(sec["data"]["payload.pkl"])
    owner = sec["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("PyTorchJob", "ptj-sec", job["metadata"]["uid"])
    vol = {v["name"]: v for v in job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"]}
    assert vol["ptjupyter-payload"]["secret"]["secretName"] == "ptj-sec-payload"
    pod = _wait_pod(fake, "ptj-sec-")
    # deleted from elsewhere (kubectl delete pytorchjob): the owner GC takes the Secret and the pods along
    fake.call(fake._delete, ("pytorchjobs", "default", "ptj-sec"))
    assert fake.names("secrets") == [] and fake.names("pods") == [] and not fake.proc_alive(pod)


def test_cancel_deletes_the_payload_secret_even_without_its_owner_reference(fake, api, plan_for):
    fake.fail("PATCH", r"/secrets/ptj-orphan-payload$", 500, times=100)  # the ownerReference never lands
    out = []
    run(plan_for(Elastic(), job_name="ptj-orphan"), k8s_cells.slow(200), api_client=api, detach=True, out=out.append)
    assert any("payload Secret ptj-orphan-payload could not be tied to the job" in line for line in out)
    assert "ownerReferences" not in fake.get("secrets", "ptj-orphan-payload")["metadata"]
    _wait_pod(fake, "ptj-orphan-")
    jobs.main("cancel ptj-orphan", out=out.append, api_client=api)
    assert out[-1] == "[ptjupyter] cancelled default/ptj-orphan: job, pods and payload Secret deleted"
    assert fake.names("secrets") == [] and fake.names("jobs") == [] and fake.names("pods") == []


def test_dry_run_lists_names_and_sizes_of_the_secret_never_its_data(fake, plan_for, no_kubeconfig):
    import yaml

    token = "hf_" + "Q" * 37  # a credential a cell might capture
    shipped = {"api_token": token}
    plan = plan_for(Elastic(nnodes=2), job_name="ptj-dry")
    text = dry_run(plan, lambda: len(token), shipped)
    assert fake.requests == []
    docs = [d for d in yaml.safe_load_all(text) if d]
    sec = docs[1]
    assert sec["kind"] == "Secret" and sec["type"] == "Opaque" and sec["metadata"]["name"] == "ptj-dry-payload"
    assert "data" not in sec and "stringData" not in sec and "binaryData" not in sec
    assert "# data: names and sizes only" in text
    for key in ("meta.json", "entrypoint.py", "payload.pkl", "lib.cloudpickle.__init__.py"):
        assert any(line.startswith(f"#   {key}: ") and line.rstrip().endswith(("B", "KiB")) for line in text.splitlines())
    assert "# shipped: api_token (" in text and "of the 1.0 MiB Secret limit" in text
    assert token not in text and base64.b64encode(token.encode()).decode()[:20] not in text
    from ptjupyter.k8s.submit import prepare

    _, manifest, _ = prepare(plan, lambda: len(token), shipped, name="ptj-dry")
    for value in manifest["data"].values():  # what would be sent: every value base64, none printed
        assert value not in text
