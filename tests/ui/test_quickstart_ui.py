"""notebooks/quickstart.ipynb in JupyterLab: Run All from the menu, then look at what a person sees."""
from __future__ import annotations

import re

import pytest
from lab import copy_notebook

pytestmark = pytest.mark.timeout(240)

# Records, every time the notebook's DOM changes, how many status tables each cell shows and their text:
# "updated in place" means one table per cell all along, whose text goes from running to exited 0.
WATCH_STATUS = """
window.__ptjStatus = [];
const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
const seen = () => [...nb.querySelectorAll('.jp-Cell')].forEach((cell, i) => {
    const tables = cell.querySelectorAll('.jp-OutputArea-output table.ptjupyter-status');
    if (tables.length) window.__ptjStatus.push([i, tables.length, [...tables].map(t => t.innerText).join('|')]);
});
window.__ptjObserver = new MutationObserver(seen);
window.__ptjObserver.observe(nb, {childList: true, subtree: true, characterData: true});
"""


def test_quickstart_run_all(lab, browser, shot):
    nb = copy_notebook(lab, "quickstart.ipynb")
    browser.open(nb)
    browser.js(WATCH_STATUS)
    browser.menu("Run", "Run All Cells")
    browser.wait(lambda: not browser.all_cells_done(), 10, "Run All did not start")
    browser.wait_idle(180)
    shot("quickstart-after-run-all")
    log = browser.js("window.__ptjObserver.disconnect(); return window.__ptjStatus")
    cells = browser.model_code_cells()
    assert [c["execution_count"] for c in cells] == [1, 2, 3, 4, 5]

    # no error output anywhere, in the model or on the page
    assert [o for c in cells for o in c["outputs"] if o["output_type"] == "error"] == []
    assert browser.js("return document.querySelectorAll('.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]').length") == 0

    dom = browser.code_cells()
    hello, train = dom[1], dom[3]
    for cell, name, lines in ((hello, "hello", ["[rank0] hello from rank 0 of 2"]),
                              (train, "train", ["[rank0] step   0  loss 19.73", "[rank0] step  75  loss 0.10"])):
        shot(f"quickstart-{name}-cell", cell)
        text = cell.find_element("css selector", ".jp-OutputArea").text
        for line in lines:
            assert line in text
        assert re.search(r"pytorch_elastic: 2/2 ranks exited 0 in \d+\.\d s", text)
        tables = cell.find_elements("css selector", ".jp-OutputArea-output table.ptjupyter-status")
        assert len(tables) == 1  # one status table per run, not one per update
        rows = tables[0].find_elements("css selector", "tbody tr")
        assert [r.text.split()[:3] for r in rows] == [["rank0", "exited", "0"], ["rank1", "exited", "0"]]

    # in place: every snapshot of a cell's outputs had one table, and it went from running to exited 0
    for index in (2, 5):  # hello and train among all cells (markdown cells count too)
        snaps = [s for s in log if s[0] == index]
        assert snaps, f"no status table seen in cell {index}"
        assert {s[1] for s in snaps} == {1}
        texts = [s[2] for s in snaps]
        assert any("running" in t for t in texts), texts[:5]
        assert "running" not in texts[-1] and texts[-1].count("exited 0") == 2

    # the loss plot is an image, drawn at a real size
    plot = dom[4].find_elements("css selector", ".jp-OutputArea-output[data-mime-type='image/png'] img")
    assert len(plot) == 1
    assert browser.js("return arguments[0].naturalWidth > 200 && arguments[0].complete", plot[0])
    shot("quickstart-loss-plot", dom[4])
    assert "100 steps; final loss under 1% of the first: True" in dom[4].text
    lab.shutdown_kernels()
