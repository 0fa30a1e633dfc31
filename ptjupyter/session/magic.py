"""``%pytorch_elastic_session start|stop|restart|status|pull|push``: the session's line magic.

Registered by :func:`ptjupyter.magics.load_ipython_extension` next to ``%%pytorch_elastic``, whose
instance supplies the lower layers (``%config PytorchElastic.*``, the widget panel), so a session
resolves its options like a cell does. Imports nothing heavy until a command runs.
"""
from __future__ import annotations

import sys
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..config import START_METHODS
from ..errors import PtjupyterError
from ..plan import BACKENDS, Layer
from ..usage import OptionError

__all__ = ["SessionMagics", "ACTIONS"]

ACTIONS = ("start", "stop", "restart", "status", "pull", "push")


@magics_class
class SessionMagics(Magics):
    def __init__(self, shell=None, elastic=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self.elastic = elastic  # the PytorchElastic instance: its %config and widget layers
        self.last_args = None

    @magic_arguments(name="%pytorch_elastic_session")
    @argument("action", choices=ACTIONS, help="start, stop, restart, status, pull NAME..., push NAME...")
    @argument("names", nargs="*", metavar="NAME", help="pull/push: variable names.")
    @argument("--nproc-per-node", type=int, metavar="N", help="start/restart: ranks of the session.")
    @argument("--start-method", choices=START_METHODS, help="start/restart: spawn (default), forkserver or fork.")
    @argument("--backend", choices=BACKENDS, help="start/restart: the process group's backend (auto: nccl with a "
                                                  "GPU, else gloo).")
    @argument("--timeout", type=float, metavar="S", help="start/restart: each session cell's default --timeout.")
    @argument("--grace", type=float, metavar="S", help="start/restart: seconds an interrupted or timed-out cell's "
                                                       "ranks get to leave it before they are stopped (default 1).")
    @argument("--fresh", action="store_true", default=None, help="start/restart: new processes (no warm start-up).")
    @argument("--config", metavar="NAME", help="start/restart: an Elastic(...) object in the notebook.")
    @argument("--rank", type=int, default=0, metavar="R", help="pull: the rank to pull from (default 0).")
    @argument("--all", action="store_true", help="pull: from every rank, as a dict rank -> value (also returned).")
    @argument("--keep-device", action="store_true", help="pull: leave tensors on their GPU (default: CPU copies).")
    @line_magic
    def pytorch_elastic_session(self, line: str = "") -> Any:
        """Persistent ranks for ``%%pytorch_elastic --session`` cells.

        ``start`` starts the ranks once (torch elastic rendezvous, the torchrun environment on each
        rank, ``init_process_group`` called once); session cells then run in each rank's own
        namespace, which lives until ``stop``. ``restart`` stops and starts again (the ranks' state is
        lost). ``status`` shows each rank's pid, state and memory. ``pull NAME [--rank R | --all]``
        brings a value into the notebook; ``push NAME...`` sends notebook values to every rank.

        Examples::

            %pytorch_elastic_session start --nproc-per-node 2 --backend gloo
            %pytorch_elastic_session pull model_state --all
        """
        __tracebackhide__ = True  # noqa: F841
        args = parse_argstring(self.pytorch_elastic_session, line)
        if args.action in ("pull", "push") and not args.names:
            raise OptionError(f"{args.action} needs at least one NAME; e.g. %pytorch_elastic_session {args.action} x")
        if args.action not in ("pull", "push") and args.names:
            raise OptionError(f"{args.action} takes no NAME (got {' '.join(args.names)})")
        if args.grace is not None and not 0 <= args.grace < float("inf"):
            raise OptionError(f"--grace {args.grace:g} is not accepted; give the seconds (>= 0) ranks get to leave an "
                              "interrupted cell (default 1)")
        try:
            return getattr(self, "_" + args.action)(args)
        except OptionError:
            raise
        except PtjupyterError as e:
            raise e from None

    # -- actions
    def _plan(self, args):
        from ..plan import resolve

        extra = [self.elastic._config_object_layer(args.config)] if args.config and self.elastic else []
        extra.append(Layer("session flags", {
            "nproc_per_node": args.nproc_per_node, "start_method": args.start_method, "backend": args.backend,
            "timeout": args.timeout, "fresh": args.fresh, "session": True}))
        layers = self.elastic.resolve_layers(tuple(extra)) if self.elastic else extra
        try:
            plan = resolve(None, layers)
        except PtjupyterError as e:
            raise OptionError(e.headline) from None
        for note in plan.warnings:
            print(f"Warning: {note}", file=sys.stderr, flush=True)
        return plan

    def _start(self, args):
        from .. import session

        s = session.start(self._plan(args), grace=args.grace)  # refuses a second one before any process starts
        self.last_args = args
        print(f"pytorch_elastic session: {s.world_size} ranks ({s.backend}) started in {s.start_seconds:.1f} s")

    def _stop(self, args):
        from .. import session

        s = session.current()
        if not session.stop():
            print("pytorch_elastic session: no session was running")
            return
        print(f"pytorch_elastic session: stopped ({s.world_size} ranks)")

    def _restart(self, args):
        from .. import session

        given = any(getattr(args, k) is not None for k in ("nproc_per_node", "start_method", "backend", "timeout",
                                                             "fresh", "config"))
        plan_args = args if given or self.last_args is None else self.last_args
        plan = self._plan(plan_args)
        grace = args.grace if args.grace is not None else getattr(session.current(), "grace", None)
        had = session.stop()
        s = session.start(plan, grace=grace)
        self.last_args = plan_args
        lost = "the ranks' state (names) is lost; " if had else ""
        print(f"pytorch_elastic session: restarted, {lost}{s.world_size} ranks ({s.backend}) started in "
              f"{s.start_seconds:.1f} s")

    def _status(self, args):
        from .. import session

        s = session.current()
        if s is None:
            print("pytorch_elastic session: none running")
            return
        head = f"pytorch_elastic session: {s.world_size} ranks, {s.backend}, {s.state}, interrupt grace {s.grace:g} s"
        print(head + (f" ({s.reason})" if s.state == "broken" else ""))
        replies = s.status()
        for r in range(s.world_size):
            b = replies.get(r)
            if b is None:
                print(f"rank {r}  pid {s.ranks.pids.get(r, '?')}  {'gone' if s.state == 'broken' else 'no answer'}")
                continue
            gpu = f"  GPU {b['gpu'] / 1e6:.1f} MB" if b.get("gpu") is not None else ""
            rss = f"{b['rss'] / 1e6:.1f} MB" if b.get("rss") is not None else "?"
            print(f"rank {r}  pid {b['pid']}  {b['state']}  RSS {rss}{gpu}")

    def _session(self):
        from .. import session

        return session.require()

    def _pull(self, args):
        from ..capture import format_size

        s = self._session()
        if not args.all and not 0 <= args.rank < s.world_size:
            raise OptionError(f"--rank {args.rank} is not accepted; the session has ranks 0..{s.world_size - 1}")
        ranks = range(s.world_size) if args.all else [args.rank]
        warn = getattr(self.elastic, "warn_mb", 100.0) * 1e6
        out = None
        for name in args.names:
            if not name.isidentifier():
                raise OptionError(f"pull {name!r}: expected a Python variable name")
            values = s.pull(name, ranks, cpu=not args.keep_device)
            size = sum(s.last_sizes.values())
            if size > warn:
                print(f"Warning: pull {name}: {format_size(size)} pickled (over {format_size(int(warn))})",
                      file=sys.stderr, flush=True)
            out = values if args.all else values[args.rank]
            self.shell.user_ns[name] = out
        return out if args.all else None

    def _push(self, args):
        from ..capture import format_size

        s = self._session()
        missing = [n for n in args.names if n not in self.shell.user_ns]
        if missing:
            raise OptionError(f"push: no variable {missing[0]!r} in the notebook")
        values = {n: self.shell.user_ns[n] for n in args.names}
        size = s.push(values)
        if size > getattr(self.elastic, "warn_mb", 100.0) * 1e6:
            print(f"Warning: push: {format_size(size)} pickled, sent to each of {s.world_size} ranks",
                  file=sys.stderr, flush=True)
