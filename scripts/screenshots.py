"""Regenerate the README's pictures (docs/images/*.png) from a real JupyterLab in headless Chromium.

    .venv/bin/python scripts/screenshots.py [--out docs/images]

Needs the OS's chromium + chromedriver (Debian: apt-get install chromium chromium-driver). Runs the
quickstart notebook (training cell with its status table, and the loss plot), the widget panel, and a
failing rank; each picture is cropped to its cells and stored as a 256-colour PNG (a few tens of KB).
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "ui"))

from lab import Browser, Lab, find_chromium  # noqa: E402

MAX_BYTES = 200_000

PANEL_CELLS = [
    "%load_ext ptjupyter",
    "%pytorch_elastic_widgets",
    "%%pytorch_elastic --nproc-per-node 2\nimport os, socket\n\ndef listen_twice():\n"
    "    s = socket.socket()\n    s.bind(('127.0.0.1', 0))\n    socket.socket().bind(s.getsockname())\n\n"
    "if os.environ['RANK'] == '1':\n    listen_twice()",
]


def save(png: bytes, box, path: Path) -> Path:
    """Crop ``png`` to ``box`` (left, top, right, bottom), reduce it to 256 colours, write it to ``path``."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    if box:
        img = img.crop(box)
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path}: {size} bytes, more than {MAX_BYTES}")
    print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {img.width}x{img.height}, {size // 1000} KB")
    return path


def region(browser: Browser, first, last, pad: int = 6):
    """Scroll ``first`` to the top; the page screenshot and the box from ``first``'s top to ``last``'s bottom."""
    browser.js("arguments[0].scrollIntoView({block: 'start'})", first)
    r0 = browser.js("return arguments[0].getBoundingClientRect().toJSON()", first)
    r1 = browser.js("return arguments[0].getBoundingClientRect().toJSON()", last)
    box = (int(r0["left"]) - pad, max(0, int(r0["top"]) - pad), int(max(r0["right"], r1["right"])) + pad,
           int(r1["bottom"]) + pad)
    return browser.driver.get_screenshot_as_png(), box


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = ap.parse_args(argv)
    browser_path, driver = find_chromium()
    if not (browser_path and driver):
        raise SystemExit("no chromium + chromedriver on the PATH (Debian: apt-get install chromium chromium-driver)")
    args.out.mkdir(parents=True, exist_ok=True)
    import nbformat

    with tempfile.TemporaryDirectory(prefix="ptjupyter-shots-") as tmp:
        root, home = Path(tmp) / "root", Path(tmp) / "home"
        root.mkdir()
        home.mkdir()
        nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, root / "quickstart.ipynb")
        demo = nbformat.v4.new_notebook()
        demo.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        demo.cells = [nbformat.v4.new_code_cell(c) for c in PANEL_CELLS]
        nbformat.write(demo, root / "panel.ipynb")

        lab = Lab(root, home)
        chrome = None
        try:
            chrome = Browser(lab, browser_path, driver, size=(1100, 1400))
            chrome.open("quickstart.ipynb")
            chrome.menu("Run", "Run All Cells")
            chrome.wait(lambda: not chrome.all_cells_done(), 10, "Run All did not start")
            chrome.wait_idle(180)
            code = chrome.code_cells()
            save(*region(chrome, code[3], code[4]), args.out / "quickstart-training.png")
            lab.shutdown_kernels()

            chrome.open("panel.ipynb")
            chrome.run_cell(0)
            panel = chrome.run_cell(1)
            chrome.wait(lambda: panel.find_elements("css selector", ".widget-vbox input"), 20, "no panel")
            box = [b for b in panel.find_elements("css selector", ".widget-inline-hbox")
                   if b.find_elements("css selector", "label")
                   and b.find_element("css selector", "label").text == "nproc_per_node"][0]
            from selenium.webdriver.common.keys import Keys

            field = box.find_element("css selector", "input")
            field.click()
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys("3", Keys.ENTER)
            chrome.wait(lambda: "nproc_per_node=3" in panel.text, 10, "the panel did not take 3")
            save(*region(chrome, panel, panel), args.out / "widget-panel.png")
            failing = chrome.run_cell(2)
            save(*region(chrome, failing, failing), args.out / "failing-rank.png")
        finally:
            left = (chrome.quit() if chrome else []) + lab.stop()
            if left:
                print(f"warning: processes left: {[p.pid for p in left]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
