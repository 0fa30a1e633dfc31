"""A real JupyterLab server and a headless system Chromium driven by Selenium, for tests/ui and scripts/screenshots.py.

:class:`Lab` starts ``jupyter lab`` from this venv on 127.0.0.1 (a free port, a random token, a temporary
root dir, temporary settings so that no user state or news pop-up leaks in) and stops it with every
kernel it started. :class:`Browser` is one headless Chromium (the OS's ``chromium`` + ``chromedriver``;
nothing is downloaded) with helpers that act as a person would: open a notebook, run cells from the
menu or with Shift+Enter, press the toolbar's interrupt button, read outputs from the DOM.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> tuple[Optional[str], Optional[str]]:
    """(browser, driver) paths from the PATH, either None when absent."""
    browser = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    return browser, shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# JupyterLab settings for a quiet, deterministic page: no news/update toasts, every cell in the DOM
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/themes.jupyterlab-settings": {"theme": "JupyterLab Light"},
}


def _kill_tree(procs, grace: float = 5.0) -> list:
    """SIGTERM each psutil process, wait ``grace`` s, SIGKILL the rest; return those still alive."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(alive, timeout=grace)
    return alive


class Lab:
    """``jupyter lab`` on 127.0.0.1 with token auth, a free port and ``root`` as its root dir."""

    def __init__(self, root: Path, home: Path, theme: str = "JupyterLab Light"):
        self.root, self.home = Path(root), Path(home)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        settings = self.home / "lab-user-settings"
        for name, value in SETTINGS.items():
            f = settings / name
            f.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith("themes.jupyterlab-settings"):
                value = {"theme": theme}
            f.write_text(json.dumps(value))
        env = {**os.environ,
               "JUPYTER_CONFIG_DIR": str(self.home / "config"), "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
               "JUPYTERLAB_WORKSPACES_DIR": str(self.home / "workspaces"),
               "JUPYTERLAB_SETTINGS_DIR": str(settings), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
        env.pop("PTJUPYTER_STATUS", None)  # the kernel picks its own status mode (html)
        self.log = open(self.home / "jupyterlab.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.root}", f"--LabApp.user_settings_dir={settings}",
             f"--LabApp.workspaces_dir={self.home / 'workspaces'}", "--LabApp.news_url=",
             "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
             "--LabApp.expose_app_in_browser=True",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def api(self, path: str, method: str = "GET", body: Optional[dict] = None):
        req = urllib.request.Request(self.url + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
        return json.loads(data) if data else None

    def _wait_ready(self, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                self.api("/api/status")
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"jupyter lab did not answer in {timeout} s: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        try:
            return (self.home / "jupyterlab.log").read_text(errors="replace")
        except OSError:
            return ""

    def lab_url(self, path: str = "") -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}"

    def kernel_pid(self, notebook: str) -> int:
        """The pid of the kernel of the session on ``notebook`` (a child of the server, by kernel id)."""
        import psutil

        kid = next(s["kernel"]["id"] for s in self.api("/api/sessions") if s["path"] == notebook)
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if any(kid in a for a in p.cmdline()):
                    return p.pid
            except psutil.NoSuchProcess:
                pass
        raise LookupError(f"no kernel process for {notebook} (kernel {kid})")

    def shutdown_kernels(self):
        for s in self.api("/api/sessions") or []:
            try:
                self.api(f"/api/sessions/{s['id']}", method="DELETE")
            except OSError:
                pass

    def stop(self) -> list:
        """Shut every kernel down, stop the server, kill whatever of its tree is left; return survivors (none)."""
        import psutil

        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        if self.proc.poll() is None:
            try:
                self.shutdown_kernels()
            except OSError:
                pass
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            tree += [c for c in psutil.Process(self.proc.pid).children(recursive=True) if c not in tree]
        except psutil.NoSuchProcess:
            pass
        alive = _kill_tree([p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], grace=3)
        self.proc.wait(timeout=10)
        self.log.close()
        return alive


class Browser:
    """One headless Chromium (Selenium + the system chromedriver) looking at ``lab``."""

    def __init__(self, lab: Lab, browser: str, driver: str, size=(1280, 1000)):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.lab = lab
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--disable-extensions", "--no-first-run", "--disable-background-networking",
                    f"--window-size={size[0]},{size[1]}", "--force-device-scale-factor=1",
                    f"--user-data-dir={lab.home / 'chromium-profile'}"):
            opts.add_argument(arg)
        os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
        self.service = Service(executable_path=driver, log_output=str(lab.home / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=self.service, options=opts)
        self.driver.set_script_timeout(30)
        self.driver_pid = self.service.process.pid

    # -- pages and notebooks
    def open(self, notebook: str, timeout: float = 90):
        """Open ``notebook`` (relative to the lab's root) and wait for its kernel to be idle."""
        # a session made beforehand: JupyterLab attaches to its kernel instead of asking which one to start
        self.lab.api("/api/sessions", "POST", {"path": notebook, "name": notebook, "type": "notebook",
                                               "kernel": {"name": "python3"}})
        self.driver.get(self.lab.lab_url(notebook))
        self.wait(lambda: self.js("return !!document.querySelector('.jp-NotebookPanel .jp-Notebook .jp-Cell')"),
                  timeout, f"notebook {notebook} did not render")
        self.js("window.jupyterapp.shell.collapseLeft(); window.jupyterapp.shell.collapseRight();")
        self.wait_idle(timeout)
        time.sleep(1.0)  # JupyterLab may still ask for a kernel right after the page settles
        self.wait_idle(timeout)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, cond, timeout: float, what: str, poll: float = 0.1):
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} (after {timeout} s)")
            time.sleep(poll)

    def kernel_status(self) -> str:
        """The notebook toolbar's kernel status ("Idle", "Busy", ...), from its indicator's title."""
        return self.js("""
            const el = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
            return el ? (el.getAttribute('data-status') || '') : '';""")

    def wait_idle(self, timeout: float = 90):
        def idle():
            self.accept_dialog()
            return self.kernel_status() == "idle" and self.all_cells_done()

        self.wait(idle, timeout, "the kernel never went idle")

    def accept_dialog(self):
        """Press a dialog's default button if one is open (a kernel choice JupyterLab asks for once)."""
        self.js("const b = document.querySelector('.jp-Dialog .jp-mod-accept'); if (b) b.click();")

    def all_cells_done(self) -> bool:
        """No code cell shows ``[*]`` (running or queued)."""
        return self.js("""return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')]
                          .every(p => !p.textContent.includes('*'))""")

    def menu(self, *labels: str):
        """Click through the menu bar: ``menu("Run", "Run All Cells")``."""
        from selenium.webdriver.common.by import By

        top = self.wait(lambda: [e for e in self.driver.find_elements(By.CSS_SELECTOR, "#jp-menu-panel .lm-MenuBar-itemLabel")
                                 if e.text == labels[0]], 10, f"no menu {labels[0]}")
        top[0].click()
        for label in labels[1:]:
            item = self.wait(lambda label=label: [e for e in self.driver.find_elements(
                By.CSS_SELECTOR, ".lm-Menu:not(.lm-mod-hidden) .lm-Menu-itemLabel") if e.text == label],
                10, f"no menu item {label}")
            item[0].click()

    def toolbar(self, command: str):
        """Click the notebook toolbar's button for ``command`` (e.g. ``notebook:interrupt-kernel``)."""
        from selenium.webdriver.common.by import By

        sel = f".jp-NotebookPanel:not(.lm-mod-hidden) .jp-NotebookPanel-toolbar [data-command='{command}']"
        btn = self.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR, sel), 10, f"no toolbar button {command}")
        btn[0].click()

    def cells(self):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def code_cells(self):
        return [c for c in self.cells() if "jp-CodeCell" in c.get_attribute("class")]

    def run_cell(self, index: int, wait: bool = True, timeout: float = 90):
        """Select code cell ``index`` (0-based among code cells) and press Shift+Enter, as a person would."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        cell = self.code_cells()[index]
        self.js("arguments[0].scrollIntoView({block: 'center'})", cell)
        cell.find_element("css selector", ".jp-InputPrompt").click()  # command mode, this cell selected
        ActionChains(self.driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        self.wait(lambda: "*" in self.prompt(index) or self.prompt(index).strip("[]: ").isdigit(), 10,
                  f"cell {index} did not start")
        if wait:
            self.wait(lambda: self.prompt(index).strip("[]: ").isdigit() and self.kernel_status() == "idle", timeout,
                      f"cell {index} did not finish")
        return self.code_cells()[index]

    def prompt(self, index: int) -> str:
        return self.code_cells()[index].find_element("css selector", ".jp-InputPrompt").text

    @staticmethod
    def outputs(cell) -> list[dict]:
        """The cell's outputs as the DOM has them: mime type, text, and the element."""
        out = []
        for el in cell.find_elements("css selector", ".jp-OutputArea-output"):
            out.append({"mime": el.get_attribute("data-mime-type") or "", "text": el.text, "el": el,
                        "error": "jp-OutputArea-executeResult" not in (el.get_attribute("class") or "")
                        and el.get_attribute("data-mime-type") == "application/vnd.jupyter.stderr"
                        and bool(el.find_elements("xpath", "ancestor::*[contains(@class,'jp-OutputArea-child')]"))})
        return out

    def model_cells(self) -> list[dict]:
        """The open notebook's cells as JupyterLab's model has them (``cell_type``, ``source``, ``outputs``)."""
        return self.js("""
            const cells = window.jupyterapp.shell.currentWidget.content.model.cells, out = [];
            for (let i = 0; i < cells.length; i++) out.push(cells.get(i).toJSON());
            return out;""")

    def model_code_cells(self) -> list[dict]:
        return [c for c in self.model_cells() if c["cell_type"] == "code"]

    def set_theme(self, theme: str):
        """Switch JupyterLab's theme from the Settings menu, as a person would, and wait until it applies."""
        self.menu("Settings", "Theme", theme)
        self.wait(lambda: self.js("return document.body.dataset.jpThemeName") == theme, 30, f"theme {theme} not applied")

    def screenshot(self, path: Path, element=None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if element is not None:
            self.js("arguments[0].scrollIntoView({block: 'start'})", element)
            element.screenshot(str(path))
        else:
            self.driver.save_screenshot(str(path))
        return path

    def quit(self) -> list:
        """Close Chromium and chromedriver; return any of their processes still alive (none)."""
        import psutil

        try:
            tree = psutil.Process(self.driver_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        try:
            self.driver.quit()
        except Exception:  # noqa: BLE001 - the browser may already be gone; the pids below are checked
            pass
        live = [p for p in tree if p.is_running()]
        try:
            live.append(psutil.Process(self.driver_pid))
        except psutil.NoSuchProcess:
            pass
        _gone, alive = psutil.wait_procs(live, timeout=5)
        return _kill_tree([p for p in alive if p.status() != psutil.STATUS_ZOMBIE], grace=3)


def copy_notebook(lab: Lab, name: str, clear: bool = True) -> str:
    """Copy ``notebooks/NAME`` into the lab's root (outputs cleared, as a fresh run shows them); return its path."""
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    if clear:
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, lab.root / name)
    return name


def write_notebook(lab: Lab, name: str, cells: list[str]) -> str:
    """A notebook of code cells (``"# md: ..."`` as the first line makes a markdown cell) in the lab's root."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(c[len("# md: "):]) if c.startswith("# md: ")
                else nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, lab.root / name)
    return name
