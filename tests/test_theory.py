"""The scale-invariance theory (analysis.theory) against a simulated scale-invariant problem,
and its place in the metrics, the figures and the printed summary.

The toy: R independent walkers ``w`` in R^d whose loss depends on ``w / ||w||`` only, with
pure gradient noise: ``g = (I - u u^T) xi / ||w||``, ``u = w / ||w||``, ``xi ~ N(0, I)``. The
harness's own update rules (``harness.optim.functional``) move them; the angle between
successive ``w`` is measured over the last quarter of the steps, as the training loop does.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import theory
from analysis.theory import equilibrium_angle, prediction, radial_shrink, relaxation_steps
from harness.optim.functional import adam_step, sgd_step

# --------------------------------------------------------------------------------------------
# The toy


def simulate(
    optimizer: str,
    decay: str,
    a: float,
    lam: float,
    *,
    eta: float = 1.0,
    momentum: float = 0.9,
    beta1: float = 0.9,
    steps: int = 1200,
    walkers: int = 8,
    dim: int = 128,
    norm0: float = 1.0,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """``(mean angle per step over the last quarter, mean ||w||^2 after each step)``."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(walkers, dim, generator=gen, dtype=torch.float64)
    w *= norm0 / w.norm(dim=1, keepdim=True)
    bufs = None
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    angles, sq_norms = np.empty(steps), np.empty(steps)
    for t in range(1, steps + 1):
        xi = torch.randn(walkers, dim, generator=gen, dtype=torch.float64)
        norm = w.norm(dim=1, keepdim=True)
        u = w / norm
        grad = (xi - (xi * u).sum(1, keepdim=True) * u) / norm
        old = w.clone()
        hyper = {"lr": a * eta, "weight_decay": lam, "eta": eta, "decay": decay}
        if optimizer == "sgd":
            bufs = sgd_step([w], [grad], bufs, momentum=momentum, **hyper)
        else:
            adam_step([w], [grad], [m], [v], step=t, beta1=beta1, **hyper)
        cos = (old * w).sum(1) / (old.norm(dim=1) * w.norm(dim=1))
        angles[t - 1] = torch.arccos(cos.clamp(-1.0, 1.0)).mean().item()
        sq_norms[t - 1] = (w.norm(dim=1) ** 2).mean().item()
    return float(angles[-steps // 4 :].mean()), sq_norms


# Tolerances. The toy runs in float64 from a seeded CPU generator (the same numbers on every
# CPU); kernels that round differently move it by ~1e-16 relative, and the dynamics contract
# toward equilibrium instead of amplifying that, so the margins below do not depend on the
# machine. What they cover: the prediction keeps the leading order in the per-step shrink s
# (the balance (1 - s)^2 ||w||^2 + ||step||^2 = ||w||^2 gives theta = sqrt(2s) (1 - s/2 + ...)),
# so it is off by a relative ~s/2 = theta^2/4 (2.5% for the largest angle here, 0.32 rad at
# momentum 0; under 0.2% for theta ~0.05-0.07 rad); and the mean over 8 walkers x the last
# quarter of the steps has a sampling error of a few percent (a d=128 step's length spreads by
# 1/sqrt(2d) = 6% per walker and step, the norms stay correlated over tau = 10-20 steps).
# rel=0.10 covers both; with the same invariant (test_the_angle_depends_on_the_invariant_only)
# the theta^2 term is the same for both runs and 0.08 is left for two runs' sampling errors.

# (optimizer, decay, a, lam, eta): relaxation times of 10-20 steps, 1200 steps of training
PREDICTED = [
    ("sgd", "l2", 0.1, 0.05, 1.0),
    ("sgd", "decoupled", 0.1, 0.5, 1.0),
    ("sgd", "independent", 0.1, 0.05, 0.5),
    ("adam", "decoupled", 0.01, 5.0, 1.0),
    ("adam", "independent", 0.01, 0.05, 0.5),
]


@pytest.mark.parametrize("opt,decay,a,lam,eta", PREDICTED)
def test_equilibrium_angle_matches_the_simulation(opt, decay, a, lam, eta):
    measured, _ = simulate(opt, decay, a, lam, eta=eta)
    predicted = float(equilibrium_angle(opt, decay, a, lam, eta))
    assert float(relaxation_steps(opt, decay, a, lam, eta)) <= 1200 * theory.EQUILIBRIUM_WINDOW
    assert measured == pytest.approx(predicted, rel=0.10)


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_the_angle_follows_the_momentum(mu):
    """The (1 + mu) and (1 - mu) factors, at another momentum than the default."""
    for decay, lam in (("l2", 0.05), ("decoupled", 0.5)):
        measured, _ = simulate("sgd", decay, 0.1, lam, momentum=mu, steps=800)
        predicted = float(equilibrium_angle("sgd", decay, 0.1, lam, momentum=mu))
        assert measured == pytest.approx(predicted, rel=0.10), decay


# (a, lam) -> (c a, lam c^slope) keeps the invariant: the equilibrium angle must not move
@pytest.mark.parametrize(
    "opt,decay,a,lam",
    [
        ("sgd", "l2", 0.1, 0.05),
        ("sgd", "decoupled", 0.1, 0.5),
        ("sgd", "independent", 0.1, 0.05),
        ("adam", "l2", 0.01, 0.05),
        ("adam", "decoupled", 0.01, 5.0),
        ("adam", "independent", 0.01, 0.05),
    ],
)
def test_the_angle_depends_on_the_invariant_only(opt, decay, a, lam):
    slope = prediction(opt, decay).slope
    c = 4.0
    base, _ = simulate(opt, decay, a, lam, steps=800)
    moved, _ = simulate(opt, decay, c * a, lam * c**slope, steps=800, seed=1)
    assert moved == pytest.approx(base, rel=0.08)
    # and off the invariant it does move (the prediction is not vacuous)
    off, _ = simulate(opt, decay, c * a, lam * c ** (slope + 1), steps=800, seed=1)
    assert abs(off / base - 1) > 0.3


@pytest.mark.parametrize(
    "opt,decay,a,lam",
    [
        ("sgd", "l2", 0.02, 0.02),  # s_r = a lam / (1 - mu): the buffer accumulates the decay
        ("sgd", "decoupled", 0.02, 0.2),
        ("adam", "independent", 0.01, 0.004),
    ],
)
def test_the_norm_relaxes_at_the_radial_shrink(opt, decay, a, lam):
    """Far above equilibrium ||w||^2 decays like exp(-2 s_r t) = exp(-t / tau)."""
    tau = float(relaxation_steps(opt, decay, a, lam))
    _, sq = simulate(opt, decay, a, lam, steps=int(2 * tau) + 30, norm0=1e3, walkers=2)
    t0, t1 = 30, 30 + int(tau)  # after the momentum buffer has filled
    rate = -math.log(sq[t1] / sq[t0]) / (t1 - t0)
    # exp(-t / tau) is the continuous limit of a per-step shrink s: relative error O(s) (s < 0.01
    # here); the gradient noise's push outward is ~1/||w||^2 ~ 1e-6 at norm 1e3; 5% covers both
    assert rate * tau == pytest.approx(1.0, rel=0.05)


def test_equilibrated_means_the_angle_has_relaxed():
    """A trial trained four relaxation times is at the predicted angle in its last quarter;
    one trained half a relaxation time from three times the equilibrium norm is far below it."""
    opt, decay, a, lam = "sgd", "decoupled", 0.1, 0.1
    tau = float(relaxation_steps(opt, decay, a, lam))
    steps = math.ceil(4 * tau) + 1
    long_run, _ = simulate(opt, decay, a, lam, steps=steps, norm0=30.0)
    short_run, _ = simulate(opt, decay, a, lam, steps=int(tau / 2), norm0=30.0)
    frame = pd.DataFrame(
        {
            "optimizer": opt,
            "decay": decay,
            "variant": f"{opt}/{decay}",
            "lr": a,
            "weight_decay": lam,
            "steps": [steps, int(tau / 2)],
            "eq_eta": 1.0,
            "si_angle": [long_run, short_run],
        }
    )
    t = theory.trial_theory(frame)
    assert list(t["equilibrated"]) == [True, False]
    # four relaxation times leave exp(-4) ~ 2% of the start in the norm; plus order theta and
    # the sampling error of one 8-walker run
    assert t["angle_ratio"].iloc[0] == pytest.approx(1.0, rel=0.15)
    assert t["angle_ratio"].iloc[1] < 0.5


# --------------------------------------------------------------------------------------------
# The table


def test_prediction_table():
    slopes = {
        ("sgd", "l2"): (-1, "a*lam"),
        ("sgd", "loss"): (-1, "a*lam"),
        ("sgd", "decoupled"): (-1, "a*lam"),
        ("sgd", "independent"): (0, "lam"),
        ("adam", "l2"): (-2, "a^2*lam"),
        ("adam", "loss"): (-2, "a^2*lam"),
        ("adam", "decoupled"): (-1, "a*lam"),
        ("adam", "independent"): (0, "lam"),
    }
    for (opt, dec), (slope, invariant) in slopes.items():
        p = prediction(opt, dec)
        assert (p.slope, p.invariant) == (slope, invariant)
        assert p.predicts_angle == (not (opt == "adam" and dec in ("l2", "loss")))
    assert "sqrt(v)" in prediction("adam", "l2").reason
    assert math.isnan(float(equilibrium_angle("adam", "l2", 1e-3, 1e-2)))
    assert math.isnan(prediction("lion", "decoupled").slope)
    # the closed forms of the table
    a, lam, eta, mu = 0.1, 5e-4, 0.5, 0.9
    assert float(equilibrium_angle("sgd", "l2", a, lam, eta, mu)) == pytest.approx(
        math.sqrt(2 * a * eta * lam / (1 + mu))
    )
    assert float(equilibrium_angle("sgd", "independent", a, lam, eta, mu)) == pytest.approx(
        math.sqrt(2 * eta * lam * (1 - mu) / (1 + mu))
    )
    assert float(radial_shrink("sgd", "l2", a, lam, eta, mu)) == pytest.approx(
        a * eta * lam / (1 - mu)
    )
    assert float(relaxation_steps("adam", "decoupled", a, lam, eta)) == pytest.approx(
        1 / (2 * a * eta * lam)
    )
    assert float(relaxation_steps("sgd", "decoupled", a, 0.0)) == math.inf


def test_trial_theory_without_angle_columns_predicts_slopes_only():
    frame = pd.DataFrame(
        {"optimizer": ["sgd", "adam"], "decay": ["l2", "l2"], "variant": ["sgd/l2", "adam/l2"],
         "lr": [0.1, 1e-3], "weight_decay": [1e-3, 1e-3], "steps": [100, 100]}
    )  # fmt: skip
    t = theory.trial_theory(frame)
    assert list(t["predicted_slope"]) == [-1.0, -2.0]
    assert t["predicted_angle"].isna().all()
    assert t["equilibrated"].isna().all()
    assert not theory.has_angles(frame)


def test_a_diverged_trial_is_not_counted():
    frame = pd.DataFrame(
        {"optimizer": "adam", "decay": "decoupled", "variant": "adam/decoupled", "lr": 1e-2,
         "weight_decay": 1.0, "steps": 1000, "eq_eta": 1.0, "si_angle": [0.04, np.nan],
         "diverged": [False, True]}
    )  # fmt: skip
    t = theory.trial_theory(frame)
    assert t["equilibrated"].iloc[0] == True  # noqa: E712 (a pandas boolean)
    assert pd.isna(t["equilibrated"].iloc[1])
    assert theory.theory_metrics(t)["equilibrated_fraction"].iloc[0] == 1.0


def test_options_that_break_the_invariance_have_no_angle():
    frame = pd.DataFrame(
        {"optimizer": "sgd", "decay": "decoupled", "variant": "sgd/decoupled", "lr": 0.1,
         "weight_decay": 1e-2, "steps": 1000, "eq_eta": 1.0, "si_angle": 0.01,
         "relative": ["False", True, False], "normalized": [False, False, "True"],
         "wd_schedule": "constant"}
    )  # fmt: skip
    t = theory.trial_theory(frame)
    assert np.isfinite(t["predicted_angle"].iloc[0])  # "False" from a CSV is false
    assert t["predicted_angle"].iloc[1:].isna().all()
    assert "relative" in t["theory_reason"].iloc[1]
    assert "normalized" in t["theory_reason"].iloc[2]


def test_momentum_from_the_frame_and_from_config_yaml(tmp_path):
    import yaml

    rows = pd.DataFrame(
        {"experiment": "e", "optimizer": "sgd", "decay": "l2", "variant": "sgd/l2", "lr": 0.1,
         "weight_decay": 1e-3, "steps": 1000, "eq_eta": 1.0, "si_angle": 0.01}, index=[0]
    )  # fmt: skip
    (tmp_path / "results.csv").write_text(rows.to_csv(index=False))
    cfg = {"name": "e", "optimizer": {"momentum": 0.5, "betas": [0.8, 0.99]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with_cfg = theory.study_hyperparameters([str(tmp_path / "results.csv")], rows)
    assert with_cfg["momentum"].iloc[0] == 0.5 and with_cfg["beta1"].iloc[0] == 0.8
    got = theory.trial_theory(with_cfg)["predicted_angle"].iloc[0]
    assert got == pytest.approx(math.sqrt(2 * 0.1 * 1e-3 / 1.5))
    assert theory.trial_theory(rows)["predicted_angle"].iloc[0] == pytest.approx(
        math.sqrt(2 * 0.1 * 1e-3 / 1.9)
    )


# --------------------------------------------------------------------------------------------
# Metrics, figures and the printed table


def _with_angles(frame: pd.DataFrame, steps: int = 2000) -> pd.DataFrame:
    """Synthetic trials with the angle columns: the measured angle is the prediction (x1.03)
    where the trial equilibrated, a third of it where it did not."""
    out = frame.copy()
    out["steps"] = steps
    out["eq_eta"] = 1.0
    out["si_tensors"] = 2
    t = theory.trial_theory(out.assign(variant=out["optimizer"] + "/" + out["decay"]))
    eq = t["equilibrated"].fillna(False).to_numpy(bool)
    pred = t["predicted_angle"].to_numpy(float)
    out["si_angle"] = np.where(eq, 1.03 * pred, pred / 3)
    out.loc[out["decay"] == "l2", "si_angle"] = 0.02  # measured, not predicted under Adam
    return out


def test_metrics_figures_and_table_with_angles(tmp_path, capsys):
    from analysis.figures import main
    from analysis.synthetic import synthetic_results

    variants = ["sgd/l2", "sgd/decoupled", "adam/l2", "adam/independent"]
    raw = _with_angles(synthetic_results(variants, n_lr=5, n_wd=6, seeds=1))
    raw.to_csv(tmp_path / "results.csv", index=False)
    out = tmp_path / "figs"
    assert main([str(tmp_path / "results.csv"), "--out", str(out), "--bootstrap", "0",
                 "--formats", "png"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "pred." in printed and "sgd/decoupled x1.03" in printed
    m = pd.read_csv(out / "metrics.csv").set_index("variant")
    assert m.loc["sgd/l2", "predicted_slope"] == -1
    assert m.loc["adam/l2", "predicted_slope"] == -2
    assert m.loc["adam/independent", "predicted_slope"] == 0
    assert m.loc["sgd/l2", "slope_vs_predicted"] == pytest.approx(
        m.loc["sgd/l2", "coupling_slope"] + 1
    )
    assert m.loc["sgd/decoupled", "angle_ratio_median"] == pytest.approx(1.03)
    assert math.isnan(m.loc["adam/l2", "angle_ratio_median"])
    assert math.isnan(m.loc["adam/l2", "equilibrated_fraction"])
    t = theory.trial_theory(raw.assign(variant=raw["optimizer"] + "/" + raw["decay"]))
    for v in ("sgd/l2", "sgd/decoupled", "adam/independent"):
        share = t.loc[t["variant"] == v, "equilibrated"].dropna().astype(bool).mean()
        assert m.loc[v, "equilibrated_fraction"] == pytest.approx(share)
    assert 0 < m.loc["sgd/decoupled", "equilibrated_fraction"] < 1  # some of each: hatching
    assert (out / "angles.png").is_file() and (out / "theory.csv").is_file()


def test_heatmap_overlays(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.patches import Rectangle

    from analysis.load import aggregate, load_results
    from analysis.metrics import metrics_table
    from analysis.plots import THEORY_COLOR, UNEQUILIBRATED_HATCH, heatmap_figure
    from analysis.synthetic import synthetic_results

    raw = _with_angles(synthetic_results(["sgd/decoupled", "adam/l2"], n_lr=5, n_wd=6, seeds=1))
    trials = load_results(raw)
    cells = aggregate(trials)
    metrics = metrics_table(trials, reps=0)
    th = theory.trial_theory(trials)
    eq = theory.cell_equilibrium(th)
    fig = heatmap_figure(cells, metrics, ["sgd/decoupled", "adam/l2"], equilibrium=eq)
    axes = {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_title()}
    sgd = next(ax for t, ax in axes.items() if t.startswith("SGD"))
    adam = next(ax for t, ax in axes.items() if t.startswith("Adam"))
    assert "· theory −1\nslope" in sgd.get_title()
    assert "· theory −2\nslope" in adam.get_title()
    hatched = [p for p in sgd.patches if isinstance(p, Rectangle)
               and p.get_hatch() == UNEQUILIBRATED_HATCH]  # fmt: skip
    sub = eq[eq["variant"] == "sgd/decoupled"].merge(cells, on=["variant", "lr", "weight_decay"])
    assert len(hatched) == int(((sub["equilibrated"] == 0) & (sub["diverged"] < 1)).sum()) > 0
    assert not [p for p in adam.patches if p.get_hatch() == UNEQUILIBRATED_HATCH]
    for ax in (sgd, adam):  # the predicted valley, through the best cell
        line = [ln for ln in ax.lines if ln.get_color() == THEORY_COLOR]
        assert len(line) == 1
    # the slope of the drawn line in index units is the predicted one (log-uniform axes)
    x, y = (np.asarray(d, float) for d in line[0].get_data())
    ok = np.isfinite(y)
    lrs = np.sort(trials.loc[trials["variant"] == "adam/l2", "lr"].unique())
    wds = np.sort(trials.loc[trials["variant"] == "adam/l2", "weight_decay"].unique())
    per_x, per_y = np.diff(np.log(lrs)).mean(), np.diff(np.log(wds)).mean()
    drawn = np.polyfit(x[ok], y[ok], 1)[0] * per_y / per_x
    assert drawn == pytest.approx(-2.0, rel=1e-6)
    # without angle columns: the lines and titles stay, nothing is hatched
    plain = heatmap_figure(cells, metrics, ["sgd/decoupled", "adam/l2"])
    assert not [p for ax in plain.axes for p in ax.patches if p.get_hatch() == UNEQUILIBRATED_HATCH]
