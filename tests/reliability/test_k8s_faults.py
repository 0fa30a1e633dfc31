"""Kubernetes API faults injected at random moments of a real run against the fake API server (127.0.0.1).

Faults: the watches drop mid-stream or answer 410 Gone (as an ERROR event after a compaction, or as the
HTTP status of the watch request); a log stream is cut mid-line (1-3 times in a row); the server answers
500/503 for a while (retried with backoff) or for good (a bounded, one-line error); a pod is deleted and
recreated (same name, as the training operator does, or a new one, as the Job controller does); the job is
deleted from outside while it is followed.

Each time: the run reports what happened (its value and the Succeeded status, or one clear line), every line
each container wrote is shown exactly once and in order (checked against what the fake's containers really
wrote), the fake received a bounded number of requests and none arrive after the run returned.

Security (issue 7, item 5): runs through 401, 403, an unreachable API server and 500s with a kubeconfig
holding a token, or client-key-data + username/password: no secret appears in the output, the error
messages or any log record. That the payload's format version is checked before unpickling is tested in
tests/k8s/test_k8s_payload.py::test_payload_is_checked_before_unpickling (not repeated here).

Short form in CI (2-3 of each, fixed seeds); ``pytest -m soak tests/reliability/test_k8s_faults.py`` runs
about 20 of each (``SOAK_SEED=n`` for another draw).
"""
from __future__ import annotations

import base64
import collections
import logging
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))

import fake_k8s  # noqa: E402

from ptjupyter import Elastic, Layer, resolve  # noqa: E402
from tests.conftest import leftover_processes  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

COUNTS: collections.Counter = collections.Counter()
SHORT, SOAK = 2, 20
SOAK_SEED = int(os.environ.get("SOAK_SEED", "1"))
N_LINES, PAUSE = 24, 0.05
WATCH_LINES = 40  # a watch resumes 0.4 s after a drop (more after each failure): the run must outlast that
MARK = "##ptjupyter-result"
JOB = "ptj-fault"
BASE_REQUESTS = 40  # a healthy run needs ~15 requests; each fault adds its own allowance below


# -- the cell ------------------------------------------------------------------------------------
def numbered(n, pause):
    """Numbered lines, long enough for a cut in the middle to matter; returns n."""
    def cell():
        import time

        for i in range(n):
            print(f"line {i:03d} " + "abcdefghij" * 8 + f" end {i:03d}", flush=True)
            time.sleep(pause)
        return n
    return cell


def expected_line(i):
    return f"line {i:03d} " + "abcdefghij" * 8 + f" end {i:03d}"


# -- harness -------------------------------------------------------------------------------------
class Recorder:
    """A sink: the lines shown (rank, text), pod states; ``on_line(index, text)`` after each line."""

    def __init__(self, on_line=None):
        self.lines, self.states, self.on_line = [], [], on_line

    def line(self, rank, stream, text):
        self.lines.append((rank, text))
        if self.on_line:
            self.on_line(len(self.lines) - 1, text)

    def state(self, rank, state, detail=""):
        self.states.append((rank, state, detail))

    def texts(self):
        return [t for _, t in self.lines]


@pytest.fixture
def fake():
    with fake_k8s.FakeK8s(validate=False) as f:  # plain Jobs only: no CRD to parse
        yield f
    left = [p for p in leftover_processes(wait=5) if "multiprocessing" not in " ".join(_cmdline(p))]
    assert not left, [_cmdline(p)[:4] for p in left]


def _cmdline(p):
    try:
        return p.cmdline()
    except Exception:  # noqa: BLE001 - gone meanwhile
        return []


def plan(**overrides):
    return resolve(Elastic(), [Layer("test", {"image": "local/python:3.11", "job_name": JOB, **overrides})],
                   target="k8s")


def pod_names(fake):
    return [n for n in fake.names("pods") if n.startswith(JOB + "-")]


def run_cell(fake, on_line=None, n=N_LINES, api=None, **kw):
    """(value or exception, Recorder, printed lines)."""
    from ptjupyter.k8s import run

    rec, out = Recorder(on_line), []
    client = api or fake.api_client()
    try:
        try:
            value = run(plan(), numbered(n, PAUSE), api_client=client, sink=rec, out=out.append, **kw)
        except Exception as e:  # noqa: BLE001 - returned for the caller's assertions
            value = e
    finally:
        if api is None:
            client.close()
    return value, rec, out


def assert_lines_exact(fake, rec, upto=None):
    """Every line each container wrote, exactly once, in order, containers one after the other.

    ``upto``: a time.time() after which lines may legitimately be missing (the job was deleted then);
    what is shown must still be, per container, a prefix of what it wrote, without duplicates.
    """
    shown = rec.texts()
    assert not any(MARK in t for t in shown), "a result line was shown"
    partial = [t for t in shown if not (t[5:8].isdigit() and t == expected_line(int(t[5:8])))]
    assert not partial, partial[:3]  # no partial (or merged) line
    written = fake.written()
    want = []
    for pod, _uid, lines in written:
        texts = [text for t, text in lines if not text.startswith(MARK)]
        if upto is None:
            want.extend(texts)
        else:
            must = sum(1 for t, text in lines if not text.startswith(MARK) and t < upto - 0.05)  # 50 ms: thread scheduling
            got = shown[len(want):len(want) + len(texts)]
            assert len(got) >= must, (pod, len(got), must)
            assert got == texts[:len(got)], (pod, got[:3], texts[:3])
            want.extend(got)
    assert shown == want, _diff(shown, want)


def _diff(shown, want):
    c_s, c_w = collections.Counter(shown), collections.Counter(want)
    return {"missing": sorted((c_w - c_s).elements())[:5], "twice": sorted((c_s - c_w).elements())[:5],
            "shown": len(shown), "want": len(want)}


def assert_bounded(fake, allowance=0):
    """A bounded number of requests, and none after the run returned (no loop left running)."""
    n = len(fake.requests)
    assert n <= BASE_REQUESTS + allowance, collections.Counter((m, p.rsplit("/", 1)[-1], "watch" in q)
                                                               for m, p, q in fake.requests)
    time.sleep(0.5)
    assert len(fake.requests) == n, fake.requests[n:][:5]


def assert_succeeded(value, out, n=N_LINES):
    assert value == n, value if not isinstance(value, BaseException) else f"{type(value).__name__}: {value}"
    assert out[-1] == f"[ptjupyter] {JOB}: Succeeded", out[-3:]


def one_line(exc):
    msg = str(exc)
    assert msg and "\n" not in msg and "HTTP response" not in msg, msg
    return msg


def gaps(times):
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def request_times(fake, method, pattern, watch=None):
    import re

    rx = re.compile(pattern)
    return [t for (m, p, q), t in zip(list(fake.requests), list(fake.request_times), strict=False)
            if m == method and rx.search(p) and (watch is None or watch == ("watch" in q))]


# -- the faults ----------------------------------------------------------------------------------
def watch_drop(fake, rng):
    """Every watch connection is cut at a random line; they resume from their resourceVersion."""
    at = [rng.randint(2, 10)]
    if rng.random() < 0.5:  # a second drop once the watches are back (they wait 0.4 s after a failed one)
        at.append(at[0] + rng.randint(10, 14))

    def on_line(i, text):
        if i in at:
            fake.drop_watches()

    value, rec, out = run_cell(fake, on_line, n=WATCH_LINES)
    assert_succeeded(value, out, n=WATCH_LINES)
    assert_lines_exact(fake, rec)
    assert fake.count("GET", r"/jobs$", watch=True) >= 1 + len(at)
    assert fake.count("GET", r"/jobs$", watch=False) == 1  # resumed: no relist needed
    assert_bounded(fake, 3 * len(at))
    COUNTS["watch dropped"] += len(at)


def watch_410(fake, rng, how):
    """The watches' resourceVersion expires (ERROR 410 in the stream) or a watch request answers 410: relist."""
    at = rng.randint(2, WATCH_LINES - 26)

    def on_line(i, text):
        if i == at:
            if how == "event":
                fake.compact(drop_watches=True)  # in one step: no event can move a watch past the compaction
            else:
                for what in ("jobs", "pods", "events"):  # the next watch request of each answers 410
                    fake.fail("GET", rf"/{what}$", 410, times=1, watch=True,
                              message="too old resource version: 1 (99)", reason="Expired")
                fake.drop_watches()

    value, rec, out = run_cell(fake, on_line, n=WATCH_LINES)
    assert_succeeded(value, out, n=WATCH_LINES)
    assert_lines_exact(fake, rec)
    relists = fake.count("GET", r"/jobs$", watch=False)
    assert relists == 2, relists  # the first list and one after 410 Gone
    assert fake.count("GET", r"/pods$", watch=False) == 2
    assert_bounded(fake, 12)
    COUNTS[f"watch 410 Gone ({how})"] += 1


def log_drop(fake, rng):
    """The log stream is cut in the middle of a line, 1-3 times in a row, at a random line."""
    at, times = rng.randint(1, N_LINES - 6), rng.randint(1, 3)
    after = rng.randint(0, 3)

    def on_line(i, text):
        if i == at:
            fake.drop_log(pod_names(fake)[0], after_lines=after, times=times, mid_line=True)

    value, rec, out = run_cell(fake, on_line)
    assert_succeeded(value, out)
    assert_lines_exact(fake, rec)
    logs = fake.count("GET", r"/log$")
    assert 1 + times <= logs <= 2 + times, logs
    assert_bounded(fake, 3 * times)
    COUNTS["log dropped mid-line"] += times


TRANSIENT = [  # (method, path pattern, watch, when): when "submit" the fault is set before the run
    ("POST", r"/secrets$", None, "submit"),
    ("POST", r"/jobs$", None, "submit"),
    ("GET", r"/jobs$", False, "submit"),
    ("GET", r"/pods$", False, "submit"),
    ("GET", r"/jobs$", True, "run"),
    ("GET", r"/pods$", True, "run"),
    ("GET", r"/log$", None, "run"),
]


def transient_5xx(fake, rng, case):
    """500/503 for a while (1-3 answers), then the request goes through."""
    method, pattern, watch, when = case
    status, times = rng.choice((500, 503)), rng.randint(1, 3)
    at = rng.randint(2, N_LINES - 8)
    n = N_LINES
    if watch:  # a watch waits 0.4, 0.8, 1.6 s after its 1st, 2nd, 3rd failure: the run outlasts the retries
        times, at = rng.randint(1, 2), rng.randint(2, 6)
        n = 80

    def inject():
        fake.fail(method, pattern, status, times=times, watch=watch, message="etcdserver: leader changed")

    if when == "submit":
        inject()

    def on_line(i, text):
        if when == "run" and i == at:
            inject()
            if pattern.endswith("log$"):
                fake.drop_log(pod_names(fake)[0], after_lines=0, times=1)  # so that the tail reconnects
            else:
                fake.drop_watches()

    value, rec, out = run_cell(fake, on_line, n=n)
    assert_succeeded(value, out, n=n)
    assert_lines_exact(fake, rec)
    hits = request_times(fake, method, pattern, watch)
    assert len(hits) >= times + 1, (case, len(hits), times)
    if pattern.endswith("/log$"):
        assert len(hits) <= times + 2
    elif watch is None or not watch:
        assert len(hits) <= times + 1 + (pattern.endswith("pods$"))  # the relist is retried, not repeated
    assert min(gaps(hits[-times - 1:])) >= 0.2, gaps(hits)  # retried with a backoff, not at once
    assert_bounded(fake, 3 * times + 6)
    COUNTS[f"{status} transient"] += times


def persistent_5xx(fake, rng, case, monkeypatch):
    """500/503 for good: a bounded number of tries, then one clear line (or a note, for a log stream)."""
    from ptjupyter.k8s import client as kclient
    from ptjupyter.k8s import watch as kwatch  # MAX_FAILURES: of each watch and log stream
    from ptjupyter.k8s.errors import K8sError

    monkeypatch.setattr(kclient, "BACKOFF", 0.02)  # keep the short form short; the bound is what counts
    monkeypatch.setattr(kwatch, "MAX_FAILURES", 3)
    status = rng.choice((500, 503))
    method, pattern, watch = case
    at = rng.randint(2, N_LINES - 10)

    def inject():
        fake.fail(method, pattern, status, times=10 ** 6, watch=watch, message="etcdserver: request timed out")

    if method == "POST":
        inject()

    def on_line(i, text):
        if method == "GET" and i == at:
            inject()
            if pattern.endswith("log$"):
                fake.drop_log(pod_names(fake)[0], after_lines=0, times=1)
            else:
                fake.drop_watches()

    t0 = time.monotonic()
    value, rec, out = run_cell(fake, on_line)
    hits = len(request_times(fake, method, pattern, watch))
    if method == "POST":
        assert isinstance(value, K8sError), value
        msg = one_line(value)
        assert f"({status}" in msg and f"gave up after {kclient.ATTEMPTS} attempts" in msg, msg
        assert hits == kclient.ATTEMPTS and fake.names("secrets") == [] and fake.names("jobs") == []
    elif pattern.endswith("log$"):
        # the job itself succeeds; the log cannot be read: said once, the rest of the run goes on
        assert value is None, value
        assert any("log stream of worker-0 keeps failing; stopped tailing it" in line for line in out), out
        assert any("result line was not in the pods' logs" in line for line in out), out
        assert f"[ptjupyter] {JOB}: Succeeded" in out, out
        assert hits <= kwatch.MAX_FAILURES + 2, hits
        shown = rec.texts()
        assert shown == [expected_line(i) for i in range(len(shown))]  # what was shown: once, in order
    else:
        assert isinstance(value, K8sError), value
        msg = one_line(value)
        assert f"watching {'jobs' if 'jobs' in pattern else 'pods'} of job {JOB} failed" in msg and str(status) in msg, msg
        assert hits <= kwatch.MAX_FAILURES + 1 + 1, hits
        assert_lines_exact(fake, rec, upto=0)  # lines shown before: once, in order
    assert time.monotonic() - t0 < 30
    assert_bounded(fake, kwatch.MAX_FAILURES + 6)
    COUNTS[f"{status} persistent"] += 1


def pod_recreated(fake, rng, same_name):
    """The pod is deleted and created again (a new container from the start): both outputs, once each."""
    at = rng.randint(2, N_LINES - 4)
    new = []

    def on_line(i, text):
        if i == at:
            old = pod_names(fake)[0]
            new.append(fake.recreate_pod(old, new_name=None if same_name else f"{JOB}-again"))

    value, rec, out = run_cell(fake, on_line)
    assert new, "the fault was not injected"
    assert_succeeded(value, out)
    written = fake.written()
    assert len(written) == 2 and written[1][0] == new[0]
    assert_lines_exact(fake, rec)
    assert (0, "failed", "pod deleted") in rec.states
    assert_bounded(fake, 10)
    COUNTS["pod deleted and recreated"] += 1


def job_deleted(fake, rng):
    """The job is deleted from elsewhere while followed: one line saying so; what was shown, once and in order."""
    from ptjupyter.k8s.errors import JobDeleted

    at = rng.randint(0, N_LINES - 4)
    deleted = []

    def on_line(i, text):
        if i == at:  # from another thread, as kubectl would: the follower goes on meanwhile
            deleted.append(time.time())
            threading.Thread(target=fake.call, args=(fake._delete, ("jobs", "default", JOB))).start()

    value, rec, out = run_cell(fake, on_line, n=N_LINES * 4)
    assert isinstance(value, JobDeleted), value
    assert one_line(value) == (f"job default/{JOB} was deleted while it was followed (cancelled elsewhere, "
                               "or removed by its TTL)")
    assert_lines_exact(fake, rec, upto=deleted[0])
    assert fake.names("pods") == [] and fake.names("secrets") == []
    assert_bounded(fake, 4)
    COUNTS["job deleted"] += 1


# -- the cases -----------------------------------------------------------------------------------
def cases(reps, seed):
    rng = random.Random(seed)
    out = []
    for r in range(reps):
        out += [("watch_drop", None), ("watch_410", "event"), ("watch_410", "status"), ("log_drop", None),
                ("pod_recreated", r % 2 == 0), ("job_deleted", None)]
    if reps > SHORT:
        picks = list(range(len(TRANSIENT)))
        rng.shuffle(picks)
        out += [("transient_5xx", TRANSIENT[picks[i % len(picks)]]) for i in range(max(reps, len(TRANSIENT)))]
    else:  # one at submit, one on a watch, one on the log stream
        out += [("transient_5xx", rng.choice([c for c in TRANSIENT if c[3] == "submit"])),
                ("transient_5xx", rng.choice([c for c in TRANSIENT if c[2]])),
                ("transient_5xx", TRANSIENT[-1])]
    persistent = [("POST", r"/secrets$", None), ("GET", r"/jobs$", True), ("GET", r"/log$", None)]
    for _ in range(reps if reps > SHORT else 1):
        out += [("persistent_5xx", p) for p in persistent]
    return [(kind, arg, rng.randrange(1 << 30)) for kind, arg in out]


def _id(case):
    kind, arg, seed = case
    if isinstance(arg, tuple):
        arg = f"{arg[0]}{arg[1].replace('$', '').replace('/', '-')}{'-watch' if arg[2] else ''}"
    return f"{kind}-{arg}-{seed % 1000}"


def run_case(fake, kind, arg, seed, monkeypatch):
    rng = random.Random(seed)
    if kind == "watch_drop":
        watch_drop(fake, rng)
    elif kind == "watch_410":
        watch_410(fake, rng, arg)
    elif kind == "log_drop":
        log_drop(fake, rng)
    elif kind == "transient_5xx":
        transient_5xx(fake, rng, arg)
    elif kind == "persistent_5xx":
        persistent_5xx(fake, rng, arg, monkeypatch)
    elif kind == "pod_recreated":
        pod_recreated(fake, rng, arg)
    elif kind == "job_deleted":
        job_deleted(fake, rng)


SHORT_CASES = cases(SHORT, seed=11)


@pytest.mark.parametrize("kind,arg,seed", SHORT_CASES, ids=[_id(c) for c in SHORT_CASES])
def test_api_fault(fake, kind, arg, seed, monkeypatch):
    run_case(fake, kind, arg, seed, monkeypatch)


SOAK_CASES = cases(SOAK, seed=SOAK_SEED)


@pytest.mark.soak
@pytest.mark.parametrize("kind,arg,seed", SOAK_CASES, ids=[_id(c) for c in SOAK_CASES])
def test_soak_api_fault(fake, kind, arg, seed, monkeypatch):
    run_case(fake, kind, arg, seed, monkeypatch)


# -- security: no secret in anything printed, raised or logged ---------------------------------------
TOKEN = "sekret-TOKEN-0f9e8d7c6b5a"
PASSWORD = "sekret-PASSWORD-1a2b3c"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nsekretKEYmaterial4d5e6f\n-----END PRIVATE KEY-----\n"
CERT_PEM = "-----BEGIN CERTIFICATE-----\nsekretCERTmaterial7a8b9c\n-----END CERTIFICATE-----\n"


def _b64(text):
    return base64.b64encode(text.encode()).decode()


USERS = {
    "token": f"{{token: {TOKEN}}}",
    "key-and-password": (f"{{client-key-data: {_b64(KEY_PEM)}, client-certificate-data: {_b64(CERT_PEM)}, "
                         f"username: ann, password: {PASSWORD}}}"),
}
SECRETS = [TOKEN, PASSWORD, "sekretKEYmaterial", "sekretCERTmaterial", _b64(KEY_PEM), _b64(CERT_PEM),
           _b64(f"ann:{PASSWORD}"), _b64(KEY_PEM)[:24], _b64(CERT_PEM)[:24]]


def _kubeconfig(path, server, user):
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: '{server}'}}}}]\n"
        f"users: [{{name: u, user: {USERS[user]}}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n")
    return path


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


SECURITY_FAULTS = ("401", "403", "unreachable", "500-transient", "500-persistent", "watch-500-persistent")


@pytest.mark.parametrize("user", sorted(USERS))
def test_no_secret_is_printed_raised_or_logged(fake, user, tmp_path, monkeypatch, caplog, capsys):
    from ptjupyter import set_debug
    from ptjupyter.k8s import client as kclient
    from ptjupyter.k8s import run
    from ptjupyter.k8s import watch as kwatch

    monkeypatch.setattr(kclient, "BACKOFF", 0.02)
    monkeypatch.setattr(kwatch, "MAX_FAILURES", 2)
    caplog.set_level(logging.DEBUG)  # root
    caplog.set_level(logging.DEBUG, logger="ptjupyter")
    caplog.set_level(logging.DEBUG, logger="kubernetes")
    caplog.set_level(logging.DEBUG, logger="urllib3")
    set_debug(True)
    seen, n = [], 0
    try:
        for fault in SECURITY_FAULTS:
            server = f"http://127.0.0.1:{_closed_port()}" if fault == "unreachable" else fake.host
            monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / f"kubeconfig-{fault}", server, user)))
            monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
            if fault in ("401", "403"):
                fake.fail("POST", r"/secrets$", int(fault), message="Unauthorized" if fault == "401" else
                          'secrets is forbidden: User "ann" cannot create resource "secrets"')
            elif fault == "500-transient":
                fake.fail("POST", r"/jobs$", 500, times=2)
                fake.fail("GET", r"/log$", 500, times=1)
            elif fault == "500-persistent":
                fake.fail("POST", r"/secrets$", 500, times=10 ** 6)
            out = []
            name = f"ptj-sec-{fault}"

            def on_line(i, text, fault=fault):
                if fault == "watch-500-persistent" and i == 1:
                    fake.fail("GET", r"/jobs$", 500, times=10 ** 6, watch=True)
                    fake.drop_watches()

            rec = Recorder(on_line)
            try:
                value = run(resolve(Elastic(), [Layer("t", {"image": "local/python:3.11", "job_name": name})],
                                    target="k8s"), numbered(6, 0.05), sink=rec, out=out.append)
            except Exception as e:  # noqa: BLE001 - checked below
                value = e
            if fault == "500-transient":
                assert value == 6, (fault, value)
            else:
                assert isinstance(value, Exception), (fault, value)
                for x in _chain(value):
                    seen += [str(x), repr(x), repr(getattr(x, "args", ()))]
                one_line(value)
            seen.append(repr(value))
            fake.faults.clear()
            seen += out + rec.texts()
            n += 1
            COUNTS[f"secret scan ({fault})"] += 1
    finally:
        set_debug(False)
    captured = capsys.readouterr()
    seen += [captured.out, captured.err]
    seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert n == len(SECURITY_FAULTS) and any("unauthorized (401)" in s for s in seen)
    assert any("cannot reach the Kubernetes API server" in s for s in seen)
    assert len(caplog.records) > 0  # the debug lines were on
    sent = f"Bearer {TOKEN}" if user == "token" else f"Basic {_b64(f'ann:{PASSWORD}')}"
    assert sent in fake.auth  # the secret was really in play on every request
    blob = "\n".join(seen)
    leaked = [s for s in SECRETS if s in blob]
    assert not leaked, leaked
