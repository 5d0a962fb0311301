"""The valley tracer against a fine grid: ``python -m harness.bench valley``.

On the default experiment's task (``experiment=quick``: a 128-wide MLP on 1,000 MNIST-1D
training samples, 80 epochs, its 6 x 6 log grid) each variant is swept twice through the real
sweep machinery (a journal storage in a temporary folder, one worker, population training):

- ``sweep=valley``: the coarse grid, then ``--rounds`` refinement rounds ``--refine`` times
  finer each, per lr row;
- ``sweep=grid`` at the resolution the tracer reaches (``(num - 1) * refine**rounds + 1`` wd
  values over the same range: the tracer's points all lie on it), unless ``--no-fine``.

Printed per lr row: the best wd of the coarse grid, of the tracer and of the fine grid (lowest
validation error, the objective both optimize), and whether the tracer's best is within one fine
step of the fine grid's; then the trials and wall time of each. A mismatch means the row's
validation error has more than one dip at that resolution (noise of one seed included), which a
local search cannot see.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from optuna.trial import TrialState

from harness.config import compose_config
from harness.sweep import plan, valley
from harness.sweep.worker import run_worker


def _cfg(variant: str, out: Path, sampler: str, args, wd_num: int | None = None):
    overrides = [
        "experiment=quick",
        f"sweep={sampler}",
        f"sweep.variants=[{variant}]",
        "storage=journal",
        "tracking=disabled",
        f"sweep.population={args.population}",
        f"sweep.seeds={args.seeds}",
        f"sweep.rounds={args.rounds}",
        f"sweep.refine={args.refine}",
        *([f"train.epochs={args.epochs}"] if args.epochs else []),
        *args.override,
    ]
    cfg = compose_config(overrides)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.output_dir = str(out)
    cfg.sweep.study_name = f"bench-{sampler}"
    if sampler == "grid" and wd_num:
        v = plan.Variant.parse(variant)
        wd = plan.variant_config(cfg, v).sweep.weight_decay
        cfg.sweep.weight_decay = {"min": wd.min, "max": wd.max, "num": wd_num}
        cfg.sweep.ranges = {
            k: {a: r for a, r in dict(rng).items() if a != "weight_decay"}
            for k, rng in dict(cfg.sweep.ranges or {}).items()
        }
    return cfg


def _run(cfg) -> tuple[pd.DataFrame, float]:
    """Sweep ``cfg`` (one variant) to the end; (its trials, wall seconds)."""
    t0 = time.perf_counter()
    _, (study,) = plan.prepare(cfg)
    run_worker(cfg)
    wall = time.perf_counter() - t0
    rows = [
        {
            "lr": t.params["lr"],
            "wd": t.params["weight_decay"],
            "seed": t.params["seed"],
            "round": t.user_attrs.get("round", 0),
            "val": t.value,
            "test": t.user_attrs.get("test_error"),
        }
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]
    return pd.DataFrame(rows), wall


def _best(frame: pd.DataFrame) -> dict[float, tuple[float, float, float]]:
    """``{lr: (best wd, its val error, its test error)}``, means over seeds."""
    cells = frame.groupby(["lr", "wd"], as_index=False)[["val", "test"]].mean()
    out = {}
    for lr, row in cells.groupby("lr"):
        b = row.loc[row["val"].idxmin()]
        out[float(lr)] = (float(b.wd), float(b.val), float(b.test))
    return out


def bench_variant(variant: str, args, folder: Path) -> list[dict]:
    vcfg = _cfg(variant, folder / "valley", "valley", args)
    spec = plan.valley_spec(plan.variant_config(vcfg, plan.Variant.parse(variant)))
    q = valley.resolution(spec.q0, spec.refine, spec.rounds)
    fine_num = (len(spec.wds) - 1) * spec.refine**spec.rounds + 1
    traced, t_wall = _run(vcfg)
    coarse = _best(traced[traced["round"] == 0])
    best = _best(traced)
    fine, f_wall = {}, float("nan")
    n_fine = len(spec.lrs) * fine_num * len(spec.seeds)
    if not args.no_fine:
        fcfg = _cfg(variant, folder / "fine", "grid", args, wd_num=fine_num)
        fframe, f_wall = _run(fcfg)
        fine = _best(fframe)
    rows = []
    for lr in sorted(best):
        wd, val, test = best[lr]
        fwd, fval, _ = fine.get(lr, (math.nan, math.nan, math.nan))
        steps = abs(math.log(wd / fwd)) / math.log(q) if fine else math.nan
        rows.append(
            {
                "variant": variant,
                "lr": lr,
                "coarse wd": coarse[lr][0],
                "traced wd": wd,
                "traced val": val,
                "traced test": test,
                "fine wd": fwd,
                "fine val": fval,
                "steps apart": steps,
                "match": (steps <= 1 + 1e-6) if fine else None,
                "resolution": q,
                "trials traced": int((traced["lr"] == lr).sum()),
                "trials fine": fine_num * len(spec.seeds),
                "total traced": len(traced),
                "total fine": n_fine,
                "wall traced s": t_wall,
                "wall fine s": f_wall,
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    frame = pd.DataFrame(rows)
    for variant, part in frame.groupby("variant", sort=False):
        first = part.iloc[0]
        table = Table(
            title=(
                f"{variant}: resolution {first['resolution']:.3g}x; trials {first['total traced']}"
                f" traced vs {first['total fine']} fine grid; wall {first['wall traced s']:.0f} s"
                f" vs {first['wall fine s']:.0f} s"
            )
        )
        for col in ("lr", "coarse wd", "traced wd", "fine wd", "steps apart", "match",
                    "traced val", "fine val", "trials traced", "trials fine"):  # fmt: skip
            table.add_column(col, justify="right")
        for _, r in part.iterrows():
            table.add_row(
                f"{r['lr']:.3g}",
                f"{r['coarse wd']:.3g}",
                f"{r['traced wd']:.3g}",
                f"{r['fine wd']:.3g}",
                f"{r['steps apart']:.2f}",
                "-" if r["match"] is None else ("yes" if r["match"] else "no"),
                f"{r['traced val']:.4f}",
                f"{r['fine val']:.4f}",
                str(r["trials traced"]),
                str(r["trials fine"]),
            )
        Console(width=160).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench valley",
        description="The valley tracer's per-row best wd, resolution and trials against a fine "
        "grid at the same resolution, on experiment=quick's task.",
    )
    ap.add_argument(
        "--variants", default="adam/independent", help="comma-separated (default adam/independent)"
    )
    ap.add_argument("--rounds", type=int, default=2, help="refinement rounds (default 2)")
    ap.add_argument("--refine", type=int, default=3, help="refinement per round (default 3)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per cell (default 1)")
    ap.add_argument("--epochs", type=int, default=0, help="epochs (default: the experiment's 80)")
    ap.add_argument("--population", default="auto", help="sweep.population (default auto)")
    ap.add_argument("--no-fine", action="store_true", help="skip the fine grid")
    ap.add_argument("--csv", default="", help="also write the rows to this CSV")
    ap.add_argument(
        "override", nargs="*", help="further config overrides, e.g. sweep.lr.num=4 model.width=64"
    )
    args = ap.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lrwd-bench-valley-") as tmp:
        for i, variant in enumerate(v.strip() for v in args.variants.split(",") if v.strip()):
            rows += bench_variant(variant, args, Path(tmp) / str(i))
    print_table(rows)
    if args.csv:
        pd.DataFrame(rows).to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
