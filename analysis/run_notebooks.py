"""Execute the jupytext notebooks of ``analysis/notebooks`` on a results path (no Jupyter needed).

``python -m analysis.run_notebooks SOURCE [SOURCE ...] --out DIR [--only fig2_heatmaps]`` runs
each ``analysis/notebooks/*.py`` (jupytext percent format) top to bottom with nbclient, with
``LRWD_RESULTS`` = the sources (joined by ``;``) and ``LRWD_FIGURES`` = DIR, and saves the
executed notebooks as ``DIR/<name>.ipynb`` next to the figures they wrote.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).parent / "notebooks"


def notebooks() -> list[Path]:
    """The jupytext scripts, sorted by name."""
    return sorted(NOTEBOOK_DIR.glob("*.py"))


def run_notebook(
    path: str | Path,
    results: Sequence[str],
    out: str | Path,
    metric: str = "test_error",
    timeout: int = 600,
    save: bool = True,
):
    """Execute one notebook with the parameters set through the environment; returns it.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the cell's traceback) on failure.
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    path, out = Path(path), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(path)
    env = {
        "LRWD_RESULTS": ";".join(
            str(Path(s).resolve()) if Path(s).exists() else str(s) for s in results
        ),
        "LRWD_FIGURES": str(out.resolve()),
        "LRWD_METRIC": metric,
        "MPLBACKEND": os.environ.get("MPLBACKEND", "module://matplotlib_inline.backend_inline"),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(out.resolve())}},
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if save:
        nbformat.write(nb, out / f"{path.stem}.ipynb")
    return nb


def main(argv: list[str] | None = None) -> int:
    names = [p.stem for p in notebooks()]
    ap = argparse.ArgumentParser(
        prog="python -m analysis.run_notebooks",
        description="Execute the analysis notebooks on sweep results; figures and executed "
        ".ipynb files go to --out.",
    )
    ap.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="as for python -m analysis.figures (results.csv, directory, storage URL)",
    )
    ap.add_argument("--out", required=True, metavar="DIR")
    ap.add_argument("--only", action="append", choices=names, help="run just this notebook")
    ap.add_argument("--metric", default="test_error")
    args = ap.parse_args(argv)
    for path in notebooks():
        if args.only and path.stem not in args.only:
            continue
        try:
            run_notebook(path, args.sources, args.out, args.metric)
        except Exception as exc:  # noqa: BLE001 - the cell's error, in one line
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
            last = text.splitlines()[-1] if text else type(exc).__name__
            print(f"error: {path.name}: {last}", file=sys.stderr)
            return 1
        print(f"ran {path.name} -> {Path(args.out) / (path.stem + '.ipynb')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
