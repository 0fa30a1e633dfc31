"""The kernel <-> rank channel of a session: ZeroMQ sockets carrying signed, pickled messages.

The kernel binds two sockets on 127.0.0.1 (random ports): a ROUTER that sends commands to each rank
(addressed by identity ``rank<N>``) and a PULL that receives everything the ranks send (ready,
output lines, cell results). Each rank connects a DEALER (commands, read by one thread) and a PUSH
(sends from any thread, under a lock). A rank only needs the two addresses and the key, so it may run
on another machine (a pod) once the kernel binds an address the pod can reach.

Every message is ``[kind, body, mac]``: ``body`` is a pickled dict, ``mac`` its HMAC-SHA256 with the
session's random key (as Jupyter signs its own messages); a message with a bad mac is dropped unread,
so nothing another local user sends is ever unpickled.
"""
from __future__ import annotations

import hmac
import pickle
import secrets
import threading
from typing import Optional

__all__ = ["KernelChannel", "RankChannel", "identity"]


def identity(rank: int) -> bytes:
    return b"rank%d" % rank


def _pack(key: bytes, kind: str, body: dict) -> list:
    k = kind.encode()
    data = pickle.dumps(body, protocol=5)
    return [k, data, hmac.digest(key, k + data, "sha256")]


def _unpack(key: bytes, frames: list) -> Optional[tuple[str, dict]]:
    if len(frames) != 3:
        return None
    k, data, mac = frames
    if not hmac.compare_digest(mac, hmac.digest(key, k + data, "sha256")):
        return None
    return k.decode(), pickle.loads(data)


class KernelChannel:
    """The kernel's end: ``send(rank, kind, body)``, ``recv(timeout_ms, fds)``."""

    def __init__(self, host: str = "127.0.0.1"):
        import zmq

        self.zmq = zmq
        self.key = secrets.token_bytes(32)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.inbox = self.ctx.socket(zmq.PULL)
        for s in (self.router, self.inbox):
            s.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a rank that is gone is an error, not a silent drop
        p1 = self.router.bind_to_random_port(f"tcp://{host}")
        p2 = self.inbox.bind_to_random_port(f"tcp://{host}")
        self.address = {"commands": f"tcp://{host}:{p1}", "inbox": f"tcp://{host}:{p2}"}
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.inbox, zmq.POLLIN)
        self._fds: set = set()

    def send(self, rank: int, kind: str, body: Optional[dict] = None) -> bool:
        """False when the rank's socket is not connected (it died or never started)."""
        try:
            self.router.send_multipart([identity(rank)] + _pack(self.key, kind, body or {}))
            return True
        except self.zmq.ZMQError:
            return False

    def watch(self, fds) -> None:
        """Also wake :meth:`recv` when one of these file descriptors (pidfds) becomes readable."""
        for fd in set(fds) - self._fds:
            self.poller.register(fd, self.zmq.POLLIN)
        for fd in self._fds - set(fds):
            self.poller.unregister(fd)
        self._fds = set(fds)

    def recv(self, timeout_ms: Optional[float]) -> tuple[list, list]:
        """Messages ``(kind, body)`` that are ready (waiting up to ``timeout_ms``) and the watched fds that fired."""
        events = dict(self.poller.poll(timeout_ms))
        msgs, fired = [], [fd for fd in self._fds if fd in events]
        zmq = self.zmq
        for sock, skip in ((self.inbox, 0), (self.router, 1)):
            if sock not in events:
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = _unpack(self.key, frames[skip:])
                if msg is not None:
                    msgs.append(msg)
        return msgs, fired

    def close(self) -> None:
        for fd in list(self._fds):
            self.poller.unregister(fd)
        self._fds = set()
        self.router.close(0)
        self.inbox.close(0)
        self.ctx.term()


class RankChannel:
    """A rank's end: commands arrive on a thread (``on_command(kind, body)``); ``send`` works from any thread."""

    def __init__(self, address: dict, key: bytes, rank: int, on_command):
        import zmq

        self.zmq, self.key, self.rank = zmq, key, rank
        self.ctx = zmq.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.IDENTITY, identity(rank))
        self.push = self.ctx.socket(zmq.PUSH)
        for s in (self.dealer, self.push):
            s.setsockopt(zmq.LINGER, 2000)  # a last message (the result of "stop") still leaves
        self.dealer.connect(address["commands"])
        self.push.connect(address["inbox"])
        self._lock = threading.Lock()
        self._on_command = on_command
        self.dealer.send_multipart(_pack(key, "hello", {"rank": rank}))  # the ROUTER now knows this rank
        self._thread = threading.Thread(target=self._listen, name="ptjupyter-session-commands", daemon=True)
        self._thread.start()

    def send(self, kind: str, body: dict) -> None:
        frames = _pack(self.key, kind, body)
        with self._lock:
            self.push.send_multipart(frames)

    def _listen(self) -> None:  # the only user of the DEALER from here on
        try:
            while True:
                try:
                    frames = self.dealer.recv_multipart()
                except self.zmq.ZMQError:  # the context is being closed: the rank is exiting
                    return
                msg = _unpack(self.key, frames)
                if msg is not None and self._on_command(*msg) is False:
                    return
        finally:
            self.dealer.close(0)

    def close(self) -> None:
        """Send what is queued (up to 2 s) and close; the command thread ends with it."""
        with self._lock:
            self.push.close()
        self.ctx.term()
