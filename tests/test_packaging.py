"""lrwd as users install it: a regular (non-editable) wheel carries the configs and runs a sweep;
the README's install and test commands work in a fresh virtual environment.

The wheel is built from a copy of the package's sources, installed with ``--no-deps`` into a
fresh virtual environment that sees the running environment's packages (a ``.pth`` naming its
site-packages: the dependencies are not downloaded again, and inside a virtual environment they
are the venv's, not its base interpreter's), and run from a folder outside the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "setup.py", "README.md", "harness", "analysis", "conf"]

TINY = [
    "sweep.variants=[]",
    "optimizer=adamw",
    "sweep.lr.min=1e-3",
    "sweep.lr.max=1e-2",
    "sweep.lr.num=2",
    "sweep.weight_decay.min=1e-4",
    "sweep.weight_decay.max=1e-2",
    "sweep.weight_decay.num=2",
    "model.width=16",
    "data.num_samples=600",
    "data.val_size=100",
    "train.epochs=1",
    "train.threads=1",
    "tracking=disabled",
]


def _run(
    cmd: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = env or {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels), str(src)],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("lrwd-*.whl")
    return wheel


def _venv_with_running_packages(venv: Path) -> str:
    """A fresh venv whose imports fall back to the running environment's site-packages (after its
    own): this interpreter's packages and pip, whether it runs in a venv or not. Its python."""
    base = getattr(sys, "_base_executable", sys.executable)  # a venv's own base interpreter
    # --without-pip: the venv uses the running environment's pip (no ensurepip needed on Debian)
    _run([base, "-m", "venv", "--without-pip", str(venv)], venv.parent)
    python = str(venv / "bin" / "python")
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv.parent
    ).stdout.strip()
    (Path(purelib) / "running_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


@pytest.mark.slow
def test_wheel_install_runs_a_sweep_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    python = _venv_with_running_packages(venv)
    # the dependencies are the running environment's, not its base interpreter's
    import omegaconf

    dep = _run([python, "-c", "import omegaconf; print(omegaconf.__file__)"], tmp_path)
    assert Path(dep.stdout.strip()) == Path(omegaconf.__file__), dep.stdout
    _run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall"]
        + [str(wheel)],
        cwd=tmp_path,
    )
    work = tmp_path / "work"
    work.mkdir()
    where = _run(
        [python, "-c", "import harness.config as c; print(c.__file__); print(c.CONF_DIR)"], work
    ).stdout.split()
    site = venv.resolve()
    assert all(Path(p).resolve().is_relative_to(site) for p in where), where
    assert Path(where[1]).name == "conf" and (Path(where[1]) / "optimizer" / "sgdw.yaml").exists()

    proc = _run([python, "-m", "harness.sweep", *TINY, "hydra.run.dir=out"], work)
    assert "4 cells" in proc.stdout, proc.stdout
    results = work / "out" / "results.csv"
    assert results.exists(), proc.stdout
    rows = results.read_text().strip().splitlines()
    assert len(rows) == 1 + 4, rows
    assert "decoupled" in rows[1]

    bad = subprocess.run(
        [python, "-m", "harness.sweep", "optimizer=adamx"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert bad.returncode == 2 and "adamw" in bad.stderr, bad.stderr


README_TEST = re.compile(r"^pip install .*&& python -m pytest$", re.M)
CHECKOUT = [*SOURCES, "constraints.txt", "tests"]


@pytest.mark.slow
def test_readme_test_command_passes_in_a_fresh_venv(tmp_path):
    """The README's install-and-test command, verbatim, in a fresh venv (``python -m venv``, pip
    included) on a copy of the checkout, with the versions of constraints.txt (``PIP_CONSTRAINT``).
    ``PYTEST_ADDOPTS`` narrows the inner pytest to this file's other tests: the wheel test builds
    its own venv, which must see this fresh venv's packages, not its base interpreter's."""
    (command,) = README_TEST.findall((ROOT / "README.md").read_text())
    checkout = tmp_path / "lrwd"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in CHECKOUT:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, checkout / name, ignore=ignore)
        else:
            checkout.mkdir(exist_ok=True)
            shutil.copy2(path, checkout / name)
    venv = tmp_path / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], tmp_path)
    drop = ("PYTHONPATH", "HYDRA_FULL_ERROR", "PYTHONHOME", "PYTEST_ADDOPTS", "PIP_CONSTRAINT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env |= {
        "VIRTUAL_ENV": str(venv),  # what `source venv/bin/activate` sets
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "PIP_CONSTRAINT": str(checkout / "constraints.txt"),
        "PYTEST_ADDOPTS": "-x -q -p no:cacheprovider tests/test_packaging.py -k 'not fresh_venv'",
    }
    proc = _run(["bash", "-c", command], checkout, timeout=2400, env=env)
    tail = proc.stdout.strip().splitlines()[-1]
    summary = r"3 passed, 1 deselected(, \d+ warnings?)? in .*"
    assert re.fullmatch(summary, tail), proc.stdout[-2000:]
    where = _run([str(venv / "bin" / "python"), "-c", "import omegaconf; print(omegaconf.__file__)"],
                 checkout, env=env).stdout  # fmt: skip
    assert Path(where.strip()).is_relative_to(venv), where


def test_pyproject_extras_and_bounds():
    """pyproject: the extras exist and the bounds that match the APIs used are there."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {d.split(">")[0].split("<")[0].split("=")[0].strip(): d for d in meta["dependencies"]}
    assert deps["optuna"].replace(" ", "") == "optuna>=4.5,<6"  # private storage API: queue.py
    assert deps["wandb"].replace(" ", "") == "wandb>=0.19.10"  # reinit="create_new"
    assert deps["torch"].replace(" ", "") == "torch>=2.4"
    extras = meta["optional-dependencies"]
    assert any(d.startswith("optuna-dashboard") for d in extras["dashboard"])
    assert {"jupytext", "nbclient", "ipykernel", "nbformat"} <= {
        d.split(">")[0] for d in extras["notebooks"]
    }


def test_constraints_pin_every_dependency():
    """constraints.txt pins (==) each direct dependency and every extra's packages."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not a pin: {line}"
            pinned[name.strip().lower().replace("_", "-")] = version
    wanted = list(meta["dependencies"])
    for deps in meta["optional-dependencies"].values():
        wanted += [d for d in deps if not d.startswith("lrwd")]
    for dep in wanted:
        name = dep
        for sep in ("[", ">", "<", "=", "!", "~", ";"):
            name = name.split(sep)[0]
        assert name.strip().lower().replace("_", "-") in pinned, name
