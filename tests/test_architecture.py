"""The module graph of ``harness`` and ``analysis``: acyclic, layered, and Optuna's private API
in the work queue only; docs/ARCHITECTURE.md names every module and only symbols that exist.

Every import counts, including the ones inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

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


# --------------------------------------------------------------------------------------------
# Layers: a harness module imports modules of its own layer or below, never above

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "math",
        (
            "harness",
            "harness.optim*",
            "harness.schedules",
            "harness.instruments",
            "harness.population_generic",
            "harness.workloads",
            "harness.workloads.transformer",
        ),
    ),
    (
        "names",
        (
            "harness.registry",
            "harness.results",
            "harness.errors",
            "harness.secrets",
            "harness.phases",
        ),
    ),
    ("config", ("harness.config", "harness.usage")),
    ("workloads", ("harness.data", "harness.models", "harness.workloads.modular")),
    ("trainers", ("harness.loop", "harness.train", "harness.population*")),
    ("services", ("harness.storage", "harness.tracking")),
    ("sweep", ("harness.sweep*",)),
    ("entry points", ("harness.worker", "harness.bench*")),
)
# what the analysis may read of the harness (the storage: its read-only opening of a study)
ANALYSIS_READS = (
    "harness",
    "harness.registry",
    "harness.results",
    "harness.errors",
    "harness.secrets",
    "harness.storage",
)
PRIVATE_OPTUNA = re.compile(
    r"\._storage\b|\._trial_id\b|\._study_id\b|\._thread_local\b|fixed_params"
    r"|optuna\.storages\._|_cached_frozen_trial"
)
QUEUE = "harness/sweep/queue.py"


def _matches(name: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        stem = pattern[:-1]
        return name == stem or name.startswith(stem + ".") or name.startswith(stem + "_")
    return name == pattern


def layer_of(name: str) -> int | None:
    for i, (_, patterns) in enumerate(LAYERS):
        if any(_matches(name, p) for p in patterns):
            return i
    return None


def test_every_harness_module_has_a_layer():
    missing = sorted(n for n in graph() if n.startswith("harness") and layer_of(n) is None)
    assert not missing, f"add these modules to LAYERS: {missing}"


def test_no_harness_module_imports_a_higher_layer():
    g = graph()
    bad = []
    for name, deps in g.items():
        if not name.startswith("harness"):
            continue
        for dep in deps:
            if dep.startswith("harness") and layer_of(dep) > layer_of(name):
                bad.append(
                    f"{name} ({LAYERS[layer_of(name)][0]}) -> {dep} ({LAYERS[layer_of(dep)][0]})"
                )
    assert not bad, bad


def test_layer_check_sees_an_upward_import():
    assert layer_of("harness.sweep.queue") > layer_of("harness.train") > layer_of("harness.config")
    assert layer_of("harness.population_step") == layer_of("harness.loop")
    assert layer_of("harness.optim.functional") == 0
    assert layer_of("harness.nonexistent") is None


def test_analysis_reads_only_the_harness_modules_it_may():
    g = graph()
    bad = {
        name: sorted(d for d in deps if d.startswith("harness") and d not in ANALYSIS_READS)
        for name, deps in g.items()
        if name.startswith("analysis")
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, bad


def test_optuna_private_api_only_in_the_queue():
    users = []
    for path in modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel == QUEUE:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE_OPTUNA.search(line):
                users.append(f"{rel}:{i}: {line.strip()}")
    assert not users, users


def test_private_api_pattern_finds_the_queue_uses():
    text = (ROOT / QUEUE).read_text()
    for needle in ("._storage", "._trial_id", "fixed_params"):
        assert PRIVATE_OPTUNA.search(needle) and needle in text


# --------------------------------------------------------------------------------------------
# docs/ARCHITECTURE.md: a row for every module, only symbols that exist, short recipes

PAGE = ROOT / "docs" / "ARCHITECTURE.md"
RECIPE_MAX_FILES = 3


def _page() -> str:
    return PAGE.read_text()


def test_every_module_has_a_row_on_the_architecture_page():
    text = _page()
    rows = [ln for ln in text.splitlines() if ln.startswith("|")]
    table = "\n".join(rows)
    missing = []
    for path in modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py" and not path.read_text().strip().strip('"').strip():
            continue
        if rel not in table and f"{rel.rsplit('/', 1)[0]}/" not in table:
            missing.append(rel)
    assert not missing, f"docs/ARCHITECTURE.md has no row for {missing}"


def _symbols(text: str) -> list[str]:
    """Every dotted name in backticks on the page that starts with a package."""
    found = re.findall(r"`((?:harness|analysis)\.[A-Za-z_][\w.]*)`", text)
    return sorted(set(found))


def _exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_symbol_the_page_names_exists():
    names = _symbols(_page())
    assert len(names) > 20
    missing = [n for n in names if not _exists(n)]
    assert not missing, f"docs/ARCHITECTURE.md names what does not exist: {missing}"


def test_symbol_check_sees_a_missing_name():
    assert _exists("harness.loop.train") and _exists("harness.registry.DecayForm.step_shrink")
    assert not _exists("harness.storage.SHARING")


RECIPES = ("A results column", "A storage", "A model", "A decay form", "A sampler", "A metric")


def _recipe_files(title: str) -> list[str]:
    text = _page()
    start = text.index(f"**{title}.**")
    end = text.find("\n\n", start)
    block = text[start : end if end > 0 else None]
    files = re.search(r"Files: (.+?)\.?$", block, re.M)
    assert files, f"the recipe '{title}' has no 'Files:' line"
    return [f.strip().strip("`") for f in files.group(1).split(",")]


@pytest.mark.parametrize("title", RECIPES)
def test_each_recipe_changes_at_most_three_files_that_exist(title):
    files = _recipe_files(title)
    assert 1 <= len(files) <= RECIPE_MAX_FILES, files
    for f in files:
        pattern = f.replace("<name>", "*")
        assert "*" in pattern or (ROOT / f).exists() or (ROOT / "analysis" / f).exists(), f
        if "*" in pattern:
            assert list(ROOT.glob(pattern.split("*")[0] + "*")), f
