"""What each rank of a session runs: the process group once, then commands from the kernel until ``stop``.

:func:`serve` is the entrypoint torch's elastic agent starts on every rank (through the local
launcher's worker helper, so each rank has the torchrun environment, dies with the kernel and
leaves a record of how it ended). It calls ``init_process_group`` once, answers ``ready`` and then
runs commands in the rank's *persistent* namespace: ``run`` (a cell or a function), ``pull`` (a
value, GPU tensors moved to CPU), ``push`` (values into the namespace), ``status``, ``stop``.
``interrupt`` (from the command thread) raises ``KeyboardInterrupt`` in the running cell only; an
idle rank ignores it. Output written to fds 1 and 2 (``print``, C code, subprocesses) goes to the
kernel over the channel (:mod:`.output`), all of it before the cell's result. Needs only the
channel's addresses and key: nothing here assumes that the kernel is on this machine.
"""
from __future__ import annotations

import builtins
import linecache
import os
import queue
import signal
import sys
import threading
import time
import traceback

__all__ = ["serve", "InNamespace"]


class InNamespace:
    """A captured cell run in the rank's namespace: names it assigns stay there for later cells."""

    def __init__(self, tree, filename: str, lines: list, names: dict):
        self.tree, self.filename, self.lines, self.names = tree, filename, lines, names

    def run(self, ns: dict):
        __tracebackhide__ = True  # noqa: F841
        linecache.cache[self.filename] = (sum(map(len, self.lines)), None, self.lines, self.filename)
        ns.update(self.names)
        name = self.tree.body[0].name
        exec(compile(self.tree, self.filename, "exec"), ns)
        return ns.pop(name)()

    def __call__(self):  # outside a session: a plain function with a namespace of its own
        return self.run({"__name__": "__main__", "__builtins__": builtins})


class _Rank:
    def __init__(self, address: dict, key: bytes, backend: str):
        from .channel import RankChannel

        self.rank = int(os.environ.get("RANK", "0"))
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.running = None  # seq of the cell in progress
        self.lock = threading.Lock()
        self.main = threading.main_thread().ident
        self.ns = {"__name__": "__main__", "__builtins__": builtins}
        signal.signal(signal.SIGINT, self._on_sigint)
        self.chan = RankChannel(address, key, self.rank, self._on_command)
        self.backend = backend

    # -- the command thread
    def _on_command(self, kind: str, body: dict):
        if kind == "interrupt":
            with self.lock:
                if self.running is not None and self.running == body.get("seq"):
                    signal.pthread_kill(self.main, signal.SIGINT)
            return None
        if kind == "status":
            self.chan.send("status", dict(self._status(), seq=body.get("seq")))
            return None
        self.commands.put((kind, body))
        return False if kind == "stop" else None

    def _on_sigint(self, signum, frame):
        if self.running is not None:  # only the cell's code is interrupted, never the loop
            raise KeyboardInterrupt

    def _status(self) -> dict:
        rss = gpu = None
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            gpu = torch.cuda.memory_allocated()
        return {"rank": self.rank, "pid": os.getpid(), "host": os.uname().nodename, "rss": rss, "gpu": gpu,
                "state": "idle" if self.running is None else "running"}

    # -- the main thread
    def serve(self) -> None:
        from .output import Output

        self.output = Output(lambda stream, text: self.chan.send("out", {"rank": self.rank, "stream": stream,
                                                                         "text": text}))
        self.output.install()
        error = None
        try:
            import torch.distributed as dist

            backend = self.backend
            if backend == "auto":
                import torch

                backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                import torch

                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend)
        except BaseException:  # noqa: BLE001 - reported to the kernel, which fails the start
            error = traceback.format_exc()
        self.chan.send("ready", {"rank": self.rank, "pid": os.getpid(), "host": os.uname().nodename,
                                 "backend": backend, "error": error, "env": _torchrun_env()})
        if error is None:
            while self._one(*self.commands.get()):
                pass
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        self._flush()
        self.chan.close()

    def _one(self, kind: str, body: dict) -> bool:
        seq = body.get("seq")
        reply = {"rank": self.rank, "seq": seq, "ok": True}
        try:
            if kind == "stop":
                return False
            if kind == "run":
                reply.update(self._run(seq, body["payload"], body.get("want_value", self.rank == 0)))
            elif kind == "pull":
                reply.update(self._pull(body["name"], body.get("cpu", True)))
            elif kind == "push":
                import cloudpickle

                self.ns.update(cloudpickle.loads(body["values"]))
        except BaseException as e:  # noqa: BLE001 - every failure is the kernel's to report
            reply.update(ok=False, error=_error(e))
        self._flush()
        self.chan.send("done", reply)
        return True

    def _run(self, seq, payload: bytes, want_value: bool) -> dict:
        import cloudpickle

        fn, args, kwargs = cloudpickle.loads(payload)
        with self.lock:
            self.running = seq
        try:
            t = time.perf_counter()
            value = fn.run(self.ns) if isinstance(fn, InNamespace) else fn(*args, **(kwargs or {}))
            t = time.perf_counter() - t
        finally:
            with self.lock:
                self.running = None
        return {"value": cloudpickle.dumps(value) if want_value else None, "seconds": t}

    def _pull(self, name: str, cpu: bool) -> dict:
        import cloudpickle

        if name not in self.ns:
            raise NameError(f"rank {self.rank} has no variable {name!r}")
        value = self.ns[name]
        return {"value": cloudpickle.dumps(_to_cpu(value) if cpu else value)}

    def _flush(self) -> None:
        output = getattr(self, "output", None)
        if output is not None:
            output.flush()


def _to_cpu(value):
    """Tensors (also in dicts, lists, tuples) on an accelerator -> CPU copies."""
    torch = sys.modules.get("torch")
    if torch is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.cpu() if value.device.type != "cpu" else value
    if isinstance(value, dict):
        return type(value)((k, _to_cpu(v)) for k, v in value.items()) if type(value) is not dict else \
            {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _error(e: BaseException) -> dict:
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:  # this module's frames are not the user's
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(e), e, tb))
    return {"type": type(e).__name__, "text": str(e)[:500], "traceback": text}


def _torchrun_env() -> dict:
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "TORCHELASTIC_RUN_ID")
    return {k: os.environ.get(k) for k in keys}


def serve(address: dict, key: bytes, backend: str = "auto") -> None:
    """The rank's whole life in a session (the entrypoint of each worker)."""
    _Rank(address, key, backend).serve()
