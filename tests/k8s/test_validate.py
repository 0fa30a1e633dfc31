"""validate.py itself: a good manifest passes; each rule rejects its bad manifest with a message naming the field."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import validate as v

GOOD = {
    "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
    "metadata": {"name": "good-elastic", "labels": {"team": "ml"}},
    "spec": {
        "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 2},
        "elasticPolicy": {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 4, "maxRestarts": 1},
        "nprocPerNode": "2",
        "pytorchReplicaSpecs": {"Worker": {"replicas": 4, "restartPolicy": "Never", "template": {
            "metadata": {"labels": {"team": "ml"}},
            "spec": {"containers": [{"name": "pytorch", "image": "img:1", "command": ["torchrun", "x.py"],
                                     "ports": [{"containerPort": 23456, "name": "pytorchjob-port"}],
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                     "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}]}}}}},
}
MASTER_WORKER = {
    "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "mw"},
    "spec": {"pytorchReplicaSpecs": {
        role: {"replicas": n, "restartPolicy": "OnFailure",
               "template": {"spec": {"containers": [{"name": "pytorch", "image": "img:1"}]}}}
        for role, n in (("Master", 1), ("Worker", 3))}},
}
W = ("spec", "pytorchReplicaSpecs", "Worker")
C0 = W + ("template", "spec", "containers", 0)


def changed(base, path, value):
    """A deep copy of ``base`` with the key at ``path`` set to ``value`` (``DELETE``: removed)."""
    doc = copy.deepcopy(base)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


DELETE = object()


def test_good_manifests_pass():
    assert v.validate(GOOD) == [] and v.validate(MASTER_WORKER) == []


def test_the_schema_is_strict_where_it_lists_properties_and_open_where_it_preserves_unknown_fields():
    s = v.schema()
    spec = s["properties"]["spec"]
    assert spec["additionalProperties"] is False
    assert v.strict({"type": "object", "properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True}) == \
        {"type": "object", "properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True}
    assert v.strict({"properties": {"a": {"properties": {"b": {}}}}})["properties"]["a"]["additionalProperties"] is False
    assert v.strict({"additionalProperties": {"type": "string"}, "properties": {}})["additionalProperties"] == \
        {"type": "string"}


BAD = [  # (what, base, path, value, the field named in the message, words of the message)
    ("unknown spec field", GOOD, ("spec", "nprocsPerNode"), "2", ".spec:", "'nprocsPerNode' was unexpected"),
    ("unknown container field", GOOD, C0 + ("imagePolicy",), "Always", ".spec.pytorchReplicaSpecs.Worker.template.spec.containers[0]:", "'imagePolicy' was unexpected"),
    ("schema type", GOOD, ("spec", "elasticPolicy", "minReplicas"), "two", ".spec.elasticPolicy.minReplicas:", "not of type 'integer'"),
    ("port type", GOOD, C0 + ("ports", 0, "containerPort"), "23456", "containerPort:", "not of type 'integer'"),
    ("replica specs required", MASTER_WORKER, ("spec", "pytorchReplicaSpecs"), DELETE, ".spec:",
     "'pytorchReplicaSpecs' is a required property"),
    ("name", GOOD, ("metadata", "name"), "Bad_Name", ".metadata.name:", "DNS-1035"),
    ("long name", GOOD, ("metadata", "name"), "a" * 64, ".metadata.name:", "DNS-1035"),
    ("apiVersion", GOOD, ("apiVersion",), "kubeflow.org/v2", ".apiVersion:", "expected 'kubeflow.org/v1'"),
    ("kind", GOOD, ("kind",), "TFJob", ".kind:", "expected 'PyTorchJob'"),
    ("replica type", MASTER_WORKER, ("spec", "pytorchReplicaSpecs", "Chief"),
     MASTER_WORKER["spec"]["pytorchReplicaSpecs"]["Worker"], ".spec.pytorchReplicaSpecs.Chief:", "unsupported replica type"),
    ("container name", GOOD, C0 + ("name",), "trainer", ".spec.pytorchReplicaSpecs.Worker.template.spec.containers:", "named 'pytorch'"),
    ("no containers", GOOD, W + ("template", "spec", "containers"), [], "template.spec.containers:", "must be specified"),
    ("image", GOOD, C0 + ("image",), DELETE, "containers[0].image:", "must be specified"),
    ("master replicas", MASTER_WORKER, ("spec", "pytorchReplicaSpecs", "Master", "replicas"), 2,
     ".spec.pytorchReplicaSpecs.Master.replicas:", "must be 1"),
    ("worker replicas", MASTER_WORKER, W + ("replicas",), 0, ".spec.pytorchReplicaSpecs.Worker.replicas:", "at least 1"),
    ("restart policy", GOOD, W + ("restartPolicy",), "Sometimes", ".spec.pytorchReplicaSpecs.Worker.restartPolicy:", "not one of"),
    ("elastic without Worker", changed(GOOD, W, DELETE), ("spec", "pytorchReplicaSpecs", "Master"),
     MASTER_WORKER["spec"]["pytorchReplicaSpecs"]["Master"], ".spec.pytorchReplicaSpecs.Worker:", "elastic policy"),
    ("both nproc fields", GOOD, ("spec", "elasticPolicy", "nProcPerNode"), 2, ".spec.elasticPolicy.nProcPerNode:",
     "must not be used with spec.nprocPerNode"),
    ("min replicas", GOOD, ("spec", "elasticPolicy", "minReplicas"), 0, ".spec.elasticPolicy.minReplicas:", "at least 1"),
    ("max below min", GOOD, ("spec", "elasticPolicy", "maxReplicas"), 1, ".spec.elasticPolicy.maxReplicas:",
     "cannot be smaller than minReplicas"),
    ("replicas outside min..max", GOOD, W + ("replicas",), 5, ".spec.pytorchReplicaSpecs.Worker.replicas:", "outside"),
    ("rdzv backend", GOOD, ("spec", "elasticPolicy", "rdzvBackend"), "static", ".spec.elasticPolicy.rdzvBackend:", "not one of"),
    ("nprocPerNode value", GOOD, ("spec", "nprocPerNode"), "many", ".spec.nprocPerNode:", "auto, cpu, gpu"),
    ("nprocPerNode zero", GOOD, ("spec", "nprocPerNode"), "0", ".spec.nprocPerNode:", "a number >= 1"),
    ("nprocPerNode type", GOOD, ("spec", "nprocPerNode"), 2, ".spec.nprocPerNode:", "not of type 'string'"),
]


@pytest.mark.parametrize("what,base,path,value,field,words", BAD, ids=[b[0] for b in BAD])
def test_each_rule_rejects_its_bad_manifest_naming_the_field(what, base, path, value, field, words):
    errors = v.validate(changed(base, path, value))
    hits = [e for e in errors if field in e and words in e]
    assert hits, errors
    # exactly that problem (a missing pytorchReplicaSpecs: said by the schema and by the webhook)
    assert len(errors) == (2 if what == "replica specs required" else 1), errors


def test_lower_case_replica_types_are_what_the_defaulter_title_cases():
    doc = copy.deepcopy(MASTER_WORKER)
    doc["spec"]["pytorchReplicaSpecs"] = {k.lower(): r for k, r in doc["spec"]["pytorchReplicaSpecs"].items()}
    assert v.validate(doc) == []


def test_command_line(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(GOOD))
    bad.write_text(json.dumps(changed(GOOD, C0 + ("name",), "trainer")))
    script = str(Path(v.__file__))
    ok = subprocess.run([sys.executable, script, str(good)], capture_output=True, text=True, timeout=60)
    no = subprocess.run([sys.executable, script, str(bad)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "a valid PyTorchJob" in ok.stdout
    assert no.returncode == 1 and "named 'pytorch'" in no.stdout
