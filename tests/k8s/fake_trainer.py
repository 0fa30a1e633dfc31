"""The fake Kubeflow Trainer v2 controller (+ JobSet + Job controllers, + a fake Kueue) of fake_k8s.FakeK8s.

What it does with a TrainJob, as trainer v2.3 / jobset v0.12 do (see crds/SOURCES.md for the facts):
- admission: the strict CRD schema + webhook rules (validate_trainjob.py), the runtime must exist;
  with ``kueue=True`` a TrainJob labelled ``kueue.x-k8s.io/queue-name`` is created ``spec.suspend: true``;
- suspended: condition ``Suspended=True/Suspended`` and nothing else until :meth:`FakeK8s.admit`;
- a name longer than 48 characters: no JobSet, only a Warning event ``TrainJobResourcesCreationFailed``;
- otherwise a JobSet ``<name>`` (owned by the TrainJob) and pods ``<name>-node-0-<i>-xxxxx`` (owned by the
  JobSet: the Job level in between is left out), hostname ``<name>-node-0-<i>``, subdomain ``<name>``, the
  JobSet/Job labels and the completion index as label and annotation, container ``node`` from the runtime
  with ``trainer.image/command/env/resourcesPerNode`` and the runtimePatches merged in, and the torch
  plugin's ``PET_*`` env in the pod spec (PET_NODE_RANK as the fieldRef). The local processes get
  ``PET_MASTER_ADDR=127.0.0.1`` and a free port instead of ``<name>-node-0-0.<name>:29500``: the pod network;
- conditions: ``Complete=True/AllJobsCompleted`` when every pod succeeded, ``Failed=True/FailedJobs`` when
  one failed (no failurePolicy in torch-distributed); ``jobsStatus[node].active`` while pods run.
"""
from __future__ import annotations

import copy
import secrets

GROUP = "trainer.kubeflow.org"
RESERVED_LIMIT = 48
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"


def _by_name(items: list, patch: list) -> list:
    out = [copy.deepcopy(x) for x in items]
    for p in patch or []:
        old = next((x for x in out if x.get("name") == p.get("name")), None)
        if old is None:
            out.append(copy.deepcopy(p))
        else:
            for k, v in p.items():
                if isinstance(v, list) and isinstance(old.get(k), list):
                    old[k] = _by_name(old[k], v) if all(isinstance(i, dict) and "name" in i for i in v) else old[k] + v
                elif isinstance(v, dict) and isinstance(old.get(k), dict):
                    old[k] = {**old[k], **v}
                else:
                    old[k] = copy.deepcopy(v)
    return out


def pod_template(runtime: dict, job: dict) -> dict:
    """The runtime's ``node`` pod template with the TrainJob's trainer fields and runtimePatches applied."""
    rjob = next(r for r in runtime["spec"]["template"]["spec"]["replicatedJobs"] if r["name"] == "node")
    tmpl = copy.deepcopy(rjob["template"]["spec"]["template"])
    tmpl.setdefault("metadata", {})
    spec = tmpl["spec"]
    for patch in job["spec"].get("runtimePatches") or []:
        for prj in patch["trainingRuntimeSpec"]["template"]["spec"].get("replicatedJobs") or []:
            if prj["name"] != "node":
                continue
            ptmpl = prj["template"]["spec"]["template"]
            for k in ("labels", "annotations"):
                tmpl["metadata"][k] = {**(tmpl["metadata"].get(k) or {}), **((ptmpl.get("metadata") or {}).get(k) or {})}
            for k, v in (ptmpl.get("spec") or {}).items():
                spec[k] = _by_name(spec.get(k) or [], v) if isinstance(v, list) and k in (
                    "containers", "volumes", "initContainers") else copy.deepcopy(v)
    trainer = job["spec"].get("trainer") or {}
    node = next(c for c in spec["containers"] if c["name"] == "node")
    for k in ("image", "command", "args"):
        if trainer.get(k):
            node[k] = trainer[k]
    if trainer.get("env"):
        node["env"] = _by_name(node.get("env") or [], trainer["env"])
    if trainer.get("resourcesPerNode"):
        node["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
    node.setdefault("ports", []).append({"containerPort": 29500})
    spec.setdefault("restartPolicy", "OnFailure")
    return tmpl


def nproc(job: dict, node: dict) -> str:
    n = (job["spec"].get("trainer") or {}).get("numProcPerNode")
    if n is not None:
        return str(n)
    res = node.get("resources") or {}
    if any("gpu" in k for part in res.values() for k in part):
        return "auto"
    cpu = str((res.get("requests") or {}).get("cpu") or (res.get("limits") or {}).get("cpu") or "0")
    return str(max(1, int(float(cpu)) if cpu.replace(".", "").isdigit() else 0))


async def admission(fake, ns: str, body: dict):
    """None (accepted; may set spec.suspend for Kueue) or (status, message, causes)."""
    spec = body.get("spec") or {}
    ref = spec.get("runtimeRef") or {}
    kind = ref.get("kind", "ClusterTrainingRuntime")
    key = ("clustertrainingruntimes", "", ref.get("name")) if kind == "ClusterTrainingRuntime" else (
        "trainingruntimes", ns, ref.get("name"))
    runtime = fake.objects.get(key)
    errs = fake.validate_trainjob(body, runtime) if fake.validate_trainjob is not None and runtime else []
    if runtime is None:
        errs = [f".spec.runtimeRef: specified {kind[0].lower() + kind[1:]} must be created before the TrainJob is created"]
    if errs:
        return 422, errs
    if fake.kueue and LABEL_QUEUE in ((body.get("metadata") or {}).get("labels") or {}):
        spec["suspend"] = True
    return None


async def operate(fake, ns: str, name: str) -> None:
    job = fake.objects.get(("trainjobs", ns, name))
    if job is None:
        return
    if job["spec"].get("suspend"):
        await fake._set_conditions("trainjobs", ns, name, [{"type": "Suspended", "reason": "Suspended",
                                                             "message": "TrainJob is suspended"}])
        return
    if len(name) > RESERVED_LIMIT:
        await fake._event(ns, job, "TrainJobResourcesCreationFailed",
                          f'JobSet.jobset.x-k8s.io "{name}" is invalid: spec.replicatedJobs[0].name: pod names would '
                          "exceed 63 characters", "Warning")
        return
    ref = job["spec"]["runtimeRef"]
    runtime = fake.objects[("clustertrainingruntimes", "", ref["name"]) if ref.get("kind", "ClusterTrainingRuntime")
                           == "ClusterTrainingRuntime" else ("trainingruntimes", ns, ref["name"])]
    owner = {"apiVersion": job["apiVersion"], "kind": "TrainJob", "name": name, "uid": job["metadata"]["uid"],
             "controller": True, "blockOwnerDeletion": True}
    tmpl = pod_template(runtime, job)
    js = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
          "metadata": {"name": name, "namespace": ns, "ownerReferences": [owner]},
          "spec": {"replicatedJobs": [{"name": "node", "replicas": 1}], "suspend": False}}
    await fake._create("jobsets", ns, js)
    js = fake.objects[("jobsets", ns, name)]
    js_owner = {"apiVersion": js["apiVersion"], "kind": "JobSet", "name": name, "uid": js["metadata"]["uid"],
                "controller": True, "blockOwnerDeletion": True}
    trainer = job["spec"].get("trainer") or {}
    n = int(trainer.get("numNodes") or runtime["spec"].get("mlPolicy", {}).get("numNodes", 1))
    node = next(c for c in tmpl["spec"]["containers"] if c["name"] == "node")
    pet = [{"name": "PET_NNODES", "value": str(n)}, {"name": "PET_NPROC_PER_NODE", "value": nproc(job, node)},
           {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
           {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"}, {"name": "PET_MASTER_PORT", "value": "29500"}]
    node["env"] = _by_name(node.get("env") or [], pet)
    port = fake_free_port()
    await fake._patch(("trainjobs", ns, name), {"status": {"jobsStatus": [
        {"name": "node", "active": 1, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}]}})
    for i in range(n):
        labels = {**(tmpl["metadata"].get("labels") or {}),
                  "jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/jobset-uid": js["metadata"]["uid"],
                  "jobset.sigs.k8s.io/replicatedjob-name": "node", "jobset.sigs.k8s.io/job-index": "0",
                  "jobset.sigs.k8s.io/job-global-index": "0", "jobset.sigs.k8s.io/replicatedjob-replicas": "1",
                  "jobset.sigs.k8s.io/restart-attempt": "0", "jobset.sigs.k8s.io/group-name": "default",
                  "batch.kubernetes.io/job-completion-index": str(i), "batch.kubernetes.io/job-name": f"{name}-node-0",
                  "job-name": f"{name}-node-0"}
        pod_tmpl = copy.deepcopy(tmpl)
        pod_tmpl["metadata"]["annotations"] = {**(pod_tmpl["metadata"].get("annotations") or {}),
                                               "batch.kubernetes.io/job-completion-index": str(i)}
        pod_tmpl["spec"].update(hostname=f"{name}-node-0-{i}", subdomain=name)
        local = {"PET_NODE_RANK": str(i), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
        await fake._start_pod(ns, f"{name}-node-0-{i}-{secrets.token_hex(3)[:5]}", labels, pod_tmpl, local, js_owner,
                              ("trainjobs", name))


def fake_free_port() -> int:
    from fake_k8s import free_port

    return free_port()


async def progress(fake, ns: str, name: str, phases: list) -> None:
    if any(ph == "Failed" for ph in phases):
        await fake._set_conditions("trainjobs", ns, name, [{
            "type": "Failed", "reason": "FailedJobs",
            "message": f"jobset failed due to one or more job failures: first failed job: {name}-node-0"}],
            {"jobsStatus": [{"name": "node", "active": 0, "ready": 0, "succeeded": 0, "failed": 1, "suspended": 0}]})
    elif phases and all(ph == "Succeeded" for ph in phases):
        await fake._set_conditions("trainjobs", ns, name, [{"type": "Complete", "reason": "AllJobsCompleted",
                                                             "message": "jobset completed successfully"}],
                                   {"jobsStatus": [{"name": "node", "active": 0, "ready": 0, "succeeded": 1,
                                                    "failed": 0, "suspended": 0}]})


async def admit(fake, ns: str, name: str) -> None:
    """Kueue admits the workload: unsuspend; the Trainer says Resumed and builds the JobSet."""
    await fake._patch(("trainjobs", ns, name), {"spec": {"suspend": False}})
    await fake._set_conditions("trainjobs", ns, name, [{"type": "Suspended", "status": "False", "reason": "Resumed",
                                                         "message": "TrainJob is resumed"}])
    await operate(fake, ns, name)
