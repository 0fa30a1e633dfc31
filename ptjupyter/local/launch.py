"""Run a training function on this machine with torch's elastic launch, as a :class:`~ptjupyter.plan.Plan` says.

``launch(plan, fn, ...)`` (``Mode.ELASTIC``) runs torch's ``elastic_launch`` in the calling thread
with ``fn`` shipped to every rank by cloudpickle, relays the workers' output to a sink while they
run, and returns rank 0's value. A failure is a :class:`~ptjupyter.errors.RankFailed` (first failing
rank, its exit code or signal, its own traceback); ``plan.timeout`` and Ctrl-C stop every worker
(SIGINT, SIGTERM, SIGKILL) before :class:`~ptjupyter.errors.RunTimeout` / ``KeyboardInterrupt``.

Modules: ``guard`` (Ctrl-C and the timeout), ``reaper`` (stopping processes), ``relay`` (output),
``failure`` (which rank failed first), ``worker`` (what each rank runs), ``warm`` (the forkserver),
``rdzv`` (rendezvous), ``ship`` (payload), ``direct`` (world size 1).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import uuid
from typing import Any, Callable, Optional

from ..errors import RunTimeout
from ..plan import Mode, Rendezvous
from . import keep, reaper, warm, worker
from .environ import overridden
from .failure import first_failure
from .guard import Guard, Stop
from .rdzv import register as register_rdzv
from .relay import PrintSink, Relay
from .ship import ship

__all__ = ["launch", "PrintSink", "Launch", "RUN_DIR_PREFIX", "remove_stale_run_dirs", "drop_frames", "no_main_reimport",
           "quiet_torch"]

logger = logging.getLogger("ptjupyter")
PREFIX = "[PYTORCH_ELASTIC]"

_ONE_RUN = threading.RLock()
RUN_DIR_PREFIX = "ptjupyter-run-"  # + the launching pid: a later run removes those of dead processes


def launch(plan, fn: Callable, args=(), kwargs=None, *, sink=None) -> Any:
    """Run ``fn(*args, **kwargs)`` on every rank of an ``ELASTIC`` plan and return rank 0's value.

    ``sink``: ``.line(rank, stream, text)`` and ``.state(rank, state, detail)``, called from a relay
    thread (default :class:`PrintSink`). Called through :func:`ptjupyter.execute.execute`, which
    checks the arguments.
    """
    assert plan.mode is Mode.ELASTIC, plan.mode  # execute() dispatches on the mode
    with _ONE_RUN:  # runs in one process take turns: each owns SIGINT and sweeps its workers
        return Launch(plan, fn, tuple(args), dict(kwargs or {}), sink or PrintSink()).run()


# -- elastic launch -------------------------------------------------------------------------------
class Launch:
    def __init__(self, plan, fn, args, kwargs, sink):
        self.plan, self.fn, self.args, self.kwargs, self.sink = plan, fn, args, kwargs, sink
        self.timeout, self.fresh = plan.timeout, plan.fresh
        self.grace = plan.grace if plan.grace is not None else reaper.TERM_WAIT  # SIGTERM -> SIGKILL
        self.log_folder = keep.run_folder(plan.log_dir) if plan.log_dir else None
        self.local = plan.rendezvous is Rendezvous.LOOPBACK
        self.relay: Optional[Relay] = None
        self.guard: Optional[Guard] = None
        self.run_dir = ""
        self._children_before: set = set()

    def start_method(self) -> str:
        if self.plan.start_method == "fork":
            return "fork"
        if self.fresh:
            return "spawn"
        return "forkserver"  # "spawn" and "forkserver" both get the warm, torch-preloaded forkserver

    def run(self) -> Any:
        with _ctrl_c_during_start_up():
            method = self.start_method()
            if method == "forkserver":
                warm.prewarm()  # first: the server imports torch while this process does
            payload = ship(self.fn, self.args, self.kwargs)
            from torch.distributed.elastic.multiprocessing import SignalException
            from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
            from torch.distributed.launcher.api import elastic_launch

            if method == "forkserver" and not warm.wait_ready(60):
                logger.warning("ptjupyter: the warm forkserver did not start; using spawn")
                method = "spawn"
        remove_stale_run_dirs()
        self.run_dir = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-")
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
        guard = self.guard = Guard(self.timeout, self._stop_workers)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s local launch: nproc_per_node=%d start_method=%s (plan: %s%s) max_restarts=%d "
                         "monitor_interval=%s rdzv=%s run_dir=%s", PREFIX, self.plan.nproc_per_node, method,
                         self.plan.start_method, ", fresh" if self.fresh else "", self.plan.max_restarts,
                         self.plan.monitor_interval, config.rdzv_backend, self.run_dir)
        try:
            try:
                guard.arm()
                self.relay.start()
                # torch's launcher sets TORCHELASTIC_SIGNALS_TO_HANDLE for the run and leaves it set
                with overridden(TORCHELASTIC_SIGNALS_TO_HANDLE=None), quiet_torch(), no_main_reimport():
                    result = elastic_launch(config, worker.entry)(payload, self.run_dir, env, os.getpid(), parents)
            finally:
                guard.defer()
                try:
                    self._cleanup()
                finally:
                    guard.disarm()
        # each outcome is raised outside its except block: the torch exception's frames (and with them
        # the rendezvous store and its port) must not stay reachable through __context__
        except Stop as e:
            error = self._stopped(guard.reason or e.reason)
        except ChildFailedError as e:
            failures = {r: (f.exitcode, f.message) for r, f in e.failures.items()}
            error = self._stopped(guard.reason) if guard.reason is not None else self._failure(failures)
        except SignalException as e:
            error = self._stopped(guard.reason) if guard.reason is not None else _Signalled(e.sigval)
        except BaseException as e:  # noqa: BLE001 - rendezvous errors and the like: keep the exception, not its frames
            error = self._stopped(guard.reason) if guard.reason is not None else e
            drop_frames(e)
        else:
            error = None
        if isinstance(error, _Signalled):
            os.kill(os.getpid(), error.sigval)  # the process was told to stop: do what it would have done
            raise RuntimeError(f"the local run was stopped by {error.sigval.name}")
        if error is not None:
            import gc

            gc.collect()  # frees the rendezvous store (and its port) held in reference cycles
            raise error
        if guard.late and guard.reason != "timeout":  # Ctrl-C just as the run ended
            raise KeyboardInterrupt
        value0 = (result or {}).get(0)
        import cloudpickle

        return cloudpickle.loads(value0) if isinstance(value0, bytes) else value0

    def _stopped(self, reason: Optional[str]) -> BaseException:
        if reason == "timeout":
            return RunTimeout(self.timeout, self._summary())
        return KeyboardInterrupt()

    # -- pieces -----------------------------------------------------------------------------------
    def launch_config(self, method: str):
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
        from torch.distributed.launcher.api import LaunchConfig

        plan = self.plan
        # LaunchConfig asks cuda.is_available(): the NVML check keeps later forks safe
        with overridden(PYTORCH_NVML_BASED_CUDA_CHECK="1"):
            return LaunchConfig(
                min_nodes=plan.min_nodes, max_nodes=plan.max_nodes, nproc_per_node=plan.nproc_per_node,
                run_id=plan.run_id or uuid.uuid4().hex,
                rdzv_backend=register_rdzv(self.local) if plan.rdzv_backend == "c10d" else plan.rdzv_backend,
                rdzv_endpoint=plan.rdzv_endpoint, rdzv_configs=dict(plan.rdzv_configs),
                max_restarts=plan.max_restarts, monitor_interval=plan.monitor_interval, start_method=method,
                local_addr="127.0.0.1" if self.local else None,
                logs_specs=DefaultLogsSpecs(log_dir=os.path.join(self.run_dir, "torch")),  # removed with the run
                signals_to_handle="SIGTERM,SIGHUP,SIGQUIT",  # SIGINT is ours during the run
                shutdown_timeout=max(1, round(self.grace)),
            )

    def worker_env(self) -> dict:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # as torchrun: a dead rank aborts the collectives
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
        reaper.ladder(pids, ranks={p: r for p, r in pids.items() if r is not None}, reason=what,
                      term_wait=self.grace, hurry=lambda: self.guard.hurry)  # a second Ctrl-C skips the waits

    def _cleanup(self) -> None:
        pids = self._worker_pids()
        left = reaper.sweep(pids)
        if left:
            logger.debug("%s swept leftover worker processes %s", PREFIX, sorted(left))
        if self.relay is not None and self.relay.ident:
            self.relay.finish(300)  # the workers are gone: every line they wrote is in the files
            if self.relay.is_alive():
                logger.warning("ptjupyter: the output sink is still busy; later lines may arrive after the run")
        if self.log_folder:
            try:
                keep.keep(self.run_dir, self.log_folder)
                print(f"ptjupyter: every rank's output is in {self.log_folder}", file=sys.stderr, flush=True)
            except OSError as e:
                logger.warning("ptjupyter: --log-dir: could not keep the output in %s: %s", self.log_folder, e)
                self.log_folder = None
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _summary(self) -> str:
        running = sorted({w.rank for w in self.relay.workers.values()}) if self.relay else []
        return f"ranks {', '.join(map(str, running))} were running" if running else "no rank had started"

    def _failure(self, torch_failures: dict):
        workers = list(self.relay.workers.values())
        for w in workers:
            if w.exitcode is None and w.proc is not None:
                try:
                    w.proc.join(0)  # reaps the exit code of a worker that is already gone
                except Exception:  # noqa: BLE001 - a process torch's agent already waited on
                    pass
        error = first_failure(workers, torch_failures, self.plan.max_restarts)
        if self.log_folder:
            error.name_log_file(keep.log_file(self.log_folder, error.rank, error.attempt))
        return error


class _Signalled:
    def __init__(self, sigval):
        self.sigval = sigval


@contextlib.contextmanager
def _ctrl_c_during_start_up():
    """Ctrl-C while a run starts (imports, the forkserver) stops it before any worker exists.

    Some imports catch everything, KeyboardInterrupt included; without this a Ctrl-C that lands in
    one is lost and the run goes on. The interrupt is noted here and honoured once start-up is done.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit = []

    def on_sigint(signum, frame):
        hit.append(signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except BaseException:
        if hit:  # e.g. an ImportError left behind by the import the interrupt cut short
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)
    if hit:
        raise KeyboardInterrupt


def remove_stale_run_dirs() -> None:
    """Remove run folders of processes that died without cleaning up (killed kernels)."""
    base = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(base) if n.startswith(RUN_DIR_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(RUN_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def drop_frames(e: BaseException) -> None:
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
    except Exception:  # noqa: BLE001 - no psutil or no interface list: gloo picks its own
        pass
    return None


class no_main_reimport:
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


class quiet_torch:
    """Keep torch elastic's agent logs (the "Root Cause" walls) out of the cell unless debugging."""

    def __enter__(self):
        self.saved = {}
        if logger.isEnabledFor(logging.DEBUG):
            return self
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")):
                lg = logging.getLogger(name)
                self.saved[name] = lg.level
                lg.setLevel(logging.CRITICAL + 1)
        return self

    def __exit__(self, *exc):
        for name, level in self.saved.items():
            logging.getLogger(name).setLevel(level)
        return False


