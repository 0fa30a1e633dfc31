"""The widget panel: ``%pytorch_elastic_widgets`` or ``ptjupyter.widgets.panel()``.

An explicit ipywidgets box (not ``interact``: nothing runs when a value changes). The values you
change become the "widget panel" override layer of later ``%%pytorch_elastic`` cells: above
``%config``, below a ``--config`` object and the cell's flags. Every change is validated the way
flags are (through :func:`ptjupyter.plan.resolve`); a bad value shows its one-line error in the
panel and is not applied. Works headless (nbval): set ``panel.nproc_per_node.value = 2`` in code.
"""
from __future__ import annotations

import html
from typing import Callable, Optional

from .errors import PtjupyterError
from .plan import TARGETS, resolve

__all__ = ["Panel", "panel", "FIELDS"]

FIELDS = ("nnodes", "nproc_per_node", "max_restarts", "target", "image", "namespace")


class Panel:
    """The widgets (``.nnodes``, ``.nproc_per_node``, ``.max_restarts``, ``.target``, ``.image``,
    ``.namespace``), the message line (``.message``) and the box that holds them (``.box``).

    ``layers(widget)``: the override layers a cell would resolve with ``widget`` as the panel's values
    (``None``: the ones in force); ``apply(values)``: put valid values in force; ``overrides()``: those
    in force. The magic passes its own; the panel knows nothing else of it.
    """

    def __init__(self, *, layers: Callable[[Optional[dict]], list], apply: Callable[[dict], None],
                 overrides: Callable[[], dict]):
        import ipywidgets as W

        self._layers, self._apply, self._overrides = layers, apply, overrides
        self.touched: dict = {}  # field -> value the user set (valid or not)
        self.error: Optional[str] = None
        self._syncing = False
        style = {"description_width": "130px"}  # 110px cut "namespace (k8s)" to "namespace (k..." in JupyterLab
        self.nnodes = W.Text(description="nnodes", placeholder='N or "MIN:MAX"', style=style)
        self.nproc_per_node = W.IntText(description="nproc_per_node", style=style)
        self.max_restarts = W.IntText(description="max_restarts", style=style)
        self.target = W.Dropdown(options=list(TARGETS), description="target", style=style)
        self.image = W.Text(description="image (k8s)", placeholder="repo/name:tag", style=style)
        self.namespace = W.Text(description="namespace (k8s)", placeholder="the kubeconfig context's", style=style)
        self.message = W.HTML()
        self.reset_button = W.Button(description="Reset", tooltip="Drop the panel's overrides")
        self.reset_button.on_click(lambda _b: self.reset())
        self.box = W.VBox(
            [W.HTML("<b>%%pytorch_elastic</b> defaults for the next cells"), self.nnodes, self.nproc_per_node,
             self.max_restarts, self.target, self.image, self.namespace, W.HBox([self.reset_button]), self.message]
        )
        self._sync_from_plan()
        for name in FIELDS:
            getattr(self, name).observe(lambda change, name=name: self._changed(name, change["new"]), names="value")
        self._show()

    # -- values
    @property
    def overrides(self) -> dict:
        """The overrides the next cells use (the last valid set)."""
        return dict(self._overrides())

    @staticmethod
    def _convert(name, value):
        if name == "nnodes":
            text = str(value).strip()
            return int(text) if text.isdigit() else text
        if name in ("image", "namespace"):
            return value.strip() or None
        return value

    def _changed(self, name, value):
        if self._syncing:
            return
        self.touched[name] = self._convert(name, value)
        candidate = {k: v for k, v in self.touched.items() if v is not None}
        try:
            resolve(None, self._layers(candidate))
        except PtjupyterError as e:
            self.error = e.headline
        else:
            self.error = None
            self._apply(candidate)
        self._show()

    def reset(self):
        """Forget the panel's overrides; show the values %config and the defaults give."""
        self.touched.clear()
        self._apply({})
        self.error = None
        self._sync_from_plan()
        self._show()

    def _sync_from_plan(self):
        try:
            plan = resolve(None, self._layers(None))
        except PtjupyterError as e:
            self.error = e.headline
            return
        self._syncing = True
        try:
            self.nnodes.value = str(plan.min_nodes) if plan.min_nodes == plan.max_nodes else f"{plan.min_nodes}:{plan.max_nodes}"
            self.nproc_per_node.value = plan.nproc_per_node
            self.max_restarts.value = plan.max_restarts
            self.target.value = plan.target
            self.image.value = plan.k8s.image or ""
            self.namespace.value = plan.k8s.namespace or ""
        finally:
            self._syncing = False

    def text(self) -> str:
        """One line: the overrides in force (and what the next cell does), or the error of the last change."""
        if self.error:
            return f"error: {self.error} (not applied; the cells use: {self._fmt(self.overrides)})"
        return f"overrides for the next cells: {self._fmt(self.overrides)}{self._next()}"

    def _next(self) -> str:
        try:
            plan = resolve(None, self._layers(None))
        except PtjupyterError:
            return ""
        procs = f"{plan.world_size} process" + ("es" if plan.world_size > 1 else "")
        return f"; next cell: {plan.mode.value}, {procs}, target {plan.target}"

    @staticmethod
    def _fmt(values: dict) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in sorted(values.items())) or "none (%config and Elastic defaults)"

    def _show(self):
        # JupyterLab's theme colours (fixed #555/#c00 all but vanished on its dark theme), plain ones elsewhere
        color = "var(--jp-error-color1, #c62828)" if self.error else "var(--jp-ui-font-color1, #424242)"
        self.message.value = (f"<span style='color:{color};font-family:var(--jp-code-font-family, monospace);"
                              f"white-space:normal'>{html.escape(self.text())}</span>")

    # -- display
    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        bundle = dict(bundle or {})
        bundle["text/plain"] = "pytorch_elastic panel: " + self.text()
        return bundle

    def __repr__(self):
        return "<pytorch_elastic panel: " + self.text() + ">"


def panel() -> Panel:
    """Show the panel for this shell's ``%%pytorch_elastic`` (loading the extension if needed)."""
    from IPython import get_ipython

    ip = get_ipython()
    if ip is None:
        raise RuntimeError("ptjupyter.widgets.panel() needs an IPython shell or kernel")
    ip.extension_manager.load_extension("ptjupyter")
    return ip.run_line_magic("pytorch_elastic_widgets", "")
