"""A notebook cell -> a zero-argument function that runs the cell on every rank.

``capture_cell(source, user_ns, shell)`` parses the cell (after IPython's ``transform_cell``), wraps
its body in a function whose last expression becomes the return value, finds the names the cell
reads from the notebook namespace (``symtable``/``ast``, not the whole namespace) and binds them as
the function's globals. With ``by_value=True`` (the default) each name is pickled once with
cloudpickle to check it can travel and to measure it: an unpicklable name is a one-line
:class:`CaptureError` naming the variable and its type; a value over ``warn_bytes`` gets a warning.

Names the cell assigns are globals of the function's own namespace: they stay on the workers (and,
for a direct call, out of the notebook namespace), exactly as on every rank.
"""
from __future__ import annotations

import ast
import builtins
import linecache
import symtable
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .errors import InvalidValue

__all__ = ["CapturedCell", "CaptureError", "capture_cell", "format_size", "CELL_FILENAME", "WARN_BYTES"]

CELL_FILENAME = "<pytorch_elastic cell>"
WARN_BYTES = 100 * 1000 * 1000  # 100 MB
FUNCTION_NAME = "pytorch_elastic_cell"

# IPython's own names in user_ns (In, Out, get_ipython, exit, quit, _ih, ...) never travel
_ALWAYS_HIDDEN = {"In", "Out", "get_ipython", "exit", "quit", "_ih", "_oh", "_dh", "_", "__", "___"}


class CaptureError(InvalidValue):
    """A captured name cannot be shipped to the workers (one line: the name, its type, the cause)."""


@dataclass
class CapturedCell:
    """What ``%%pytorch_elastic`` runs: ``fn()`` executes the cell and returns its last expression."""

    fn: Callable[[], Any]
    names: dict  # name -> value shipped with the cell
    sizes: dict  # name -> pickled size in bytes (None when not measured, e.g. for a direct call)
    source: str  # the cell as the user wrote it
    code: str = ""  # the cell after IPython's transform_cell
    assigned: tuple = ()  # names the cell binds (they stay on the workers)
    quiet: bool = False  # the cell ends with ';': its value is not displayed (but --out still gets it)
    tree: Any = None  # the module defining the cell's function (a session runs it in the rank's namespace)
    warnings: list = field(default_factory=list)

    def describe(self) -> str:
        """``shipping: a (1.2 kB), helper (function, 812 B), np (module, by reference)`` or ``shipping: nothing``."""
        if not self.names:
            return "shipping: nothing (the cell reads no notebook variables)"
        parts = []
        for name, value in sorted(self.names.items()):
            if isinstance(value, types.ModuleType):
                parts.append(f"{name} (module, by reference)")
                continue
            size = self.sizes.get(name)
            kind = _kind(value)
            size_s = format_size(size) if size is not None else "not pickled"
            parts.append(f"{name} ({kind}, {size_s})" if kind else f"{name} ({size_s})")
        return "shipping: " + ", ".join(parts)


def format_size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _kind(value) -> str:
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        return "function"
    if isinstance(value, type):
        return "class"
    return type(value).__name__


def _transform(source: str, shell) -> str:
    if shell is not None:
        return shell.transform_cell(source)
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


class _Bindings(ast.NodeVisitor):
    """Names one top-level statement binds in the cell's own scope (not inside nested scopes)."""

    def __init__(self):
        self.names: set[str] = set()

    def visit_Name(self, node):
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self.names.add(node.id)

    def _scope(self, node):
        self.names.add(node.name)
        for d in getattr(node, "decorator_list", []):
            self.visit(d)
        args = getattr(node, "args", None)
        if args is not None:
            for d in args.defaults + [d for d in args.kw_defaults if d is not None]:
                self.visit(d)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope

    def visit_Lambda(self, node):
        pass

    def _comp(self, node):  # comprehension targets are local to it; walrus targets are not
        for sub in ast.walk(node):
            if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name):
                self.names.add(sub.target.id)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comp

    def visit_Import(self, node):
        for a in node.names:
            self.names.add(a.asname or a.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node):
        if node.name:
            self.names.add(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node):
        if node.name:
            self.names.add(node.name)
        self.generic_visit(node)

    visit_MatchStar = visit_MatchAs

    def visit_MatchMapping(self, node):
        if node.rest:
            self.names.add(node.rest)
        self.generic_visit(node)


def _loads(stmt) -> set[str]:
    """Every name a statement reads, nested scopes included (conservative); ``x += 1`` reads x."""
    out = set()
    for sub in ast.walk(stmt):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
            out.add(sub.id)
        elif isinstance(sub, ast.AugAssign) and isinstance(sub.target, ast.Name):
            out.add(sub.target.id)
    return out


def _global_reads(table) -> set[str]:
    """Names read from the global scope by this symbol table or any nested one."""
    out = set()
    for sym in table.get_symbols():
        if sym.is_global() and sym.is_referenced():
            out.add(sym.get_name())
    for child in table.get_children():
        out |= _global_reads(child)
    return out


def _syntax_error(msg, lineno, source, filename=CELL_FILENAME):
    lines = source.splitlines()
    text = lines[lineno - 1] if lineno and 0 < lineno <= len(lines) else None
    return SyntaxError(msg, (filename, lineno, 1, text))


def capture_cell(
    source: str,
    user_ns: dict,
    shell=None,
    *,
    by_value: bool = True,
    warn_bytes: int = WARN_BYTES,
    warn: Optional[Callable[[str], None]] = None,
    header: Optional[str] = None,
) -> CapturedCell:
    """Turn cell ``source`` into a :class:`CapturedCell` whose ``fn()`` runs it and returns its last expression.

    Raises ``SyntaxError`` (with the cell's line number) for a cell that does not parse and
    :class:`CaptureError` for a name that cannot be pickled, both before anything starts.
    ``warn`` receives the over-``warn_bytes`` warnings (default: ``warnings.warn``). ``header``, the
    ``%%pytorch_elastic ...`` line above the body, makes line numbers (errors, worker tracebacks) count
    as the notebook shows them.
    """
    code = _transform(source, shell)
    if header is not None:
        code = header.rstrip("\n") + "\n" + code
        code_for_parse = "\n" + code.split("\n", 1)[1]
    else:
        code_for_parse = code
    try:
        tree = ast.parse(code_for_parse, filename=CELL_FILENAME)
    except SyntaxError as e:
        e.filename = CELL_FILENAME
        raise
    body = list(tree.body)
    for node in ast.walk(tree):  # yield would turn the cell into a generator; IPython rejects it too
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Yield, ast.YieldFrom)) and _at_top_level(tree, node):
            raise _syntax_error("'yield' outside function", node.lineno, code)

    # the value of the cell: its last expression statement (a trailing ';' only hides it, as in IPython)
    quiet = code.rstrip().endswith(";")
    if body and isinstance(body[-1], ast.Expr):
        last = body[-1]
        body[-1] = ast.copy_location(ast.Return(value=last.value), last)

    # which names the cell binds, and where they are first bound / first read
    first_store: dict[str, int] = {}
    first_load: dict[str, int] = {}
    for i, stmt in enumerate(tree.body):
        b = _Bindings()
        b.visit(stmt)
        for n in b.names:
            first_store.setdefault(n, i)
        for n in _loads(stmt):
            first_load.setdefault(n, i)
    # top-level global statements of the cell declare names too
    declared = {n for stmt in tree.body if isinstance(stmt, ast.Global) for n in stmt.names}

    func = ast.FunctionDef(
        name=FUNCTION_NAME,
        args=ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]),
        body=body or [ast.Pass()],
        decorator_list=[],
        returns=None,
    )
    if sys.version_info >= (3, 12):
        func.type_params = []
    module = ast.Module(body=[func], type_ignores=[])
    ast.fix_missing_locations(module)
    try:
        table = symtable.symtable(ast.unparse(module), CELL_FILENAME, "exec")
    except SyntaxError as e:  # e.g. 'await' outside async function, nonlocal at top level
        raise _syntax_error(e.msg, _map_line(e, tree), code) from None
    ftable = table.get_children()[0]
    local_names = set(ftable.get_locals()) | declared
    # the cell's own names become globals of the function's private namespace: module semantics per rank
    if local_names - declared:
        glob = ast.Global(names=sorted(local_names - declared))
        ast.copy_location(glob, body[0] if body else func)
        func.body = [glob] + func.body
    ast.fix_missing_locations(module)
    try:
        compile(module, CELL_FILENAME, "exec")  # every SyntaxError now, before anything starts
    except SyntaxError as e:
        e.filename = CELL_FILENAME
        raise

    reads = _global_reads(ftable)
    hidden = _ALWAYS_HIDDEN | set(getattr(shell, "user_ns_hidden", {}) or {})
    wanted = set()
    for name in reads | {n for n in local_names if n in first_load}:
        if name in local_names and first_load.get(name, 1 << 30) > first_store.get(name, 1 << 30):
            continue  # bound by the cell before it is read: the worker's own value
        if name not in user_ns or (name in hidden and name not in local_names):
            continue
        value = user_ns[name]
        if hasattr(builtins, name) and getattr(builtins, name) is value:
            continue
        if name.startswith("__") and name.endswith("__"):
            continue
        wanted.add(name)
    if "get_ipython" in reads and "get_ipython" not in local_names:
        if by_value:  # %magic and !shell lines became get_ipython() calls: there is no IPython on the ranks
            line = next((node.lineno for node in ast.walk(tree) if isinstance(node, ast.Name)
                         and node.id == "get_ipython"), None)
            where = f"line {line} of the cell" if line else "the cell"
            raise CaptureError(
                f"{where} uses IPython (%magic or !command), which the worker processes do not have; "
                "use plain Python there (e.g. subprocess.run for a shell command)"
            )
        if "get_ipython" in user_ns:
            wanted.add("get_ipython")  # a direct call runs in the kernel: IPython syntax works
    names = {n: user_ns[n] for n in sorted(wanted)}

    sizes: dict[str, Optional[int]] = {n: None for n in names}
    warnings_out: list[str] = []
    if by_value:
        import cloudpickle

        for n, value in names.items():
            if isinstance(value, types.ModuleType):
                sizes[n] = 0
                continue
            try:
                sizes[n] = len(cloudpickle.dumps(value))
            except Exception as e:  # noqa: BLE001 - any pickling failure is reported by name
                cause = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise CaptureError(
                    f"cannot ship variable {n!r} ({type(value).__module__}.{type(value).__qualname__}) to the workers: "
                    f"{cause}; create it inside the cell instead"
                ) from None
            if sizes[n] > warn_bytes:
                msg = (
                    f"variable {n!r} ({type(value).__name__}) is {format_size(sizes[n])} pickled "
                    f"(over {format_size(warn_bytes)}): every rank gets a copy; load it inside the cell from a path instead"
                )
                warnings_out.append(msg)
                if warn is None:
                    import warnings as _w

                    _w.warn(msg, LargeCaptureWarning, stacklevel=2)
                else:
                    warn(msg)

    lines = code.splitlines(True)
    linecache.cache[CELL_FILENAME] = (len(code), None, lines, CELL_FILENAME)
    fn = _runner(module, CELL_FILENAME, lines, names)
    return CapturedCell(
        fn=fn, names=names, sizes=sizes, source=source, code=code,
        assigned=tuple(sorted(local_names)), warnings=warnings_out, quiet=quiet, tree=module,
    )


class LargeCaptureWarning(UserWarning):
    """A captured value is over the size limit (100 MB by default)."""


def _at_top_level(tree, target) -> bool:
    """True when ``target`` is not inside a function/lambda of the cell (class bodies count as top level)."""
    stack = [(tree, True)]
    while stack:
        node, top = stack.pop()
        if node is target:
            return top
        for child in ast.iter_child_nodes(node):
            stack.append((child, top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))))
    return False


def _map_line(err: SyntaxError, tree) -> Optional[int]:
    """symtable saw ``ast.unparse`` output: find the cell line of the statement it complained about."""
    if "await" in (err.msg or ""):
        for node in ast.walk(tree):
            if isinstance(node, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
                return node.lineno
    if "nonlocal" in (err.msg or ""):
        for node in ast.walk(tree):
            if isinstance(node, ast.Nonlocal):
                return node.lineno
    return None


# The runner is compiled here with __name__ "__main__", so cloudpickle ships it by value. It carries the
# cell's AST, not its code object: cloudpickle renames shipped code to "<dynamic-code>", and compiling on
# the rank keeps the cell's own file name and line numbers in the rank's traceback.
_RUNNER_SRC = """
def make(tree, filename, lines, names):
    def pytorch_elastic_cell():
        __tracebackhide__ = True
        import builtins
        import linecache
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
        ns = dict(names)
        ns["__name__"] = "__main__"
        ns["__builtins__"] = builtins
        exec(compile(tree, filename, "exec"), ns)
        return ns[tree.body[0].name]()
    return pytorch_elastic_cell
"""


def _runner(tree, filename, lines, names):
    ns = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(_RUNNER_SRC, "<ptjupyter runner>", "exec"), ns)
    fn = ns["make"](tree, filename, lines, dict(names))
    fn.__module__ = "__main__"
    fn.__qualname__ = FUNCTION_NAME
    return fn
