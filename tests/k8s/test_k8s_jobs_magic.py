"""``%pytorch_elastic_jobs`` as IPython shows it: help, one-line usage errors, cluster errors through the family."""
from __future__ import annotations

import fake_k8s
import pytest
from IPython.core.error import UsageError

from ptjupyter.k8s.magic import PytorchElasticJobs
from ptjupyter.usage import OptionError


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.register_magics(PytorchElasticJobs)
    yield ip
    ip.magics_manager.magics["line"].pop("pytorch_elastic_jobs", None)


@pytest.fixture
def kubeconfig(fake, tmp_path, monkeypatch):
    path = fake_k8s.write_kubeconfig(tmp_path / "kubeconfig", fake.host)
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


@pytest.mark.parametrize("line,needle", [
    ("bogus", "%pytorch_elastic_jobs: argument command: invalid choice: 'bogus'"),
    ("attach", "%pytorch_elastic_jobs attach: NAME is missing"),
    ("cancel", "%pytorch_elastic_jobs cancel: NAME is missing"),
    ("attach j --tail -1", "--tail=-1 is not accepted"),
    ("attach j --tail many", "argument --tail: invalid int value: 'many'"),
    ("list --colour", "unrecognized arguments: --colour"),
    ("-n Team_A", "namespace='Team_A' is not accepted"),
    ("attach 'j", "No closing quotation"),
])
def test_bad_lines_are_one_line_usage_errors(shell, no_kubeconfig, line, needle):
    with pytest.raises(OptionError) as e:
        shell.run_line_magic("pytorch_elastic_jobs", line)
    assert isinstance(e.value, UsageError) and needle in str(e.value) and "\n" not in str(e.value)
    assert e.value.render() == [f"UsageError: {e.value}"]


def test_a_usage_error_shows_as_one_line_without_traceback(shell, no_kubeconfig, capsys):
    shell.run_cell("%pytorch_elastic_jobs bogus")
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "UsageError: %pytorch_elastic_jobs: argument command: invalid choice: 'bogus'" in text
    assert "Traceback" not in text


def test_a_cluster_error_renders_through_the_family(shell, kubeconfig, capsys):
    shell.run_cell("%pytorch_elastic_jobs attach nope")
    out = capsys.readouterr().out
    assert "K8sError: job 'nope' not found in namespace 'default'; list them with %pytorch_elastic_jobs" in out
    assert "Traceback" not in out and "jobs.py" not in out


def test_list_through_the_kubeconfig(shell, kubeconfig, capsys):
    assert shell.run_line_magic("pytorch_elastic_jobs", "") is None
    assert capsys.readouterr().out == "no ptjupyter jobs in namespace 'default'\n"


def test_help_says_every_subcommand_and_option(shell, capsys):
    doc = shell.find_line_magic("pytorch_elastic_jobs").__doc__
    for words in ("attach NAME [--tail N]", "cancel NAME", "-n/--namespace", "--context", "kubeconfig context's",
                  "Interrupting stops following only"):
        assert words in doc, words
    shell.run_cell("%pytorch_elastic_jobs?")
    assert "attach NAME [--tail N]" in capsys.readouterr().out


def test_load_ext_registers_the_jobs_magics_class_and_unload_removes_it(shell):
    from IPython.core.interactiveshell import InteractiveShell

    from ptjupyter.magics import load_ipython_extension, unload_ipython_extension

    ip = InteractiveShell.instance()
    load_ipython_extension(ip)
    unload_ipython_extension(ip)
    assert ip.find_line_magic("pytorch_elastic_jobs") is None and "PytorchElasticJobs" not in ip.magics_manager.registry
    load_ipython_extension(ip)
    assert isinstance(ip.magics_manager.registry["PytorchElasticJobs"], PytorchElasticJobs)
    assert ip.find_line_magic("pytorch_elastic_jobs") is not None


def test_importing_the_magic_does_not_import_kubernetes():
    import subprocess
    import sys

    code = ("import sys, ptjupyter, ptjupyter.k8s, ptjupyter.k8s.magic, ptjupyter.k8s.result, ptjupyter.k8s.status; "
            "print(sorted(m for m in ('kubernetes', 'yaml', 'urllib3') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_interrupting_attach_stops_following_in_one_line(shell, monkeypatch):
    from ptjupyter.k8s import jobs

    def attach_interrupted(line, out, api_client=None, sink=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "main", attach_interrupted)
    with pytest.raises(KeyboardInterrupt) as e:
        shell.run_line_magic("pytorch_elastic_jobs", "attach j")
    assert str(e.value) == "stopped following; the job keeps running" and e.value.__suppress_context__
