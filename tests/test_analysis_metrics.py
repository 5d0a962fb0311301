"""analysis.metrics on synthetic grids whose structure is known in closed form."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.load import aggregate, is_grid, load_results, snap_to_grid
from analysis.metrics import (
    MIN_SEEDS_FOR_INTERVAL,
    MIN_SURFACE_TRIALS,
    bootstrap_coupling_slope,
    cell_standard_error,
    coupling_slope,
    fit_surface,
    hit_probability,
    identity_table,
    infer_eval_size,
    informative_lines,
    metrics_table,
    near_optimal_fraction,
    near_optimal_fraction_absolute,
    near_optimal_fraction_relative,
    normalized_regret,
    random_search_regret,
    regret_seed_table,
    regret_table,
    seed_slopes,
    separability,
    surface_slope_interval,
    transfer_regret,
    trials_to_near_optimal,
    valley,
    variant_metrics,
)
from analysis.synthetic import grid_trials, landscape, surface, synthetic_results

LRS = np.geomspace(1e-4, 1e-1, 9)
WDS = np.geomspace(1e-6, 1e-1, 11)
L, W = np.meshgrid(np.log(LRS), np.log(WDS), indexing="ij")


def coupled(c: float = 1e-6) -> np.ndarray:
    """Error depends on log(lr) + log(wd) only: best wd = c / lr."""
    return 0.1 + 0.01 * (L + W - np.log(c)) ** 2


def additive(best_wd: float = 3e-4) -> np.ndarray:
    """Error = f(log lr) + g(log wd): best wd = best_wd whatever the lr."""
    return 0.1 + 0.01 * (L - np.log(1e-2)) ** 2 + 0.02 * (W - np.log(best_wd)) ** 2


def test_product_structure_gives_slope_minus_one():
    assert coupling_slope(LRS, WDS, coupled()) == pytest.approx(-1.0, abs=1e-6)
    # without refinement the argmin staircase still gives about -1
    assert coupling_slope(LRS, WDS, coupled(), refine=False) == pytest.approx(-1.0, abs=0.1)
    v = valley(LRS, WDS, coupled())
    assert np.allclose(v["best_wd"], 1e-6 / v["lr"], rtol=1e-6)
    assert v["interior"].all() and v["in_fit"].all()


@pytest.mark.parametrize("best_wd", [3e-4, 1e-4])  # between grid columns / on one
def test_additive_structure_gives_slope_zero_and_separability_one(best_wd):
    E = additive(best_wd)
    assert coupling_slope(LRS, WDS, E) == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(valley(LRS, WDS, E)["best_wd"], best_wd, rtol=1e-6)
    assert separability(E) == pytest.approx(1.0, abs=1e-12)
    assert separability(E, log=False) == pytest.approx(1.0, abs=1e-12)
    holes = E.copy()
    holes[0, 0] = holes[4, 7] = holes[8, 10] = np.nan  # the least-squares fit copes with gaps
    assert separability(holes) == pytest.approx(1.0, abs=1e-9)
    assert separability(coupled()) < 0.6
    assert separability(np.exp(E), log=True) == pytest.approx(1.0, abs=1e-12)


def test_slope_sign_follows_the_valley_and_ignores_dead_rows():
    # best wd rising like lr^0.5 (what an MLP with independent decay can show)
    E = 0.1 + 0.01 * (W - 0.5 * L - np.log(3e-3)) ** 2
    assert coupling_slope(LRS, WDS, E) == pytest.approx(0.5, abs=1e-6)
    # a row where the network does not train (errors near chance, noisy) is not informative
    rng = np.random.default_rng(0)
    E[0] = 0.85 + rng.uniform(0, 0.05, E.shape[1])
    v = valley(LRS, WDS, E)
    assert not v.loc[v.lr == LRS[0], "informative"].item()
    assert coupling_slope(LRS, WDS, E) == pytest.approx(0.5, abs=1e-6)


def test_diverged_and_missing_cells():
    E = coupled()
    E[-2:, :] = 1.0  # two lr rows diverged everywhere: no minimum there
    E[0, 0] = np.nan
    v = valley(LRS, WDS, E)
    assert LRS[-1] not in set(v["lr"]) and len(v) == 7
    assert coupling_slope(LRS, WDS, E) == pytest.approx(-1.0, abs=1e-6)


def test_valley_along_the_edge_falls_back_and_says_so():
    # the best wd is the smallest one at every lr: decay gains nothing, no row carries the
    # valley, and there is no slope (not a line through the bottom edge)
    E = 0.1 + 0.01 * (L - np.log(1e-2)) ** 2 + 0.001 * (W - np.log(WDS[0])) ** 2
    v = valley(LRS, WDS, E)
    assert not v["interior"].any() and not v["resolved"].any() and not v["in_fit"].any()
    assert np.isnan(coupling_slope(LRS, WDS, E))
    # the best wd is the largest one: decay gains, but the valley runs along the top edge
    top = 0.1 + 0.01 * (L - np.log(1e-2)) ** 2 + 0.001 * (W - np.log(WDS[-1])) ** 2
    v = valley(LRS, WDS, top)
    assert not v["interior"].any() and v["in_fit"].sum() >= 2
    assert coupling_slope(LRS, WDS, top) == pytest.approx(0.0, abs=1e-12)
    # fewer than two lrs with a defined minimum: no slope
    assert np.isnan(coupling_slope(LRS[:1], WDS, top[:1]))


def test_near_optimal_fraction_normalized_absolute_and_relative():
    # wd ascending along a row; the smallest-wd column's best is 0.30, the best 0.10: gain 0.20
    E = np.array([[0.30, 0.10, 0.105, 0.2], [0.35, 0.109, 0.5, np.nan]])
    r = normalized_regret(E)
    assert r[0, 0] == pytest.approx(1.0) and r[0, 1] == 0.0 and r[1, 2] == pytest.approx(2.0)
    assert np.isnan(r[1, 3])
    # r <= 0.25: 0.10, 0.105, 0.109 (r = 0.045); 0.2 has r = 0.5
    assert near_optimal_fraction(E, tol=0.25) == pytest.approx(3 / 7)
    assert near_optimal_fraction(E, tol=0.5) == pytest.approx(4 / 7)
    assert near_optimal_fraction(E, tol=0.0) == pytest.approx(1 / 7)
    assert near_optimal_fraction_absolute(E, 0.006) == pytest.approx(2 / 7)
    assert near_optimal_fraction_relative(E, 0.10) == pytest.approx(3 / 7)
    # decay buys nothing (the best is in the smallest-wd column): only ties with the best count
    flat = np.array([[0.10, 0.10, 0.2], [0.101, 0.3, 0.4]])
    assert near_optimal_fraction(flat, 0.25) == pytest.approx(2 / 6)
    assert np.isnan(near_optimal_fraction(np.full((2, 2), np.nan)))


def _brute_regret(vals: np.ndarray, k: int) -> float:
    return float(np.mean([min(c) for c in itertools.combinations(vals, k)]) - vals.min())


def test_regret_is_exact_monotone_and_zero_at_grid_size():
    rng = np.random.default_rng(1)
    E = rng.uniform(0.05, 0.9, (3, 4)).round(2)  # rounding makes ties
    E[1, 2] = np.nan  # not run: not drawn
    vals = E[np.isfinite(E)]
    r = random_search_regret(E)
    assert len(r) == vals.size == 11
    for k in range(1, 12):
        assert r[k - 1] == pytest.approx(_brute_regret(vals, k), abs=1e-12)
    assert r[0] == pytest.approx(vals.mean() - vals.min())
    big = rng.uniform(0, 1, (20, 30))  # 600 cells: no overflow in the binomials
    rb = random_search_regret(big)
    assert np.all(np.diff(rb) <= 1e-15) and rb[-1] == 0.0 and np.all(rb >= 0)
    assert np.all(np.diff(r) < 0) and r[-1] == 0.0
    full = rng.uniform(0.05, 0.9, (5, 6))  # a complete grid, distinct values
    rf = random_search_regret(full)
    assert len(rf) == 30 and rf[-1] == 0.0 and np.all(np.diff(rf) < 0)
    assert rf[0] == pytest.approx(full.mean() - full.min())


def test_hit_probability_and_trials_to_near_optimal():
    # gain 0.30 - 0.10 = 0.2; normalized regret <= 0.25 means E <= 0.15: 2 of 8 cells
    E = np.array([[0.30, 0.10, 0.105, 0.2], [0.4, 0.5, 0.6, 0.7]])
    hp = hit_probability(E, tol=0.25)
    for k in range(1, 9):
        combos = list(itertools.combinations(E.ravel(), k))
        want = np.mean([min(c) <= 0.15 for c in combos])
        assert hp[k - 1] == pytest.approx(want)
    # P(hit in k) = 1 - C(6, k) / C(8, k): 0.893 at k = 5, 0.964 at k = 6
    assert hp[4] == pytest.approx(1 - 6 / 56) and hp[5] == pytest.approx(1 - 1 / 28)
    assert trials_to_near_optimal(E, 0.25, p=0.9) == 6
    assert trials_to_near_optimal(E, 0.25, p=0.5) == 3


def test_bootstrap_interval_covers_the_truth_and_needs_three_seeds():
    assert MIN_SEEDS_FOR_INTERVAL == 3
    rng = np.random.default_rng(2)
    S = coupled()[None] + rng.normal(0, 0.01, (5, *coupled().shape))
    lo, hi = bootstrap_coupling_slope(LRS, WDS, S, reps=300)
    assert lo <= -1.0 <= hi and hi - lo < 0.5
    # 2 seeds (3 distinct resamples): no interval, the per-seed slopes instead
    assert np.isfinite(bootstrap_coupling_slope(LRS, WDS, S[:3], reps=60)).all()
    assert np.isnan(bootstrap_coupling_slope(LRS, WDS, S[:2], reps=60)).all()
    per_seed = seed_slopes(LRS, WDS, S[:3])
    assert per_seed.shape == (3,) and np.all(np.abs(per_seed + 1) < 0.3)


def _rows(variant: str, cells: dict) -> list[dict]:
    """results.csv rows of one variant from ``{(lr, wd): [error of seed 0, seed 1, ...]}``; a
    None error is a diverged trial."""
    opt, dec = variant.split("/")
    return [
        dict(study=variant, optimizer=opt, decay=dec, lr=lr, weight_decay=wd, seed=seed,
             state="COMPLETE", test_error=np.nan if e is None else e, diverged=e is None)
        for (lr, wd), errs in cells.items()
        for seed, e in enumerate(errs)
    ]  # fmt: skip


def test_variant_metrics_of_a_hand_made_grid():
    """2 lrs x 3 wds, two seeds; every expected number worked out from the seed errors below."""
    frame = load_results(
        pd.DataFrame(
            _rows(
                "sgd/l2",
                {
                    (0.01, 1e-4): [0.30, 0.34],  # mean 0.32
                    (0.01, 1e-3): [0.20, 0.26],  # mean 0.23: the best cell
                    (0.01, 1e-2): [0.25, 0.27],  # mean 0.26
                    (0.1, 1e-4): [0.28, 0.30],  # mean 0.29
                    (0.1, 1e-3): [0.18, 0.40],  # mean 0.29 (holds the best single trial)
                    (0.1, 1e-2): [None, 0.22],  # seed 0 diverged (counts 1.0): mean 0.61
                },
            )
        )
    )
    m = variant_metrics(frame, "sgd/l2", tol=0.5, reps=0)
    # no val_error: choices fall back to test_error; two seeds: gains cross-fit
    assert m["selection"] == "test+crossfit"
    assert (m["best_lr"], m["best_weight_decay"]) == (0.01, 1e-3)
    assert m["best_error"] == pytest.approx(0.23, abs=1e-12)
    assert m["best_error_std"] == pytest.approx(0.06 / np.sqrt(2), abs=1e-12)  # ddof=1
    assert m["best_error_smallest_wd"] == pytest.approx(0.29, abs=1e-12)
    assert m["wd_gain_in_sample"] == pytest.approx(0.06, abs=1e-12)
    # cross-fit: seed 1 chooses (0.1, 1e-2) over the grid and (0.1, 1e-4) in the smallest-wd
    # column, scored on seed 0: 0.28 - 1.0 (diverged); seed 0 chooses (0.1, 1e-3) and
    # (0.1, 1e-4), scored on seed 1: 0.30 - 0.40. Mean -0.41: the choice does not carry over
    assert m["wd_gain"] == pytest.approx(-0.41, abs=1e-12)
    assert (m["n_lr"], m["n_wd"], m["n_cells"], m["n_seeds"], m["n_trials"]) == (2, 3, 6, 2, 12)
    assert m["diverged_fraction"] == pytest.approx(1 / 12, abs=1e-12)
    # normalized regret: E_0 = best of the smallest-wd column = 0.29, gain 0.06, so
    # r = 1.5, 0, 0.5 / 1, 1, 6.33: r <= 0.5 for 0.23 and 0.26, 2 of 6 cells;
    # P(hit in k) = 1 - C(4, k) / C(6, k) = 0.8 at k = 3, 14/15 at k = 4
    assert m["near_optimal_fraction"] == pytest.approx(2 / 6, abs=1e-12)
    assert m["near_optimal_cells"] == 2 and m["trials_to_near_optimal"] == 4
    # every error is a multiple of 1/100: an evaluation set of 100 samples. Noise: the seed
    # variances of the cells next to each row's best ((0.01, *) and (0.1, 1e-4 / 1e-3):
    # 0.0008, 0.0018, 0.0002, 0.0002, 0.0242) pooled by their median 0.0008 / 0.4705 (the
    # median of chi2_1 over 1), plus the binomial 0.23 * 0.77 / 100 of the one test set;
    # noise_floor = 2 sqrt(2) sqrt(var / 2 + binomial)
    assert (m["n_eval"], m["n_eval_source"]) == (100, "inferred")
    var = 0.0008 / (1 - 2 / 9) ** 3
    floor = 2 * np.sqrt(2) * np.sqrt(var / 2 + 0.23 * 0.77 / 100)
    assert m["noise_floor"] == pytest.approx(floor, rel=1e-6) and m["noise_cells"] == 5
    assert m["near_optimal_threshold"] == pytest.approx(floor, rel=1e-6)
    assert m["near_optimal_cells_abs"] == 5  # every cell but 0.61 is within 0.145 of 0.23
    assert not m["wd_gain_resolved"]  # two seeds: gain > noise_floor, and it is not
    assert np.isnan(m["wd_gain_lo"]) and m["interval"].startswith("none (2 seeds")
    assert np.isnan(m["near_optimal_fraction_rel"])  # not asked for
    assert variant_metrics(frame, "sgd/l2", reps=0, rel_tol=0.2)["near_optimal_fraction_rel"] == (
        pytest.approx(2 / 6)
    )
    # transfer, cross-fit: seed 1 picks columns 1e-3 (lr 0.01) and 1e-2 (lr 0.1); on seed 0
    # reusing 1e-3 at lr 0.1 costs 0.18 - 1.0, reusing 1e-2 at lr 0.01 costs 0.25 - 0.20;
    # seed 0 picks 1e-3 in both rows: 0 on seed 1. Mean (-0.82 + 0.05) / 2 / 2
    assert (m["transfer_regret_1"], m["transfer_pairs_1"]) == (pytest.approx(-0.1925), 2)
    assert np.isnan(m["transfer_regret_1_norm"])  # the cross-fit gain is not positive
    assert np.isnan(m["transfer_regret_2"]) and m["transfer_pairs_2"] == 0
    # the valley: each row's cross-fit gain (lr 0.01: 0.09, lr 0.1: -0.41) is below the noise
    # floor, so no row carries it: no slope
    assert (m["valley_rows"], m["valley_interior"]) == (0, False)
    assert np.isnan(m["coupling_slope"])
    # separability: R^2 of the two-way additive fit, which for a complete grid is
    # row mean + column mean - grand mean (no cell is diverged in every seed: all six count)
    E = np.array([[0.32, 0.23, 0.26], [0.29, 0.29, 0.61]])
    fit = E.mean(1, keepdims=True) + E.mean(0, keepdims=True) - E.mean()
    want = 1 - ((E - fit) ** 2).sum() / ((E - E.mean()) ** 2).sum()
    assert 0.55 < want < 0.65 and m["separability"] == pytest.approx(want, abs=1e-12)
    assert m["separability_all"] == m["separability"]  # no data set, no chance level
    row = metrics_table(frame, tol=0.5, reps=0).iloc[0].to_dict()
    assert {k: row[k] for k in m} == pytest.approx(m, nan_ok=True)


def test_wd_gain_is_the_best_error_at_the_smallest_wd_minus_the_best():
    helps, flat = {}, {}
    for lr in (1e-3, 1e-2, 1e-1):
        for wd in (1e-5, 1e-4, 1e-3):
            # wd helps: the smallest wd costs 0.05 at every lr; lr 1e-2 is best
            helps[lr, wd] = [0.2 + (0.05 if wd == 1e-5 else 0.0) + (0.0 if lr == 1e-2 else 0.03)]
            flat[lr, wd] = [0.2 + (0.0 if lr == 1e-2 else 0.03)]  # wd makes no difference
    frame = pd.DataFrame(_rows("sgd/l2", helps) + _rows("sgd/independent", flat))
    frame["val_error"] = frame["test_error"]
    frame["variant"] = frame["optimizer"] + "/" + frame["decay"]
    m = variant_metrics(frame, "sgd/l2", reps=5)
    assert m["best_error_smallest_wd"] == pytest.approx(0.25)
    assert m["wd_gain"] == pytest.approx(0.05)
    assert variant_metrics(frame, "sgd/independent", reps=5)["wd_gain"] == pytest.approx(0.0)


def test_synthetic_results_end_to_end_numbers():
    frame = load_results(synthetic_results(n_lr=7, n_wd=9, seeds=3))
    m = metrics_table(frame, reps=40).set_index("variant")
    for v in ("sgd/l2", "adam/l2"):
        assert m.loc[v, "coupling_slope"] == pytest.approx(-1.0, abs=0.15)
        # 3 seeds: an interval, and each seed's slope
        assert m.loc[v, "coupling_slope_lo"] <= m.loc[v, "coupling_slope"]
        assert m.loc[v, "coupling_slope"] <= m.loc[v, "coupling_slope_hi"]
        assert m.loc[v, "coupling_slope_seed_n"] == 3
        assert -1.3 < m.loc[v, "coupling_slope_seed_min"] <= m.loc[v, "coupling_slope_seed_max"]
        assert m.loc[v, "coupling_slope_seed_max"] < -0.7
    for v in ("sgd/independent", "adam/independent"):
        assert m.loc[v, "coupling_slope"] == pytest.approx(0.0, abs=0.1)
        assert (
            m.loc[v, "separability"] > 0.97 > m.loc[v.replace("independent", "l2"), "separability"]
        )
    assert (m["n_cells"] == 63).all() and (m["n_seeds"] == 3).all()
    assert (m["diverged_fraction"] > 0).all() and m["valley_interior"].all()
    # the best cell is the seed-mean grid's best on validation, reported on test, taken here
    # straight from the raw rows (synthetic_results writes each variant's seeds as full
    # lr-major grids)
    raw = synthetic_results(n_lr=7, n_wd=9, seeds=3)
    for v, row in m.iterrows():
        sub = raw[raw.optimizer + "/" + raw.decay == v]
        mean = sub["test_error"].to_numpy().reshape(3, 7, 9).mean(axis=0)
        val = sub["val_error"].to_numpy().reshape(3, 7, 9).mean(axis=0)
        i, j = np.unravel_index(np.argmin(val), val.shape)
        assert row.best_error == pytest.approx(mean[i, j], rel=1e-12)
        assert row.best_lr == pytest.approx(sub["lr"].to_numpy()[i * 9], rel=1e-9)
        assert row.best_weight_decay == pytest.approx(sub["weight_decay"].to_numpy()[j], rel=1e-9)
    reg = regret_table(aggregate(frame))
    assert set(reg["variant"]) == set(m.index)
    for _, g in reg.groupby("variant"):
        assert g["regret"].is_monotonic_decreasing and g["regret"].iloc[-1] == 0
        assert g["p_near_optimal"].is_monotonic_increasing and g["p_near_optimal"].iloc[-1] == 1


def test_synthetic_surface_diverges_where_documented():
    err, div = surface("sgd", "l2", np.array([0.9, 0.01, 1e-3]), np.array([1e-3, 1e-3, 2e3]))
    assert list(div) == [True, False, True] and err[0] == 1.0
    frame = synthetic_results(["adam/independent"], n_lr=3, n_wd=3, seeds=1)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 9


def test_sampled_trials_are_binned_onto_a_grid():
    """A random-search sweep (every trial its own lr and wd) analyzed on an 8 x 8 log grid."""
    rng = np.random.default_rng(3)
    parts = []
    for v in ("adam/l2", "adam/independent"):
        opt, dec = v.split("/")
        lr = np.exp(rng.uniform(np.log(10**-4.5), np.log(10**-0.5), 500))
        wd = np.exp(rng.uniform(np.log(10**-5.5), np.log(10**-1.5), 500))
        err, div = surface(opt, dec, lr, wd)
        parts.append(
            pd.DataFrame(
                dict(
                    optimizer=opt,
                    decay=dec,
                    lr=lr,
                    weight_decay=wd,
                    seed=rng.integers(0, 3, 500),
                    state="COMPLETE",
                    test_error=err + rng.normal(0, 0.002, 500) * ~div,
                    diverged=div,
                )
            )
        )
    frame = load_results(pd.concat(parts))
    assert not is_grid(frame)
    snapped = snap_to_grid(frame, 8, 8)
    assert is_grid(snapped) and len(snapped) == len(frame)
    assert snapped.groupby("variant")["lr"].nunique().eq(8).all()
    # errors with a 0.2-point noise, not counts: a large evaluation set
    m = metrics_table(snapped, reps=0, n_eval=10**6).set_index("variant")
    assert m.loc["adam/l2", "coupling_slope"] == pytest.approx(-1.0, abs=0.2)
    assert m.loc["adam/independent", "coupling_slope"] == pytest.approx(0.0, abs=0.2)
    with pytest.raises(ValueError, match="mixes several experiment"):
        metrics_table(pd.concat([frame, frame.assign(experiment="other")]))


# --------------------------------------------------------------------------------------------
# Landscapes of known structure (analysis.synthetic.landscape): basin width, valley slope,
# dead rows. Expected numbers are worked out from the construction, not from the metrics.


def _noisy(E: np.ndarray, seeds: int, noise: float, rng_seed: int) -> np.ndarray:
    rng = np.random.default_rng(rng_seed)
    return E[None] + rng.normal(0, noise, (seeds, *E.shape))


@pytest.mark.parametrize(
    ("width", "margin", "per_row"),
    # normalized regret of a live cell d cells off the valley is min(1, d^2 / width^2):
    # width 2.5: d = 0, +-1 (0.16) are <= 0.25, d = 2 (0.64) is not: 3 cells a row;
    # width 4.5: d^2 <= 5.06, so |d| <= 2: 5 cells a row
    [(2.5, 3, 3), (4.5, 5, 5)],
)
@pytest.mark.parametrize("slope", [-2, -1, 0])
def test_landscape_basin_size_is_recovered(width, margin, per_row, slope):
    lrs, wds, E = landscape(n_lr=6, slope=slope, width=width, margin=margin, dead_rows=(0,))
    n = E.size
    assert near_optimal_fraction(E) == pytest.approx(5 * per_row / n, abs=1e-12)
    assert trials_to_near_optimal(E) >= 1
    # relative 10% at 46% error is 4.6 points: it also counts cells that give up most of what
    # decay buys (gain 5 points): width 2.5, d = +-2 (3.2 points) are in
    if width == 2.5:
        assert near_optimal_fraction_relative(E, 0.10) == pytest.approx(5 * 5 / n, abs=1e-12)
    # with seed noise (5 seeds, 0.2 points each) within one cell per live row
    for rng_seed in range(3):
        M = _noisy(E, 5, 0.002, rng_seed).mean(0)
        assert abs(near_optimal_fraction(M) * n - 5 * per_row) <= 5


@pytest.mark.parametrize("slope", [-2, -1, 0, 1])
def test_landscape_slope_is_recovered(slope):
    lrs, wds, E = landscape(n_lr=6, slope=slope)
    assert coupling_slope(lrs, wds, E) == pytest.approx(slope, abs=1e-9)
    assert coupling_slope(lrs, wds, E, refine=False) == pytest.approx(slope, abs=1e-9)
    # dead rows (chance level everywhere) are left out of the fit
    lrs, wds, D = landscape(n_lr=6, slope=slope, dead_rows=(0, 5))
    v = valley(lrs, wds, D)
    assert not v.loc[v.lr.isin(lrs[[0, 5]]), "in_fit"].any()
    assert coupling_slope(lrs, wds, D) == pytest.approx(slope, abs=1e-9)
    # noisy seeds: slope within 0.15, each seed's within 0.35, and with 6 seeds an interval
    # that covers the truth
    S = _noisy(E, 6, 0.002, 7)
    assert coupling_slope(lrs, wds, S.mean(0)) == pytest.approx(slope, abs=0.15)
    assert np.all(np.abs(seed_slopes(lrs, wds, S) - slope) < 0.35)
    lo, hi = bootstrap_coupling_slope(lrs, wds, S, reps=80)
    assert lo - 0.05 <= slope <= hi + 0.05


@pytest.mark.parametrize(
    ("slope", "one", "two"),
    # the best wd of row i reused k rows away is |slope| k cells off the valley there:
    # gain * min(1, (slope k)^2 / 2.5^2), gain = 0.05
    [(0, 0.0, 0.0), (-1, 0.05 * 0.16, 0.05 * 0.64), (-2, 0.05 * 0.64, 0.05), (1, 0.008, 0.032)],
)
def test_landscape_transfer_regret_is_recovered(slope, one, two):
    lrs, wds, E = landscape(n_lr=6, slope=slope, dead_rows=(0,))
    t1, p1 = transfer_regret(lrs, wds, E, 1)
    t2, p2 = transfer_regret(lrs, wds, E, 2)
    # live rows 1..5: 4 adjacent pairs and 3 pairs two apart, both directions
    assert (p1, p2) == (8, 6)
    assert t1 == pytest.approx(one, abs=1e-12) and t2 == pytest.approx(two, abs=1e-12)
    M = _noisy(E, 3, 0.002, 1).mean(0)
    assert transfer_regret(lrs, wds, M, 1)[0] == pytest.approx(one, abs=0.004)
    assert transfer_regret(lrs, wds, M, 2)[0] == pytest.approx(two, abs=0.004)


def test_separability_leaves_out_dead_rows_and_columns():
    # additive in lr and wd (slope 0, an lr cost), two dead lr rows and a dead top wd column
    lrs, wds, E = landscape(n_lr=7, slope=0, lr_cost=0.01, dead_rows=(0, 6))
    E[:, -1] = 0.9
    rows, cols = informative_lines(E, 0.9)
    assert list(np.nonzero(~rows)[0]) == [0, 6] and list(np.nonzero(~cols)[0]) == [E.shape[1] - 1]
    assert separability(E, chance=0.9) == pytest.approx(1.0, abs=1e-9)
    assert separability(E) < 0.95  # the dead rows are flat: not additive with the live ones
    # a coupled valley with a dead column: the column's variance is additive and inflates R^2
    lrs, wds, C = landscape(n_lr=7, slope=-1, gain=0.05)
    C = np.concatenate([C, np.full((7, 2), 0.9)], axis=1)
    assert separability(C) > separability(C, chance=0.9) + 0.3
    assert separability(C, chance=0.9) < 0.6


def test_eval_size_and_the_absolute_threshold():
    lrs, wds, E = landscape(n_lr=6, slope=-1)
    S = _noisy(E, 3, 0.004, 0)
    frame = grid_trials(lrs, wds, S, "adam/l2", n_eval=2000)
    assert infer_eval_size(frame["test_error"]) == 2000
    m = variant_metrics(frame, "adam/l2", reps=0)
    assert (m["n_eval"], m["n_eval_source"]) == (2000, "inferred")
    # val_error = test_error here (one evaluation set): choices on test, and the noise floor is
    # 2 SE of a difference of two 3-seed means with seed noise 0.004 and the binomial of one
    # shared test set of 2,000 at p ~ 0.46: 2 sqrt(2 (0.004^2 / 3 + 0.46 * 0.54 / 2000))
    assert m["selection"] == "test+crossfit"
    floor = 2 * np.sqrt(2 * (0.004**2 / 3 + 0.46 * 0.54 / 2000))
    assert m["noise_floor"] == pytest.approx(floor, rel=0.1)
    assert m["near_optimal_threshold"] == m["noise_floor"]
    assert cell_standard_error(0.46, 2000, 12) == pytest.approx(
        cell_standard_error(0.46, 2000, 3) / 2
    )
    assert m["chance"] == pytest.approx(0.9)  # MNIST-1D: 10 classes
    # errors that are no multiple of 1/n (smoothed, averaged): the MNIST-1D default, said so
    raw = grid_trials(lrs, wds, S, "adam/l2", n_eval=None)
    assert infer_eval_size(raw["test_error"]) is None
    m = variant_metrics(raw, "adam/l2", reps=0)
    assert (m["n_eval"], m["n_eval_source"]) == (1000, "default")
    assert variant_metrics(raw, "adam/l2", reps=0, n_eval=500)["n_eval_source"] == "given"


def _identity_frame(shift: float = 0.0, noise: float = 0.0) -> pd.DataFrame:
    """adam/decoupled and adam/independent with the same error as a function of the shrink
    per step (lr * lam for decoupled, wd for independent): best shrink 1e-4 * sqrt(lr / 1e-2)."""
    rng = np.random.default_rng(5)
    lrs = 10.0 ** np.arange(-4, -0.9, 0.5)
    rows = []
    for decay, wds in (("decoupled", 10.0 ** np.arange(-3, 2.01, 0.5)),
                       ("independent", 10.0 ** np.arange(-7, -0.99, 0.5))):  # fmt: skip
        for lr in lrs:
            for wd in wds:
                shrink = lr * wd if decay == "decoupled" else wd
                best = np.log(1e-4 * np.sqrt(lr / 1e-2))
                err = 0.3 + 0.004 * (np.log(shrink) - best) ** 2 + 0.01 * np.log(lr / 1e-2) ** 2
                if decay == "independent":
                    err += shift
                for seed in range(3):
                    e = min(err + rng.normal(0, noise), 0.9)
                    rows.append(dict(optimizer="adam", decay=decay, lr=lr, weight_decay=wd,
                                     seed=seed, state="COMPLETE", test_error=e, diverged=False))  # fmt: skip
    return load_results(pd.DataFrame(rows))


def test_identity_check_measures_the_noise_floor_and_the_slope_difference():
    frame = _identity_frame()
    table = identity_table(frame)
    # decoupled (a, lam) has an independent twin (a, a * lam) when a * lam <= 1e-1: counted
    # by hand over the exponents (lr 10^-4..10^-1, lam 10^-3..10^2, steps of 1/2)
    want = sum(1 for a in np.arange(-4, -0.9, 0.5) for b in np.arange(-3, 2.01, 0.5)
               if a + b <= -1 + 1e-9 and a + b >= -7 - 1e-9)  # fmt: skip
    assert len(table) == 3 * want and (table["difference"] == 0).all()
    m = metrics_table(frame, reps=0).set_index("variant")
    assert m.loc["adam/decoupled", "coupling_slope"] == pytest.approx(-0.5, abs=1e-6)
    assert m.loc["adam/independent", "coupling_slope"] == pytest.approx(0.5, abs=1e-6)
    for v in ("adam/decoupled", "adam/independent"):
        assert m.loc[v, "identity_slope_diff"] == pytest.approx(1.0, abs=1e-6)
        assert m.loc[v, "identity_cells"] == want and m.loc[v, "identity_max_abs_diff"] == 0
    # a broken identity (independent 1 point worse everywhere) and per-seed noise are measured
    m = metrics_table(_identity_frame(shift=0.01, noise=0.002), reps=0).set_index("variant")
    assert m.loc["adam/independent", "identity_rms_diff"] == pytest.approx(0.01, abs=0.001)
    assert m.loc["adam/independent", "identity_max_abs_diff"] > 0.01


def test_regret_per_seed_and_normalized():
    lrs, wds, E = landscape(n_lr=6, slope=-1)
    frame = load_results(grid_trials(lrs, wds, _noisy(E, 3, 0.002, 3), "adam/l2"))
    seeds = regret_seed_table(frame)
    assert sorted(seeds["seed"].unique()) == [0, 1, 2]
    assert seeds.groupby("seed")["k"].max().eq(E.size).all()
    cells = aggregate(frame)
    reg = regret_table(cells)
    mean = cells.pivot_table(index="lr", columns="weight_decay", values="mean").to_numpy()
    gain = mean[:, 0].min() - mean.min()  # the seed-mean grid's own gain
    assert np.allclose(reg["regret_normalized"], reg["regret"] / gain)
    # a random cell is worth, in expectation, E.mean() - E.min() of the noise-free grid
    assert reg["regret"].iloc[0] == pytest.approx(E.mean() - E.min(), abs=0.002)


def test_scattered_trials_are_fitted_not_gridded():
    """Random search: the valley and its slope read from a fitted surface; with fewer than
    MIN_SURFACE_TRIALS trials, no slope, no separability, no near-optimal fraction."""
    rng = np.random.default_rng(4)
    parts = []
    for v, n in (("adam/l2", 300), ("adam/independent", 300), ("sgd/l2", 12)):
        opt, dec = v.split("/")
        lo, hi = (10**-4.5, 10**-1.3) if opt == "adam" else (2.0**-9, 2.0**-2)
        lr = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
        wd = np.exp(rng.uniform(np.log(10**-5.5), np.log(10**-1.5), n))
        err, div = surface(opt, dec, lr, wd)
        parts.append(pd.DataFrame(dict(optimizer=opt, decay=dec, lr=lr, weight_decay=wd,
                                       seed=0, state="COMPLETE", diverged=div,
                                       test_error=err + rng.normal(0, 0.002, n) * ~div)))  # fmt: skip
    frame = load_results(pd.concat(parts))
    assert not is_grid(frame)
    from analysis.figures import analyze

    a = analyze(frame, reps=30)
    m = a.metrics.set_index("variant")
    assert a.mode == "surface" and set(a.surfaces) == {"adam/l2", "adam/independent"}
    assert m.loc["adam/l2", "analysis_grid"] == "surface"
    assert m.loc["adam/l2", "coupling_slope"] == pytest.approx(-1.0, abs=0.25)
    assert m.loc["adam/independent", "coupling_slope"] == pytest.approx(0.0, abs=0.25)
    lo, hi = m.loc["adam/l2", ["coupling_slope_lo", "coupling_slope_hi"]]
    assert lo - 0.1 <= -1.0 <= hi + 0.1 and hi - lo < 1.0
    assert m.loc["adam/independent", "separability"] > m.loc["adam/l2", "separability"]
    assert np.isnan(m.loc["adam/l2", "transfer_regret_1"])  # not applicable off a grid
    small = m.loc["sgd/l2"]
    assert small["n_trials"] == 12 < MIN_SURFACE_TRIALS and small["analysis_grid"] == "none"
    for col in ("coupling_slope", "separability", "near_optimal_fraction", "coupling_slope_lo"):
        assert np.isnan(small[col]), col
    # the interval is over trials: none below MIN_SURFACE_TRIALS
    s = fit_surface(frame.lr[:10], frame.weight_decay[:10], frame.test_error[:10])
    assert np.isnan(surface_slope_interval(s, reps=5)).all()
