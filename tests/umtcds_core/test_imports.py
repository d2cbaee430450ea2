"""The modules of umtcds_core import each other in one direction only: no import cycles.

Why: a cycle (``chat`` ↔ ``export``, ``jobs`` ↔ ``workspace`` before runs.py) means two modules each hold half of one
idea; it also forces function-level imports to dodge a half-initialised module. Function-level imports count here
too — they are the usual way such a cycle hides. Imports under ``if TYPE_CHECKING:`` do not: they never run, and they
are how a lower module names a higher one's type in an annotation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import umtcds_core

PACKAGE = Path(umtcds_core.__file__).resolve().parent

# Imports that close a cycle and are known, not fixed yet: (importer, imported) -> why. They are left out of the graph
# before it is checked, so any other cycle still fails; an entry whose import is gone fails too (remove it then).
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every import statement of a module, at any depth (functions, methods, try blocks), outside TYPE_CHECKING."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` for the package's own modules (dotted, relative to ``umtcds_core``)."""
    files = {(_module_name(p)): p for p in PACKAGE.rglob("*.py")}
    modules = set(files) - {""}
    packages = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}

    def known(dotted: str) -> str | None:
        """The package module ``dotted`` (``a.b.attr``) refers to: its longest known prefix."""
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            name = ".".join(parts[:i])
            if name in modules:
                return name
        return None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name in modules:
        here = name if name in packages else name.rpartition(".")[0]  # the package relative imports start from
        for node in _imports(ast.parse(files[name].read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name.removeprefix("umtcds_core.") for a in node.names if a.name.startswith("umtcds_core.")]
            else:
                if node.level:  # relative: from the current package, one level up per extra dot
                    parts = here.split(".") if here else []
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                elif node.module == "umtcds_core" or (node.module or "").startswith("umtcds_core."):
                    base = node.module.removeprefix("umtcds_core").lstrip(".")
                else:
                    continue
                # `from . import x` / `from .pkg import sub`: x is a submodule, or a name defined in the package
                subs = [f"{base}.{a.name}" if base else a.name for a in node.names]
                targets = [t if t in modules else base for t in subs]
            for t in targets:
                target = known(t) if t else None
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "runs" in graph["chat"] and "runs" in graph["export"]  # top-level imports
    assert "chat" in graph["evaluate"]  # `from .chat import GenOptions, load_chat_model` inside evaluate()
    assert "jobs" in graph["workspace"] and "workspace" not in graph["jobs"]  # jobs names Workspace for typing only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycles():
    graph = import_graph()
    stale = [edge for edge in KNOWN_BACK_EDGES if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"these known imports are gone; remove them from KNOWN_BACK_EDGES: {stale}"
    for importer, imported in KNOWN_BACK_EDGES:
        graph[importer].discard(imported)
    found = [sorted(c) for c in cycles(graph)]
    assert not found, (
        f"import cycles among umtcds_core modules: {found}; make the lower module not import the higher one"
    )


def test_run_folder_knowledge_imports_no_upward_modules():
    graph = import_graph()
    assert "train" not in graph["chat"] and "chat" not in graph["export"]
    assert graph["runs"] <= {"errors", "fileio"} and graph["text"] == set()
