"""The browser suite's shared pieces: one JupyterLab server and one headless Chromium for the whole session.

Skipped, with one line, when there is no Chromium or chromedriver on the PATH (Debian: ``apt-get install
chromium chromium-driver``; ``.ci/run`` installs them). Every check saves screenshots under its tmp dir
(``shot(name)``); a failing test gets one more, ``failure.png``, and the report names them all.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lab import Browser, Lab, find_chromium  # noqa: E402

SKIP_REASON = "tests/ui: no chromium + chromedriver on the PATH (Debian: apt-get install chromium chromium-driver)"


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    browser, driver = find_chromium()
    if not (browser and driver):
        pytest.skip(SKIP_REASON)
    base = tmp_path_factory.mktemp("lab")
    root, home = base / "root", base / "home"
    root.mkdir()
    home.mkdir()
    server = Lab(root, home)
    chrome = None
    try:
        chrome = Browser(server, browser, driver)
        server.browser = chrome
        yield server
    finally:
        left = (chrome.quit() if chrome else []) + server.stop()
        assert not left, f"processes left after the browser suite: {[(p.pid, p.name()) for p in left]}"


@pytest.fixture(scope="session")
def browser(lab) -> Browser:
    return lab.browser


@pytest.fixture
def shot(browser, tmp_path, request):
    """``shot(name, element=None)`` saves ``tmp_path/NAME.png`` (the page, or one element) and records it."""
    taken = []
    request.node.ptjupyter_shots = taken

    def take(name: str, element=None) -> Path:
        path = browser.screenshot(tmp_path / f"{name}.png", element)
        taken.append(path)
        return path

    take.dir = tmp_path
    return take


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    shots = getattr(item, "ptjupyter_shots", None)
    if shots is None or report.when != "call":
        return
    if report.failed:
        chrome = item.funcargs.get("browser")
        if chrome is not None:
            try:
                shots.append(chrome.screenshot(Path(shots[0]).parent / "failure.png" if shots
                                               else item.funcargs["tmp_path"] / "failure.png"))
            except Exception as e:  # noqa: BLE001 - a failed screenshot must not hide the test's own failure
                report.sections.append(("screenshots", f"failure screenshot not taken: {e!r}"))
    if shots:
        report.sections.append(("screenshots", "\n".join(str(p) for p in shots)))


def pytest_report_header(config):
    browser, driver = find_chromium()
    return f"tests/ui: chromium={browser} chromedriver={driver}" if browser and driver else SKIP_REASON

