"""Helpers shared by the magic tests (kept out of conftest so test modules can import them)."""
from __future__ import annotations

import sys

import pytest


def children():
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def launcher_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ptjupyter.local.launch") is not None


needs_launcher = pytest.mark.skipif(not launcher_available(), reason="ptjupyter.local.launch has not landed")
PY = sys.executable


class Kernel:
    """A real ipykernel (the venv's ``python3`` kernelspec) driven with jupyter_client."""

    def __init__(self, env=None):
        import os

        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        kenv = {**os.environ, **(env or {})}
        if "PTJUPYTER_STATUS" not in (env or {}):
            kenv.pop("PTJUPYTER_STATUS", None)  # the kernel picks its own status mode (html)
        self.km.start_kernel(env=kenv)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    @property
    def pid(self) -> int:
        return self.km.provisioner.pid

    def submit(self, code: str) -> str:
        return self.kc.execute(code)

    def collect(self, msg_id: str, timeout: float = 120, on_msg=None) -> tuple[dict, list]:
        """iopub messages of ``msg_id`` until the kernel is idle, then the execute reply."""
        import time

        msgs = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            msgs.append(msg)
            if on_msg is not None:
                on_msg(msg)
        reply = self.kc.get_shell_msg(timeout=max(1, deadline - time.monotonic()))
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=max(1, deadline - time.monotonic()))
        return reply["content"], msgs

    def run(self, code: str, timeout: float = 120) -> tuple[dict, list]:
        return self.collect(self.submit(code), timeout)

    def value(self, expr: str):
        import ast

        content, msgs = self.run(f"print(repr({expr}))")
        assert content["status"] == "ok", content
        return ast.literal_eval(stream_text(msgs))

    def stop(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def stream_text(msgs, name="stdout") -> str:
    return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream" and m["content"]["name"] == name)


def worker_processes(kernel_pid: int, infra: set) -> list:
    """Live descendants of the kernel other than the launcher's helpers (warm forkserver, resource tracker)."""
    import psutil

    try:
        procs = psutil.Process(kernel_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            if p.pid not in infra and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out
