"""The rendezvous of a run: torch's c10d rendezvous, made local-only and restart-safe.

Registered with torch's handler registry under two names: ``ptjupyter-local`` (both stores listen
on 127.0.0.1 only: torch's bind every interface) and ``ptjupyter-c10d`` (inside a PyTorchJob pod,
where other nodes must reach the store). Both give each restart a fresh store for the workers.
"""
from __future__ import annotations

import contextlib
import socket

__all__ = ["register", "RDZV_LOCAL", "RDZV_POD"]

RDZV_LOCAL = "ptjupyter-local"
RDZV_POD = "ptjupyter-c10d"

_registered = False


def register(local: bool) -> str:
    """Register both handlers with torch (once); the name to put in ``LaunchConfig.rdzv_backend``."""
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
                if loopback:
                    return self._first_round_without_delay(super().next_rendezvous)
                return super().next_rendezvous()

            if loopback:
                def _create_tcp_store_server(self, master_addr, master_port):
                    return _loopback_store(master_port)

                def _first_round_without_delay(self, join):
                    with _local_shortcuts(skip_spread=True):
                        return join()

                def shutdown(self):
                    with _local_shortcuts(skip_spread=False):
                        return super().shutdown()

        cls = _HANDLER_CLASSES[(base, loopback)] = RestartSafeHandler
    handler.__class__ = cls
    return handler


@contextlib.contextmanager
def _local_shortcuts(skip_spread: bool):
    """Two costs torch's rendezvous pays that one local node does not need, switched off for a call.

    - a random 0-0.3 s sleep before the first round, which spreads many nodes' joins over time;
    - ``get_method_name()`` (``inspect.stack()``, reading source files) for every rendezvous event
      it records, evaluated even when the events go to a NullHandler (the default): ~40 ms a run.
    Polling delays are kept. Runs are serialised by the launcher, so the swap is not raced.
    """
    import logging

    from torch.distributed.elastic.events.handlers import get_logging_handler
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    delay, method_name = dr._delay, dr.get_method_name
    if skip_spread:
        dr._delay = lambda seconds: None if isinstance(seconds, tuple) else delay(seconds)
    if isinstance(get_logging_handler("dynamic_rendezvous"), logging.NullHandler):
        dr.get_method_name = lambda depth=2: "rendezvous"
    try:
        yield
    finally:
        dr._delay, dr.get_method_name = delay, method_name
