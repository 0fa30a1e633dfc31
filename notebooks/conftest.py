"""nbval settings for the example notebooks (``pytest --nbval notebooks/ --nbval-sanitize-with notebooks/sanitize.cfg``).

stderr is not compared (torch writes warnings there); neither is ``text/html``, which only the live
rank-status display of ``%%pytorch_elastic`` uses (it is updated in place while a cell runs, and nbval
sees only its first version). Everything on stdout is compared, after notebooks/sanitize.cfg.
"""


def pytest_collectstart(collector):
    if getattr(collector, "fspath", None) is not None and str(collector.fspath).endswith(".ipynb"):
        collector.skip_compare += ("stderr", "text/html")
