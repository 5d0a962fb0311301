"""scripts/mutation.py: the [tool.mutmut] settings it writes for each target and how it reads
mutmut's results (the mutmut run itself is documented in docs/testing.md, not run here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reads TOML with Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutation", ROOT / "scripts" / "mutation.py")
mutation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutation)


@pytest.mark.parametrize("target", sorted(mutation.TARGETS))
def test_each_target_gets_its_own_mutmut_table_and_the_rest_is_kept(target):
    pyproject = (ROOT / "pyproject.toml").read_text()
    written = tomllib.loads(mutation.with_block(pyproject, mutation.mutmut_block(target)))
    module, tests = mutation.TARGETS[target]
    cfg = written["tool"]["mutmut"]
    assert cfg["only_mutate"] == [module] and cfg["pytest_add_cli_args_test_selection"] == tests
    assert module.split("/")[0] in cfg["source_paths"]
    original = tomllib.loads(pyproject)
    assert {k: v for k, v in written.items() if k != "tool"} == {
        k: v for k, v in original.items() if k != "tool"
    }
    assert written["tool"]["pytest"] == original["tool"]["pytest"]
    assert (ROOT / module).is_file()
    for test in tests:  # every named test exists (a rename would silently test nothing)
        path, _, name = test.partition("::")
        assert (ROOT / path).is_file(), test
        assert not name or f"def {name}(" in (ROOT / path).read_text(), test


def test_a_pyproject_without_a_mutmut_table_gets_one():
    text = mutation.with_block('[project]\nname = "x"\n', mutation.mutmut_block("selection"))
    assert tomllib.loads(text)["tool"]["mutmut"]["only_mutate"] == ["analysis/metrics/selection.py"]


def test_results_lines_are_read_per_mutant():
    out = (
        "    analysis.metrics.selection.x_take__mutmut_1: killed\n"
        "    analysis.metrics.selection.xǁGridsǁmeans__mutmut_2: survived\n"
        "    analysis.metrics.selection.x_take__mutmut_3: no tests\n"
        "some other line\n"
    )
    assert mutation.parse_results(out) == {
        "analysis.metrics.selection.x_take__mutmut_1": "killed",
        "analysis.metrics.selection.xǁGridsǁmeans__mutmut_2": "survived",
        "analysis.metrics.selection.x_take__mutmut_3": "no tests",
    }
