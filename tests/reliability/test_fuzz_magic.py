"""Fuzzed ``%%pytorch_elastic`` option lines (with ``--dry-run``): accepted, or one clear line.

Never a traceback from inside torch, never an exception other than IPython's UsageError (or a
one-line TypeError/ValueError), never a process started.
"""
from __future__ import annotations

import os
import shlex
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from tests.conftest import leftover_processes

TRIED: Counter = Counter()
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))

FLAGS = ["--nnodes", "--nproc-per-node", "--max-restarts", "--start-method", "--target", "--config", "--out",
         "--timeout", "--image", "--namespace", "--context", "--job-name", "--bogus", "-o", "--nproc_per_node",
         "--ranks", "--log-dir", "--rdzv-conf", "--grace", "--gpus", "--nproc-per-node",
         "--api", "--runtime", "--runtime-kind", "--queue", "--priority-class"]
SWITCHES = ["--rank0-only", "--debug", "--fresh", "--detach"]
VALUES = st.one_of(
    st.integers(-5, 10**9).map(str),
    st.sampled_from(["auto", "gpu", "cpu", "0,1", "1,-1", "timeout=5,x=y", "a b", "=1", "1.5", "/tmp", "1,1,0",
                     "1", "2", "1:1", "1:4", "4:2", "0", "-1", "a:b", "", "spawn", "fork", "forkserver", "thread",
                     "local", "k8s", "slurm", "cfg", "missing", "not a name", "1e9", "nan", "inf", "-0.5",
                     "trainjob", "pytorchjob", "job", "torch-distributed", "ClusterTrainingRuntime",
                     "TrainingRuntime", "team-q", "repo/img:1", "Bad_NS", "ns-1", "9job", "job-a", "x" * 70, "$HOME", "{x}", "'", '"', "\\"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=10),
)


@st.composite
def option_lines(draw):
    tokens = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            tokens.append(draw(st.sampled_from(SWITCHES)))
        else:
            tokens.append(draw(st.sampled_from(FLAGS)))
            value = draw(VALUES)
            tokens.append(shlex.quote(value) if draw(st.booleans()) else value)
    return " ".join(tokens)


@pytest.fixture(scope="module")
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    from ptjupyter import Elastic

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ptjupyter")
    ip.user_ns["cfg"] = Elastic(nproc_per_node=2)
    ip.user_ns["not_a_config"] = 3
    return ip


def test_fuzzed_option_lines_run_or_say_one_line(shell, capsys):
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(line=option_lines())
    def check(line):
        TRIED["option lines"] += 1
        try:
            shell.run_cell_magic("pytorch_elastic", line + " --dry-run", "x = 1\nx + 1\n")
        except (UsageError, TypeError, ValueError) as e:
            msg = str(e).strip()
            assert msg and "\n" not in msg, (line, msg)
        capsys.readouterr()
        assert not leftover_processes(wait=0), line

    check()


def test_fuzzed_widget_values_apply_or_show_one_line_in_the_panel(shell):
    from traitlets import TraitError

    from ptjupyter import resolve
    from ptjupyter.magics import load_ipython_extension

    magics = load_ipython_extension(shell)
    p = magics.pytorch_elastic_widgets()
    ints = st.integers(-3, 2**31)
    texts = st.one_of(st.sampled_from(["1", "2", "1:4", "4:2", "0", "", " ", "a:b", "repo/img:1", "Bad NS", "ns-1",
                                       "bad image", "k8s"]), st.text(max_size=8))
    fields = st.one_of(
        st.tuples(st.just("nnodes"), texts), st.tuples(st.just("image"), texts),
        st.tuples(st.just("namespace"), texts), st.tuples(st.just("nproc_per_node"), ints),
        st.tuples(st.just("max_restarts"), ints), st.tuples(st.just("target"), st.sampled_from(["local", "k8s", "x"])),
    )

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(changes=st.lists(fields, min_size=1, max_size=4))
    def check(changes):
        TRIED["widget values"] += 1
        p.reset()
        for name, value in changes:
            try:
                getattr(p, name).value = value
            except TraitError:  # the widget itself refuses it (a Dropdown option that does not exist)
                assert name == "target"
            text = p.text()
            assert "\n" not in text
            if p.error:
                assert text.startswith("error: ") and p.error in text
            # whatever the panel shows, the overrides in force always resolve
            resolve(None, magics.resolve_layers())
        assert not leftover_processes(wait=0)

    check()
    p.reset()
