"""The widget panel, a failing rank, the toolbar's interrupt, --dry-run, 8 ranks and the dark theme in JupyterLab.

One notebook, one kernel for the module; each test runs its own cells with Shift+Enter, as a person would.
"""
from __future__ import annotations

import re
import time

import psutil
import pytest
from lab import write_notebook
from selenium.webdriver.common.keys import Keys

pytestmark = pytest.mark.timeout(180)

CELLS = [
    "%load_ext ptjupyter",
    "%pytorch_elastic_widgets",
    "%%pytorch_elastic --rank0-only\nimport os\nprint('world size', os.environ['WORLD_SIZE'])",
    # a rank's own failure with a known cause: its port is taken (rank 1 binds the port it already holds)
    "%%pytorch_elastic --nproc-per-node 2\nimport os, socket\n\ndef listen_twice():\n"
    "    s = socket.socket()\n    s.bind(('127.0.0.1', 0))\n    socket.socket().bind(s.getsockname())\n\n"
    "if os.environ['RANK'] == '1':\n    listen_twice()",
    "%%pytorch_elastic --nproc-per-node 2\nimport time, torch.distributed as dist\ndist.init_process_group('gloo')\n"
    "print('ready', flush=True)\ntime.sleep(120)",
    "%%pytorch_elastic --nproc-per-node 2 --rank0-only\nimport os\nprint('after the interrupt, rank', os.environ['RANK'])",
    "%%pytorch_elastic --dry-run --nproc-per-node 2\n1",
    "%%pytorch_elastic --dry-run --target k8s --image repo/x:1\n1",
    "import ptjupyter.local.warm as warm\nprint(sorted(warm.helper_pids()))",
    # the status table of an 8-rank run, drawn by the display itself (8 real ranks would not fit 2 cores)
    "from ptjupyter.display import CellSink\nsink = CellSink(8, status='html').start()\n"
    "for r in range(8):\n    sink.state(r, 'running', f'pid {40000 + r}')\n"
    "sink.state(3, 'failed', 'exit 1: ValueError: boom')\nsink.state(5, 'exited 0')\nsink.finish('ok');",
]
LOAD, PANEL, THREE, FAILING, LONG, AFTER, DRY_LOCAL, DRY_K8S, HELPERS, EIGHT = range(len(CELLS))


@pytest.fixture(scope="module")
def nb(lab, browser):
    path = write_notebook(lab, "ui_checks.ipynb", CELLS)
    browser.open(path)
    browser.run_cell(LOAD)
    yield path
    lab.shutdown_kernels()


def errors(browser, index):
    return [o for o in browser.model_code_cells()[index]["outputs"] if o["output_type"] == "error"]


def stdout(browser, index):
    return "".join("".join(o["text"]) for o in browser.model_code_cells()[index]["outputs"]
                   if o["output_type"] == "stream" and o["name"] == "stdout")


def panel_input(cell, label):
    box = [b for b in cell.find_elements("css selector", ".widget-inline-hbox")
           if b.find_elements("css selector", "label") and b.find_element("css selector", "label").text == label]
    assert box, f"no {label} in the panel"
    return box[0].find_element("css selector", "input")


def type_into(field, text):
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(text, Keys.ENTER)


def panel_message(cell):
    # read in one step: the HTML widget replaces its span on every change (an element found first can go stale)
    return cell.parent.execute_script(
        "const s = arguments[0].querySelector('.widget-html-content span'); return s ? s.innerText : ''", cell)


def test_widget_panel_sets_the_next_cells_ranks_and_shows_a_bad_value_in_one_line(browser, nb, shot):
    cell = browser.run_cell(PANEL)
    browser.wait(lambda: cell.find_elements("css selector", ".widget-vbox input"), 20, "the panel did not render")
    labels = [e.text for e in cell.find_elements("css selector", ".widget-vbox label") if e.text]
    assert labels == ["nnodes", "nproc_per_node", "max_restarts", "target", "image (k8s)", "namespace (k8s)"]
    assert cell.find_elements("css selector", "button.jupyter-button")[0].text == "Reset"
    shot("panel-rendered", cell)

    type_into(panel_input(cell, "nproc_per_node"), "3")
    browser.wait(lambda: "nproc_per_node=3" in panel_message(cell), 10, "the panel did not take nproc_per_node=3")
    assert panel_message(cell) == "overrides for the next cells: nproc_per_node=3; next cell: elastic, 3 processes, target local"
    shot("panel-nproc-3", cell)

    three = browser.run_cell(THREE)
    rows = three.find_elements("css selector", "table.ptjupyter-status tbody tr")
    assert [r.text.split()[:3] for r in rows] == [["rank0", "exited", "0"], ["rank1", "exited", "0"], ["rank2", "exited", "0"]]
    assert "[rank0] world size 3" in three.text
    shot("three-ranks", three)

    type_into(panel_input(cell, "nproc_per_node"), "0")
    browser.wait(lambda: panel_message(cell).startswith("error:"), 10, "no error in the panel")
    assert panel_message(cell) == ("error: Elastic.nproc_per_node=0 is not accepted; expected an int >= 1 (from widget "
                                   "panel) (not applied; the cells use: nproc_per_node=3)")
    assert "\n" not in panel_message(cell)
    assert errors(browser, PANEL) == []  # in the panel, not a traceback under it
    assert not cell.find_elements("css selector", ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    shot("panel-bad-value", cell)


def test_a_failing_rank_shows_its_own_short_traceback_with_the_hint(browser, nb, shot):
    cell = browser.run_cell(FAILING)
    shot("failing-rank", cell)
    (err,) = errors(browser, FAILING)
    assert err["ename"] == "RankFailed"
    # the error is the cell's last output (torch's own "Terminating process" warning may come before it, on stderr)
    shown = cell.find_elements("css selector", ".jp-OutputArea-output")[-1]
    assert shown.get_attribute("data-mime-type") == "application/vnd.jupyter.stderr"
    text = shown.text
    lines = text.splitlines()
    assert lines[0] == "rank 1 failed (exit 1): OSError: [Errno 98] Address already in use"
    assert "--- rank 1's traceback ---" in lines
    assert any(re.fullmatch(r'\s*File "<pytorch_elastic cell>", line 7, in listen_twice', ln) for ln in lines)
    assert lines[-1].startswith("hint: a port is already in use")
    assert len(lines) < 20
    for noise in ("ChildFailedError", "Root Cause", "torch/distributed", "site-packages", "ptjupyter/"):
        assert noise not in text
    assert re.search(r"pytorch_elastic: rank 1 failed .* after \d+\.\d s", cell.text)


def test_the_toolbar_interrupt_stops_a_long_cell_and_the_next_cell_runs(lab, browser, nb, shot):
    browser.run_cell(HELPERS)
    infra = set(eval(stdout(browser, HELPERS)))  # the warm forkserver and resource tracker stay by design
    kernel = psutil.Process(lab.kernel_pid(nb))

    def workers():
        return [p for p in kernel.children(recursive=True) if p.pid not in infra and p.status() != psutil.STATUS_ZOMBIE]

    cell = browser.run_cell(LONG, wait=False)
    browser.wait(lambda: "[rank0] ready" in cell.text and "[rank1] ready" in cell.text, 60, "the ranks never started")
    assert len(workers()) >= 2
    shot("long-cell-running", cell)
    t = time.monotonic()
    browser.toolbar("notebook:interrupt-kernel")
    browser.wait(lambda: browser.prompt(LONG).strip("[]: ").isdigit(), 10, "the cell did not stop within 10 s")
    assert time.monotonic() - t < 10
    shot("long-cell-interrupted", cell)
    assert "pytorch_elastic: interrupted; all ranks were stopped" in stdout(browser, LONG)
    (err,) = errors(browser, LONG)
    assert err["ename"] == "KeyboardInterrupt" and err["evalue"] == "all ranks were stopped"
    deadline = time.monotonic() + 3
    while workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers() == []

    after = browser.run_cell(AFTER)
    assert "[rank0] after the interrupt, rank 0" in after.text
    assert errors(browser, AFTER) == []


def test_dry_run_shows_the_plan_and_the_k8s_yaml(browser, nb, shot):
    local = browser.run_cell(DRY_LOCAL)
    shot("dry-run-local", local)
    out = stdout(browser, DRY_LOCAL)
    assert out.startswith("pytorch_elastic --dry-run: nothing was started\nmode: elastic (target local)\n")
    assert "nproc_per_node: 2  [cell flags]" in out
    k8s = browser.run_cell(DRY_K8S)
    shot("dry-run-k8s", k8s)
    out = stdout(browser, DRY_K8S)
    assert "mode: pod (target k8s)" in out
    for line in ("apiVersion: batch/v1", "kind: Job", "image: repo/x:1"):
        assert re.search(rf"^\s*{re.escape(line)}$", out, re.M), line
    assert errors(browser, DRY_LOCAL) == [] and errors(browser, DRY_K8S) == []


def test_eight_ranks_fit_the_cell_one_row_each(browser, nb, shot):
    cell = browser.run_cell(EIGHT)
    table = cell.find_element("css selector", "table.ptjupyter-status")
    shot("eight-ranks", cell)
    rows = table.find_elements("css selector", "tbody tr")
    assert [r.text.split()[0] for r in rows] == [f"rank{r}" for r in range(8)]
    area = cell.find_element("css selector", ".jp-OutputArea")
    assert table.rect["width"] <= area.rect["width"]  # no sideways scrolling
    assert rows[3].text.split()[1:3] == ["failed", "(exit"]


def contrast(browser, element) -> float:
    """WCAG contrast ratio of an element's text colour against the first opaque background behind it."""
    return browser.js("""
        const lum = c => { const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map(v => {
            v = v / 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
        let el = arguments[0], fg = getComputedStyle(el).color, bg = null;
        for (let e = el; e && !bg; e = e.parentElement) {
            const c = getComputedStyle(e).backgroundColor; const a = c.match(/[\\d.]+/g);
            if (a && (a.length < 4 || +a[3] > 0.5)) bg = c; }
        const [l1, l2] = [lum(fg), lum(bg || 'rgb(255,255,255)')].sort((x, y) => y - x);
        return (l1 + 0.05) / (l2 + 0.05);""", element)


def test_status_and_panel_stay_readable_in_the_dark_theme(browser, nb, shot):
    browser.set_theme("JupyterLab Dark")
    try:
        cells = browser.code_cells()
        panel, eight = cells[PANEL], cells[EIGHT]
        shot("dark-panel", panel)
        shot("dark-eight-ranks", eight)
        texts = [panel.find_element("css selector", ".widget-html-content span"),
                 *eight.find_elements("css selector", "table.ptjupyter-status td, table.ptjupyter-status th")]
        low = [(e.text, round(contrast(browser, e), 1)) for e in texts if contrast(browser, e) < 4.5]
        assert low == []  # WCAG AA for text
    finally:
        browser.set_theme("JupyterLab Light")
