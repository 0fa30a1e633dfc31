"""A session's ranks as processes on this machine, started by torch's elastic agent.

:class:`LocalRanks` runs ``elastic_launch`` in a background thread with the local launcher's own
pieces (its launch config and worker environment, the loopback rendezvous, the warm forkserver,
the worker helper: own process group, death with the kernel, records), the entrypoint being
:func:`ptjupyter.session.rank.serve`. So each rank sees the torchrun environment and the agent
watches the group as in a fresh run; the session's channel carries everything else. Deaths are
seen through pidfds; :meth:`cause` reads the exit code (the agent's ``Process``), the worker
record (``os._exit``) or the faulthandler file (fatal signals).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Optional

__all__ = ["LocalRanks"]

logger = logging.getLogger("ptjupyter")


class LocalRanks:
    """Start, watch and stop the rank processes of one session."""

    def __init__(self, plan):
        import dataclasses

        # a restarted rank would be a new process without the namespace: a death breaks the session instead
        self.plan = dataclasses.replace(plan, max_restarts=0)
        self.pids: dict[int, int] = {}  # rank -> pid, from the ranks' "ready"
        self.error: Optional[BaseException] = None  # what the agent thread ended with
        self.thread: Optional[threading.Thread] = None
        self.run_dir = ""
        self._pidfds: dict[int, int] = {}  # fd -> rank

    def start(self, address: dict, key: bytes) -> None:
        from ..local import launch as launch_mod
        from ..local import warm, worker
        from ..local.environ import overridden
        from ..local.ship import ship
        from . import rank as rank_mod

        launch_mod.remove_stale_run_dirs()
        self.run_dir = tempfile.mkdtemp(prefix=f"{launch_mod.RUN_DIR_PREFIX}{os.getpid()}-session-")
        helper = launch_mod.Launch(self.plan, rank_mod.serve, (), {}, None)
        helper.run_dir = self.run_dir
        method = helper.start_method()
        if method == "forkserver" and not warm.wait_ready(60):
            method = "spawn"
        config = helper.launch_config(method)
        env = helper.worker_env()
        parents = [os.getpid()] + ([warm.server_pid()] if method == "forkserver" else [])
        payload = ship(rank_mod.serve, (address, key, self.plan.backend), {})

        def agent():
            from torch.distributed.launcher.api import elastic_launch

            try:
                with overridden(TORCHELASTIC_SIGNALS_TO_HANDLE=None), launch_mod.quiet_torch(), \
                        launch_mod.no_main_reimport():
                    elastic_launch(config, worker.entry)(payload, self.run_dir, env, os.getpid(), parents)
            except BaseException as e:  # noqa: BLE001 - kept for the session to report (a rank died, start failed)
                self.error = e
                launch_mod.drop_frames(e)

        self.thread = threading.Thread(target=agent, name="ptjupyter-session-agent", daemon=True)
        self.thread.start()

    def ready(self, rank: int, pid: int) -> None:
        self.pids[rank] = pid
        try:
            self._pidfds[os.pidfd_open(pid)] = rank
        except (AttributeError, OSError):
            pass

    @property
    def fds(self) -> list:
        return list(self._pidfds)

    def died(self, fds) -> list:
        """Ranks whose pidfd fired (each reported once)."""
        out = []
        for fd in fds:
            rank = self._pidfds.pop(fd, None)
            if rank is not None:
                os.close(fd)
                out.append(rank)
        return out

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def dead_ranks(self) -> list:
        """Ranks that are gone though nobody asked them to go (checked without waiting)."""
        import select

        fired = []
        if self._pidfds:
            poller = select.poll()
            for fd in self._pidfds:
                poller.register(fd, select.POLLIN)
            fired = [fd for fd, _ in poller.poll(0)]
        return self.died(fired)

    def cause(self, rank: int, wait: float = 1.0) -> str:
        """``exit 3``, ``SIGKILL``, ``SIGSEGV``... of a dead rank (waits up to ``wait`` s for the agent to reap it)."""
        from ..local.relay import worker_info

        pid = self.pids.get(rank)
        deadline = time.monotonic() + wait
        while True:
            info = worker_info(self.run_dir, rank, 0, pid)
            if info.exitcode is not None or info.record or info.fault_signal() or time.monotonic() > deadline:
                return info.detail()
            time.sleep(0.02)

    def kill(self, reason: str, say) -> None:
        """The ladder for every rank still alive (SIGTERM at once: SIGINT already had its chance)."""
        from ..local import reaper

        pids = {pid: rank for rank, pid in self.pids.items()}
        reaper.ladder(pids, ranks=pids, reason=reason, say=say, int_wait=0.0)

    def close(self, wait: float = 10.0) -> None:
        """After the ranks were told to stop: wait for the agent, sweep what is left, remove the files."""
        from ..local import reaper

        if self.thread is not None:
            self.thread.join(wait)
        reaper.sweep(self.pids.values())
        for fd in list(self._pidfds):
            os.close(fd)
        self._pidfds.clear()
        if self.thread is not None and self.thread.is_alive():
            self.thread.join(5.0)
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
