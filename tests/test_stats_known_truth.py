"""The statistics of analysis.metrics on simulated sweeps whose truth is known: landscapes of
analysis.synthetic with per-seed training noise and one validation and one test set per cell
(analysis.synthetic.simulate)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from analysis.metrics import (
    box_for,
    box_mask,
    expected_at_selection,
    halve_box,
    seed_bootstrap,
    trials_to_within,
    variant_metrics,
)
from analysis.synthetic import difference_se, landscape, simulate


def test_a_test_only_dip_is_not_chosen():
    lrs, wds, E = landscape(n_lr=6, slope=-1, gain=0.05)
    i, j = np.unravel_index(np.argmin(E), E.shape)
    T = E.copy()
    T[2, 1] = E.min() - 0.05  # 5 points below the best on test, ordinary on validation
    f = simulate(lrs, wds, T, val=E, seeds=5, train_noise=0.005, n_test=10000, rng_seed=1)
    m = variant_metrics(f, "adam/l2", reps=200)
    assert m["selection"] == "val+crossfit"
    assert (m["best_lr"], m["best_weight_decay"]) != (lrs[2], wds[1])
    assert m["best_error"] > E.min() - 0.01  # an ordinary best, not the dip
    # chosen on test, as before, the dip wins
    t = variant_metrics(f, "adam/l2", reps=0, selection="test_error")
    assert (t["best_lr"], t["best_weight_decay"]) == (lrs[2], wds[1])


@pytest.mark.parametrize("seeds", [3, 10])
def test_noise_floor_is_two_standard_errors_of_a_difference(seeds):
    lrs, wds, E = landscape(n_lr=6, slope=-1, gain=0.05)
    # the truth, by simulation: two cells of equal error, their seed means' difference
    diffs = []
    for r in range(400):
        two = simulate(lrs[:1], wds[:2], np.full((1, 2), 0.46), seeds=seeds,
                       train_noise=0.01, n_test=2000, rng_seed=1000 + r)  # fmt: skip
        means = two.groupby("weight_decay")["test_error"].mean().to_numpy()
        diffs.append(means[1] - means[0])
    true = 2 * np.std(diffs)
    assert true == pytest.approx(2 * difference_se(0.46, seeds, 0.01, 2000), rel=0.1)
    for rng_seed in range(3):
        f = simulate(lrs, wds, E, seeds=seeds, train_noise=0.01, n_test=2000, rng_seed=rng_seed)
        m = variant_metrics(f, "adam/l2", reps=0)
        assert m["noise_floor"] == pytest.approx(true, rel=0.2), rng_seed
        assert m["noise_seed_sd"] == pytest.approx(0.01, rel=0.3)


def test_one_seed_has_the_evaluation_noise_only_and_says_so():
    lrs, wds, E = landscape(n_lr=6, slope=-1, gain=0.05)
    f = simulate(lrs, wds, E, seeds=1, train_noise=0.01, n_test=2000, rng_seed=0)
    m = variant_metrics(f, "adam/l2", reps=500)
    assert "no training-noise estimate" in m["noise_model"] and np.isnan(m["noise_seed_sd"])
    assert m["noise_floor"] > 0 and m["selection"] == "val"
    assert np.isnan(m["wd_gain_lo"]) and m["interval"].startswith("none (1 seed")
    # a best error of 0 (a task solved) still has a floor
    zero = simulate(lrs, wds, np.zeros_like(E), seeds=1, train_noise=0.0, rng_seed=0)
    assert variant_metrics(zero, "adam/l2", reps=0)["noise_floor"] > 0


def test_no_resolved_gain_where_weight_decay_changes_nothing():
    lrs, wds, E = landscape(n_lr=6, slope=-1, gain=0.0, lr_cost=0.01)
    resolved = []
    for rng_seed in range(6):
        f = simulate(lrs, wds, E, seeds=5, train_noise=0.01, n_test=2000, rng_seed=rng_seed)
        m = variant_metrics(f, "adam/l2", reps=500)
        assert m["wd_gain_lo"] <= m["wd_gain"] <= m["wd_gain_hi"]
        resolved.append(m["wd_gain_resolved"])
        assert m["valley_rows"] <= 2  # rows without a gain do not make a valley
    assert not any(resolved)


def test_a_real_gain_is_resolved_and_unbiased():
    lrs, wds, E = landscape(n_lr=6, slope=-1, gain=0.05)
    gains = []
    for rng_seed in range(3):
        f = simulate(lrs, wds, E, seeds=10, train_noise=0.005, n_test=10000, rng_seed=rng_seed)
        m = variant_metrics(f, "adam/l2", reps=500)
        assert m["wd_gain_resolved"] and m["wd_gain_lo"] > 0
        gains.append(m["wd_gain"])
    assert np.mean(gains) == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize("slope", [-2, 0])
def test_slope_intervals_cover_the_true_slope(slope):
    """Over repeated sweeps the 95% interval holds the true slope about 95% of the time."""
    lrs, wds, E = landscape(n_lr=6, slope=slope, gain=0.05)
    hits = []
    for r in range(20):
        f = simulate(lrs, wds, E, seeds=10, train_noise=0.01, n_test=10000, n_val=5000,
                     rng_seed=100 + r)  # fmt: skip
        m = variant_metrics(f, "adam/l2", reps=400)
        assert m["valley_rows"] >= 4
        hits.append(m["coupling_slope_lo"] <= slope <= m["coupling_slope_hi"])
    assert np.mean(hits) >= 0.8


def _brute(V: np.ndarray, T: np.ndarray, k: int) -> float:
    """Mean over every k-subset of T at its least V (ties shared equally)."""
    out = []
    for c in itertools.combinations(range(len(V)), k):
        c = np.array(c)
        best = V[c].min()
        out.append(T[c][V[c] == best].mean())
    return float(np.mean(out))


def test_expected_error_at_the_validation_choice_is_exact():
    rng = np.random.default_rng(0)
    V = rng.integers(0, 5, 9) / 10  # ties
    T = rng.uniform(0, 1, 9)
    curve = expected_at_selection(V, T)
    assert len(curve) == 9
    for k in range(1, 10):
        assert curve[k - 1] == pytest.approx(_brute(V, T, k), abs=1e-12)
    assert curve[0] == pytest.approx(T.mean())
    # batches give the same numbers
    both = expected_at_selection(np.stack([V, V])[:, None], np.stack([T, T])[:, None])
    assert np.allclose(both, curve)
    assert trials_to_within(curve, target=-1.0) != trials_to_within(curve, target=-1.0)  # nan
    assert trials_to_within(np.array([0.3, 0.2, 0.1]), 0.1, within=0.01) == 3


def test_search_boxes_pick_the_most_specific_key_and_halve_in_log_space():
    boxes = {"adam": {"lr": [1e-4, 1e-2], "weight_decay": [1e-6, 1e-2]},
             "adam/independent": {"lr": [1e-4, 1e-2], "weight_decay": [1e-4, 1e-1]}}  # fmt: skip
    assert box_for("adam/l2", boxes)["weight_decay"] == [1e-6, 1e-2]
    assert box_for("adam/independent", boxes)["weight_decay"] == [1e-4, 1e-1]
    assert box_for("sgd/l2", boxes) is None
    half = halve_box({"lr": [1e-4, 1e-0], "weight_decay": [1e-6, 1e-2]})
    assert half["lr"] == pytest.approx([1e-3, 1e-1]) and half["weight_decay"] == pytest.approx(
        [1e-5, 1e-3]
    )
    mask = box_mask(np.array([1e-5, 1e-4, 1e-3]), np.array([1e-7, 1e-6]), boxes["adam"])
    assert mask.tolist() == [[False, False], [False, True], [False, True]]
    # a configured box: the curve's cells and the trials to within one point
    lrs, wds, E = landscape(n_lr=6, slope=0, gain=0.05)
    f = simulate(lrs, wds, E, seeds=3, train_noise=0.002, n_test=100000, rng_seed=0)
    box = {"lr": [lrs[1], lrs[4]], "weight_decay": [wds[2], wds[5]]}
    m = variant_metrics(f, "adam/l2", reps=0, boxes={"adam/l2": box})
    assert m["budget_cells"] == 16 and m["budget_box"].startswith("lr ")
    assert 1 <= m["trials_to_within_1pt"] <= 16


def test_seed_bootstrap_of_any_statistic():
    per_seed = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    iv = seed_bootstrap(lambda idx: per_seed[idx].mean(), len(per_seed), reps=2000, seed=0)
    se = per_seed.std() / np.sqrt(len(per_seed))
    assert iv.lo == pytest.approx(per_seed.mean() - 1.96 * se, abs=0.03)
    assert iv.hi == pytest.approx(per_seed.mean() + 1.96 * se, abs=0.03)
    again = seed_bootstrap(lambda idx: per_seed[idx].mean(), len(per_seed), reps=2000, seed=0)
    assert (again.lo, again.hi) == (iv.lo, iv.hi)  # a fixed RNG
    assert np.isnan(seed_bootstrap(lambda idx: 0.0, 2).lo)  # below three seeds: none
