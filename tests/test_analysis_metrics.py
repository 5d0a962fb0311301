"""analysis.metrics on synthetic grids whose structure is known in closed form."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.load import aggregate, is_grid, load_results, snap_to_grid
from analysis.metrics import (
    bootstrap_coupling_slope,
    coupling_slope,
    hit_probability,
    metrics_table,
    near_optimal_fraction,
    random_search_regret,
    regret_table,
    separability,
    trials_to_near_optimal,
    valley,
    variant_metrics,
)
from analysis.synthetic import surface, synthetic_results

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
    E = 0.1 + 0.01 * (L - np.log(1e-2)) ** 2 + 0.001 * (W - np.log(WDS[0])) ** 2
    v = valley(LRS, WDS, E)
    assert not v["interior"].any() and v["in_fit"].any()
    assert coupling_slope(LRS, WDS, E) == pytest.approx(0.0, abs=1e-12)
    # fewer than two lrs with a defined minimum: no slope
    assert np.isnan(coupling_slope(LRS[:1], WDS, E[:1]))


def test_near_optimal_fraction():
    E = np.array([[0.10, 0.105, 0.2], [0.109, 0.5, np.nan]])
    assert near_optimal_fraction(E, tol=0.10) == pytest.approx(3 / 5)
    assert near_optimal_fraction(E, tol=0.0) == pytest.approx(1 / 5)


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
    E = np.array([[0.10, 0.105, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]])  # 2 of 8 near-optimal
    hp = hit_probability(E, tol=0.10)
    for k in range(1, 9):
        combos = list(itertools.combinations(E.ravel(), k))
        want = np.mean([min(c) <= 0.11 for c in combos])
        assert hp[k - 1] == pytest.approx(want)
    # P(hit in k) = 1 - C(6, k) / C(8, k): 0.893 at k = 5, 0.964 at k = 6
    assert hp[4] == pytest.approx(1 - 6 / 56) and hp[5] == pytest.approx(1 - 1 / 28)
    assert trials_to_near_optimal(E, 0.10, p=0.9) == 6
    assert trials_to_near_optimal(E, 0.10, p=0.5) == 3


def test_bootstrap_interval_covers_the_truth_and_needs_three_seeds():
    rng = np.random.default_rng(2)
    S = coupled()[None] + rng.normal(0, 0.01, (5, *coupled().shape))
    lo, hi = bootstrap_coupling_slope(LRS, WDS, S, reps=60)
    assert lo <= -1.0 <= hi and hi - lo < 0.5
    assert np.isnan(bootstrap_coupling_slope(LRS, WDS, S[:2], reps=60)).all()


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
    m = variant_metrics(frame, "sgd/l2", tol=0.2, reps=0)
    assert (m["best_lr"], m["best_weight_decay"]) == (0.01, 1e-3)
    assert m["best_error"] == pytest.approx(0.23, abs=1e-12)
    assert m["best_error_std"] == pytest.approx(0.06 / np.sqrt(2), abs=1e-12)  # ddof=1
    assert m["best_error_smallest_wd"] == pytest.approx(0.29, abs=1e-12)
    assert m["wd_gain"] == pytest.approx(0.06, abs=1e-12)
    assert (m["n_lr"], m["n_wd"], m["n_cells"], m["n_seeds"], m["n_trials"]) == (2, 3, 6, 2, 12)
    assert m["diverged_fraction"] == pytest.approx(1 / 12, abs=1e-12)
    # near-optimal: E <= 0.23 * 1.2 = 0.276, i.e. 0.23 and 0.26: 2 of 6 cells;
    # P(hit in k) = 1 - C(4, k) / C(6, k) = 0.8 at k = 3, 14/15 at k = 4
    assert m["near_optimal_fraction"] == pytest.approx(2 / 6, abs=1e-12)
    assert m["trials_to_near_optimal"] == 4
    # the valley: lr 0.01 has an interior minimum, lr 0.1 its first minimum at the smallest wd
    # (0.29 twice); both are informative (<= the median 0.29), so both are fit: not interior
    assert (m["valley_rows"], m["valley_interior"]) == (2, False)
    # separability: R^2 of the two-way additive fit, which for a complete grid is
    # row mean + column mean - grand mean (no cell is diverged in every seed: all six count)
    E = np.array([[0.32, 0.23, 0.26], [0.29, 0.29, 0.61]])
    fit = E.mean(1, keepdims=True) + E.mean(0, keepdims=True) - E.mean()
    want = 1 - ((E - fit) ** 2).sum() / ((E - E.mean()) ** 2).sum()
    assert 0.55 < want < 0.65 and m["separability"] == pytest.approx(want, abs=1e-12)
    assert metrics_table(frame, tol=0.2, reps=0).iloc[0].to_dict() == pytest.approx(m, nan_ok=True)


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
        assert m.loc[v, "coupling_slope_lo"] <= -1.0 + 0.1 and m.loc[v, "coupling_slope_hi"] < -0.7
    for v in ("sgd/independent", "adam/independent"):
        assert m.loc[v, "coupling_slope"] == pytest.approx(0.0, abs=0.1)
        assert (
            m.loc[v, "separability"] > 0.97 > m.loc[v.replace("independent", "l2"), "separability"]
        )
    assert (m["n_cells"] == 63).all() and (m["n_seeds"] == 3).all()
    assert (m["diverged_fraction"] > 0).all() and m["valley_interior"].all()
    # the best cell and its error are those of the seed-mean grid, taken here straight from
    # the raw rows (synthetic_results writes each variant's seeds as full lr-major grids)
    raw = synthetic_results(n_lr=7, n_wd=9, seeds=3)
    for v, row in m.iterrows():
        sub = raw[raw.optimizer + "/" + raw.decay == v]
        mean = sub["test_error"].to_numpy().reshape(3, 7, 9).mean(axis=0)
        i, j = np.unravel_index(np.argmin(mean), mean.shape)
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
    m = metrics_table(snapped, reps=0).set_index("variant")
    assert m.loc["adam/l2", "coupling_slope"] == pytest.approx(-1.0, abs=0.2)
    assert m.loc["adam/independent", "coupling_slope"] == pytest.approx(0.0, abs=0.2)
    with pytest.raises(ValueError, match="mixes several experiment"):
        metrics_table(pd.concat([frame, frame.assign(experiment="other")]))
