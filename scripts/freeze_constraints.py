"""Write constraints.txt: the installed version of every package lrwd's dependencies pull in.

``python scripts/freeze_constraints.py > constraints.txt`` in an environment where
``pip install -e ".[dev]"`` passed the tests. It walks the requirement tree of lrwd and all its
extras (from pyproject.toml) through the installed distributions' metadata (like ``pip freeze``, restricted to what
lrwd needs); CI installs with ``pip install -c constraints.txt``.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

# the project itself and the installer
SKIP = {"lrwd", "pip"}
ROOT = Path(__file__).resolve().parent.parent


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """lrwd's dependencies and every extra's, read from pyproject.toml (not the installed
    metadata, which an editable install leaves at the version it was installed with)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for deps in project.get("optional-dependencies", {}).values():
        lines += deps
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if _key(r.name) not in SKIP]


def closure() -> dict[str, str]:
    """``{name: version}`` of every installed distribution lrwd[all extras] pulls in."""
    seen: dict[str, str] = {}
    todo = [(r.name, frozenset(r.extras)) for r in project_requirements()]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[_key(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return {k: v for k, v in seen.items() if k not in SKIP}


def main() -> int:
    pins = closure()
    print("# The versions CI tested: pip install -c constraints.txt -e '.[dev]'")
    print("# Regenerate: python scripts/freeze_constraints.py > constraints.txt")
    for name in sorted(pins):
        version = pins[name].split("+")[0]  # torch 2.13.0+cpu: the local label is the index's
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
