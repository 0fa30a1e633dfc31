"""Each API problem gives a message a user can act on (one line), and nothing is left half-submitted."""
from __future__ import annotations

import socket
import time

import fake_k8s
import k8s_cells
import pytest

from ptjupyter import Elastic
from ptjupyter.k8s import client as kclient
from ptjupyter.k8s import run
from ptjupyter.k8s.errors import K8sError

PTJ = r"/apis/kubeflow\.org/v1/namespaces/[^/]+/pytorchjobs$"


def _submit(api, plan, **kw):
    with pytest.raises(K8sError) as e:
        run(plan, k8s_cells.hello, api_client=api, detach=True, out=lambda s: None, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_401_says_log_in_again(fake, api, plan_for):
    fake.fail("POST", r"/secrets$", 401, message="Unauthorized")
    msg = _submit(api, plan_for(Elastic(nnodes=2)))
    assert "unauthorized (401)" in msg and "create secrets in namespace 'default'" in msg and "log in again" in msg


def test_403_names_verb_resource_namespace_and_rbac(fake, api, plan_for):
    fake.fail("POST", PTJ, 403, message='pytorchjobs.kubeflow.org is forbidden: User "ann" cannot create resource')
    msg = _submit(api, plan_for(Elastic(nnodes=2), namespace="team-a"))
    assert "forbidden (403)" in msg and "create pytorchjobs.kubeflow.org in namespace 'team-a'" in msg
    assert "RBAC" in msg and "kubectl auth can-i create pytorchjobs.kubeflow.org -n team-a" in msg
    assert fake.names("secrets", "team-a") == []  # the payload of a refused job is removed again


def test_404_on_pytorchjobs_means_no_training_operator(api, plan_for):
    with fake_k8s.FakeK8s(crd=False) as no_crd:
        msg = _submit(no_crd.api_client(), plan_for(Elastic(nnodes=2)))
        assert no_crd.names("secrets") == []
    # discovery (api auto) says so before anything is sent
    assert "no training operator on this cluster" in msg and "it serves only jobs (batch/v1)" in msg


def test_404_namespace_missing(fake, api, plan_for):
    fake.fail("POST", r"/secrets$", 404, message='namespaces "nope" not found', details={"name": "nope", "kind": "namespaces"})
    msg = _submit(api, plan_for(Elastic(nnodes=2), namespace="nope"))
    assert "namespace 'nope' not found" in msg


def test_409_job_exists_suggests_new_name_or_cancel(fake, api, plan_for):
    plan = plan_for(Elastic(), job_name="taken")
    run(plan, k8s_cells.hello, api_client=api, detach=True, out=lambda s: None)
    msg = _submit(api, plan)
    assert "a Job named 'taken' already exists in namespace 'default' (409)" in msg
    assert "choose another job name" in msg and "%pytorch_elastic_jobs cancel taken" in msg


def test_409_on_the_job_itself(fake, api, plan_for):
    fake.fail("POST", PTJ, 409, message='pytorchjobs.kubeflow.org "x" already exists')
    msg = _submit(api, plan_for(Elastic(nnodes=2), job_name="x"))
    assert "already exists" in msg and "cancel x" in msg and fake.names("secrets") == []


def test_422_shows_the_servers_field_message(fake, api, plan_for):
    fake.fail("POST", PTJ, 422, message='PyTorchJob.kubeflow.org "x" is invalid',
              details={"causes": [{"field": "spec.pytorchReplicaSpecs.Worker.replicas", "message": "must be at least 1"}]})
    msg = _submit(api, plan_for(Elastic(nnodes=2)))
    assert "(422 Invalid): spec.pytorchReplicaSpecs.Worker.replicas: must be at least 1" in msg


def test_500_and_503_are_retried_with_backoff(fake, api, plan_for):
    fake.fail("POST", PTJ, 503, times=2)
    fake.fail("GET", r"/pytorchjobs/", 500, times=1)
    ref = run(plan_for(Elastic(nnodes=2)), k8s_cells.hello, api_client=api, detach=True, out=lambda s: None)
    posts = [r for r in fake.requests if r[0] == "POST" and r[1].endswith("/pytorchjobs")]
    assert len(posts) == 3 and fake.get("pytorchjobs", ref.name) is not None


def test_persistent_503_gives_up_after_a_bounded_number_of_attempts(fake, api, plan_for):
    fake.fail("POST", r"/secrets$", 503, times=100, message="etcd leader changed")
    t = time.monotonic()
    msg = _submit(api, plan_for(Elastic(nnodes=2)))
    assert time.monotonic() - t < 10
    assert "(503" in msg and "gave up after 5 attempts" in msg and "etcd leader changed" in msg
    assert len([r for r in fake.requests if r[0] == "POST"]) == kclient.ATTEMPTS


def test_unreachable_server_is_one_line_with_the_host(plan_for, monkeypatch):
    from kubernetes import client

    monkeypatch.setattr(kclient, "BACKOFF", 0.01)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    cfg.retries = False
    msg = _submit(client.ApiClient(cfg), plan_for(Elastic(nnodes=2)))
    assert f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}: connection refused" in msg


def test_no_kubeconfig(no_kubeconfig, plan_for):
    msg = _submit(None, plan_for(Elastic(nnodes=2)))
    assert "no Kubernetes configuration: no kubeconfig at" in msg and "KUBECONFIG" in msg


def test_unknown_context_lists_the_known_ones(tmp_path, monkeypatch, plan_for):
    cfg = tmp_path / "config"
    cfg.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: secret-token-value}}]\n"
        "contexts: [{name: dev, context: {cluster: c, user: u}}, {name: prod, context: {cluster: c, user: u}}]\n")
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    msg = _submit(None, plan_for(Elastic(nnodes=2), context="staging"))
    assert "context='staging' is not accepted" in msg and "dev, prod" in msg and "secret-token-value" not in msg


def test_bad_values_fail_before_connecting(fake, api, plan_for):
    with pytest.raises(ValueError) as e:
        run(plan_for(Elastic(nnodes=2), image=None), k8s_cells.hello, api_client=api)
    assert "image=None is not accepted" in str(e.value) and fake.requests == []


def test_the_kubeconfig_contexts_namespace_is_used_unless_one_is_given(fake, tmp_path, monkeypatch, plan_for):
    cfg = fake_k8s.write_kubeconfig(tmp_path / "kubeconfig", fake.host, namespace="team-b")
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    ref = run(plan_for(Elastic()), k8s_cells.hello, detach=True, out=lambda s: None)
    assert ref.namespace == "team-b" and fake.get("jobs", ref.name, "team-b")["metadata"]["namespace"] == "team-b"
    assert fake.names("secrets", "team-b") == [f"{ref.name}-payload"]
    ref = run(plan_for(Elastic(), namespace="team-c"), k8s_cells.hello, detach=True, out=lambda s: None)
    assert ref.namespace == "team-c"


def test_no_permission_for_events_only_costs_the_status_details(fake, api, plan_for):
    fake.fail("GET", r"/events$", 403, times=100, message='events is forbidden: User "ann" cannot list resource')
    out = []
    assert run(plan_for(Elastic()), k8s_cells.hello, api_client=api, out=out.append) == {"answer": 42, "pid": True}
    note = next(line for line in out if "not watching events" in line)
    assert "forbidden (403)" in note and "list events" in note and "[worker-0] hello 2" in out


def test_no_permission_for_pod_logs_is_an_error_with_rbac_hint(fake, api, plan_for):
    fake.fail("GET", r"/log$", 403, times=100, message="pods \"x\" is forbidden: cannot get resource pods/log")
    out = []
    run(plan_for(Elastic()), k8s_cells.hello, api_client=api, out=out.append)
    assert any("forbidden (403): you may not get pods/log in namespace 'default'" in line for line in out), out


def test_an_unreadable_result_is_a_cluster_error_naming_the_job_not_a_bad_option(fake, api, plan_for):
    """Before: the ValueError of base64 escaped run(), and the magic said 'nothing was submitted'."""
    from ptjupyter.errors import InvalidValue
    from ptjupyter.k8s.errors import ResultUnreadable

    out = []
    with pytest.raises(K8sError) as e:
        run(plan_for(Elastic(), job_name="ptj-corrupt"), k8s_cells.corrupt_result, api_client=api, out=out.append)
    assert isinstance(e.value, ResultUnreadable) and not isinstance(e.value, (ValueError, TypeError, InvalidValue))
    msg = str(e.value)
    assert msg.startswith("job default/ptj-corrupt ran, but rank 0's return value could not be read back")
    assert "nothing was submitted" not in msg and "\n" not in msg
    assert e.value.render()[0].startswith("ResultUnreadable: job default/ptj-corrupt ran")
    assert "[worker-0] working" in out and not any("##ptjupyter-result" in line for line in out)


def test_anything_else_going_wrong_while_following_is_a_k8s_error_naming_the_job(fake, api, plan_for, monkeypatch):
    from ptjupyter.k8s import follow

    def broken(self):
        raise ValueError("an unexpected answer")

    monkeypatch.setattr(follow.Follower, "run", broken)
    with pytest.raises(K8sError) as e:
        run(plan_for(Elastic(), job_name="ptj-broken"), k8s_cells.hello, api_client=api, out=lambda s: None)
    assert not isinstance(e.value, ValueError)
    assert str(e.value) == ("job default/ptj-broken was submitted, but following it failed: "
                            "ValueError: an unexpected answer")
    assert fake.get("jobs", "ptj-broken") is not None


def _kubeconfig(path, host, namespace="team-a"):
    return fake_k8s.write_kubeconfig(path, host, namespace=namespace)


def test_an_explicit_default_namespace_is_used_as_given(fake, tmp_path, monkeypatch, plan_for):
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", fake.host)))
    out = []
    bare = run(plan_for(Elastic(), job_name="ptj-bare"), k8s_cells.hello, detach=True, out=out.append)
    given = run(plan_for(Elastic(), job_name="ptj-given", namespace="default"), k8s_cells.hello, detach=True,
                out=out.append)
    assert (bare.namespace, given.namespace) == ("team-a", "default")
    assert fake.names("jobs", "team-a") == ["ptj-bare"] and fake.names("jobs", "default") == ["ptj-given"]
    assert fake.names("secrets", "default") == ["ptj-given-payload"]
    # the hints work as typed: a bare %pytorch_elastic_jobs looks in the context's namespace
    assert "Follow: %pytorch_elastic_jobs attach ptj-bare   Cancel" in out[1]
    assert "attach ptj-given -n default" in out[3] and "cancel ptj-given -n default" in out[3]


def test_the_jobs_magic_defaults_to_the_kubeconfig_contexts_namespace(fake, tmp_path, monkeypatch, plan_for):
    """Before: a bare %pytorch_elastic_jobs listed 'default' while a bare cell submitted to the context's."""
    from ptjupyter.k8s import jobs

    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", fake.host)))
    run(plan_for(Elastic(), job_name="ptj-in-team-a"), k8s_cells.hello, detach=True, out=lambda s: None)
    run(plan_for(Elastic(), job_name="ptj-in-default", namespace="default"), k8s_cells.hello, detach=True,
        out=lambda s: None)

    def listed(line):
        out = []
        jobs.main(line, out=out.append)
        return [row.split()[0] for row in out[1:]]

    assert listed("") == ["ptj-in-team-a"] and listed("list") == ["ptj-in-team-a"]
    assert listed("-n default") == ["ptj-in-default"] == listed("list --namespace default")
    out = []
    jobs.main("cancel ptj-in-team-a", out=out.append)
    assert out == ["[ptjupyter] cancelled team-a/ptj-in-team-a: job, pods and payload Secret deleted"]
    out = []
    jobs.main("", out=out.append)
    assert out == ["no ptjupyter jobs in namespace 'team-a'"]


def test_a_kubeconfig_namespace_the_server_would_refuse_is_a_k8s_error(fake, tmp_path, monkeypatch, plan_for):
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", fake.host, namespace="Team_A")))
    msg = _submit(None, plan_for(Elastic()))
    assert msg.startswith("the Kubernetes configuration cannot be used (nothing was submitted): ")
    assert "namespace='Team_A' is not accepted" in msg and fake.requests == []
