"""Offline check of a PyTorchJob manifest: what a cluster with the training operator v1.9 would refuse.

``validate(manifest) -> [".json.path: message", ...]`` (empty: accepted). Two parts:

- the schema: the CRD's ``openAPIV3Schema`` (``crds/kubeflow.org_pytorchjobs.v1.9.4.yaml``) checked with
  jsonschema, made strict as ``kubectl`` (``fieldValidation=Strict``) makes the API server: an unknown
  field is an error wherever the schema lists ``properties`` and neither allows others nor says
  ``x-kubernetes-preserve-unknown-fields``;
- the operator: the rules of its validating webhook and defaulter that the schema does not carry
  (replica types, the ``pytorch`` container and its image, Master/Worker replicas, elasticPolicy,
  ``nprocPerNode``, restart policies), see :data:`RULES`.

``python validate.py FILE.yaml|FILE.json`` prints the errors; exit status 1 when there are some.
"""
from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Iterator, Tuple

CRD = Path(__file__).resolve().parent / "crds" / "kubeflow.org_pytorchjobs.v1.9.4.yaml"
REPLICA_TYPES = ("Master", "Worker")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
RDZV_BACKENDS = ("c10d", "etcd", "etcd-v2")  # what torchrun's PET_RDZV_BACKEND accepts from the operator
NPROC_WORDS = ("auto", "cpu", "gpu")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Problem = Tuple[str, str]  # (json path, message)


@functools.lru_cache(maxsize=None)
def schema(version: str = "v1") -> dict:
    """The CRD's strict openAPIV3Schema (parsed once: the CRD is 640 KB of YAML)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(CRD.read_text(), Loader=loader)
    found = [v for v in crd["spec"]["versions"] if v["name"] == version]
    if not found:
        raise KeyError(f"{CRD.name} has no version {version}")
    return strict(found[0]["schema"]["openAPIV3Schema"])


def strict(node):
    """A copy of the schema ``node`` where every object that lists its properties rejects other keys."""
    if isinstance(node, list):
        return [strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items()}
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _path(parts) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts) or "."


def schema_problems(doc: dict) -> list:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [(_path(e.absolute_path), e.message) for e in errors]


# -- the operator's rules -------------------------------------------------------------------------
def _name(doc: dict) -> Iterator[Problem]:
    md = doc.get("metadata") or {}
    name = md.get("name")
    if name is None and md.get("generateName"):
        return  # the server completes it
    if not isinstance(name, str) or not DNS1035.match(name) or len(name) > 63:
        yield ".metadata.name", f"{name!r} is not a DNS-1035 label (lower case, starts with a letter, at most 63)"


def _type(doc: dict) -> Iterator[Problem]:
    if doc.get("apiVersion") != "kubeflow.org/v1":
        yield ".apiVersion", f"expected 'kubeflow.org/v1', got {doc.get('apiVersion')!r}"
    if doc.get("kind") != "PyTorchJob":
        yield ".kind", f"expected 'PyTorchJob', got {doc.get('kind')!r}"


def _canonical(rtype: str) -> str:
    """The defaulter title-cases the replica type keys (``worker`` -> ``Worker``) before the webhook runs."""
    return rtype.title() if rtype.lower() in ("master", "worker") else rtype


def _replicas(doc: dict) -> Iterator[Problem]:
    rspecs = (doc.get("spec") or {}).get("pytorchReplicaSpecs")
    if not isinstance(rspecs, dict) or not rspecs:
        yield ".spec.pytorchReplicaSpecs", "must be specified (Master and/or Worker)"
        return
    for rtype, rs in rspecs.items():
        base, rs = f".spec.pytorchReplicaSpecs.{rtype}", rs or {}
        kind = _canonical(rtype)
        if kind not in REPLICA_TYPES:
            yield base, f"unsupported replica type {rtype!r}; supported: {', '.join(REPLICA_TYPES)}"
        containers = ((rs.get("template") or {}).get("spec") or {}).get("containers") or []
        cpath = f"{base}.template.spec.containers"
        if not containers:
            yield cpath, "must be specified"
        elif not any(c.get("name") == "pytorch" for c in containers):
            yield cpath, "must have a container named 'pytorch' (the operator configures only that one)"
        for i, c in enumerate(containers):
            if not c.get("image"):
                yield f"{cpath}[{i}].image", "must be specified"
        replicas = rs.get("replicas")
        if kind == "Master" and replicas is not None and replicas != 1:
            yield f"{base}.replicas", f"must be 1 for Master, got {replicas!r}"
        if kind == "Worker" and isinstance(replicas, int) and replicas < 1:
            yield f"{base}.replicas", f"must be at least 1, got {replicas!r}"
        policy = rs.get("restartPolicy")
        if policy is not None and policy not in RESTART_POLICIES:
            yield f"{base}.restartPolicy", f"{policy!r} is not one of {', '.join(RESTART_POLICIES)}"


def _elastic(doc: dict) -> Iterator[Problem]:
    spec = doc.get("spec") or {}
    ep = spec.get("elasticPolicy")
    if not isinstance(ep, dict):
        return
    base = ".spec.elasticPolicy"
    workers = {_canonical(k): v for k, v in (spec.get("pytorchReplicaSpecs") or {}).items()}.get("Worker")
    if workers is None:
        yield ".spec.pytorchReplicaSpecs.Worker", "must be configured if elastic policy is used"
    if ep.get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
        yield f"{base}.nProcPerNode", "must not be used with spec.nprocPerNode"
    lo, hi = ep.get("minReplicas"), ep.get("maxReplicas")
    ints = isinstance(lo, int), isinstance(hi, int)
    if ints[0] and lo < 1:
        yield f"{base}.minReplicas", f"must be at least 1, got {lo}"
    if all(ints) and hi < lo:
        yield f"{base}.maxReplicas", f"cannot be smaller than minReplicas ({hi} < {lo})"
    n = (workers or {}).get("replicas")
    if isinstance(n, int) and all(ints) and lo <= hi and not lo <= n <= hi:
        yield ".spec.pytorchReplicaSpecs.Worker.replicas", f"{n} is outside elasticPolicy's {lo}..{hi}"
    backend = ep.get("rdzvBackend")
    if backend is not None and backend not in RDZV_BACKENDS:
        yield f"{base}.rdzvBackend", f"{backend!r} is not one of {', '.join(RDZV_BACKENDS)}"


def _nproc(doc: dict) -> Iterator[Problem]:
    value = (doc.get("spec") or {}).get("nprocPerNode")
    if value is None or not isinstance(value, str):
        return  # absent: the defaulter sets "auto"; not a string: the schema says so
    if value not in NPROC_WORDS and not (value.isdigit() and int(value) >= 1):
        yield ".spec.nprocPerNode", f"{value!r} is not one of {', '.join(NPROC_WORDS)} or a number >= 1"


RULES = (_name, _type, _replicas, _elastic, _nproc)


def operator_problems(doc: dict) -> list:
    return [p for rule in RULES for p in rule(doc)]


def validate(doc: dict) -> list:
    """Every problem of the PyTorchJob ``doc`` as ``".json.path: message"``; [] when a cluster would accept it."""
    return [f"{path}: {message}" for path, message in schema_problems(doc) + operator_problems(doc)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python validate.py MANIFEST.yaml|MANIFEST.json", file=sys.stderr)
        return 2
    import yaml

    text = Path(argv[0]).read_text()
    errors = validate(json.loads(text) if argv[0].endswith(".json") else yaml.safe_load(text))
    print("\n".join(errors) or f"{argv[0]}: a valid PyTorchJob")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
