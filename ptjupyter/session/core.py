"""One session: long-lived ranks, a channel to them, and the cells, pulls and pushes run on them.

:class:`Session` owns a :class:`~ptjupyter.session.channel.KernelChannel` and a ranks backend
(:class:`~ptjupyter.session.local.LocalRanks`; a pod backend would provide the same few methods). Its
state is ``idle``, ``running``, ``broken`` (a rank died or did not stop when told; only ``stop``
and ``restart`` help) or ``stopped``. A failing rank fails the cell and the other ranks of that cell
are interrupted so none waits forever in a collective; ranks that get out keep their state.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional

from ..errors import PtjupyterError
from ..local.relay import last_redraw
from .errors import SessionBroken, SessionCellFailed, SessionStartFailed, SessionTimeout

__all__ = ["Session", "GRACE"]

GRACE = 1.0  # seconds ranks get to leave an interrupted cell before they are stopped (SIGTERM, SIGKILL)
START_TIMEOUT = 120.0


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Wait:
    """Replies to one command: ``done`` per rank, output lines on to the sink."""

    def __init__(self, seq: int, ranks, sink=None):
        self.seq, self.pending, self.sink, self.replies = seq, set(ranks), sink, {}


class Session:
    def __init__(self, plan, ranks_factory=None, grace: Optional[float] = None):
        from .channel import KernelChannel
        from .local import LocalRanks

        self.plan = plan
        self.world_size = plan.nproc_per_node
        self.timeout = plan.timeout  # each cell's default
        self.grace = GRACE if grace is None else float(grace)  # seconds an interrupted cell gets before the ladder
        self.chan = KernelChannel()
        self.ranks = (ranks_factory or LocalRanks)(plan)
        self.state = "starting"
        self.reason = ""  # why it is broken
        self.names: set = set()  # names the ranks hold (cells assigned them, or push): not shipped again
        self.env: dict = {}  # rank -> the torchrun environment it saw
        self.backend = plan.backend
        self.start_seconds = 0.0
        self._seq = 0

    # -- lifecycle
    def start(self) -> "Session":
        t0 = time.monotonic()
        try:
            self.ranks.start(self.chan.address, self.chan.key)
            ready = self._wait_ready(START_TIMEOUT)
        except BaseException:
            self._teardown("start failed")
            raise
        errors = {r: b["error"] for r, b in ready.items() if b.get("error")}
        if errors:
            rank = min(errors)
            self._teardown("start failed")
            raise SessionStartFailed(f"rank {rank} could not initialise the process group ({self.backend})",
                                     errors[rank].rstrip("\n").splitlines()[-6:])
        self.backend = ready[0]["backend"]
        self.env = {r: b["env"] for r, b in ready.items()}
        self.state = "idle"
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, timeout: float) -> dict:
        ready, deadline = {}, time.monotonic() + timeout
        while len(ready) < self.world_size:
            msgs, fired = self.chan.recv(100)
            for kind, body in msgs:
                if kind == "ready":
                    ready[body["rank"]] = body
                    self.ranks.ready(body["rank"], body["pid"])
                    self.chan.watch(self.ranks.fds)
                elif kind == "out":
                    _say(f"[rank{body['rank']}] {body['text']}")
            dead = self.ranks.died(fired)
            if dead:
                raise SessionStartFailed(f"rank {dead[0]} died while starting ({self.ranks.cause(dead[0])})")
            if not self.ranks.alive():
                err = self.ranks.error
                head = str(err).strip().splitlines()[0][:300] if err is not None and str(err).strip() else \
                    type(err).__name__ if err is not None else "the agent ended"
                raise SessionStartFailed(head)
            if time.monotonic() > deadline:
                raise SessionStartFailed(f"{self.world_size - len(ready)} rank(s) not ready after {timeout:g} s")
        return ready

    def stop(self) -> None:
        """Tell every rank to stop, wait for them (2 s), then the ladder for any left; idempotent."""
        if self.state == "stopped":
            return
        if self.state != "broken":
            for r in range(self.world_size):
                self.chan.send(r, "stop")
        self._teardown("stopped")

    def _teardown(self, why: str) -> None:
        deadline = time.monotonic() + 2.0
        while self.ranks.alive() and time.monotonic() < deadline:
            self.ranks.thread.join(0.05)
        if self.ranks.alive():
            self.ranks.kill(f"session {why}", say=lambda m: None)
        self.ranks.close()
        self.chan.close()
        self.state = "stopped"

    # -- commands
    def check(self) -> None:
        """Raise the one-line reason when the session cannot run a cell (broken, stopped, a rank gone)."""
        if self.state == "broken":
            raise SessionBroken(self.reason)
        if self.state == "stopped":
            from .errors import NoSession

            raise NoSession()
        dead = self.ranks.dead_ranks()
        if dead:
            self._broken(f"rank {dead[0]} died ({self.ranks.cause(dead[0])}) since the last cell")
            raise SessionBroken(self.reason, now=True)

    def _broken(self, reason: str) -> None:
        self.state, self.reason = "broken", reason
        self.ranks.kill("session broken", say=lambda m: None)

    def _send(self, kind: str, body: dict, ranks) -> _Wait:
        self._seq += 1
        body = dict(body, seq=self._seq)
        for r in ranks:
            self.chan.send(r, kind, body)
        return _Wait(self._seq, ranks)

    def _pump(self, wait: _Wait, deadline: Optional[float]) -> list:
        """Handle what arrives until ``deadline`` or until no rank is pending; returns ranks that died."""
        while wait.pending:
            if deadline is not None and time.monotonic() >= deadline:
                return []
            dead = self._pump_one(wait, deadline)
            if dead:
                return dead
        return []

    def _handle(self, wait: _Wait, kind: str, body: dict) -> None:
        if kind == "out":
            sink = wait.sink
            for text in body["text"].split("\n"):
                if "\r" in text:  # progress bars redraw with \r: what a terminal would show at the end
                    text = last_redraw(text)
                if sink is not None:
                    sink.line(body["rank"], body["stream"], text)
                else:
                    _say(f"[rank{body['rank']}] {text}")
        elif kind in ("done", "status") and body.get("seq") == wait.seq:
            wait.pending.discard(body["rank"])
            wait.replies[body["rank"]] = body
            if wait.sink is not None and kind == "done":
                wait.sink.state(body["rank"], "done" if body["ok"] else "failed",
                                "" if body["ok"] else body["error"]["type"])

    def run(self, fn: Callable, args=(), kwargs=None, *, sink=None, timeout: Optional[float] = None) -> Any:
        """Run ``fn`` (a cell: :class:`~ptjupyter.session.rank.InNamespace`) on every rank; rank 0's value."""
        __tracebackhide__ = True  # noqa: F841
        import cloudpickle

        self.check()
        timeout = self.timeout if timeout is None else timeout
        payload = cloudpickle.dumps((fn, tuple(args), kwargs or {}))
        ranks = range(self.world_size)
        if sink is not None:
            for r in ranks:
                sink.state(r, "running")
        self.state = "running"
        wait = self._send("run", {"payload": payload}, ranks)
        wait.sink = sink
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            dead = self._pump_until_failure(wait, deadline)
        except KeyboardInterrupt:
            self._stop_cell(wait, "interrupted")
            raise KeyboardInterrupt("interrupted: every rank left the cell and keeps its state") from None
        if dead:
            return self._rank_died(wait, dead[0])
        if wait.pending:  # the deadline passed
            unfinished = sorted(wait.pending)
            self._stop_cell(wait, f"timeout after {timeout:g} s", timeout=timeout, unfinished=unfinished)
            raise SessionTimeout(timeout, unfinished, "they were interrupted and are idle with their state")
        self.state = "idle"
        failed = {r: b for r, b in wait.replies.items() if not b["ok"]}
        if failed:
            first = min(failed, key=lambda r: (failed[r]["error"]["type"] == "KeyboardInterrupt", r))
            others = {r: f"{b['error']['type']}" if not b["ok"] else "ok" for r, b in wait.replies.items() if r != first}
            raise SessionCellFailed(first, failed[first]["error"], others)
        value = wait.replies.get(0, {}).get("value")
        return cloudpickle.loads(value) if value is not None else None

    def _pump_until_failure(self, wait: _Wait, deadline) -> list:
        """Like _pump, but once a rank fails, the ranks still in the cell are interrupted (none waits forever)."""
        while wait.pending:
            dead = self._pump_one(wait, deadline)
            if dead or (deadline is not None and time.monotonic() >= deadline):
                return dead
            if any(not b["ok"] for b in wait.replies.values()) and wait.pending:
                self._stop_cell(wait, f"rank {min(r for r, b in wait.replies.items() if not b['ok'])} failed")
                return []
        return []

    def _pump_one(self, wait: _Wait, deadline) -> list:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        msgs, fired = self.chan.recv(None if left is None else left * 1000)
        for kind, body in msgs:
            self._handle(wait, kind, body)
        return self.ranks.died(fired)

    def _stop_cell(self, wait: _Wait, what: str, *, timeout=None, unfinished=()) -> None:
        """Interrupt the ranks still in the cell; those not out within ``grace`` s: the ladder, and broken."""
        stuck = sorted(wait.pending)
        for r in stuck:
            self.chan.send(r, "interrupt", {"seq": wait.seq})
        dead = []
        try:
            dead = self._pump(wait, time.monotonic() + self.grace)
        except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
            pass
        if dead:
            self._rank_died(wait, dead[0])
        if not wait.pending:
            self.state = "idle"
            return
        stuck = sorted(wait.pending)
        who = ", ".join(f"rank {r}" for r in stuck)
        reason = f"{what}: {who} did not leave the cell within {self.grace:g} s of the interrupt"
        _say(f"ptjupyter: {reason}; stopping every rank (SIGTERM, then SIGKILL)")
        self._broken(reason)
        if timeout is not None:
            raise SessionTimeout(timeout, unfinished, f"{who} did not stop when interrupted; every rank was stopped "
                                 "and the session is broken (%pytorch_elastic_session restart; state is lost)")
        raise SessionBroken(f"{reason}: every rank was stopped", now=True)

    def _rank_died(self, wait: _Wait, rank: int):
        how = self.ranks.cause(rank)
        if wait.sink is not None:
            wait.sink.state(rank, "died", how)
        self._broken(f"rank {rank} died ({how})")
        raise SessionBroken(f"rank {rank} died ({how}) during the cell; the other ranks were stopped", now=True)

    def _command(self, kind: str, body: dict, ranks, timeout: float = 300.0) -> dict:
        self.check()
        wait = self._send(kind, body, ranks)
        dead = self._pump(wait, time.monotonic() + timeout)
        if dead:
            return self._rank_died(wait, dead[0])
        if wait.pending:
            raise PtjupyterError(f"{kind}: ranks {sorted(wait.pending)} did not answer within {timeout:g} s")
        return wait.replies

    def pull(self, name: str, ranks, cpu: bool = True) -> dict:
        """``{rank: value}`` of ``name`` on ``ranks``; sizes are returned by :meth:`pull_sizes`."""
        import cloudpickle

        replies = self._command("pull", {"name": name, "cpu": cpu}, ranks)
        failed = {r: b for r, b in replies.items() if not b["ok"]}
        if failed:
            r = min(failed)
            raise PtjupyterError(f"pull {name}: {failed[r]['error']['type']}: {failed[r]['error']['text']}")
        self.last_sizes = {r: len(b["value"]) for r, b in replies.items()}
        return {r: cloudpickle.loads(b["value"]) for r, b in sorted(replies.items())}

    def push(self, values: dict) -> int:
        """Send ``values`` (name -> value) to every rank's namespace; returns the pickled size."""
        import cloudpickle

        data = cloudpickle.dumps(values)
        replies = self._command("push", {"values": data}, range(self.world_size))
        failed = {r: b for r, b in replies.items() if not b["ok"]}
        if failed:
            r = min(failed)
            raise PtjupyterError(f"push: rank {r}: {failed[r]['error']['type']}: {failed[r]['error']['text']}")
        self.names.update(values)
        return len(data)

    def status(self) -> dict:
        """``{rank: {pid, host, state, rss, gpu}}``; ranks that do not answer within 2 s are missing."""
        if self.state in ("broken", "stopped"):
            return {}
        wait = self._send("status", {}, range(self.world_size))
        self._pump(wait, time.monotonic() + 2.0)
        return wait.replies
