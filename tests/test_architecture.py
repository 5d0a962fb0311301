"""The module graph of ``harness`` and ``analysis``: acyclic, and the optimizers stand alone.

Every import counts, including the ones inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "analysis")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "notebooks" in path.parts:
                continue  # scripts, not modules
            out[module_name(path)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (an import of a package's name is the package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            # the longest project module that is a prefix of the target
            parts = t.split(".")
            for i in range(len(parts), 0, -1):
                cand = ".".join(parts[:i])
                if cand in known:
                    if cand != name:
                        found.add(cand)
                    break
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules, or None. Package ``__init__`` edges to their own
    submodules are ignored: re-exporting a submodule is not a dependency loop."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(g, white)
    stack: list[str] = []

    def edges(n: str) -> list[str]:
        return sorted(m for m in g[n] if not m.startswith(n + "."))

    def visit(n: str) -> list[str] | None:
        color[n] = grey
        stack.append(n)
        for m in edges(n):
            if color[m] == grey:
                return stack[stack.index(m) :] + [m]
            if color[m] == white:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        color[n] = black
        return None

    for n in sorted(g):
        if color[n] == white:
            found = visit(n)
            if found:
                return found
    return None


def test_graph_sees_imports():
    g = graph()
    assert "harness.optim.functional" in g["harness.optim"]
    assert "harness.results" in g["harness.train"]
    assert "harness.config" in g["harness.sweep.cli"]


def test_module_graph_is_acyclic():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # a package re-exporting its submodule, which imports the package: not a loop
    assert find_cycle({"a": {"b"}, "b": set(), "p": {"p.x"}, "p.x": {"p"}}) is None


def test_optimizers_import_nothing_else_from_the_project():
    g = graph()
    for name, deps in g.items():
        if name == "harness.optim" or name.startswith("harness.optim."):
            outside = {d for d in deps if not d.startswith("harness.optim")}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_harness_does_not_import_analysis_at_module_level_except_for_reports():
    """The harness writes results; the analysis reads them. Only the sweep's report step calls
    into the analysis."""
    g = graph()
    users = sorted(
        n
        for n, deps in g.items()
        if n.startswith("harness") and any(d.startswith("analysis") for d in deps)
    )
    assert set(users) <= {"harness.sweep.report"}, users
