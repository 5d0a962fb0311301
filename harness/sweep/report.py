"""After a sweep (or at any time, from the storage alone): ``results.csv``, the summary table
and the figures (through :mod:`analysis.figures`)."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from harness.phases import phase
from harness.results import write_layers, write_results
from harness.secrets import mask_secrets
from harness.storage import describe
from harness.sweep.plan import cells, study_name, variants
from harness.sweep.queue import DONE_STATES

log = logging.getLogger("lrwd.sweep")


def count_done(studies: list[Any]) -> int:
    return sum(len(s.get_trials(deepcopy=False, states=DONE_STATES)) for s in studies)


def report(cfg: DictConfig, studies: list[Any]) -> dict[str, Path]:
    """results.csv, a summary table and figures from the storage alone."""
    out = Path(cfg.output_dir)
    with phase("results"):
        paths = {"results": write_results(studies, out / "results.csv")}
        layers = write_layers(studies, out / "layers.csv")  # read by analysis.figures beside it
    if layers is not None:
        paths["layers"] = layers
    with phase("imports"):
        import pandas as pd

    frame = pd.read_csv(paths["results"])
    totals = {study_name(cfg, v): cells(cfg, v) for v in variants(cfg)}
    print_summary(frame, total_per_study=totals)
    try:
        paths.update(draw_figures(paths["results"], out / "figures"))
    except Exception as exc:  # noqa: BLE001 - figures never lose the results
        log.warning("figures skipped: %s", exc)
        return paths
    line = theory_scope_line(cfg, frame)
    if line:
        print(line)
    for line in decay_rule_lines(paths["figures"]):
        print(line)
    try:
        with phase("wandb"):
            track_analysis(cfg, paths["figures"])
    except Exception as exc:  # noqa: BLE001 - tracking never loses the results
        log.warning("W&B analysis run skipped: %s", mask_secrets(str(exc)))
    return paths


# The tables of an analysis folder that go to W&B (analysis.figures writes them)
ANALYSIS_TABLES = ("metrics", "regret", "valley", "decay_rule")


def decay_rule_lines(figures: Path) -> list[str]:
    """The decay rule in plain words, one line per variant (``adam/independent: wd ~ 1.6e-03 at
    any lr in [1e-04, 1e-01]``), from each analysis folder's ``decay_rule.csv``; a heading per
    part when the sweep has several."""
    import pandas as pd

    from analysis.rule import summary_line

    lines: list[str] = []
    folders = analysis_folders(figures)
    for folder in folders:
        path = folder / "decay_rule.csv"
        if not path.is_file() or not path.stat().st_size:
            continue
        rules = pd.read_csv(path)
        if rules.empty:
            continue
        head = "decay rule (wd = C * lr^s, best wd per lr row on validation)"
        lines.append(f"{head}, {folder.name}:" if len(folders) > 1 else f"{head}:")
        lines += [f"  {summary_line(row)}" for _, row in rules.iterrows()]
    return lines


def analysis_folders(figures: Path) -> list[Path]:
    """The folders analysis.figures wrote one analysis into: ``figures`` itself, or one
    sub-folder per experiment/model/data part when a sweep has several."""
    if (figures / "cells.csv").is_file():
        return [figures]
    return sorted(d for d in figures.iterdir() if d.is_dir() and (d / "cells.csv").is_file())


def track_analysis(cfg: DictConfig, figures: Path) -> list[str]:
    """With tracking on, one W&B run (``job_type="analysis"``) per analysis folder: its figures
    as images and its metrics, regret and valley tables as ``wandb.Table``. The group is the
    sweep's name (``sweep.study_name`` or ``name``, the prefix of its studies' names). Returns
    the run ids (none when tracking is disabled)."""
    from harness.tracking import Tracker, resolve_mode

    if resolve_mode(str(cfg.tracking.mode)) == "disabled":
        return []
    import pandas as pd

    group = str(cfg.sweep.study_name or cfg.name)
    studies = [study_name(cfg, v) for v in variants(cfg)]
    tracker = Tracker(cfg.tracking, cfg.output_dir, group)
    ids = []
    for folder in analysis_folders(figures):
        label = "" if folder == figures else folder.name
        tables = {}
        for key in ANALYSIS_TABLES:
            path = folder / f"{key}.csv"
            if path.is_file() and path.stat().st_size:
                tables[key] = pd.read_csv(path)
        run = tracker.log_analysis(
            f"analysis {label}".strip(),
            images={p.stem: p for p in sorted(folder.glob("*.png"))},
            tables=tables,
            config={"name": cfg.name, "studies": studies, "part": label, "figures": str(folder)},
        )
        if run.id:
            ids.append(run.id)
    return ids


def next_commands(cfg: DictConfig) -> dict[str, str]:
    """What to run next: ``optuna-dashboard <storage>`` (password masked) unless the storage
    is in memory, and ``wandb sync <dir>/offline-run-*`` when there are offline W&B runs."""
    out: dict[str, str] = {}
    if cfg.storage.kind != "memory":
        import shutil

        out["dashboard"] = f"optuna-dashboard {shlex.quote(describe(cfg))}" + (
            ""
            if shutil.which("optuna-dashboard")
            else "  (not installed: pip install optuna-dashboard, or the dashboard extra)"
        )
    wandb_dir = Path(cfg.tracking.dir or cfg.output_dir).expanduser().resolve() / "wandb"
    if cfg.tracking.mode != "disabled" and any(wandb_dir.glob("offline-run-*")):
        out["sync"] = f"wandb sync {shlex.quote(str(wandb_dir))}/offline-run-*"
    return out


def theory_scope(cfg: DictConfig) -> dict[str, int] | None:
    """How much of what decays the scale-invariance theory covers: ``{"si": tensors found
    scale-invariant that decay, "decayed": tensors that decay, "si_elements", "elements"}``
    for the configured model on a probe batch; None when it cannot be built."""
    from harness.loop import configured_groups, probe_batch, set_up
    from harness.optim.groups import scale_invariant_names

    run = set_up(cfg)
    invariant = scale_invariant_names(run.model, probe_batch(run))
    _, rep = configured_groups(cfg, run.model, 1.0, invariant=invariant)
    decayed = list(rep["decay"]["names"])
    sizes = {n: p.numel() for n, p in run.model.named_parameters()}
    si = [n for n in decayed if n in set(invariant)]
    return {
        "si": len(si),
        "decayed": len(decayed),
        "si_elements": sum(sizes[n] for n in si),
        "elements": sum(sizes[n] for n in decayed),
    }


def theory_scope_line(cfg: DictConfig, frame) -> str:
    """The sentence that scopes the printed predictions: for what share of the decayed
    parameters they hold; "" when the trials carry no scale-invariant tensor count."""
    if "si_tensors" not in frame or not frame["si_tensors"].notna().any():
        return ""
    if list(cfg.sweep.get("models") or []):  # one model per study: the figures' table says it
        return ""
    try:
        scope = theory_scope(cfg)
    except Exception as exc:  # noqa: BLE001 - the summary never fails on this sentence
        log.debug("theory scope skipped: %s", exc)
        return ""
    if not scope or not scope["decayed"]:
        return "theory: no parameter decays; the predicted slopes do not apply"
    if not scope["si"]:
        return (
            "theory: the detector found no scale-invariant tensor that decays; the predicted "
            "slopes do not apply (decay is a plain penalty here)"
        )
    share = scope["si_elements"] / scope["elements"]
    return (
        f"theory: the predicted slopes hold for the {scope['si']} scale-invariant tensors of "
        f"the {scope['decayed']} that decay ({100 * share:.0f}% of the decayed parameters)"
        + ("" if share > 0.999 else "; the rest see decay as a plain penalty")
    )


def print_summary(frame, total_per_study: dict[str, int]) -> None:
    """One row per study: cells done out of its grid (``total_per_study[study]``), and the test
    error at the cell chosen on validation (seed means; on test when there is no validation
    error)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lr x weight-decay sweep", show_lines=False)
    for col in ("variant", "cells", "diverged", "test err at val best", "at lr", "at wd",
                "median wall s"):  # fmt: skip
        table.add_column(col, justify="right" if col != "variant" else "left")
    if frame.empty:
        Console().print("no finished trials yet")
        return
    for name, g in frame.groupby("study", sort=False):
        done = g[g.state == "COMPLETE"]
        total = total_per_study.get(name, "?")
        variant = f"{g.optimizer.iloc[0]}/{g.decay.iloc[0]}"
        if "model" in g and frame["model"].nunique() > 1:
            variant = f"{g.model.iloc[0]}:{variant}"
        if done.empty:
            table.add_row(variant, f"0/{total}", "-", "-", "-", "-", "-")
            continue
        by = next(
            (c for c in ("final_val_error", "val_error") if c in done and done[c].notna().all()),
            "test_error",
        )
        cells = done.groupby(["lr", "weight_decay"])[["test_error", by]].mean()
        (lr, wd) = cells[by].idxmin()
        err = cells.loc[(lr, wd), "test_error"]
        table.add_row(
            variant,
            f"{done[['lr', 'weight_decay', 'seed']].drop_duplicates().shape[0]}/{total}",
            str(int(done.diverged.astype(bool).sum())),
            f"{err:.4f}",
            f"{lr:.3g}",
            f"{wd:.3g}",
            f"{done.wall_s.median():.2f}",
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)


def draw_figures(results_csv: Path, out: Path) -> dict[str, Path]:
    """Heatmaps and metrics via ``analysis`` (the paper-style figure)."""
    with phase("imports"):
        from analysis.figures import main as figures_main

    out.mkdir(parents=True, exist_ok=True)
    rc = figures_main([str(results_csv), "--out", str(out)])
    if rc:
        raise RuntimeError(f"analysis.figures exited {rc}")
    return {"figures": out}
