"""The collapse test (analysis.collapse) on surfaces whose dependence on (lr, wd) is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import collapse, theory

LRS = np.logspace(-4, -1, 7)
WDS = np.logspace(-6, 0, 10)


def surface(variant: str, fn, seeds: int = 3, noise: float = 0.003, rng: int = 0) -> pd.DataFrame:
    """Trials of ``variant`` on the LRS x WDS grid with error ``fn(log10 lr, log10 wd)``."""
    r = np.random.default_rng(rng)
    opt, _, dec = variant.partition("/")
    rows = []
    for seed in range(seeds):
        for lr in LRS:
            for wd in WDS:
                e = fn(np.log10(lr), np.log10(wd)) + r.normal(0, noise)
                rows.append({"experiment": "s", "optimizer": opt, "decay": dec, "lr": lr,
                             "weight_decay": wd, "seed": seed, "test_error": e,
                             "diverged": False, "variant": variant})  # fmt: skip
    return pd.DataFrame(rows)


def basin(x):
    return 1 - np.exp(-(x**2) / 4)


@pytest.mark.parametrize(
    "variant,invariant",
    [
        ("adam/decoupled", lambda x, w: x + w + 6),  # lr * wd
        ("adam/l2", lambda x, w: 2 * x + w + 8),  # lr^2 * wd
        ("sgd/independent", lambda x, w: w + 3),  # wd
    ],
)
def test_r2_1d_near_one_when_the_error_depends_on_the_invariant_only(variant, invariant):
    frame = surface(variant, lambda x, w: 0.2 + 0.3 * basin(invariant(x, w)))
    got = collapse.collapse_r2(frame, variant)
    assert got["collapse_r2_1d"] > 0.97
    assert got["collapse_r2_2d"] > 0.9
    assert got["collapse_cells"] == len(LRS) * len(WDS)


def test_r2_1d_clearly_lower_when_lr_matters_beyond_the_invariant():
    def fn(x, w):  # half the surface follows lr*wd, half follows lr alone
        return 0.2 + 0.15 * basin(x + w + 6) + 0.15 * basin((x + 2.5) * 1.5)

    frame = surface("adam/decoupled", fn)
    got = collapse.collapse_r2(frame, "adam/decoupled")
    assert got["collapse_r2_2d"] > 0.9  # a 2-D surface explains it
    assert got["collapse_r2_1d"] < 0.75  # the invariant alone does not
    assert got["collapse_r2_2d"] - got["collapse_r2_1d"] > 0.2
    # the same surface under the wrong variant's invariant (wd alone) explains even less
    other = frame.assign(decay="independent", variant="adam/independent")
    assert collapse.collapse_r2_1d(other, "adam/independent") < got["collapse_r2_1d"]


def test_the_flexible_fit_does_not_win_on_noise():
    frame = surface("adam/decoupled", lambda x, w: 0.3 + 0 * x, noise=0.01)
    got = collapse.collapse_r2(frame, "adam/decoupled")
    # out of sample, a smoother cannot explain pure noise: both near or below 0
    assert got["collapse_r2_2d"] < 0.15 and got["collapse_r2_1d"] < 0.15


def test_diverged_cells_and_unknown_variants():
    frame = surface("adam/decoupled", lambda x, w: 0.2 + 0.3 * basin(x + w + 6))
    gone = frame["lr"] == LRS[-1]
    frame.loc[gone, "diverged"] = True
    frame.loc[gone, "test_error"] = 1.0
    assert collapse.collapse_r2(frame, "adam/decoupled")["collapse_cells"] == 6 * len(WDS)
    assert collapse.collapse_r2_1d(frame, "adam/decoupled") > 0.97
    odd = frame.assign(optimizer="lion", variant="lion/decoupled")
    assert np.isnan(collapse.collapse_r2_1d(odd, "lion/decoupled"))
    assert np.isnan(collapse.loo_r2(np.zeros((3, 1)), np.array([0.1, 0.2, 0.3]))[0])


def _angled(variant: str, seeds: int = 2) -> pd.DataFrame:
    """Trials whose error is a function of the predicted equilibrium angle, with the measured
    angle equal to it, 800 steps at a constant schedule."""
    opt, _, dec = variant.partition("/")
    frame = surface(variant, lambda x, w: 0.0, seeds=seeds, noise=0.0)
    frame["eq_eta"], frame["steps"] = 1.0, 800
    angle = theory.equilibrium_angle(opt, dec, frame["lr"], frame["weight_decay"])
    frame["si_angle"] = angle
    a = np.where(np.isfinite(angle), angle, 0.05)
    frame["test_error"] = 0.5 + 0.1 * np.log10(a / 0.03) ** 2
    return frame


def test_collapse_figure_draws_the_equilibrated_cells(tmp_path):
    frame = pd.concat(
        [_angled(v) for v in ("sgd/l2", "adam/decoupled", "adam/independent", "adam/l2")],
        ignore_index=True,
    )
    cells = collapse.equilibrated_cells(frame)
    # Adam + l2 has no predicted relaxation time: none of its cells is equilibrated
    assert set(cells["variant"]) == {"sgd/l2", "adam/decoupled", "adam/independent"}
    th = theory.trial_theory(frame)
    relaxed = th[th["equilibrated"].fillna(False).astype(bool)]
    n_eq = relaxed.groupby(["variant", "lr", "weight_decay"]).ngroups
    assert len(cells) == n_eq and 0 < n_eq < len(frame) / 2
    paths = collapse.write_collapse(frame, tmp_path, formats=("png",))
    assert paths == [tmp_path / "collapse.png"] and paths[0].stat().st_size > 10_000
    # without measured angles there is nothing to draw, and nothing is written
    none = frame.drop(columns=["si_angle"])
    assert collapse.write_collapse(none, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()
