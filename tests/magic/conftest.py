"""Fixtures for the magic's tests: a real InteractiveShell with ptjupyter loaded, reset per test."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    return InteractiveShell.instance()


@pytest.fixture
def ip(shell):
    """The shared test shell with a fresh ``PytorchElastic`` instance and no %config left from other tests."""
    from ptjupyter.magics import unload_ipython_extension

    unload_ipython_extension(shell)
    shell.config.pop("PytorchElastic", None)
    shell.extension_manager.loaded.discard("ptjupyter")
    shell.run_line_magic("load_ext", "ptjupyter")
    before = set(shell.user_ns)
    yield shell
    for name in set(shell.user_ns) - before:
        shell.user_ns.pop(name, None)
    unload_ipython_extension(shell)
    shell.config.pop("PytorchElastic", None)
    shell.extension_manager.loaded.discard("ptjupyter")


@pytest.fixture
def magics(ip):
    return ip.magics_manager.registry["PytorchElastic"]
