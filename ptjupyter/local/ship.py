"""What travels to the workers: ``fn``, its arguments and the source lines of shipped code."""
from __future__ import annotations

from ..errors import InvalidType

__all__ = ["ship"]


def ship(fn, args, kwargs) -> bytes:
    """cloudpickle bytes of ``(fn, args, kwargs, sources)``; one-line InvalidType when it cannot be pickled."""
    import cloudpickle

    try:
        return cloudpickle.dumps((fn, tuple(args), kwargs, _sources(fn)))
    except Exception as e:  # noqa: BLE001 - whatever pickling raises, the user sees one line
        raise InvalidType(f"fn={getattr(fn, '__qualname__', fn)!r} (with its arguments) cannot be shipped to the "
                        f"workers: {type(e).__name__}: {e}") from None


def _sources(fn) -> tuple[dict, dict]:
    """File names and source lines of the functions shipped by value.

    cloudpickle renames shipped code to ``<dynamic-code>``; with these the worker puts the real
    file name back and fills ``linecache``, so a rank's traceback shows the user's source lines.
    """
    import linecache
    import types

    try:
        from cloudpickle.cloudpickle import _should_pickle_by_reference as by_ref
    except ImportError:  # pragma: no cover - other cloudpickle versions
        return {}, {}
    names, files = {}, {}
    fn = getattr(fn, "__func__", fn)
    if not isinstance(fn, types.FunctionType):
        return {}, {}
    code_names = set()
    stack = [fn.__code__]
    while stack:
        code = stack.pop()
        code_names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    candidates = [("", fn)] + [(n, fn.__globals__.get(n)) for n in sorted(code_names)]
    size = 0
    for key, f in candidates:
        if not isinstance(f, types.FunctionType) or by_ref(f):
            continue
        filename = f.__code__.co_filename
        names[key] = filename
        if filename not in files:
            lines = linecache.getlines(filename)
            size += sum(map(len, lines))
            if size < 4 << 20:
                files[filename] = lines
    return names, files
