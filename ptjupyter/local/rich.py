"""Rich output from a rank: ``IPython.display.display(obj)`` and ``plt.show()`` on a worker.

A worker has no kernel, so :func:`install` (called by ``worker.entry`` before the cell's function is
unpickled) replaces IPython's ``display`` with :func:`display`, which writes obj's MIME bundle as one
marked JSON line on the rank's stdout: it travels in order with the rank's text, and the relay turns it
into ``sink.display(rank, bundle, metadata)``. matplotlib's backend becomes ``mpl_backend`` (Agg, with a
``show()`` that displays each open figure as PNG). Importing this module imports neither IPython nor
matplotlib.
"""
from __future__ import annotations

import base64
import io
import json
import os
import sys
from typing import Any, Optional

__all__ = ["MARK", "install", "display", "bundle_of", "encode", "decode"]

MARK = b"\x1eptjupyter-display:"  # a record separator first: no text line starts with it
_FUNCS = ("IPython.core.display_functions", "IPython.display", "IPython.core.display")
BACKEND = "module://ptjupyter.local.mpl_backend"
_REPRS = (("_repr_html_", "text/html"), ("_repr_markdown_", "text/markdown"), ("_repr_svg_", "image/svg+xml"),
          ("_repr_png_", "image/png"), ("_repr_jpeg_", "image/jpeg"), ("_repr_latex_", "text/latex"),
          ("_repr_json_", "application/json"))


def encode(bundle: dict, metadata: Optional[dict] = None) -> bytes:
    return MARK + json.dumps({"data": bundle, "metadata": metadata or {}}, default=str).encode("ascii") + b"\n"


def decode(raw: bytes) -> tuple:
    """``(bundle, metadata)`` from a marked line; ``(None, None)`` when it is not one."""
    try:
        msg = json.loads(raw[len(MARK):].decode("utf-8", "replace"))
        return dict(msg["data"]), dict(msg.get("metadata") or {})
    except (ValueError, KeyError, TypeError):
        return None, None


def bundle_of(obj: Any, include=None, exclude=None) -> tuple:
    """``(data, metadata)`` as IPython's formatter would give them, without a shell."""
    data: dict = {}
    md: dict = {}
    fn = getattr(obj, "_repr_mimebundle_", None)
    if callable(fn) and not isinstance(obj, type):
        got = fn(include=include, exclude=exclude)
        if isinstance(got, tuple):
            got, more = got
            md.update(more or {})
        data.update(got or {})
    for attr, mime in _REPRS:
        fn = getattr(obj, attr, None)
        if mime in data or not callable(fn) or isinstance(obj, type):
            continue
        try:
            got = fn()
        except Exception:  # noqa: BLE001 - a broken repr leaves that MIME type out, as IPython does
            continue
        if isinstance(got, tuple):
            got, md[mime] = got
        if got is None:
            continue
        if mime in ("image/png", "image/jpeg") and isinstance(got, bytes):
            got = base64.b64encode(got).decode("ascii")
        data[mime] = got
    if "image/png" not in data and _is_figure(obj):
        buf = io.BytesIO()
        obj.savefig(buf, format="png", bbox_inches="tight")
        data["image/png"] = base64.b64encode(buf.getvalue()).decode("ascii")
    data.setdefault("text/plain", repr(obj))
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return data, md


def _is_figure(obj) -> bool:
    return type(obj).__module__.startswith("matplotlib.") and callable(getattr(obj, "savefig", None))


def display(*objs, include=None, exclude=None, metadata=None, transient=None, display_id=None, raw=False,
            clear=False, **kwargs) -> None:
    """A rank's ``IPython.display.display``: each object's MIME bundle goes to the cell, in order with the text."""
    out = sys.stdout
    for obj in objs:
        if raw:
            data, md = dict(obj), {}
        else:
            data, md = bundle_of(obj, include, exclude)
        if metadata:
            md = {**md, **metadata}
        try:
            out.flush()
            os.write(out.fileno(), encode(data, md))  # one write: never interleaved with a half line
        except (AttributeError, OSError, ValueError):
            out.write(encode(data, md).decode("ascii"))
            out.flush()


def _patch() -> None:
    for name in _FUNCS:
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "display"):
            mod.display = display


class _AfterImport:
    """A meta-path finder that patches ``display`` right after IPython's display module is imported."""

    def find_spec(self, name, path=None, target=None):
        if name != _FUNCS[0]:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def patched(module):
            exec_module(module)
            module.display = display

        loader.exec_module = patched
        return spec


def install() -> None:
    """Route this worker's ``display()`` and ``plt.show()`` to the cell. Cheap: nothing is imported."""
    mpl = os.environ.get("MPLBACKEND", "")
    if not mpl or "inline" in mpl:
        os.environ["MPLBACKEND"] = BACKEND
    shell = sys.modules.get("IPython.core.interactiveshell")
    if shell is not None:  # a forked copy of the kernel's shell must not publish on the kernel's sockets
        try:
            shell.InteractiveShell.clear_instance()
        except Exception:  # noqa: BLE001 - no instance to clear
            pass
    if _FUNCS[0] in sys.modules:
        _patch()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and os.environ["MPLBACKEND"] == BACKEND:
        try:
            pyplot.switch_backend(BACKEND)
        except Exception:  # noqa: BLE001 - figures are then not shown, nothing else changes
            pass
