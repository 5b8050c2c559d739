"""The project's modules import each other without a circle, also inside functions.

An import inside a function that only dodges a circle hides the circle until the function
runs (and makes the module order matter); a shared piece belongs in a module both sides
import at top level. Imports of heavy optional libraries inside functions are fine: only
edges between the project's own modules are counted here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "workers", "models", "experiment_protocols")

#: Circles accepted on purpose, each as a sorted tuple of its modules (none today).
ALLOWED_CYCLES: set[tuple[str, ...]] = set()

Edges = dict[str, dict[str, str]]  # module -> {imported module: "file:line"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _project_module(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import executes (``a.b.c`` -> the longest one that exists)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of import nodes under ``if TYPE_CHECKING:`` (never run, so never a circle)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _imports(module: str, path: Path, modules: dict[str, Path]) -> dict[str, str]:
    """Project modules that ``module`` imports anywhere (top level or in a function)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([base] if base else [])])
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for name in names:
            target = _project_module(name, modules)
            if target is not None and target != module:
                out.setdefault(target, f"{path.relative_to(ROOT)}:{node.lineno}")
    return out


def import_graph() -> Edges:
    """Every project module's imports of other project modules."""
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _strongly_connected(graph: Edges) -> list[list[str]]:
    """Tarjan's components with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _one_cycle(graph: Edges, component: list[str]) -> list[str]:
    """A shortest circle through the component's first module, as a path back to it."""
    inside = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return [*paths[v], start]
                if w in inside and w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return component


def _describe(graph: Edges, cycle: list[str]) -> str:
    steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " ; ".join(steps)


def test_the_graph_sees_the_projects_modules_and_their_imports():
    graph = import_graph()
    assert "workers.generation.service" in graph
    assert "app.cli" in graph
    # a top-level import and one inside a function are both edges
    assert "workers.generation.restore" in graph["workers.generation.service"]
    assert "models.decoders.atms" in graph["workers.generation.service"]


def test_the_cycle_finder_names_a_circle():
    graph = {"a": {"b": "a.py:1"}, "b": {"c": "b.py:2"}, "c": {"a": "c.py:3"}, "d": {}}
    (component,) = _strongly_connected(graph)
    assert component == ["a", "b", "c"]
    assert _describe(graph, _one_cycle(graph, component)) == (
        "a -> b (a.py:1) ; b -> c (b.py:2) ; c -> a (c.py:3)"
    )


def test_the_project_imports_without_circles():
    graph = import_graph()
    circles = [
        _describe(graph, _one_cycle(graph, c))
        for c in _strongly_connected(graph)
        if tuple(c) not in ALLOWED_CYCLES
    ]
    assert not circles, "import circles:\n" + "\n".join(circles)


#: The floors: a module may import its own floor and those below (docs/architecture.md
#: section 9); ``models`` and ``experiment_protocols`` share the lowest floor but import
#: nothing of each other.
FLOORS = {"app": 2, "workers": 1, "models": 0, "experiment_protocols": 0}


def test_every_import_points_down_a_floor():
    graph = import_graph()
    up = []
    for module, targets in graph.items():
        top = module.partition(".")[0]
        for target, where in targets.items():
            other = target.partition(".")[0]
            if FLOORS[other] > FLOORS[top] or (FLOORS[top] == FLOORS[other] == 0 and other != top):
                up.append(f"{module} -> {target} ({where})")
    assert not up, "imports that do not point down:\n" + "\n".join(up)


def test_no_library_module_of_app_imports_a_command():
    """``app/commands/*`` and ``app/cli.py`` are the top of ``app/``: nothing imports them.

    Commands import the library (``app/evaluation``, ``app/bench``, ``app/pilot.py``...),
    never the other way round; what two commands share lives in ``app/commands/_common.py``.
    """
    graph = import_graph()
    top = ("app.cli", "app.commands")
    up = [
        f"{module} -> {target} ({where})"
        for module, targets in graph.items()
        if not module.startswith(top)
        for target, where in targets.items()
        if target.startswith(top)
    ]
    assert not up, "library modules of app/ that import a command:\n" + "\n".join(up)
