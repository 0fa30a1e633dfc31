"""The session channel refuses messages whose signature does not match the session's key (no unpickling)."""
from __future__ import annotations

import pickle
import threading
import time

import pytest

zmq = pytest.importorskip("zmq")

from ptjupyter.session import channel  # noqa: E402

UNPICKLED = []


def _mark():
    UNPICKLED.append(1)
    return "unpickled"


class Trap:
    def __reduce__(self):
        return (_mark, ())


def _raw(sock_type, address):
    ctx = zmq.Context.instance()
    s = ctx.socket(sock_type)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(address)
    return s


def _recv_all(chan, seconds=0.3):
    msgs, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        got, _ = chan.recv(50)
        msgs += got
    return msgs


def test_kernel_end_drops_a_bad_signature_and_keeps_a_good_one():
    chan = channel.KernelChannel()
    push = _raw(zmq.PUSH, chan.address["inbox"])
    try:
        data = pickle.dumps({"trap": Trap()})
        push.send_multipart([b"out", data, b"\0" * 32])  # a forged mac
        push.send_multipart(channel._pack(b"another key".ljust(32), "out", {"trap": Trap()}))  # someone else's key
        push.send_multipart([b"out", data])  # no mac at all
        push.send_multipart(channel._pack(chan.key, "out", {"text": "signed"}))
        msgs = _recv_all(chan)
        assert msgs == [("out", {"text": "signed"})] and not UNPICKLED
    finally:
        push.close(0)
        chan.close()


def test_rank_end_ignores_a_command_with_a_bad_signature():
    chan = channel.KernelChannel()
    got, event = [], threading.Event()

    def on_command(kind, body):
        got.append((kind, body))
        event.set()

    rank = channel.RankChannel(chan.address, chan.key, 0, on_command)
    try:
        deadline = time.monotonic() + 5
        while not chan.send(0, "ping") and time.monotonic() < deadline:  # until the ROUTER knows the rank
            time.sleep(0.02)
        assert event.wait(5)
        event.clear()
        frames = channel._pack(chan.key, "run", {"trap": Trap()})
        chan.router.send_multipart([channel.identity(0), frames[0], frames[1], b"\0" * 32])
        chan.send(0, "status", {"seq": 7})
        assert event.wait(5)
        assert [k for k, _ in got] == ["ping", "status"] and not UNPICKLED
    finally:
        rank.close()
        chan.close()
