"""Follow a submitted job until it ends: say why it waits, show every pod's log live with a ``[worker-i]``
prefix (``[node-i]`` in a TrainJob), and bring rank 0's return value back.

Threads: a :class:`~ptjupyter.k8s.watch.ResumableWatch` each for the job, its pods and the namespace's
events, a :class:`~ptjupyter.k8s.logs.LogTail` per pod; they feed one queue that the calling thread
drains, so output and ``KeyboardInterrupt`` stay in the caller's thread.
"""
from __future__ import annotations

import collections
import inspect
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import watch as _watch
from .errors import JobDeleted, JobFailed, K8sError, ResultUnreadable
from .logs import LogTail
from .ref import JobRef
from .result import ResultReader, decode
from .status import (
    FINAL,
    LAST_LINES,
    WAIT_REASONS,
    container_name,
    container_status,
    failure_lines,
    job_state,
    pod_label,
    pod_selector,
    pod_state,
    started,
    status_text,
)

__all__ = ["Follower", "JobRef", "reattach_hint"]

CUSTOM = {"pytorchjobs": ("kubeflow.org", "v1"), "trainjobs": ("trainer.kubeflow.org", "v1alpha1")}
FAILED_DRAIN = 2.0  # seconds to collect the lines in flight after a job failed


def reattach_hint(ref: JobRef, default_namespace: str = "default") -> str:
    """``Follow: ...   Cancel: ...`` with ``-n`` unless a bare ``%pytorch_elastic_jobs`` finds the job."""
    ns = "" if ref.namespace == default_namespace else f" -n {ref.namespace}"
    return f"%pytorch_elastic_jobs attach {ref.name}{ns}   Cancel: %pytorch_elastic_jobs cancel {ref.name}{ns}"


class _DefaultSink:
    def __init__(self, out: Callable[[str], Any]):
        self.out = out

    def line(self, rank: int, stream: str, text: str, label: Optional[str] = None) -> None:
        self.out(f"[{label or f'worker-{rank}'}] {text}")

    def state(self, rank: int, state: str, detail: str = "") -> None:
        pass


@dataclass
class _PodLog:
    """What the follower keeps of one pod's container log."""

    pod: str
    label: str
    rank: int
    reader: ResultReader
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10 * LAST_LINES))
    tail: Optional[LogTail] = None


class Follower:
    """Follow ``ref`` until it ends; :meth:`run` returns rank 0's value or raises ``JobFailed``/``K8sError``."""

    def __init__(self, kube, ref: JobRef, *, sink=None, out: Callable[[str], Any] = print, tail: Optional[int] = None,
                 drain_timeout: float = 30.0):
        self.kube, self.ref, self.out, self.tail = kube, ref, out, tail
        self.sink = sink if sink is not None else _DefaultSink(out)
        # a sink that takes the pod's label (worker-1, master-0, node-0) shows it; others name the index themselves
        self._labels = "label" in inspect.signature(self.sink.line).parameters
        self.drain_timeout = drain_timeout
        self.max_failures = _watch.MAX_FAILURES
        self.q: "queue.Queue" = queue.Queue()
        self.stop = threading.Event()
        self.cond = threading.Condition()  # guards pods / pods_synced, wakes the tails waiting on a pod
        self.pods: dict = {}  # name -> pod dict (latest seen)
        self.pods_synced = False
        self.job_gone = False
        self.state = ("Pending", "", "")
        self.logs: dict = {}  # pod uid -> _PodLog
        self.events: dict = {}  # involved object name -> (reason, message) of its latest warning
        self.error: Optional[BaseException] = None
        self._watches: list = []
        self._threads: list = []
        self._status = ""
        self._pod_states: dict = {}
        self._failed_order: list = []

    # -- what the watches hand over (their threads) -----------------------------------------
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
        data = self.kube.request("GET", "pods", query=[("labelSelector", pod_selector(self.ref.resource, self.ref.name))])
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
        if ev.get("type") == "Warning" or ev.get("reason") in WAIT_REASONS or ev.get("reason") == "Pulling":
            self.q.put(("event", name, ev.get("reason", ""), (ev.get("message") or "").strip()))

    # -- the pod side of a log tail (its thread) ---------------------------------------------
    def wait_started(self, name: str, uid: Optional[str]) -> bool:
        """Block until the pod's container started (True), or it is gone / will never start (False)."""
        with self.cond:
            while not self.stop.is_set():
                pod = self.pods.get(name)
                if pod is not None and pod["metadata"].get("uid") != uid:
                    return False
                if pod is not None and started(pod):
                    return True
                if pod is None and self.pods_synced:
                    return False
                if self.state[0] in FINAL or self.job_gone:
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
        state = container_status(pod).get("state") or {}
        if phase in FINAL:
            return "final"
        if "terminated" in state:
            return "final" if self.state[0] in FINAL else "restarting"
        if "waiting" in state:
            return "restarting"
        return "running"

    def _tail(self, pod: dict) -> _PodLog:
        md = pod["metadata"]
        name, uid = md["name"], md.get("uid")
        label, rank = pod_label(pod)
        rec = _PodLog(name, label, rank, ResultReader(self.ref.nonce))

        def on_line(text: str) -> None:
            if not rec.reader.feed(text):
                rec.recent.append(text)
                self.q.put(("line", rec, text))

        def open_stream(**kw):
            return self.kube.core.read_namespaced_pod_log(name, self.ref.namespace, **kw)

        rec.tail = LogTail(
            name, container=container_name(pod), open_stream=open_stream, wait_started=lambda: self.wait_started(name, uid),
            pod_now=lambda: self.pod_now(name, uid), wait_change=lambda t: self.wait_pod_change(name, t),
            on_line=on_line, on_note=lambda text: self.q.put(("note", text)),
            on_done=lambda: self.q.put(("tail-done", uid)), stop=self.stop, namespace=self.ref.namespace,
            label=label, tail=self.tail, max_failures=self.max_failures)
        return rec

    # -- main loop (the caller's thread) -----------------------------------------------------
    def _start(self) -> None:
        kube, ns = self.kube, self.ref.namespace
        if self.ref.resource in CUSTOM:
            job_fn, job_args = kube.custom.list_namespaced_custom_object, (*CUSTOM[self.ref.resource], ns, self.ref.resource)
        else:
            job_fn, job_args = kube.batch.list_namespaced_job, (ns,)
        specs = [
            ("job", self.ref.resource, job_fn, job_args, {"field_selector": f"metadata.name={self.ref.name}"},
             self._job_relist, self._job_event),
            ("pods", "pods", kube.core.list_namespaced_pod, (ns,), {"label_selector": pod_selector(self.ref.resource, self.ref.name)},
             self._pods_relist, self._pod_update),
            ("events", "events", kube.core.list_namespaced_event, (ns,), {}, self._events_relist, self._event),
        ]
        for tag, what, fn, args, kw, relist, on_event in specs:
            w = _watch.ResumableWatch(what, fn, args, kw, relist=relist, on_event=on_event,
                                      on_error=self._watch_failed(what), stop=self.stop, job=self.ref.name,
                                      namespace=ns, max_failures=self.max_failures)
            t = threading.Thread(target=w.run, name=f"ptjupyter-watch-{tag}", daemon=True)
            self._watches.append(w)
            self._threads.append(t)
            t.start()

    def _watch_failed(self, what: str) -> Callable[[BaseException], None]:
        if what == "events":  # nice for the status line, not needed to follow the job
            return lambda e: self.q.put(("note", f"not watching events ({str(e).split(';')[0]}); "
                                                 "the status line shows pod states only"))
        return lambda e: self.q.put(("error", e))

    def close(self) -> None:
        """Stop every thread: shut their sockets down (again, for a watch that started meanwhile); at most ~2 s."""
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        tails = [rec.tail for rec in self.logs.values() if rec.tail is not None]
        threads = self._threads + tails
        deadline = time.monotonic() + 2.0
        while True:
            for w in self._watches:
                w.close()
            for t in tails:
                t.close()
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
                if self.state[0] in FINAL:
                    if drain_until is None:
                        # Succeeded: wait for every pod's last lines (rank 0's result may be in any of them);
                        # Failed: the other pods may run on (cleanPodPolicy None), so only catch lines in flight
                        drain = self.drain_timeout if self.state[0] == "Succeeded" else FAILED_DRAIN
                        drain_until = time.monotonic() + drain
                        with self.cond:
                            self.cond.notify_all()
                    if self.pods_synced and self.q.empty() and (
                            all(not r.tail.is_alive() for r in self.logs.values()) or time.monotonic() > drain_until):
                        break
        except KeyboardInterrupt:
            self.close()
            self.out(f"[ptjupyter] stopped following; job {self.ref.namespace}/{self.ref.name} keeps running. "
                     f"Reattach: {reattach_hint(self.ref, getattr(self.kube, 'default_namespace', 'default'))}")
            raise
        finally:
            self.close()
        return self._outcome()

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "line":
            rec, text = item[1], item[2]
            if self._labels:
                self.sink.line(rec.rank, "stdout", text, label=rec.label)
            else:
                self.sink.line(rec.rank, "stdout", text)
        elif kind == "job":
            self.state = job_state(item[1], self.ref.resource)
            self._show_status()
        elif kind == "job-gone":
            self.job_gone = True
        elif kind == "pods-synced":
            self._show_status()
        elif kind == "pod":
            typ, pod = item[1], item[2]
            uid = pod["metadata"].get("uid")
            if typ != "DELETED" and uid not in self.logs:
                rec = self.logs[uid] = self._tail(pod)
                rec.tail.start()
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
        state = pod_state(pod, deleted=typ == "DELETED")
        if self._pod_states.get(label) != state:
            self._pod_states[label] = state
            if state[0] == "failed" and label not in self._failed_order:
                self._failed_order.append(label)
            self.sink.state(rank, *state)

    def _show_status(self) -> None:
        text = status_text(self.ref.name, self.state, list(self.pods.values()), self.events, self.pods_synced)
        if text is not None and text != self._status:
            self._status = text
            self.out(f"[ptjupyter] {self.ref.name}: {text}")

    def _outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        job = f"{self.ref.namespace}/{self.ref.name}"
        if self.job_gone and self.state[0] not in FINAL:
            raise JobDeleted(f"job {job} was deleted while it was followed (cancelled elsewhere, or removed by its TTL)")
        state, reason, message = self.state
        if state == "Failed":
            pod, lines = self._failing_pod()
            raise JobFailed(self.ref.name, self.ref.namespace, reason, message, pod, lines)
        readers = [rec.reader for rec in self.logs.values()]
        done = [r for r in readers if r.b64 is not None]
        if done:
            return decode(done[-1].b64, job)  # a pod that came later (recreated) wrote the value last
        corrupt = next((r.corrupt for r in readers if r.corrupt), None)
        if corrupt:
            raise ResultUnreadable(f"job {job} ran, but rank 0's return value could not be read back from its log: "
                                   f"{corrupt}")
        note = next((r.note for r in reversed(readers) if r.note), None)
        if note:
            self.out(f"[ptjupyter] {note}")
        elif self.ref.nonce and self.tail is None:
            self.out("[ptjupyter] rank 0's result line was not in the pods' logs (pods or logs removed before they "
                     "were read?); the value is None")
        return None

    def _failing_pod(self) -> tuple:
        """The pod that failed first (the others often fail because of it), with its traceback or last lines."""
        by_label = {rec.label: rec for rec in self.logs.values()}
        first = [by_label[label] for label in self._failed_order if label in by_label]
        others = sorted((rec for rec in self.logs.values() if rec.recent), key=lambda rec: rec.rank)
        for rec in first + others:
            lines = failure_lines(list(rec.recent))
            if lines:
                return rec.pod, lines
        rec = (first + others)[0] if first + others else None
        return (rec.pod, lines[-LAST_LINES:]) if rec is not None and (lines := list(rec.recent)) else (None, [])
