"""Run a training function on this machine as a :class:`~ptjupyter.plan.Plan` says.

``run(plan, fn, ...)``: ``Mode.DIRECT`` calls ``fn`` here (no pickling, no process, no port);
``Mode.ELASTIC`` runs torch's ``elastic_launch`` in the calling thread with ``fn`` shipped to every
rank by cloudpickle, relays the workers' output to a sink while they run, and returns rank 0's
value. Failures become :class:`~ptjupyter.local.errors.WorkerFailed` (first failing rank, its exit
code or signal, its own traceback); ``timeout`` and Ctrl-C stop every worker (SIGINT, SIGTERM,
SIGKILL) before :class:`~ptjupyter.local.errors.RunTimeout` / ``KeyboardInterrupt`` is raised.

Why not torch's own handling: its process context installs SIGINT/SIGTERM handlers in the main
thread that raise ``SignalException``, leaves them installed afterwards, and stops workers with one
signal and a 30 s wait. Here SIGINT stays ours for the run (the ladder runs in our handler, so the
agent cannot restart anything), torch keeps SIGTERM/SIGHUP/SIGQUIT, and every handler is restored.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Optional

from . import reaper, warm, worker
from .errors import RunTimeout, WorkerFailed, cause, hint_for
from .relay import PrintSink, Relay

__all__ = ["run", "WorkerFailed", "RunTimeout", "PrintSink"]

logger = logging.getLogger("ptjupyter")
PREFIX = "[PYTORCH_ELASTIC]"
RDZV_LOCAL = "ptjupyter-local"  # c10d rendezvous whose stores listen on 127.0.0.1 only
RDZV_POD = "ptjupyter-c10d"  # torch's c10d rendezvous with a fresh worker store per restart
_HANDLED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
# a rank that failed only because a peer went away (or was stopped) is not the root cause
_PEER_LOSS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "ECONNRESET",
              "remote process exited", "DistNetworkError", "Connection refused")


_ONE_RUN = threading.RLock()


class _Stop(BaseException):
    """Raised by our SIGINT handler once the workers are stopped; BaseException so torch's
    ``except Exception`` clauses cannot swallow it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def run(plan, fn: Callable, args=(), kwargs=None, *, sink=None, timeout: Optional[float] = None,
        fresh: bool = False) -> Any:
    """Run ``fn(*args, **kwargs)`` as ``plan`` says and return its (rank 0's) value.

    ``sink``: ``.line(rank, stream, text)`` and ``.state(rank, state, detail)``, called from a relay
    thread (default :class:`PrintSink`). ``timeout``: seconds, then every rank is stopped and
    :class:`RunTimeout` raised. ``fresh``: start workers with a plain spawn instead of the warm
    forkserver.
    """
    from ..plan import Mode

    if not callable(fn):
        raise TypeError(f"fn={fn!r} is not accepted; expected a callable")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args={args!r} is not accepted; expected a tuple of positional arguments")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"kwargs={kwargs!r} is not accepted; expected a dict of keyword arguments or None")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise ValueError(f"timeout={timeout!r} is not accepted; expected a number of seconds > 0 or None")
    if sink is not None and not (callable(getattr(sink, "line", None)) and callable(getattr(sink, "state", None))):
        raise TypeError(f"sink={sink!r} is not accepted; expected an object with .line(rank, stream, text) and "
                        ".state(rank, state, detail)")
    kwargs = kwargs or {}
    if plan.mode is Mode.DIRECT:
        return _direct(fn, args, kwargs, sink, timeout)
    if plan.mode is not Mode.ELASTIC:
        raise ValueError(f"plan.mode={plan.mode.value!r} is not accepted by the local launcher; expected 'direct' "
                         "or 'elastic' (Kubernetes plans run through ptjupyter.k8s.run)")
    if plan.max_nodes > 1 and not _in_pod(plan):
        raise ValueError(f"nnodes={plan.min_nodes}:{plan.max_nodes} is not accepted locally; a local run has one "
                         "node: use target='k8s' for several nodes")
    with _ONE_RUN:  # runs in one process take turns: each owns SIGINT and sweeps its workers
        return _Launch(plan, fn, args, kwargs, sink or PrintSink(), timeout, fresh).run()


def _in_pod(plan) -> bool:
    # inside a PyTorchJob pod the plan takes nodes and rendezvous from the operator's PET_* environment
    return plan.sources.get("nnodes") == "PET_* environment"


# -- direct call ----------------------------------------------------------------------------------
def _direct(fn, args, kwargs, sink, timeout):
    if sink is not None:
        sink.state(0, "running", f"pid {os.getpid()} (direct call)")
    guard = _Guard(timeout) if timeout is not None else None
    try:
        if guard is not None:
            guard.arm()
        result = fn(*args, **kwargs)
    except _Stop as e:
        stop = e.reason
    except BaseException as e:
        if sink is not None:
            sink.state(0, "failed", type(e).__name__)
        raise
    else:
        stop = None
    finally:
        if guard is not None:
            guard.disarm()
    if stop is not None:
        if sink is not None:
            sink.state(0, "failed", stop)
        if stop == "timeout":
            raise RunTimeout(timeout, "the direct call was interrupted")
        raise KeyboardInterrupt
    if sink is not None:
        sink.state(0, "exited 0")
    return result


class _Guard:
    """Owns SIGINT (main thread) during a run: Ctrl-C or the timeout run ``on_stop`` then raise ``_Stop``."""

    def __init__(self, timeout: Optional[float], on_stop: Callable[[str], None] = lambda reason: None):
        self.timeout = timeout
        self.on_stop = on_stop
        self.main = threading.current_thread() is threading.main_thread()
        self.reason: Optional[str] = None
        self.hurry = False
        self._armed = False
        self._deferring = False
        self.late = False  # Ctrl-C during the cleanup: raised once it is done
        self._stopping = False
        self._saved: dict = {}
        self._timer: Optional[threading.Timer] = None

    def arm(self) -> None:
        if self.main:
            for name in _HANDLED:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._saved[sig] = signal.getsignal(sig)
            signal.signal(signal.SIGINT, self._on_sigint)
        self._armed = True
        if self.timeout is not None:
            self._timer = threading.Timer(self.timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def defer(self) -> None:
        """From now on Ctrl-C is only noted (``late``): the cleanup must not be cut short."""
        self._armed = False
        self._deferring = True
        if self._timer is not None:
            self._timer.cancel()

    def disarm(self) -> None:
        """Stop the timer and put back the handlers this process had before the run (torch's included)."""
        self.defer()
        self._deferring = False
        for sig, handler in self._saved.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass

    def _expire(self) -> None:
        if not self._armed:
            return
        self.reason = self.reason or "timeout"
        if self.main:
            # a real signal to the main thread also breaks blocking waits (select, sleep) in torch's agent
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        else:
            self._stop()  # no handler possible off the main thread: stop the workers from here

    def _on_sigint(self, signum, frame):
        if self._deferring:
            self.late = True
            return
        if not self._armed:
            original = self._saved.get(signal.SIGINT)
            if callable(original):
                return original(signum, frame)
            raise KeyboardInterrupt
        if self._stopping:
            self.hurry = True  # a second Ctrl-C: skip the waits of the ladder
            return
        self.reason = self.reason or "interrupt"
        self._stop()
        raise _Stop(self.reason)

    def _stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.on_stop(self.reason)


# -- elastic launch -------------------------------------------------------------------------------
class _Launch:
    def __init__(self, plan, fn, args, kwargs, sink, timeout, fresh):
        self.plan, self.fn, self.args, self.kwargs = plan, fn, args, kwargs
        self.sink, self.timeout, self.fresh = sink, timeout, fresh
        self.local = not _in_pod(plan)
        self.relay: Optional[Relay] = None
        self.run_dir = ""
        self._children_before: set = set()

    def start_method(self) -> str:
        if self.plan.start_method == "fork":
            return "fork"
        if self.fresh:
            return "spawn"
        return "forkserver"  # "spawn" and "forkserver" both get the warm, torch-preloaded forkserver

    def run(self) -> Any:
        method = self.start_method()
        if method == "forkserver":
            warm.prewarm()  # first: the server imports torch while this process does
        payload = _ship(self.fn, self.args, self.kwargs)
        from torch.distributed.elastic.multiprocessing import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import elastic_launch

        if method == "forkserver" and not warm.wait_ready(60):
            logger.warning("ptjupyter: the warm forkserver did not start; using spawn")
            method = "spawn"
        self.run_dir = tempfile.mkdtemp(prefix="ptjupyter-run-")
        try:
            config = self.launch_config(method)
        except BaseException:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        env = self.worker_env()
        parents = [os.getpid()] + ([warm.server_pid()] if method == "forkserver" else [])
        import multiprocessing.process as mpp

        self._children_before = set(mpp._children.copy())
        self.relay = Relay(self.run_dir, self.sink, ranks=range(self.plan.nproc_per_node) if self.local else ())
        guard = _Guard(self.timeout, self._stop_workers)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s local launch: nproc_per_node=%d start_method=%s (plan: %s%s) max_restarts=%d "
                         "monitor_interval=%s rdzv=%s run_dir=%s", PREFIX, self.plan.nproc_per_node, method,
                         self.plan.start_method, ", fresh" if self.fresh else "", self.plan.max_restarts,
                         self.plan.monitor_interval, config.rdzv_backend, self.run_dir)
        outcome: tuple = ("ok", None)
        result = None
        saved_env = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")
        try:
            guard.arm()
            self.relay.start()
            with _quiet_torch(), _no_main_reimport():
                result = elastic_launch(config, worker.entry)(payload, self.run_dir, env, os.getpid(), parents)
        except _Stop as e:
            outcome = ("stop", e.reason)
        except ChildFailedError as e:
            outcome = ("failed", {r: (f.exitcode, f.message) for r, f in e.failures.items()})
        except SignalException as e:
            outcome = ("signal", e.sigval)
        except BaseException as e:  # rendezvous errors and the like: keep the exception, not its frames
            _drop_frames(e)
            outcome = ("error", e)
        finally:
            guard.defer()
            if saved_env is None:
                os.environ.pop("TORCHELASTIC_SIGNALS_TO_HANDLE", None)
            else:
                os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = saved_env
            try:
                self._cleanup()
            finally:
                guard.disarm()
        kind, value = outcome
        if guard.late and kind == "ok":
            raise KeyboardInterrupt
        if kind == "stop" or (kind != "ok" and guard.reason is not None):  # a result that made it wins
            if (guard.reason or value) == "timeout":
                raise RunTimeout(self.timeout, self._summary())
            raise KeyboardInterrupt
        if kind == "failed":
            raise self._failure(value)
        if kind == "signal":
            os.kill(os.getpid(), value)  # the process was told to stop: do what it would have done
            raise RuntimeError(f"the local run was stopped by {value.name}")
        if kind == "error":
            import gc

            gc.collect()  # frees the rendezvous store (and its port) held in reference cycles
            raise value
        value0 = (result or {}).get(0)
        import cloudpickle

        return cloudpickle.loads(value0) if isinstance(value0, bytes) else value0

    # -- pieces -----------------------------------------------------------------------------------
    def launch_config(self, method: str):
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
        from torch.distributed.launcher.api import LaunchConfig

        plan = self.plan
        saved = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # LaunchConfig asks cuda.is_available(): keep fork safe
        try:
            return LaunchConfig(
                min_nodes=plan.min_nodes, max_nodes=plan.max_nodes, nproc_per_node=plan.nproc_per_node,
                run_id=uuid.uuid4().hex,
                rdzv_backend=_register_rdzv(self.local) if plan.rdzv_backend == "c10d" else plan.rdzv_backend,
                rdzv_endpoint=plan.rdzv_endpoint, rdzv_configs=dict(plan.rdzv_configs),
                max_restarts=plan.max_restarts, monitor_interval=plan.monitor_interval, start_method=method,
                local_addr="127.0.0.1" if self.local else None,
                logs_specs=DefaultLogsSpecs(log_dir=os.path.join(self.run_dir, "torch")),  # removed with the run
                signals_to_handle="SIGTERM,SIGHUP,SIGQUIT",  # SIGINT is ours during the run
                shutdown_timeout=int(max(1, reaper.TERM_WAIT)),
            )
        finally:
            if saved is None:
                os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
            else:
                os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = saved

    def worker_env(self) -> dict:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        if self.local:
            lo = _loopback_interface()
            if lo:  # gloo/NCCL listen on the interface of the hostname otherwise
                env.setdefault("GLOO_SOCKET_IFNAME", lo)
                env.setdefault("NCCL_SOCKET_IFNAME", lo)
        return env

    def _worker_pids(self) -> dict[int, int]:
        """pid -> rank of every worker of this run seen so far (files or multiprocessing children)."""
        import multiprocessing.process as mpp

        pids = {w.pid: w.rank for w in list(self.relay.workers.values())} if self.relay else {}
        for proc in mpp._children.copy() - self._children_before:
            pid = getattr(proc, "pid", None)
            if pid and pid not in pids:
                pids[pid] = None
        return pids

    def _stop_workers(self, reason: str) -> None:
        if self.run_dir:
            try:  # a worker that starts from now on exits at once: no respawn behind our back
                open(os.path.join(self.run_dir, worker.STOP_FILE), "w").close()
            except OSError:
                pass
        pids = self._worker_pids()
        what = f"timeout after {self.timeout:g} s" if reason == "timeout" else "interrupted"
        reaper.ladder(pids, ranks={p: r for p, r in pids.items() if r is not None}, reason=what)

    def _cleanup(self) -> None:
        pids = self._worker_pids()
        left = reaper.sweep(pids)
        if left:
            logger.debug("%s swept leftover worker processes %s", PREFIX, sorted(left))
        if self.relay is not None and self.relay.ident:
            self.relay.finish(300)  # the workers are gone: every line they wrote is in the files
            if self.relay.is_alive():
                logger.warning("ptjupyter: the output sink is still busy; later lines may arrive after the run")
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _summary(self) -> str:
        running = sorted({w.rank for w in self.relay.workers.values()}) if self.relay else []
        return f"ranks {', '.join(map(str, running))} were running" if running else "no rank had started"

    def _failure(self, torch_codes: dict) -> WorkerFailed:
        workers = list(self.relay.workers.values())
        last = max((w.attempt for w in workers), default=0)
        current = [w for w in workers if w.attempt == last]
        for w in current:
            if w.exitcode is None and w.proc is not None:
                try:
                    w.proc.join(0)
                except Exception:
                    pass

        def bad(w) -> bool:
            return (w.exitcode not in (0, None)) or bool(w.fault) or bool(w.record and w.record.get("kind") != "ok")

        def when(w) -> float:
            if w.record and w.record.get("kind") != "ok":
                return w.record.get("time", float("inf"))
            return w.died_at or float("inf")

        def consequential(w) -> bool:
            text = (w.record or {}).get("traceback", "")
            if any(p in text for p in _PEER_LOSS):
                return True
            stopped = w.exitcode in (-signal.SIGTERM, -signal.SIGINT) and not w.record and not w.fault
            return stopped

        failed = [w for w in current if bad(w)]
        primary = [w for w in failed if not consequential(w)] or failed
        if primary:
            first = min(primary, key=when)
            code = first.exitcode
            if code is None and first.record and first.record.get("kind") != "ok":
                code = first.record.get("code", 1)
            if code is None and first.fault_signal():
                code = -int(getattr(signal, first.fault_signal()))
            text = (first.record or {}).get("traceback") or _fault_text(first.fault)
            rank = first.rank
        else:  # nothing of ours says why (it died before the worker helper ran): torch's report
            rank, (code, message) = min(torch_codes.items()) if torch_codes else (0, (None, ""))
            text = message if isinstance(message, str) and message not in ("", "<N/A>") else ""
        others = {w.rank: w.detail() for w in current if w.rank != rank and bad(w)}
        return WorkerFailed(rank, code, text, attempt=last, max_restarts=self.plan.max_restarts, others=others,
                            hint=hint_for(text))


def _fault_text(fault: str) -> str:
    return fault.strip() + "\n" if fault.strip() else ""


def _ship(fn, args, kwargs) -> bytes:
    import cloudpickle

    try:
        return cloudpickle.dumps((fn, tuple(args), kwargs, _sources(fn)))
    except Exception as e:
        raise TypeError(f"fn={getattr(fn, '__qualname__', fn)!r} (with its arguments) cannot be shipped to the "
                        f"workers: {type(e).__name__}: {e}") from None


def _sources(fn) -> tuple[dict, dict]:
    """File names and source lines of the functions shipped by value.

    cloudpickle renames shipped code to ``<dynamic-code>``; with these the worker puts the real
    file name back and fills ``linecache``, so a rank's traceback shows the user's source lines.
    """
    import linecache
    import types

    try:
        from cloudpickle.cloudpickle import _should_pickle_by_reference as by_ref
    except ImportError:  # pragma: no cover - other cloudpickle versions
        return {}, {}
    names, files = {}, {}
    fn = getattr(fn, "__func__", fn)
    if not isinstance(fn, types.FunctionType):
        return {}, {}
    code_names = set()
    stack = [fn.__code__]
    while stack:
        code = stack.pop()
        code_names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    candidates = [("", fn)] + [(n, fn.__globals__.get(n)) for n in sorted(code_names)]
    size = 0
    for key, f in candidates:
        if not isinstance(f, types.FunctionType) or by_ref(f):
            continue
        filename = f.__code__.co_filename
        names[key] = filename
        if filename not in files:
            lines = linecache.getlines(filename)
            size += sum(map(len, lines))
            if size < 4 << 20:
                files[filename] = lines
    return names, files


def _drop_frames(e: BaseException) -> None:
    import traceback

    tb = e.__traceback__
    if tb is not None:
        traceback.clear_frames(tb)
    e.__traceback__ = None
    e.__context__ = None


def _loopback_interface() -> Optional[str]:
    try:
        import psutil

        for name, addrs in psutil.net_if_addrs().items():
            if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addrs):
                return name
    except Exception:
        pass
    return None


class _no_main_reimport:
    """Workers started by this thread skip multiprocessing's re-run of ``__main__`` as ``__mp_main__``.

    fn travels by value (cloudpickle) and nothing else sent refers to ``__main__``, so re-running
    it would only cost time (a kernel's launcher, a script's top level on every rank) and break
    scripts without an ``if __name__ == "__main__":`` guard.
    """

    def __enter__(self):
        import multiprocessing.spawn as mps

        self.mps, self.original, ident = mps, mps.get_preparation_data, threading.get_ident()
        original = self.original

        def get_preparation_data(name):
            data = original(name)
            if threading.get_ident() == ident:  # other threads' processes keep the usual behaviour
                data.pop("init_main_from_path", None)
                data.pop("init_main_from_name", None)
            return data

        mps.get_preparation_data = get_preparation_data
        return self

    def __exit__(self, *exc):
        self.mps.get_preparation_data = self.original
        return False


class _quiet_torch:
    """Keep torch elastic's agent logs (the "Root Cause" walls) out of the cell unless debugging."""

    def __enter__(self):
        self.saved = {}
        if logger.isEnabledFor(logging.DEBUG):
            return self
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
                lg = logging.getLogger(name)
                self.saved[name] = lg.level
                lg.setLevel(logging.CRITICAL + 1)
        return self

    def __exit__(self, *exc):
        for name, level in self.saved.items():
            logging.getLogger(name).setLevel(level)
        return False


_registered = False


def _register_rdzv(local: bool) -> str:
    global _registered
    if not _registered:
        from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

        rendezvous_handler_registry.register(RDZV_LOCAL, _create_local_handler)
        rendezvous_handler_registry.register(RDZV_POD, _create_pod_handler)
        _registered = True
    return RDZV_LOCAL if local else RDZV_POD


def _loopback_store(port: int, timeout_s: int = 60):
    """A TCPStore server that listens on 127.0.0.1 only (torch's binds every interface)."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        port = sock.getsockname()[1]
        return TCPStore("127.0.0.1", port, is_master=True, multi_tenant=True, wait_for_workers=False,
                        timeout=timedelta(seconds=timeout_s), master_listen_fd=sock.detach())
    finally:
        sock.close()


def _create_local_handler(params):
    """torch's c10d rendezvous with both of its stores (rendezvous, and the one workers share) on 127.0.0.1."""
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler

    store = _loopback_store(0, params.get_as_int("read_timeout", 60))
    params.backend = "c10d"  # it is the c10d rendezvous; only the stores differ
    return _restart_safe(create_handler(store, C10dRendezvousBackend(store, params.run_id), params), True)


def _create_pod_handler(params):
    """torch's own c10d rendezvous (a PyTorchJob pod: other nodes must reach it), restart-safe."""
    from torch.distributed.elastic.rendezvous.registry import _create_c10d_handler

    params.backend = "c10d"
    return _restart_safe(_create_c10d_handler(params), False)


_HANDLER_CLASSES: dict = {}


def _restart_safe(handler, loopback: bool):
    """Give every rendezvous round (each restart) a new store for the workers (and, locally, on 127.0.0.1).

    torch 2.13 keeps the first round's shared TCPStore; the workers of a restart then find the
    previous attempt's gloo addresses in it and connect to dead peers ("Connection refused", or a
    hang). torch's worker side assumes "a new TCPStore for every retry"; this makes it true.
    A subclass, not patched attributes: no reference cycle keeps a store (and its port) alive.
    """
    base = type(handler)
    if not (hasattr(handler, "_shared_tcp_store_server") and hasattr(handler, "_bootstrap_store_info")):
        return handler  # another torch: leave it as it is
    cls = _HANDLER_CLASSES.get((base, loopback))
    if cls is None:
        class RestartSafeHandler(base):
            def next_rendezvous(self):
                self._shared_tcp_store_server = None  # the old server goes (its workers are gone)
                self._bootstrap_store_info = None
                return super().next_rendezvous()

            if loopback:
                def _create_tcp_store_server(self, master_addr, master_port):
                    return _loopback_store(master_port)

        cls = _HANDLER_CLASSES[(base, loopback)] = RestartSafeHandler
    handler.__class__ = cls
    return handler
