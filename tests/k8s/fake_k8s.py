"""A small Kubernetes API server on 127.0.0.1 (aiohttp) plus a fake training operator, for tests.

Why not kmock 0.8: it has no resourceVersion semantics / 410 Gone,
no fieldSelector, no labelSelector on most lists, no log parameters (sinceSeconds, tailLines,
timestamps) and no way to cut a stream mid-line; each would be a shim. This server implements just
the REST paths ptjupyter uses, the way the real apiserver answers them:

- create/get/list/watch/patch(merge)/delete of pytorchjobs (kubeflow.org/v1), jobs (batch/v1),
  configmaps, secrets, pods, events; ``labelSelector`` (k=v,...), ``fieldSelector`` (metadata.name,
  involvedObject.name); one global resourceVersion; ``watch=1`` streams JSON lines from a given
  resourceVersion (or ADDED for the current state), ``ERROR``/410 Expired after :meth:`compact`;
  Status error bodies; ownerReference garbage collection on delete; PyTorchJob creates are checked
  with ``validate()`` from validate.py beside this file (422 with causes on error).
- ``pods/{name}/log`` with follow, timestamps, sinceSeconds, tailLines, chunked and live.
- fault injection: :meth:`fail` (any status for a method+path pattern, N times), :meth:`drop_log`
  (cut a log stream after N lines, optionally mid-line), :meth:`drop_watches`, :meth:`compact`
  (410 Gone for every older resourceVersion), :meth:`hold_pods` (pods stay Pending: FailedScheduling,
  or ImagePullBackOff), :meth:`restart_container` (the kubelet restarts a crashed container).
- Kubeflow Trainer v2 (``trainer=True``): TrainJob, ClusterTrainingRuntime, TrainingRuntime, JobSet and their
  discovery, with the fake controller of fake_trainer.py; ``kueue=True`` holds queued TrainJobs until :meth:`admit`.
- the operator: for each PyTorchJob/Job created it makes the pods (operator names and labels),
  materialises their Secret (and ConfigMap) volumes in a temp dir, starts the container command as a REAL local
  process with the environment the training operator injects (rendezvous on 127.0.0.1:<free port>),
  serves the output as the pod log, and moves pod phases and job conditions
  Created -> Running -> Succeeded/Failed (elastic: Succeeded when any worker succeeds).
"""
from __future__ import annotations

import asyncio
import base64
import bisect
import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import fake_trainer
from aiohttp import web

ROUTE = re.compile(r"^/(?:api/v1|apis/(?P<group>[a-z.-]+)/(?P<version>v1|v1alpha1|v1alpha2))"
                   r"(?:/namespaces/(?P<ns>[a-z0-9-]+))?/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$")
DISCOVERY = re.compile(r"^/apis/(?P<group>[a-z.-]+)/(?P<version>v1|v1alpha1|v1alpha2)/?$")
KINDS = {"pytorchjobs": ("PyTorchJob", "kubeflow.org/v1"), "jobs": ("Job", "batch/v1"), "configmaps": ("ConfigMap", "v1"),
         "secrets": ("Secret", "v1"),
         "pods": ("Pod", "v1"), "events": ("Event", "v1"), "trainjobs": ("TrainJob", "trainer.kubeflow.org/v1alpha1"),
         "clustertrainingruntimes": ("ClusterTrainingRuntime", "trainer.kubeflow.org/v1alpha1"),
         "trainingruntimes": ("TrainingRuntime", "trainer.kubeflow.org/v1alpha1"),
         "jobsets": ("JobSet", "jobset.x-k8s.io/v1alpha2")}
GROUPS = {"pytorchjobs": "kubeflow.org", "jobs": "batch", "trainjobs": "trainer.kubeflow.org",
          "clustertrainingruntimes": "trainer.kubeflow.org", "trainingruntimes": "trainer.kubeflow.org",
          "jobsets": "jobset.x-k8s.io"}
TRAINER = ("trainjobs", "clustertrainingruntimes", "trainingruntimes", "jobsets")
CLUSTER_SCOPED = ("clustertrainingruntimes",)


def _cname(labels: dict) -> str:
    """The training container: ``node`` in a TrainJob's pods, ``pytorch`` in the training operator's."""
    return "node" if "jobset.sigs.k8s.io/jobset-name" in (labels or {}) else "pytorch"


def _validator():
    from validate import validate

    return validate


def now_ts() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def nano_ts(t: float) -> str:
    sec = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".%09dZ" % int((t - sec) * 1e9)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_kubeconfig(path: Path, host: str, *, namespace: Optional[str] = None, token: str = "t") -> Path:
    """A kubeconfig whose one context ("fake") points at ``host`` (with ``namespace`` when given)."""
    ns = f", namespace: {namespace}" if namespace else ""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{host}'}}}}]\n"
        f"users: [{{name: u, user: {{token: {token}}}}}]\n"
        f"contexts: [{{name: fake, context: {{cluster: fake, user: u{ns}}}}}]\n")
    return path


def merge(dst: dict, patch: dict) -> dict:
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def selected(obj: dict, labels: str, fields: str) -> bool:
    md = obj.get("metadata") or {}
    for term in filter(None, (labels or "").split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if (md.get("labels") or {}).get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if (md.get("labels") or {}).get(k.rstrip("=")) != v:
                return False
        elif term not in (md.get("labels") or {}):
            return False
    for term in filter(None, (fields or "").split(",")):
        k, v = term.split("=", 1)
        cur: Any = obj
        for part in k.rstrip("=").split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur != v:
            return False
    return True


class PodLog:
    def __init__(self) -> None:
        self.lines: list = []  # (epoch float, ts string, bytes incl. "\n" when complete)
        self.done = False
        self.cond = asyncio.Condition()


class FakeK8s:
    """``with FakeK8s() as k8s: api = k8s.api_client()``; all state lives on the server's loop thread."""

    def __init__(self, operator: bool = True, crd: bool = True, validate: bool = True, trainer: bool = False,
                 kueue: bool = False):
        """``crd``: serve the v1 PyTorchJob; ``trainer``: serve Kubeflow Trainer v2 (TrainJob, the torch-distributed
        ClusterTrainingRuntime, JobSet) with its controller (fake_trainer.py); ``kueue``: hold queued TrainJobs."""
        self.operator, self.crd, self.validate_on, self.trainer, self.kueue = operator, crd, validate, trainer, kueue
        self.objects: dict = {}  # (plural, ns, name) -> obj
        self.history: list = []  # (rv, plural, ns, type, obj)
        self.rv = 0
        self.compacted = 0
        self.requests: list = []  # (method, path, query)
        self.request_times: list = []  # time.monotonic() of each entry of ``requests``
        self.auth: set = set()  # Authorization headers received (tests check credentials were used, never shown)
        self.log_history: list = []  # (ns, pod, uid, PodLog) of every container log ever served (recreated pods too)
        self.faults: list = []
        self.log_drops: dict = {}  # pod name -> [after_lines, times, mid_line]
        self.logs: dict = {}  # (ns, pod) -> PodLog
        self.procs: dict = {}  # (ns, pod) -> asyncio.subprocess.Process
        self.all_procs: list = []
        self.launch: dict = {}  # (ns, pod) -> (cmd, env, cwd, image, job)
        self.restarting: set = set()
        self._templates: dict = {}  # (ns, pod) -> pod template (recreate_pod)
        self._pod_env: dict = {}  # (ns, pod) -> operator environment (recreate_pod)
        self.hold: Optional[tuple] = None
        self.watch_epoch = 0
        self.tmp = tempfile.mkdtemp(prefix="ptj-fake-k8s-")
        self.validate = _validator() if validate else None
        self.validate_trainjob = __import__("validate_trainjob").validate if validate and trainer else None
        if trainer:
            import validate_trainjob

            rt = copy.deepcopy(validate_trainjob.torch_distributed())
            rt["metadata"].update(uid=str(uuid.uuid4()), resourceVersion="1", creationTimestamp=now_ts())
            self.objects[("clustertrainingruntimes", "", rt["metadata"]["name"])] = rt
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fake-k8s")
        self._ready = threading.Event()
        self.host = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.cond = asyncio.Condition()
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.host = f"http://127.0.0.1:{port}"

    def __enter__(self) -> "FakeK8s":
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("fake Kubernetes API server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self._shutdown, timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def _shutdown(self) -> None:
        for key in list(self.procs):
            await self._kill(key)
        for proc in self.all_procs:
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()
        self.closing = True
        self.watch_epoch += 1
        async with self.cond:
            self.cond.notify_all()
        for buf in self.logs.values():
            buf.done = True
            async with buf.cond:
                buf.cond.notify_all()
        await self.runner.cleanup()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def call(self, fn, *args, timeout: float = 10):
        """Run ``fn(*args)`` (plain or coroutine function) on the server loop; return its result."""
        async def _c():
            r = fn(*args)
            if asyncio.iscoroutine(r):
                r = await r
            return r
        return asyncio.run_coroutine_threadsafe(_c(), self.loop).result(timeout)

    def configuration(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.host
        return cfg

    def api_client(self):
        from kubernetes import client

        return client.ApiClient(self.configuration())

    # -- test helpers (thread-safe) ------------------------------------------------------------
    def get(self, plural: str, name: str, ns: str = "default") -> Optional[dict]:
        return self.call(lambda: copy.deepcopy(self.objects.get((plural, ns, name))))

    def names(self, plural: str, ns: str = "default") -> list:
        return self.call(lambda: sorted(n for (p, s, n) in self.objects if p == plural and s == ns))

    def fail(self, method: str, pattern: str, status: int, times: int = 1, message: str = "", reason: str = "",
             details: Optional[dict] = None, watch: Optional[bool] = None) -> None:
        """The next ``times`` requests METHOD with a path matching ``pattern`` (regex) answer ``status``
        (``watch=True``: only watch requests; ``False``: only the others)."""
        self.faults.append([method.upper(), re.compile(pattern), status, times, message, reason, details or {}, watch])

    def count(self, method: str, pattern: str, watch: Optional[bool] = None) -> int:
        """How many requests METHOD with a path matching ``pattern`` the server received so far."""
        rx = re.compile(pattern)
        return sum(1 for m, path, q in list(self.requests) if m == method.upper() and rx.search(path)
                   and (watch is None or watch == (q.get("watch") in ("1", "true", "True"))))

    def recreate_pod(self, pod: str, ns: str = "default", new_name: Optional[str] = None) -> str:
        """Delete ``pod`` (its container is killed) and create it again from the same template, under the same
        name (as the training operator does) or ``new_name`` (as the Job controller does); a new uid, a new
        container that starts its command from the beginning. Returns the new pod's name."""
        async def do():
            key = ("pods", ns, pod)
            obj = self.objects.get(key)
            if obj is None or (ns, pod) not in self.launch:
                raise KeyError(pod)
            md = obj["metadata"]
            tmpl = self._templates[(ns, pod)]
            env, job = self._pod_env[(ns, pod)], self.launch[(ns, pod)][4]
            await self._delete(key)
            name = new_name or pod
            await self._start_pod(ns, name, dict(md["labels"]), tmpl, env, md["ownerReferences"][0], job)
            return name
        return self.call(do)

    def admit(self, name: str, ns: str = "default") -> None:
        """Kueue admits the suspended TrainJob ``name``: it is resumed and its pods start."""
        self.call(fake_trainer.admit, self, ns, name)

    def drop_log(self, pod: str, after_lines: int, times: int = 1, mid_line: bool = True) -> None:
        """Cut the log stream of ``pod`` after ``after_lines`` lines (and half of the next one)."""
        self.log_drops[pod] = [after_lines, times, mid_line]

    def compact(self, drop_watches: bool = False) -> None:
        """Forget history: a watch from any resourceVersion handed out so far gets ERROR 410 Expired.
        ``drop_watches``: cut the open watches in the same step (each one then resumes into the 410)."""
        async def do():
            self.rv += 1  # an empty revision: what a LIST returns from now on is not expired
            self.compacted = self.rv
            if drop_watches:
                self.watch_epoch += 1
                async with self.cond:
                    self.cond.notify_all()
        self.call(do)

    def drop_watches(self) -> None:
        async def bump():
            self.watch_epoch += 1
            async with self.cond:
                self.cond.notify_all()
        self.call(bump)

    def hold_pods(self, reason: str = "FailedScheduling",
                  message: str = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.") -> None:
        """Pods created from now on stay Pending (unschedulable) with a Warning event."""
        self.hold = (reason, message)

    def release_pods(self) -> None:
        self.hold = None

    def written(self) -> list:
        """[(pod, uid, [(time.time() written, line text without newline), ...])] of every container that ran,
        in start order."""
        return self.call(lambda: [(name, uid, [(t, d.decode("utf-8", "replace").rstrip("\n")) for t, _, d in buf.lines])
                                  for _, name, uid, buf in self.log_history])

    def proc_alive(self, pod: str, ns: str = "default") -> bool:
        return self.call(lambda: (ns, pod) in self.procs and self.procs[(ns, pod)].returncode is None)

    # -- HTTP ----------------------------------------------------------------------------------
    @staticmethod
    def status(code: int, message: str, reason: str = "", details: Optional[dict] = None) -> web.Response:
        reasons = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "AlreadyExists",
                   410: "Expired", 422: "Invalid", 500: "InternalError", 503: "ServiceUnavailable"}
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason or reasons.get(code, ""), "details": details or {}, "code": code}
        return web.json_response(body, status=code)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, path, q = request.method, request.path, request.query
        self.requests.append((method, path, dict(q)))
        self.request_times.append(time.monotonic())
        self.auth.add(request.headers.get("Authorization", ""))
        watching = q.get("watch") in ("1", "true", "True")
        for f in self.faults:
            if f[3] > 0 and f[0] == method and f[1].search(path) and (f[7] is None or f[7] == watching):
                f[3] -= 1
                return self.status(f[2], f[4] or f"injected {f[2]}", f[5], f[6])
        d = DISCOVERY.match(path)
        if d and method == "GET":
            return self._discovery(d["group"], d["version"])
        m = ROUTE.match(path)
        if not m or m["plural"] not in KINDS or (m["plural"] == "pytorchjobs" and not self.crd) or (
                m["plural"] in TRAINER and not self.trainer) or ((m["ns"] is None) != (m["plural"] in CLUSTER_SCOPED)):
            return self.status(404, "the server could not find the requested resource")
        plural, ns, name, sub = m["plural"], m["ns"] or "", m["name"], m["sub"]
        if name is None:
            if method == "GET":
                if q.get("watch") in ("1", "true", "True"):
                    try:
                        return await self._watch(request, plural, ns)
                    except (ConnectionResetError, asyncio.CancelledError):
                        return web.Response(status=499)
                return self._list(plural, ns, q)
            if method == "POST":
                return await self._create(plural, ns, await request.json())
            return self.status(405, f"method {method} not allowed")
        if sub == "log" and plural == "pods" and method == "GET":
            try:
                return await self._log(request, ns, name)
            except (ConnectionResetError, asyncio.CancelledError):
                return web.Response(status=499)
        key = (plural, ns, name)
        obj = self.objects.get(key)
        group = GROUPS.get(plural)
        if obj is None:
            return self.status(404, f'{plural}{"." + group if group else ""} "{name}" not found',
                               details={"name": name, "group": group or "", "kind": plural})
        if method == "GET":
            return web.json_response(obj)
        if method == "PATCH":
            await self._patch(key, await request.json())
            return web.json_response(self.objects[key])
        if method == "DELETE":
            await self._delete(key)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success",
                                      "details": {"name": name, "kind": plural, "uid": obj["metadata"]["uid"]}})
        return self.status(405, f"method {method} not allowed")

    def _discovery(self, group: str, version: str) -> web.Response:
        served = [p for p, (_, api) in KINDS.items() if api == f"{group}/{version}" and (
            (p != "pytorchjobs" or self.crd) and (p not in TRAINER or self.trainer))]
        if not served:
            return self.status(404, "the server could not find the requested resource")
        return web.json_response({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}",
                                  "resources": [{"name": p, "singularName": "", "namespaced": p not in CLUSTER_SCOPED,
                                                 "kind": KINDS[p][0], "verbs": ["create", "delete", "get", "list",
                                                                                "patch", "update", "watch"]}
                                                for p in served]})

    def _list(self, plural: str, ns: str, q) -> web.Response:
        items = [o for (p, s, _), o in sorted(self.objects.items()) if p == plural and s == ns
                 and selected(o, q.get("labelSelector", ""), q.get("fieldSelector", ""))]
        kind, api = KINDS[plural]
        return web.json_response({"kind": kind + "List", "apiVersion": api, "metadata": {"resourceVersion": str(self.rv)},
                                  "items": items})

    async def _record(self, plural: str, ns: str, typ: str, obj: dict) -> None:
        self.history.append((self.rv, plural, ns, typ, copy.deepcopy(obj)))
        async with self.cond:
            self.cond.notify_all()

    def _bump(self, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    async def _create(self, plural: str, ns: str, body: dict) -> web.Response:
        md = body.setdefault("metadata", {})
        name = md.get("name")
        group = GROUPS.get(plural)
        if not name:
            return self.status(422, "name: Required value", details={"causes": [{"field": "metadata.name", "message": "Required value"}]})
        if (plural, ns, name) in self.objects:
            return self.status(409, f'{plural}{"." + group if group else ""} "{name}" already exists',
                               details={"name": name, "group": group or "", "kind": plural})
        if plural == "pytorchjobs" and self.validate is not None:
            errs = self.validate(body)
            if errs:
                causes = [{"field": e.split(":", 1)[0].lstrip("."), "message": e.split(":", 1)[-1].strip()} for e in errs]
                return self.status(422, f'PyTorchJob.kubeflow.org "{name}" is invalid: ' + "; ".join(errs),
                                   details={"name": name, "group": group, "kind": "PyTorchJob", "causes": causes})
        if plural == "trainjobs":
            refused = await fake_trainer.admission(self, ns, body)
            if refused:
                errs = refused[1]
                causes = [{"field": e.split(":", 1)[0].lstrip("."), "message": e.split(":", 1)[-1].strip()} for e in errs]
                return self.status(refused[0], f'TrainJob.trainer.kubeflow.org "{name}" is invalid: ' + "; ".join(errs),
                                   details={"name": name, "group": group, "kind": "TrainJob", "causes": causes})
        md.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now_ts(), generation=1)
        self._bump(body)
        self.objects[(plural, ns, name)] = body
        await self._record(plural, ns, "ADDED", body)
        if self.operator and plural == "trainjobs":
            asyncio.get_running_loop().create_task(fake_trainer.operate(self, ns, name))
        if self.operator and plural in ("pytorchjobs", "jobs"):
            asyncio.get_running_loop().create_task(self._operate(plural, ns, name))
        return web.json_response(body, status=201)

    async def _patch(self, key: tuple, patch: dict) -> None:
        obj = self.objects[key]
        merge(obj, patch)
        self._bump(obj)
        await self._record(key[0], key[1], "MODIFIED", obj)

    async def _delete(self, key: tuple) -> None:
        obj = self.objects.pop(key, None)
        if obj is None:
            return
        if key[0] == "pods":
            await self._kill((key[1], key[2]))
        self._bump(obj)
        await self._record(key[0], key[1], "DELETED", obj)
        uid = obj["metadata"]["uid"]
        for k, o in list(self.objects.items()):  # garbage collection by ownerReference
            if any(r.get("uid") == uid for r in (o.get("metadata") or {}).get("ownerReferences") or []):
                await self._delete(k)

    async def _watch(self, request: web.Request, plural: str, ns: str) -> web.StreamResponse:
        q = request.query
        labels, fields = q.get("labelSelector", ""), q.get("fieldSelector", "")
        deadline = time.monotonic() + float(q.get("timeoutSeconds", 30))
        rv = q.get("resourceVersion")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        epoch = self.watch_epoch

        async def send(typ, obj):
            await resp.write((json.dumps({"type": typ, "object": obj}) + "\n").encode())

        if rv not in (None, "", "0"):
            start = int(rv)
            if start < self.compacted:
                await send("ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                     "message": f"too old resource version: {start} ({self.compacted})",
                                     "reason": "Expired", "code": 410})
                await resp.write_eof()
                return resp
        else:
            start = self.rv
            for (p, s, _), o in sorted(self.objects.items()):
                if p == plural and s == ns and selected(o, labels, fields):
                    await send("ADDED", o)
        idx = bisect.bisect_right([h[0] for h in self.history], start)
        while True:
            while idx < len(self.history):
                hrv, p, s, typ, o = self.history[idx]
                idx += 1
                if p == plural and s == ns and selected(o, labels, fields):
                    await send(typ, o)
            if self.watch_epoch != epoch:  # drop_watches(): cut the connection without a clean end
                if request.transport is not None:
                    request.transport.close()
                return resp
            left = deadline - time.monotonic()
            if left <= 0:
                break
            async with self.cond:
                try:
                    await asyncio.wait_for(self.cond.wait_for(
                        lambda idx=idx: len(self.history) > idx or self.watch_epoch != epoch), left)
                except asyncio.TimeoutError:
                    break
        await resp.write_eof()
        return resp

    async def _log(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        q = request.query
        if ("pods", ns, name) not in self.objects:
            return self.status(404, f'pods "{name}" not found', details={"name": name, "kind": "pods"})
        buf = self.logs.get((ns, name))
        if buf is None:
            return self.status(400, f'container "pytorch" in pod "{name}" is waiting to start: ContainerCreating')
        follow, stamps = q.get("follow") == "true", q.get("timestamps") == "true"
        idx = 0
        if "sinceSeconds" in q:
            since = time.time() - int(q["sinceSeconds"])
            idx = bisect.bisect_left([entry[0] for entry in buf.lines], since)
        if "tailLines" in q:
            idx = max(idx, len(buf.lines) - int(q["tailLines"]))
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        sent = 0
        while True:
            while idx < len(buf.lines):
                _, ts, data = buf.lines[idx]
                line = (ts.encode() + b" " if stamps else b"") + data
                drop = self.log_drops.get(name)  # per line: a drop set while the stream is open cuts it too
                if drop and drop[1] > 0 and sent >= drop[0]:
                    drop[1] -= 1
                    if drop[2]:
                        await resp.write(line[: max(1, len(line) // 2)])
                    if request.transport is not None:
                        request.transport.close()  # a dropped stream: no chunked terminator
                    return resp
                await resp.write(line)
                idx += 1
                sent += 1
            if not follow or (buf.done and idx >= len(buf.lines)) or getattr(self, "closing", False):
                break
            async with buf.cond:
                await buf.cond.wait_for(lambda idx=idx: len(buf.lines) > idx or buf.done)
        await resp.write_eof()
        return resp

    # -- the operator --------------------------------------------------------------------------
    async def _event(self, ns: str, obj: dict, reason: str, message: str, typ: str = "Normal") -> None:
        md = obj["metadata"]
        name = f"{md['name']}.{secrets.token_hex(6)}"
        ev = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
              "involvedObject": {"kind": obj.get("kind", "Pod"), "name": md["name"], "namespace": ns, "uid": md.get("uid")},
              "reason": reason, "message": message, "type": typ, "count": 1,
              "firstTimestamp": now_ts(), "lastTimestamp": now_ts(), "source": {"component": "fake-operator"}}
        await self._create("events", ns, ev)

    async def _set_conditions(self, plural: str, ns: str, name: str, add: list, extra: Optional[dict] = None) -> None:
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            return
        conds = copy.deepcopy((obj.get("status") or {}).get("conditions") or [])
        for c in add:
            for old in conds:
                if old["type"] in ("Running", "Created") and c["type"] in ("Succeeded", "Failed") and old["type"] == "Running":
                    old["status"] = "False"
            conds = [o for o in conds if o["type"] != c["type"]]
            conds.append({"status": "True", "lastUpdateTime": now_ts(), "lastTransitionTime": now_ts(), **c})
        status = {"conditions": conds, **(extra or {})}
        if "startTime" not in (obj.get("status") or {}):
            status["startTime"] = now_ts()
        await self._patch((plural, ns, name), {"status": status})

    async def _operate(self, plural: str, ns: str, name: str) -> None:
        job = self.objects[(plural, ns, name)]
        owner = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": name, "uid": job["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        if plural == "jobs":
            tmpl = job["spec"]["template"]
            labels = {**(tmpl.get("metadata") or {}).get("labels", {}), "job-name": name,
                      "batch.kubernetes.io/job-name": name, "controller-uid": job["metadata"]["uid"]}
            await self._start_pod(ns, f"{name}-{secrets.token_hex(3)[:5]}", labels, tmpl, {}, owner, (plural, name))
            return
        await self._set_conditions(plural, ns, name, [{"type": "Created", "reason": "PyTorchJobCreated",
                                                        "message": f"PyTorchJob {name} is created."}])
        spec = job["spec"]
        rspecs = spec["pytorchReplicaSpecs"]
        elastic = spec.get("elasticPolicy")
        nproc = str(spec.get("nprocPerNode", "auto"))
        total = sum(int(r.get("replicas", 1)) for r in rspecs.values())
        port = free_port()
        for rtype in ("Master", "Worker"):
            rs = rspecs.get(rtype)
            if rs is None:
                continue
            for i in range(int(rs.get("replicas", 1))):
                env = {"PYTHONUNBUFFERED": "1"}
                if "Master" in rspecs:
                    rank = i if rtype == "Master" else i + 1
                    env.update(MASTER_PORT=str(port), PET_MASTER_PORT=str(port), MASTER_ADDR="127.0.0.1",
                               PET_MASTER_ADDR="127.0.0.1", RANK=str(rank), PET_NODE_RANK=str(rank),
                               WORLD_SIZE=str(total * (int(nproc) if nproc.isdigit() else 1)))
                env["PET_NPROC_PER_NODE"] = nproc
                if elastic:
                    env.update(PET_RDZV_ENDPOINT=f"127.0.0.1:{port}", PET_RDZV_BACKEND=elastic.get("rdzvBackend", "c10d"),
                               PET_NNODES=f"{elastic.get('minReplicas', rs['replicas'])}:{elastic.get('maxReplicas', rs['replicas'])}")
                    if "maxRestarts" in elastic:
                        env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
                else:
                    env["PET_NNODES"] = str(total)
                tmpl = rs["template"]
                labels = {**(tmpl.get("metadata") or {}).get("labels", {}), "training.kubeflow.org/job-name": name,
                          "training.kubeflow.org/replica-type": rtype.lower(), "training.kubeflow.org/replica-index": str(i),
                          "training.kubeflow.org/operator-name": "pytorchjob-controller"}
                if rtype == "Master":
                    labels["training.kubeflow.org/job-role"] = "master"
                await self._start_pod(ns, f"{name}-{rtype.lower()}-{i}", labels, tmpl, env, owner, (plural, name))

    async def _start_pod(self, ns: str, name: str, labels: dict, tmpl: dict, env: dict, owner: dict, job: tuple) -> None:
        spec = copy.deepcopy(tmpl["spec"])
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner],
                            "annotations": (tmpl.get("metadata") or {}).get("annotations") or {}},
               "spec": spec, "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}}
        await self._create("pods", ns, pod)
        pod = self.objects[("pods", ns, name)]
        if self.hold:
            reason, message = self.hold
            if reason in ("ImagePullBackOff", "ErrImagePull"):
                image = spec["containers"][0].get("image", "")
                await self._patch(("pods", ns, name), {"status": {"containerStatuses": [{
                    "name": _cname(labels), "image": image, "imageID": "", "ready": False, "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": f'Back-off pulling image "{image}"'}}}]}})
                await self._event(ns, pod, "Failed", f'Failed to pull image "{image}": {message}', "Warning")
            else:
                await self._patch(("pods", ns, name), {"status": {"conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}})
                await self._event(ns, pod, reason, message, "Warning")
            return
        await self._event(ns, pod, "Scheduled", f"Successfully assigned {ns}/{name} to fake-node")
        c = next(c for c in spec["containers"] if c["name"] == _cname(labels))
        pod_dir = Path(tempfile.mkdtemp(prefix=name + "-", dir=self.tmp))
        mounts = {}
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        for vm in c.get("volumeMounts") or []:
            vol = vols.get(vm["name"]) or {}
            if "configMap" in vol or "secret" in vol:
                src, kind = (vol["secret"], "secret") if "secret" in vol else (vol["configMap"], "configmap")
                oname = src.get("secretName") if kind == "secret" else src.get("name")
                obj = self.objects.get(("secrets" if kind == "secret" else "configmaps", ns, oname))
                if obj is None:
                    await self._event(ns, pod, "FailedMount", f'{kind} "{oname}" not found', "Warning")
                    return
                # a Secret's data is base64 (stringData is merged in by the apiserver); a ConfigMap's binaryData is
                files = {k: v.encode() for k, v in (obj.get("stringData") or {}).items()} if kind == "secret" else {}
                b64 = obj.get("data") if kind == "secret" else obj.get("binaryData")
                files.update({k: base64.b64decode(v) for k, v in (b64 or {}).items()})
                if kind == "configmap":
                    files.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
                d = pod_dir / vm["name"]
                for it in src.get("items") or [{"key": k, "path": k} for k in files]:
                    target = d / it["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(files[it["key"]])
                mounts[vm["mountPath"]] = str(d)

        def local(s: str) -> str:
            for mp, d in mounts.items():
                if s == mp or s.startswith(mp + "/"):
                    return d + s[len(mp):]
            return s

        cmd = [local(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        if cmd and cmd[0] == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run"] + cmd[1:]
        elif cmd and cmd[0] in ("python", "python3"):
            cmd = [sys.executable] + cmd[1:]
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("PET_", "MASTER_", "TORCHELASTIC_", "PTJUPYTER_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        full_env = {**base, "OMP_NUM_THREADS": "1", **{e["name"]: local(e.get("value", "")) for e in c.get("env") or []}, **env}
        self.logs[(ns, name)] = PodLog()
        self.log_history.append((ns, name, pod["metadata"]["uid"], self.logs[(ns, name)]))
        self._templates[(ns, name)], self._pod_env[(ns, name)] = tmpl, env
        self.launch[(ns, name)] = (cmd, full_env, str(pod_dir), c.get("image", ""), job)
        await self._spawn(ns, name, 0)
        await self._job_progress(job, ns)

    async def _spawn(self, ns: str, name: str, restarts: int) -> None:
        cmd, full_env, cwd, image, job = self.launch[(ns, name)]
        proc = await asyncio.create_subprocess_exec(*cmd, env=full_env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, start_new_session=True, limit=1 << 20)
        self.procs[(ns, name)] = proc
        self.all_procs.append(proc)
        buf = self.logs[(ns, name)]
        buf.done = False
        cname = _cname(self.objects[("pods", ns, name)]["metadata"]["labels"])
        await self._patch(("pods", ns, name), {"status": {"phase": "Running", "startTime": now_ts(), "containerStatuses": [{
            "name": cname, "image": image, "imageID": "", "ready": True, "restartCount": restarts,
            "started": True, "state": {"running": {"startedAt": now_ts()}}}]}})
        await self._event(ns, self.objects[("pods", ns, name)], "Started", f"Started container {cname}")
        asyncio.get_running_loop().create_task(self._pump(ns, name, proc, job))

    def restart_container(self, pod: str, ns: str = "default") -> None:
        """Kill the pod's container and start it again (restartCount + 1), as the kubelet does after a crash."""
        async def do():
            key = (ns, pod)
            self.restarting.add(key)
            proc = self.procs.get(key)
            if proc is not None and proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        self.call(do)

    async def _pump(self, ns: str, name: str, proc, job: tuple) -> None:
        buf = self.logs[(ns, name)]
        uid = self.objects[("pods", ns, name)]["metadata"]["uid"]
        while True:
            data = await proc.stdout.readline()
            if not data:
                break
            t = time.time()
            buf.lines.append((t, nano_ts(t), data))
            async with buf.cond:
                buf.cond.notify_all()
        rc = await proc.wait()
        buf.done = True  # ends the follow streams of this container, as the kubelet does
        async with buf.cond:
            buf.cond.notify_all()
        if ("pods", ns, name) not in self.objects or self.objects[("pods", ns, name)]["metadata"]["uid"] != uid:
            return  # deleted (and maybe recreated under the same name): this container's end changes nothing
        if (ns, name) in self.restarting:
            self.restarting.discard((ns, name))
            cs = self.objects[("pods", ns, name)]["status"]["containerStatuses"][0]
            restarts = cs.get("restartCount", 0) + 1
            await self._patch(("pods", ns, name), {"status": {"containerStatuses": [{
                **cs, "ready": False, "restartCount": restarts, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now_ts()}}}]}})
            await asyncio.sleep(0.3)
            await self._spawn(ns, name, restarts)
            return
        cname = _cname(self.objects[("pods", ns, name)]["metadata"]["labels"])
        await self._patch(("pods", ns, name), {"status": {"phase": "Succeeded" if rc == 0 else "Failed", "containerStatuses": [{
            "name": cname, "image": "", "imageID": "", "ready": False, "restartCount": 0, "started": False,
            "state": {"terminated": {"exitCode": rc if rc >= 0 else 128 - rc, "reason": "Completed" if rc == 0 else "Error",
                                     "finishedAt": now_ts()}}}]}})
        await self._job_progress(job, ns)

    async def _job_progress(self, job: tuple, ns: str) -> None:
        plural, name = job
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            return
        conds = {c["type"] for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
        if conds & {"Succeeded", "Failed", "Complete"}:
            return
        if plural == "trainjobs":  # its pods belong to the JobSet
            await fake_trainer.progress(self, ns, name, [o["status"]["phase"] for (p, s, _), o in self.objects.items()
                                                         if p == "pods" and s == ns and o["metadata"]["labels"].get(
                                                             "jobset.sigs.k8s.io/jobset-name") == name])
            return
        pods = [o for (p, s, _), o in self.objects.items() if p == "pods" and s == ns
                and any(r.get("uid") == obj["metadata"]["uid"] for r in o["metadata"].get("ownerReferences") or [])]
        phases = [(o["metadata"]["labels"].get("training.kubeflow.org/replica-type", "worker"), o["status"]["phase"]) for o in pods]
        if plural == "jobs":
            active = sum(1 for _, ph in phases if ph in ("Running", "Pending"))
            if any(ph == "Failed" for _, ph in phases):
                await self._set_conditions(plural, ns, name, [{"type": "Failed", "reason": "BackoffLimitExceeded",
                                                                "message": "Job has reached the specified backoff limit"}],
                                           {"active": 0, "failed": 1})
            elif phases and all(ph == "Succeeded" for _, ph in phases):
                await self._set_conditions(plural, ns, name, [{"type": "Complete", "reason": "", "message": ""}],
                                           {"active": 0, "succeeded": 1, "completionTime": now_ts()})
            else:
                await self._patch((plural, ns, name), {"status": {"active": active, "startTime": now_ts()}})
            return
        elastic = "elasticPolicy" in obj["spec"]
        failed = [t for t, ph in phases if ph == "Failed"]
        if failed:
            n = sum(1 for t in failed if t == failed[0])
            await self._set_conditions(plural, ns, name, [{"type": "Failed", "reason": "PyTorchJobFailed",
                                                            "message": f"PyTorchJob {name} is failed because {n} "
                                                                       f"{failed[0].capitalize()} replica(s) failed."}])
        elif (elastic and any(ph == "Succeeded" for _, ph in phases)) or (
                not elastic and any(t == "master" and ph == "Succeeded" for t, ph in phases)):
            await self._set_conditions(plural, ns, name, [{"type": "Succeeded", "reason": "PyTorchJobSucceeded",
                                                            "message": f"PyTorchJob {ns}/{name} successfully completed."}])
        elif phases and all(ph == "Running" for _, ph in phases) and "Running" not in conds:
            await self._set_conditions(plural, ns, name, [{"type": "Running", "reason": "PyTorchJobRunning",
                                                            "message": f"PyTorchJob {ns}/{name} is running."}])

    async def _kill(self, key: tuple) -> None:
        proc = self.procs.pop(key, None)
        if proc is None or proc.returncode is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
                return
            except asyncio.TimeoutError:
                continue
