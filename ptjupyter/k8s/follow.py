"""Follow a submitted job until it ends: watch the job, its pods and their events with
``watch.Watch().stream`` (resource versions; a dropped watch resumes, 410 Gone relists), say why it
waits, tail every pod's ``pytorch`` log live with a ``[worker-i]`` prefix, and bring rank 0's return
value back.

Threads: one watch each for the job, its pods and the namespace's events, one log tail per pod;
they feed a queue that the calling thread drains, so output and ``KeyboardInterrupt`` stay in the
caller's thread. Log resume: lines are requested with ``timestamps=true``; after a dropped stream the
tail reconnects with ``sinceSeconds`` covering the gap (plus slack) and skips every line whose
timestamp is older than, or equal and already shown, the last one shown: no duplicates, no gaps.
"""
from __future__ import annotations

import base64
import collections
import logging
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .errors import JobDeleted, JobFailed, K8sError, translate
from .client import _short
from .manifest import ANNOTATION_NONCE, CONTAINER, LABEL_HAS_MASTER, LABEL_JOB

__all__ = ["JobRef", "Follower", "job_state", "pod_label", "MARK", "RESULT_LIMIT"]

log = logging.getLogger("ptjupyter")
MARK = "##ptjupyter-result"
RESULT_LIMIT = 64 * 1024  # same as entrypoint.RESULT_LIMIT
WATCH_TIMEOUT = 50  # seconds per watch request (server side); then resume from the last resourceVersion
LOG_READ_TIMEOUT = 600  # seconds without any log output before a stream is reopened (not counted as a failure)
MAX_FAILURES = 6  # consecutive failed (re)connects of one watch or log stream before giving up
LAST_LINES = 20
FAILED_DRAIN = 2.0  # seconds to collect lines in flight after a job failed  # log lines of the failing pod shown in JobFailed
_FAILED_LINE = re.compile(r"^(\[rank\d+\] )?\[ptjupyter\] rank \d+ failed:")
_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")
_WAIT_REASONS = ("FailedScheduling", "FailedMount", "FailedAttachVolume", "FailedCreatePodSandBox", "Failed",
                 "BackOff", "ErrImagePull", "ImagePullBackOff", "InspectFailed", "Evicted", "Preempted")


@dataclass
class JobRef:
    name: str
    namespace: str
    resource: str  # "pytorchjobs" or "jobs"
    nonce: str = ""
    uid: Optional[str] = None

    @classmethod
    def from_object(cls, obj: dict, resource: str) -> "JobRef":
        md = obj.get("metadata") or {}
        return cls(md["name"], md.get("namespace", "default"), resource,
                   (md.get("annotations") or {}).get(ANNOTATION_NONCE, ""), md.get("uid"))


def job_state(obj: Optional[dict], resource: str) -> tuple:
    """(state, reason, message): state is Created/Pending/Running/Restarting/Succeeded/Failed."""
    if not obj:
        return "Pending", "", ""
    status = obj.get("status") or {}
    conds = [c for c in status.get("conditions") or [] if str(c.get("status")) == "True"]
    by_type = {c.get("type"): c for c in conds}
    if resource == "jobs":
        for t, state in (("Failed", "Failed"), ("Complete", "Succeeded")):
            if t in by_type:
                return state, by_type[t].get("reason", ""), by_type[t].get("message", "")
        return ("Running" if status.get("active") else "Created"), "", ""
    for t in ("Failed", "Succeeded"):
        if t in by_type:
            return t, by_type[t].get("reason", ""), by_type[t].get("message", "")
    if conds:
        c = conds[-1]
        return c.get("type", "Created"), c.get("reason", ""), c.get("message", "")
    return "Created", "", ""


def pod_label(pod: dict) -> tuple:
    """(label, rank): ``worker-1``/1 for elastic workers, ``master-0``/0 + ``worker-i``/i+1 for Master jobs."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    rtype = labels.get("training.kubeflow.org/replica-type", "worker").lower()
    try:
        index = int(labels.get("training.kubeflow.org/replica-index", "0"))
    except ValueError:
        index = 0
    has_master = labels.get(LABEL_HAS_MASTER) == "true"
    rank = index + 1 if (rtype == "worker" and has_master) else index
    return f"{rtype}-{index}", rank


def _container(pod: dict) -> dict:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return cs
    return {}


def _started(pod: dict) -> bool:
    state = _container(pod).get("state") or {}
    return "running" in state or "terminated" in state or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _ts_key(ts: str) -> Optional[str]:
    m = _TS.match(ts)
    if not m:
        return None
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')}Z"


class _DefaultSink:
    def __init__(self, out: Callable[[str], Any]):
        self.out = out

    def line(self, rank: int, stream: str, text: str, label: Optional[str] = None) -> None:
        self.out(f"[{label or f'worker-{rank}'}] {text}")

    def state(self, rank: int, state: str, detail: str = "") -> None:
        pass


class _Tail(threading.Thread):
    """Streams one pod's ``pytorch`` log into the follower's queue, resuming after drops."""

    def __init__(self, f: "Follower", pod: dict, tail: Optional[int]):
        md = pod["metadata"]
        super().__init__(name=f"ptjupyter-log-{md['name']}", daemon=True)
        self.f, self.pod, self.uid, self.tail = f, md["name"], md.get("uid"), tail
        self.label, self.rank = pod_label(pod)
        self.last_key: Optional[str] = None
        self.n_at_last = 0
        self.conn_count = 0
        self.last_recv: Optional[float] = None
        self.partial = b""
        self.resp = None
        self.recent: collections.deque = collections.deque(maxlen=10 * LAST_LINES)
        self.result_chunks: dict = {}
        self.lines = 0
        self._progress = False

    def run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # noqa: BLE001 - never kill the follower; say it
            if not self.f.stop.is_set():
                self.f.q.put(("note", f"log stream of {self.label} stopped: {type(e).__name__}: {e}"))
        finally:
            self.f.q.put(("tail-done", self.uid))

    def _loop(self) -> None:
        from kubernetes.client.exceptions import ApiException

        f, failures = self.f, 0
        while not f.stop.is_set():
            if not f.wait_started(self.pod, self.uid):
                return
            kw: dict = dict(container=CONTAINER, follow=True, timestamps=True, _preload_content=False,
                            _request_timeout=(10, LOG_READ_TIMEOUT))
            if self.last_recv is not None:
                kw["since_seconds"] = int(time.monotonic() - self.last_recv) + 10
            elif self.tail is not None:
                kw["tail_lines"] = self.tail
            progressed = clean = quiet = False
            self.conn_count = 0  # lines at exactly last_key seen on this connection
            opened = time.monotonic()
            try:
                self.resp = f.kube.core.read_namespaced_pod_log(self.pod, f.ref.namespace, **kw)
                if f.stop.is_set():
                    return
                progressed = self._read(self.resp)
                clean = True
            except ApiException as e:
                if e.status == 404:
                    return
                if e.status not in (400, 429, 500, 502, 503, 504):  # 400: container not started (yet)
                    raise translate(e, "get", "pods/log", f.ref.namespace, self.pod) from None
            except Exception as e:  # noqa: BLE001 - a dropped connection: resume below
                if f.stop.is_set():
                    return
                quiet = "Read timed out" in str(e)  # no output for LOG_READ_TIMEOUT s: not a failure
                progressed = progressed or self._progress
                log.debug("[PYTORCH_ELASTIC] log stream of %s dropped: %s", self.pod, str(e).splitlines()[0])
            finally:
                if self.resp is not None:
                    try:
                        self.resp.release_conn()
                    except Exception:  # noqa: BLE001
                        pass
                self.resp = None
            if f.stop.is_set():
                return
            state = f.pod_now(self.pod, self.uid)
            if state == "final" and clean:
                if self.partial:
                    self._line(self.partial)
                    self.partial = b""
                return
            self.partial = b""  # a line cut by a dropped stream comes again, whole, after the resume
            if state == "gone":
                return
            if state == "restarting" and clean:
                f.wait_pod_change(self.pod, 5.0)
                continue
            # a stream that stayed open a while and was closed (idle proxies do that) is no failure
            quiet = quiet or time.monotonic() - opened > 30
            failures = 0 if (progressed or quiet) else failures + 1
            if failures > MAX_FAILURES:
                f.q.put(("note", f"log stream of {self.label} keeps failing; stopped tailing it"))
                return
            if failures:
                f.stop.wait(min(0.2 * 2 ** failures, 5.0))

    def _read(self, resp) -> bool:
        progressed = self._progress = False
        buf = b""
        try:
            for chunk in resp.stream(None, decode_content=False):
                buf += chunk
                while True:
                    i = buf.find(b"\n")
                    if i < 0:
                        break
                    line, buf = buf[:i], buf[i + 1:]
                    if self._line(line):
                        progressed = self._progress = True
        finally:
            self.partial = buf
        return progressed

    def _line(self, raw: bytes) -> bool:
        """Handle one timestamped line; False when it was already shown."""
        text = raw.decode("utf-8", "replace").rstrip("\r")
        ts, sep, rest = text.partition(" ")
        key = _ts_key(ts) if sep else None
        if key is not None:
            text = rest
            if self.last_key is None or key > self.last_key:
                self.last_key, self.n_at_last, self.conn_count = key, 1, 1
            elif key < self.last_key:
                return False  # shown before the stream dropped
            else:
                self.conn_count += 1
                if self.conn_count <= self.n_at_last:
                    return False  # same timestamp, already shown
                self.n_at_last += 1
        self.last_recv = time.monotonic()
        self.lines += 1
        if text.startswith(MARK + " "):
            parts = text.split(" ", 4)
            if len(parts) >= 3 and parts[1] == self.f.ref.nonce:
                self._result(parts[2:])
                return True
        self.recent.append(text)
        self.f.q.put(("line", self, text))
        return True

    def _result(self, parts: list) -> None:
        kind = parts[0]
        if kind == "too-large":
            self.f.result_note = (f"rank 0 returned a value of {parts[1] if len(parts) > 1 else '?'} bytes pickled; over "
                                  f"the {RESULT_LIMIT // 1024} KiB that come back through the log: save it to storage "
                                  "instead (the run itself succeeded)")
        elif kind == "error":
            self.f.result_note = "rank 0's return value could not be sent back: " + " ".join(parts[1:])
        elif "/" in kind and len(parts) >= 2:
            i, n = (int(x) for x in kind.split("/"))
            self.result_chunks[i] = parts[1]
            if len(self.result_chunks) == n:
                self.f.result_b64 = "".join(self.result_chunks[k] for k in range(1, n + 1))


class Follower:
    """Follow ``ref`` until it ends; :meth:`run` returns rank 0's value or raises ``JobFailed``."""

    def __init__(self, kube, ref: JobRef, *, sink=None, out: Callable[[str], Any] = print, tail: Optional[int] = None,
                 drain_timeout: float = 30.0):
        self.kube, self.ref, self.out, self.tail = kube, ref, out, tail
        self.sink = sink if sink is not None else _DefaultSink(out)
        self.drain_timeout = drain_timeout
        self.q: "queue.Queue" = queue.Queue()
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.pods: dict = {}  # name -> pod dict (latest seen)
        self.pods_synced = False
        self.job: Optional[dict] = None
        self.job_gone = False
        self.state = ("Pending", "", "")
        self.tails: dict = {}  # uid -> _Tail
        self.events: dict = {}  # involved object name -> (reason, message) of its latest warning
        self.error: Optional[BaseException] = None
        self.result_b64: Optional[str] = None
        self.result_note: Optional[str] = None
        self._watches: list = []
        self._threads: list = []
        self._status = ""
        self._pod_states: dict = {}
        self._failed_order: list = []
        self.first_line_at: Optional[float] = None

    # -- watches ----------------------------------------------------------------------------
    def _watch(self, what: str, list_fn, args: tuple, kw: dict, relist, on_event) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        failures = gone = 0
        optional = what == "events"  # nice for the status line, not needed to follow the job

        def fail(err: BaseException) -> None:
            if optional:
                self.q.put(("note", f"not watching events ({str(err).split(';')[0]}); the status line shows pod states only"))
            else:
                self.q.put(("error", err))

        try:
            rv = relist()
        except Exception as e:  # noqa: BLE001
            fail(e)
            return
        while not self.stop.is_set():
            w = watch.Watch(return_type="object")
            self._watches.append(w)
            try:
                for ev in w.stream(list_fn, *args, resource_version=rv, timeout_seconds=WATCH_TIMEOUT,
                                   allow_watch_bookmarks=True, _request_timeout=(10, WATCH_TIMEOUT + 10), **kw):
                    failures = gone = 0
                    obj = ev.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if ev.get("type") != "BOOKMARK":
                        on_event(ev.get("type"), obj)
                    if self.stop.is_set():
                        break
                continue  # the server ended the watch (timeout): resume from rv
            except ApiException as e:
                if self.stop.is_set():
                    return
                if e.status == 410:  # Gone: our resourceVersion is too old; relist, then watch from the new one
                    log.debug("[PYTORCH_ELASTIC] %s watch: 410 Gone, relisting", what)
                    gone += 1
                    if gone > MAX_FAILURES:
                        fail(K8sError(f"watching {what} of job {self.ref.name}: the server keeps answering 410 Gone "
                                      f"after relisting ({gone} times)"))
                        return
                    if gone > 1:
                        self.stop.wait(min(0.2 * 2 ** gone, 5.0))
                    try:
                        rv = relist()
                    except Exception as e2:  # noqa: BLE001
                        fail(e2)
                        return
                    continue
                if e.status not in (429, 500, 502, 503, 504):
                    fail(translate(e, "watch", what, self.ref.namespace))
                    return
                failures += 1
                err: BaseException = e
            except Exception as e:  # noqa: BLE001 - dropped connection: resume from rv
                if self.stop.is_set():
                    return
                failures += 1
                err = e
            finally:
                if w in self._watches:
                    self._watches.remove(w)
            if failures > MAX_FAILURES:
                # one line: an ApiException's str() carries the response headers and body on further lines
                why = translate(err, "watch", what, self.ref.namespace) if isinstance(err, ApiException) else _short(err)
                fail(K8sError(f"watching {what} of job {self.ref.name} failed {failures} times in a row: {why}",
                              status=getattr(err, "status", None)))
                return
            self.stop.wait(min(0.2 * 2 ** failures, 5.0))

    def _job_relist(self) -> str:
        """LIST (not GET: an object's own resourceVersion may already be compacted away) the job by name."""
        data = self.kube.request("GET", self.ref.resource, query=[("fieldSelector", f"metadata.name={self.ref.name}")])
        items = data.get("items") or []
        if not items:
            self.q.put(("job-gone", None))
            self.stop.set()
            return "0"
        self.q.put(("job", items[0]))
        return (data.get("metadata") or {}).get("resourceVersion") or items[0]["metadata"].get("resourceVersion", "0")

    def _job_event(self, typ: str, obj: dict) -> None:
        if (obj.get("metadata") or {}).get("name") != self.ref.name:
            return
        self.q.put(("job-gone", obj) if typ == "DELETED" else ("job", obj))

    def _pods_relist(self) -> str:
        data = self.kube.request("GET", "pods", query=[("labelSelector", f"{LABEL_JOB}={self.ref.name}")])
        with self.cond:
            names = set()
            for pod in data.get("items") or []:
                names.add(pod["metadata"]["name"])
                self._pod_update("MODIFIED", pod)
            for name in list(self.pods):
                if name not in names:
                    self._pod_update("DELETED", self.pods[name])
            self.pods_synced = True
            self.cond.notify_all()
        self.q.put(("pods-synced", None))
        return (data.get("metadata") or {}).get("resourceVersion", "0")

    def _pod_update(self, typ: str, pod: dict) -> None:
        name = pod["metadata"]["name"]
        with self.cond:
            if typ == "DELETED":
                if (self.pods.get(name) or {}).get("metadata", {}).get("uid") == pod["metadata"].get("uid"):
                    self.pods.pop(name, None)
            else:
                self.pods[name] = pod
            self.cond.notify_all()
        self.q.put(("pod", typ, pod))

    def _events_relist(self) -> str:
        data = self.kube.request("GET", "events")
        for ev in data.get("items") or []:
            self._event("ADDED", ev)
        return (data.get("metadata") or {}).get("resourceVersion", "0")

    def _event(self, typ: str, ev: dict) -> None:
        name = (ev.get("involvedObject") or {}).get("name", "")
        if typ == "DELETED" or not (name == self.ref.name or name.startswith(self.ref.name + "-")):
            return
        if ev.get("type") == "Warning" or ev.get("reason") in _WAIT_REASONS or ev.get("reason") == "Pulling":
            self.q.put(("event", name, ev.get("reason", ""), (ev.get("message") or "").strip()))

    # -- used by the tails -----------------------------------------------------------------
    def wait_started(self, name: str, uid: Optional[str]) -> bool:
        """Block until the pod's container started (True), or it is gone / will never start (False)."""
        with self.cond:
            while not self.stop.is_set():
                pod = self.pods.get(name)
                if pod is not None and pod["metadata"].get("uid") != uid:
                    return False
                if pod is not None and _started(pod):
                    return True
                if pod is None and self.pods_synced:
                    return False
                if self.state[0] in ("Succeeded", "Failed") or self.job_gone:
                    break
                self.cond.wait(1.0)
        if self.stop.is_set():
            return False
        # the job ended while our copy of the pod still looked unstarted: ask the server once
        return self.pod_now(name, uid) in ("final", "running", "restarting")

    def wait_pod_change(self, name: str, timeout: float) -> None:
        with self.cond:
            before = self.pods.get(name)
            self.cond.wait_for(lambda: self.stop.is_set() or self.pods.get(name) is not before, timeout)

    def pod_now(self, name: str, uid: Optional[str]) -> str:
        """After a log stream ended: 'final' (container done for good), 'gone', 'restarting' or 'running'."""
        try:
            pod = self.kube.request("GET", "pods", name, attempts=2)
        except K8sError as e:
            return "gone" if e.status == 404 else "running"
        if pod["metadata"].get("uid") != uid:
            return "gone"
        self._pod_update("MODIFIED", pod)
        phase = (pod.get("status") or {}).get("phase")
        state = _container(pod).get("state") or {}
        if phase in ("Succeeded", "Failed"):
            return "final"
        if "terminated" in state:
            return "final" if self.state[0] in ("Succeeded", "Failed") else "restarting"
        if "waiting" in state:
            return "restarting"
        return "running"

    # -- main loop ---------------------------------------------------------------------------
    def _start(self) -> None:
        kube, ns = self.kube, self.ref.namespace
        if self.ref.resource == "pytorchjobs":
            job_fn, job_args = kube.custom.list_namespaced_custom_object, ("kubeflow.org", "v1", ns, "pytorchjobs")
        else:
            job_fn, job_args = kube.batch.list_namespaced_job, (ns,)
        specs = [
            ("job", self.ref.resource, job_fn, job_args, {"field_selector": f"metadata.name={self.ref.name}"},
             self._job_relist, self._job_event),
            ("pods", "pods", kube.core.list_namespaced_pod, (ns,), {"label_selector": f"{LABEL_JOB}={self.ref.name}"},
             self._pods_relist, self._pod_update),
            ("events", "events", kube.core.list_namespaced_event, (ns,), {}, self._events_relist, self._event),
        ]
        for tag, what, fn, args, kw, relist, on_event in specs:
            t = threading.Thread(target=self._watch, args=(what, fn, args, kw, relist, on_event),
                                 name=f"ptjupyter-watch-{tag}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        """Stop every thread: shut their sockets down (again, for a watch that started meanwhile); at most ~2 s."""
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        threads = self._threads + list(self.tails.values())
        deadline = time.monotonic() + 2.0
        while True:
            for w in list(self._watches):
                try:
                    w.stop()
                except Exception:  # noqa: BLE001
                    pass
                _abort(getattr(w, "_resp", None))
            for t in list(self.tails.values()):
                _abort(t.resp)
            alive = [t for t in threads if t.is_alive()]
            if not alive or time.monotonic() > deadline:
                break  # a straggler is a daemon thread that exits when its request returns
            alive[0].join(0.05)

    def run(self) -> Any:
        self._start()
        drain_until = None
        try:
            while True:
                try:
                    item = self.q.get(timeout=0.2)
                except queue.Empty:
                    item = None
                if item is not None:
                    self._handle(item)
                if self.error is not None or self.job_gone:
                    break
                if self.state[0] in ("Succeeded", "Failed"):
                    if drain_until is None:
                        # Succeeded: wait for every pod's last lines (rank 0's result may be in any of them);
                        # Failed: the other pods may run on (cleanPodPolicy None), so only catch lines in flight
                        drain = self.drain_timeout if self.state[0] == "Succeeded" else FAILED_DRAIN
                        drain_until = time.monotonic() + drain
                        with self.cond:
                            self.cond.notify_all()
                    if self.pods_synced and self.q.empty() and (
                            all(not t.is_alive() for t in self.tails.values()) or time.monotonic() > drain_until):
                        break
        except KeyboardInterrupt:
            self.close()
            ns = "" if self.ref.namespace == "default" else f" -n {self.ref.namespace}"
            self.out(f"[ptjupyter] stopped following; job {self.ref.namespace}/{self.ref.name} keeps running. "
                     f"Reattach: %pytorch_elastic_jobs attach {self.ref.name}{ns}   "
                     f"Cancel: %pytorch_elastic_jobs cancel {self.ref.name}{ns}")
            raise
        finally:
            self.close()
        return self._outcome()

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "line":
            tail, text = item[1], item[2]
            if self.first_line_at is None:
                self.first_line_at = time.monotonic()
            if isinstance(self.sink, _DefaultSink):
                self.sink.line(tail.rank, "stdout", text, label=tail.label)
            else:
                self.sink.line(tail.rank, "stdout", text)
        elif kind == "job":
            self.job = item[1]
            self.state = job_state(self.job, self.ref.resource)
            self._show_status()
        elif kind == "job-gone":
            self.job_gone = True
        elif kind == "pod":
            typ, pod = item[1], item[2]
            md = pod["metadata"]
            uid = md.get("uid")
            if typ != "DELETED" and uid not in self.tails:
                t = _Tail(self, pod, self.tail)
                self.tails[uid] = t
                t.start()
            self._pod_state(pod, typ)
            self._show_status()
        elif kind == "event":
            _, name, reason, message = item
            self.events[name] = (reason, message)
            self._show_status()
        elif kind == "note":
            self.out(f"[ptjupyter] {item[1]}")
        elif kind == "error":
            self.error = item[1]

    def _pod_state(self, pod: dict, typ: str) -> None:
        label, rank = pod_label(pod)
        phase = (pod.get("status") or {}).get("phase", "Pending")
        cs = _container(pod)
        term = (cs.get("state") or {}).get("terminated")
        if typ == "DELETED":
            state, detail = "failed", "pod deleted"
        elif term is not None or phase in ("Succeeded", "Failed"):
            code = (term or {}).get("exitCode", 0 if phase == "Succeeded" else 1)
            state, detail = ("exited 0", "") if code == 0 else ("failed", f"exit {code}")
        elif _started(pod):
            state, detail = "running", ""
        else:
            state, detail = "starting", ""
        if self._pod_states.get(label) != (state, detail):
            self._pod_states[label] = (state, detail)
            if state == "failed" and label not in self._failed_order:
                self._failed_order.append(label)
            self.sink.state(rank, state, detail)

    def _show_status(self) -> None:
        state, reason, message = self.state
        pods = list(self.pods.values())
        running = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")
        why = ""
        for p in sorted(pods, key=lambda p: p["metadata"]["name"]):
            if (p.get("status") or {}).get("phase", "Pending") != "Pending":
                continue
            label = pod_label(p)[0]
            waiting = (_container(p).get("state") or {}).get("waiting") or {}
            sched = [c for c in (p.get("status") or {}).get("conditions") or []
                     if c.get("type") == "PodScheduled" and c.get("status") == "False"]
            ev = self.events.get(p["metadata"]["name"])
            if waiting.get("reason"):
                reason, detail = waiting["reason"], waiting.get("message", "")
            elif sched:
                reason, detail = sched[0].get("reason", "Unschedulable"), sched[0].get("message", "")
            else:
                reason, detail = "Pending", ""
            if ev:  # the latest warning event usually says the most (FailedScheduling, Failed to pull image, ...)
                detail = f"{ev[0]}: {ev[1]}"
            why = f"{label}: {reason}" + (f" ({detail})" if detail else "")
            break
        if not pods and not self.pods_synced:
            return
        if not pods and state not in ("Succeeded", "Failed"):
            ev = self.events.get(self.ref.name)
            why = f"{ev[0]}: {ev[1]}" if ev else "no pods yet"
        text = f"{state}" + (f", {running}/{len(pods)} pods running" if pods else "") + (f"; waiting: {why}" if why else "")
        if state in ("Succeeded", "Failed"):
            text = state + (f": {message}" if message and state == "Failed" else "")
        if text != self._status:
            self._status = text
            self.out(f"[ptjupyter] {self.ref.name}: {text}")

    def _outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        if self.job_gone and self.state[0] not in ("Succeeded", "Failed"):
            raise JobDeleted(f"job {self.ref.namespace}/{self.ref.name} was deleted while it was followed "
                             "(cancelled elsewhere, or removed by its TTL)")
        state, reason, message = self.state
        if state == "Failed":
            pod, lines = self._failing_pod()
            raise JobFailed(self.ref.name, self.ref.namespace, reason, message, pod, lines)
        if self.result_b64 is not None:
            import cloudpickle

            return cloudpickle.loads(base64.b64decode(self.result_b64))
        if self.result_note:
            self.out(f"[ptjupyter] {self.result_note}")
        elif self.ref.nonce and self.tail is None:
            self.out("[ptjupyter] rank 0's result line was not in the pods' logs (pods or logs removed before they "
                     "were read?); the value is None")
        return None

    def _failing_pod(self) -> tuple:
        """The pod that failed first (the others often fail because of it), with its traceback or last lines."""
        by_label = {t.label: t for t in self.tails.values()}
        first = [by_label[label] for label in self._failed_order if label in by_label]
        others = sorted((t for t in self.tails.values() if t.recent), key=lambda t: t.rank)
        for t in first + others:
            lines = list(t.recent)
            starts = [i for i, line in enumerate(lines) if _FAILED_LINE.match(line)]
            if starts:
                return t.pod, _traceback(lines[starts[-1]:])
        t = (first + others)[0] if first + others else None
        return (t.pod, lines[-LAST_LINES:]) if t is not None and (lines := list(t.recent)) else (None, [])


def _traceback(lines: list) -> list:
    """From ``[ptjupyter] rank N failed:`` to the end of that Python traceback (chained ones included)."""
    out = lines[:1]
    rest = lines[1:4 * LAST_LINES]
    for i, line in enumerate(rest):
        out.append(line)
        body = re.sub(r"^\[rank\d+\] ", "", line)
        if body and not body.startswith((" ", "\t", "Traceback", "During handling", "The above exception")):
            nxt = re.sub(r"^\[rank\d+\] ", "", rest[i + 1]) if i + 1 < len(rest) else ""
            if not nxt.startswith(("During handling", "The above exception")) and nxt.strip():
                break
    return out


def _abort(resp) -> None:
    """Unblock a thread reading ``resp`` (urllib3) by shutting its socket down."""
    if resp is None:
        return
    socks = []
    conn = getattr(resp, "connection", None) or getattr(resp, "_connection", None)
    socks.append(getattr(conn, "sock", None))
    try:  # urllib3 2 may have detached the connection; the socket is still under the http.client response
        socks.append(resp._fp.fp.raw._sock)
    except AttributeError:
        pass
    for sock in socks:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
