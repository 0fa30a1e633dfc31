"""Offline check of a TrainJob manifest: what a cluster with Kubeflow Trainer v2 (v2.3) would refuse.

``validate(manifest, runtime=None) -> [".json.path: message", ...]`` (empty: accepted):

- the schema: ``crds/trainer.kubeflow.org_trainjobs.yaml`` (kubeflow/trainer manifests/base/crds, controller-gen
  v0.21.0) made strict like validate.py does for the PyTorchJob (unknown fields rejected);
- the CEL rules that matter for a create (name, ``numProcPerNode >= 1``, ``managedBy``), and the Trainer
  webhook's rules (trainer: pkg/runtime/framework/plugins/{torch/torch.go,jobset/jobset.go} ``Validate``):
  reserved ``PET_*`` env with a torch runtime, ``runtimePatches[].manager`` a domain-prefixed path, replicated
  job and container names that exist in the runtime, no ``env`` on container ``node`` in a patch.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

from validate import _path, strict

HERE = Path(__file__).resolve().parent / "crds"
CRD = HERE / "trainer.kubeflow.org_trainjobs.yaml"
RUNTIME = HERE / "torch_distributed.yaml"
RESERVED = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MANAGER = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[-a-zA-Z0-9_./]+$")
NO_ENV = ("node", "dataset-initializer", "model-initializer")


def _load(path: Path) -> dict:
    import yaml

    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.lru_cache(maxsize=None)
def schema() -> dict:
    crd = _load(CRD)
    return strict(next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"])


@functools.lru_cache(maxsize=None)
def torch_distributed() -> dict:
    return _load(RUNTIME)


def schema_problems(doc: dict) -> list:
    import jsonschema

    errors = sorted(jsonschema.Draft7Validator(schema()).iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [(_path(e.absolute_path), e.message) for e in errors]


def webhook_problems(doc: dict, runtime: dict) -> list:
    out = []
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not NAME.match(name) or len(name) > 63:
        out.append((".metadata.name", f"{name!r} must match ^[a-z]([-a-z0-9]*[a-z0-9])?$, at most 63 characters"))
    spec = doc.get("spec") or {}
    trainer = spec.get("trainer") or {}
    if isinstance(trainer.get("numProcPerNode"), int) and trainer["numProcPerNode"] < 1:
        out.append((".spec.trainer.numProcPerNode", "must be at least 1"))
    if spec.get("managedBy", "trainer.kubeflow.org/trainjob-controller") not in (
            "trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue"):
        out.append((".spec.managedBy", f"{spec['managedBy']!r} is not an accepted manager"))
    if "torch" in ((runtime.get("spec") or {}).get("mlPolicy") or {}):
        bad = [e.get("name") for e in trainer.get("env") or [] if e.get("name") in RESERVED]
        if bad:
            out.append((".spec.trainer.env", f"must not have reserved envs, invalid envs configured: {bad}"))
    rjobs = {rj["name"]: rj for rj in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    for i, patch in enumerate(spec.get("runtimePatches") or []):
        base = f".spec.runtimePatches[{i}]"
        if not MANAGER.match(str(patch.get("manager", ""))):
            out.append((f"{base}.manager", f"{patch.get('manager')!r} must be a domain-prefixed path (example.com/tool)"))
        tmpl = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for j, rj in enumerate(tmpl.get("replicatedJobs") or []):
            where = f"{base}.trainingRuntimeSpec.template.spec.replicatedJobs[{j}]"
            if rj.get("name") not in rjobs:
                out.append((f"{where}.name", f"{rj.get('name')!r} is not a replicated job of the runtime"))
                continue
            have = {c["name"] for c in rjobs[rj["name"]]["template"]["spec"]["template"]["spec"]["containers"]}
            pod = (((rj.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for k, c in enumerate(pod.get("containers") or []):
                if c.get("name") not in have:
                    out.append((f"{where}...containers[{k}].name", f"{c.get('name')!r} is not a container of the runtime"))
                if c.get("name") in NO_ENV and c.get("env"):
                    out.append((f"{where}...containers[{k}].env", "must not be set for this container; use trainer.env"))
    return out


def validate(doc: dict, runtime: dict = None) -> list:
    """Every problem of the TrainJob ``doc`` as ``".json.path: message"``; [] when the cluster would accept it."""
    runtime = runtime or torch_distributed()
    return [f"{p}: {m}" for p, m in schema_problems(doc) + webhook_problems(doc, runtime)]
