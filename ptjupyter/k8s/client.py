"""Talking to the cluster through the official ``kubernetes`` client: config loading, requests with
bounded retries, error translation. Objects are plain dicts (JSON as the server sends it)."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Iterable, Optional, Tuple

from .errors import K8sError, short_reason, translate
from .watch import RETRY_STATUSES, backoff

__all__ = ["Kube", "connect", "RETRY_STATUSES", "PATHS"]

log = logging.getLogger("ptjupyter")
ATTEMPTS = 5  # per request: 1 + 4 retries, backoff 0.25, 0.5, 1, 2 s (about 4 s in all)
BACKOFF = 0.25  # base of watch.backoff for requests

# resource -> collection path template
PATHS = {
    "pytorchjobs": "/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs",
    "trainjobs": "/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs",
    "trainingruntimes": "/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainingruntimes",
    "clustertrainingruntimes": "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes",
    "apis:trainer.kubeflow.org/v1alpha1": "/apis/trainer.kubeflow.org/v1alpha1",  # discovery
    "apis:kubeflow.org/v1": "/apis/kubeflow.org/v1",
    "jobs": "/apis/batch/v1/namespaces/{ns}/jobs",
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "secrets": "/api/v1/namespaces/{ns}/secrets",
    "pods": "/api/v1/namespaces/{ns}/pods",
    "events": "/api/v1/namespaces/{ns}/events",
}
VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}


def _kubeconfig_path() -> str:
    return os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")


SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _load_configuration(context: Optional[str]):
    """(Configuration, namespace of the kubeconfig context or service account, or None)."""
    from kubernetes import client, config

    path = _kubeconfig_path()
    cfg = client.Configuration()
    cfg.connection_pool_maxsize = 64  # 3 watches + one log stream per pod, all at once
    if not os.path.exists(path):
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException as e:
                raise K8sError(f"in-cluster Kubernetes configuration is incomplete: {e}") from None
            try:
                with open(SA_NAMESPACE) as f:
                    return cfg, f.read().strip() or None
            except OSError:
                return cfg, None
        raise K8sError(
            f"no Kubernetes configuration: no kubeconfig at {path} (set KUBECONFIG or create it with your cluster's "
            "login command, e.g. `gcloud container clusters get-credentials` / `aws eks update-kubeconfig`) and this "
            "kernel is not running inside a cluster"
        )
    try:
        config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
    except config.ConfigException as e:
        if context:
            try:
                names = [c["name"] for c in config.list_kube_config_contexts(config_file=path)[0]]
            except Exception:  # noqa: BLE001
                names = []
            raise K8sError(f"context={context!r} is not accepted; {path} has contexts: {', '.join(names) or 'none'}") from None
        raise K8sError(f"kubeconfig {path} cannot be used: {str(e).splitlines()[0]}") from None
    namespace = None
    try:
        contexts, current = config.list_kube_config_contexts(config_file=path)
        chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
        namespace = ((chosen or {}).get("context") or {}).get("namespace")
    except Exception:  # noqa: BLE001 - the namespace is a convenience
        pass
    return cfg, namespace


class Kube:
    """One namespace of one cluster. ``api`` is the official ``kubernetes.client.ApiClient``;
    ``default_namespace`` is the one used when none is given (the kubeconfig context's)."""

    def __init__(self, api_client, namespace: str, default_namespace: str = "default"):
        self.api = api_client
        self.namespace = namespace
        self.default_namespace = default_namespace
        self.host = getattr(api_client.configuration, "host", "?")

    # -- official API objects (for watches and log streams)
    @property
    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api)

    @property
    def custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    @property
    def batch(self):
        from kubernetes import client

        return client.BatchV1Api(self.api)

    def path(self, resource: str, name: Optional[str] = None, sub: Optional[str] = None) -> str:
        p = PATHS[resource].format(ns=self.namespace)
        if name:
            p += f"/{name}"
        if sub:
            p += f"/{sub}"
        return p

    def request(self, method: str, resource: str, name: Optional[str] = None, *, sub: Optional[str] = None,
                query: Iterable[Tuple[str, Any]] = (), body: Any = None, content_type: str = "application/json",
                timeout: float = 30, attempts: int = ATTEMPTS) -> dict:
        """One REST call with bounded retries on 429/5xx and connection errors; ``K8sError`` otherwise."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        verb = VERBS.get(method, method.lower())
        if method == "GET" and not name:
            verb = "list"
        last: Any = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(backoff(attempt - 1, BACKOFF))
            try:
                params = self.api.param_serialize(
                    method=method, resource_path=self.path(resource, name, sub), query_params=list(query),
                    header_params=dict(headers), body=body, auth_settings=["BearerToken"])
                resp = self.api.call_api(*params, _request_timeout=timeout)
                resp.read()
                if 200 <= resp.status < 300:
                    return json.loads(resp.data or b"{}")
                try:
                    ApiException.from_response(http_resp=resp, body=None, data=None)
                except ApiException as e:
                    last = e
            except ApiException as e:
                last = e
            except Exception as e:  # noqa: BLE001 - urllib3 connection errors
                if not _is_connection_error(e):
                    raise
                last = e
            status = getattr(last, "status", None)
            if status is not None and status not in RETRY_STATUSES:
                break
            log.debug("[PYTORCH_ELASTIC] %s %s: %s (attempt %d/%d)", method, resource, status or type(last).__name__,
                      attempt + 1, attempts)
        if getattr(last, "status", None) is None:
            raise K8sError(f"cannot reach the Kubernetes API server at {self.host}: {short_reason(last)} "
                           f"(after {attempts} attempts); check the kubeconfig context, VPN or proxy") from None
        err = translate(last, verb, resource, self.namespace, name)
        if last.status in RETRY_STATUSES:
            err = K8sError(f"{err} (gave up after {attempts} attempts)", status=last.status)
        raise err from None


def _is_connection_error(e: BaseException) -> bool:
    import urllib3

    return isinstance(e, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def connect(namespace: Optional[str], context: Optional[str] = None, api_client=None) -> Kube:
    """``Kube`` from ``api_client``, or the kubeconfig (``context``), or in-cluster config.

    ``namespace=None``: the kubeconfig context's namespace (or the service account's), else ``default``,
    as kubectl does.
    """
    # the client's API modules load lazily and are big: load them now, not while the first log line is awaited
    from kubernetes import client, watch  # noqa: F401

    client.CoreV1Api, client.CustomObjectsApi, client.BatchV1Api  # noqa: B018
    ctx_namespace = None
    if api_client is None:
        cfg, ctx_namespace = _load_configuration(context)
        api_client = client.ApiClient(cfg)
    default = ctx_namespace or "default"
    return Kube(api_client, namespace or default, default)
