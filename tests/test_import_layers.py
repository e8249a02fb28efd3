"""Imports flow one way between chatsvc's packages, as docs/architecture.md draws them.

Reads every module's top-level imports (not those inside functions or under
TYPE_CHECKING), groups modules by their part of the package (``runs``, ``services``,
``api``, a top-level module such as ``metrics``), and fails on any cycle between parts.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chatsvc"


def part_of(module: str) -> str | None:
    """``chatsvc.runs.registry`` -> ``runs``; ``chatsvc.metrics`` -> ``metrics``; the root -> None."""
    pieces = module.split(".")
    if pieces[0] != "chatsvc" or len(pieces) == 1:
        return None
    return pieces[1]


def is_part(name: str) -> bool:
    """A subpackage or a top-level module (not a name re-exported by the root, like ``create_app``)."""
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").exists()


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node: ast.stmt, package: str) -> set[str]:
    """The modules one import statement names (relative ones resolved against ``package``)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    return {base} | {f"{base}.{alias.name}" for alias in node.names}  # `from chatsvc import errors`


def package_of(path: Path) -> str:
    return module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        found |= imported_modules(node, package_of(path))
    return found


def layer_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        source = part_of(module_name(path))
        if source is None:
            continue
        for imported in top_level_imports(path):
            target = part_of(imported)
            if target is not None and target != source and is_part(target):
                graph.setdefault(source, set()).add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node):] + [node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            if cycle := visit(target):
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_no_import_cycle_between_the_parts_of_chatsvc():
    graph = layer_graph()
    assert graph, "no imports found: the test reads nothing"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between parts of chatsvc: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"runs": {"services"}, "services": {"metrics"}, "metrics": {"runs"}}) == [
        "metrics", "runs", "services", "metrics"]
    assert find_cycle({"api": {"runs"}, "runs": set()}) is None


def all_imports(path: Path) -> set[str]:
    """Every module a file imports, wherever the import stands (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {name for node in ast.walk(tree) for name in imported_modules(node, package_of(path))}


def view_modules() -> set[str]:
    """The api modules that define a blueprint."""
    return {module_name(path) for path in (PACKAGE / "api").glob("*.py") if "Blueprint(" in path.read_text()}


def test_a_view_module_is_not_a_helper_library():
    views = view_modules()
    assert "chatsvc.api.chat" in views and "chatsvc.api.workflows" in views
    borrowed = {
        (module_name(path), imported)
        for path in PACKAGE.rglob("*.py")
        if module_name(path) != "chatsvc"  # create_app registers the blueprints
        for imported in all_imports(path) & views
        if imported != module_name(path)
    }
    assert not borrowed, f"view modules imported as helpers (move the helper out of the view): {sorted(borrowed)}"


def every_import(path: Path) -> set[str]:
    """The chatsvc modules a file imports at module level, ``TYPE_CHECKING`` blocks included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in tree.body:
        for inner in ([node] + node.body if isinstance(node, ast.If) else [node]):
            found |= imported_modules(inner, package_of(path))
    return found


def module_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {imported for imported in every_import(path)
                       if imported in modules and imported != name and not name.startswith(imported + ".")}
    return graph


def test_no_import_cycle_between_modules_not_even_for_type_checking():
    """A cycle hidden behind TYPE_CHECKING is still a design knot: one module of a pair
    belongs above the other (the runs/ and security/ reshape, issue 21)."""
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle)


def test_no_module_is_over_500_lines():
    """A module past 500 lines holds more than one job: split it along them."""
    long = {str(path.relative_to(PACKAGE.parent)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 500}
    assert not long, long
