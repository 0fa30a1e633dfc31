"""What each worker process runs: the picklable entrypoint torch's agent calls on every rank.

``entry(payload, run_dir, env, parents)`` puts the worker in its own process group, makes it die
with its parent, sends its fds 1/2 to per-rank files in ``run_dir`` that the relay tails, unpickles
``(fn, args, kwargs)`` (cloudpickle, so ``__main__`` functions, closures and lambdas work under
spawn/forkserver) and calls it. It leaves a record file saying how it ended (return, exception with
traceback, ``os._exit`` code) and a faulthandler file for fatal signals; the launcher reads them to
name the first failing rank and its cause.

Files, per rank and attempt (``TORCHELASTIC_RESTART_COUNT``), prefix ``r{rank}.a{attempt}``:
``.out``/``.err`` output, ``.pid`` (written once output is redirected), ``.fault``, ``.rec`` (JSON).
This module must stay importable without torch (it is preloaded in the forkserver with it).
"""
from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import signal
import sys
import time
import traceback

PR_SET_PDEATHSIG = 1
STOP_FILE = "stop"
# set by torch's agent for each worker: keep them over the kernel's environment shipped with the payload
_TORCH_KEYS = frozenset({
    "RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE", "WORLD_SIZE",
    "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "CUDA_VISIBLE_DEVICES",
})


def prefix(run_dir: str, rank: int, attempt: int) -> str:
    """Path prefix of one worker's files."""
    return os.path.join(run_dir, f"r{rank}.a{attempt}")


def write_json(path: str, data: dict) -> None:
    """Write ``data`` so that a reader never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _die_with_parent(parents) -> None:
    # the worker's parent is the kernel (spawn/fork) or the forkserver, which exits when the kernel does
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - not Linux: the process group and the launcher's sweep remain
        return
    if parents and os.getppid() not in parents:  # the parent died before prctl took effect
        os._exit(1)


def _redirect(path: str, fd: int):
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(out, fd)
    os.close(out)
    # line buffered: a line printed just before a crash is already in the file
    return open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)


def _apply_env(env: dict) -> None:
    # the forkserver's environment is the kernel's at prewarm time: apply the kernel's current one
    if env is None:
        return
    keep = {k: v for k, v in os.environ.items() if k in _TORCH_KEYS or k.startswith("TORCHELASTIC_")}
    os.environ.clear()
    os.environ.update(env)
    os.environ.update(keep)


def _watch_kernel(kernel_pid: int, run_dir: str) -> None:
    """Kill this worker's whole group when the launching process dies, even by SIGKILL.

    PR_SET_PDEATHSIG alone is not enough under the forkserver: the worker's parent is the server,
    which only exits once every worker has released its end of the server's "alive" pipe.
    """
    import threading

    def watch():
        try:
            fd = os.pidfd_open(kernel_pid)
            import select

            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll()
        except (AttributeError, OSError):
            while True:
                try:
                    os.kill(kernel_pid, 0)
                except ProcessLookupError:
                    break
                except OSError:
                    pass
                time.sleep(0.5)
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # nobody is left to read it
        if os.getpgid(0) == os.getpid():
            os.killpg(0, signal.SIGKILL)  # the worker and what it started
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="ptjupyter-kernel-watch", daemon=True).start()


def entry(payload: bytes, run_dir: str, env: dict = None, kernel_pid: int = 0, parents=()):
    """Run this rank: ``payload`` is cloudpickle's ``(fn, args, kwargs, sources)``; rank 0 returns its result
    pickled with cloudpickle (the others return None)."""
    try:
        os.setpgid(0, 0)  # own group: the launcher stops the worker and its children (DataLoader) together
    except OSError:
        pass
    _die_with_parent(set(parents))
    if kernel_pid:
        _watch_kernel(kernel_pid, run_dir)
    rank = int(os.environ.get("RANK", "0"))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    pre = prefix(run_dir, rank, attempt)
    _flush()
    sys.stdout = _redirect(pre + ".out", 1)
    sys.stderr = _redirect(pre + ".err", 2)
    fault = open(pre + ".fault", "w")
    faulthandler.enable(file=fault, all_threads=True)
    with open(pre + ".pid.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pre + ".pid.tmp", pre + ".pid")

    if os.path.exists(os.path.join(run_dir, STOP_FILE)):  # the run was stopped: never start user code again
        os._exit(1)
    _apply_env(env)
    from .rich import install

    install()  # display(obj) and plt.show() reach the cell (before the payload's references resolve)
    if "OMP_NUM_THREADS" in os.environ and "torch" in sys.modules:
        try:  # torch was imported (forkserver preload) before OMP_NUM_THREADS applied
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        except Exception:  # noqa: BLE001 - threads stay torch's default
            pass

    real_exit = os._exit

    def _exit(code):
        # os._exit skips every handler: note the code so the launcher can name it
        if code:
            try:
                write_json(pre + ".rec", {"kind": "exit", "code": int(code), "time": time.time()})
            except Exception:  # noqa: BLE001 - exiting anyway: the exit code still tells
                pass
        real_exit(code)

    os._exit = _exit
    try:
        import cloudpickle

        fn, args, kwargs, sources = cloudpickle.loads(payload)
        _restore_sources(fn, *sources)
        try:
            result = fn(*args, **(kwargs or {}))
        except SystemExit as e:
            if e.code not in (None, 0):
                raise
            result = None  # a worker exiting 0 without a return value would leave torch's agent waiting forever
        out = cloudpickle.dumps(result) if rank == 0 else None
    except BaseException as e:
        code = 1
        if isinstance(e, SystemExit):
            code = e.code if isinstance(e.code, int) else 1
        elif isinstance(e, KeyboardInterrupt):
            code = 128 + signal.SIGINT
        write_json(pre + ".rec", {"kind": "exception", "code": code, "time": time.time(),
                                  "traceback": _user_traceback(), "error": f"{type(e).__name__}: {e}"[:500]})
        if isinstance(e, KeyboardInterrupt):
            # torch's spawn wrapper swallows KeyboardInterrupt and exits 0, which its agent never notices
            _flush()
            real_exit(code)
        raise
    finally:
        os._exit = real_exit
        _flush()
    write_json(pre + ".rec", {"kind": "ok", "code": 0, "time": time.time()})
    return out


def _restore_sources(fn, names: dict, files: dict) -> None:
    """Give shipped functions back their file names and source lines (cloudpickle drops them)."""
    import linecache
    import types

    for filename, lines in files.items():
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    for key, filename in names.items():
        f = fn if key == "" else getattr(fn, "__globals__", {}).get(key)
        if isinstance(f, types.FunctionType) and f.__code__.co_filename == "<dynamic-code>":
            f.__code__ = _refile(f.__code__, filename)


def _refile(code, filename: str):
    consts = tuple(_refile(c, filename) if isinstance(c, type(code)) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream at exit has nothing to flush
            pass


def _user_traceback() -> str:
    """The current exception's traceback without this module's frame."""
    etype, value, tb = sys.exc_info()
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(etype, value, tb))
