"""The level of every reported interval, pinned from outside the code that computes it.

A 95% interval that is really a 90% one looks plausible in every table, so these tests check the
level three ways: the percentile interval's ends on values whose percentiles are known exactly;
the seed bootstrap of a mean against the normal theory's width; and, for the whole analysis of a
variant, the percentiles that the code asks numpy for (every interval of the metrics, the valley
and the tuning-cost tables is a pair of percentiles of a resample distribution).
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.metrics import (
    Options,
    bootstrap_coupling_slope,
    percentile_interval,
    seed_bootstrap,
    variant_result,
)
from analysis.synthetic import landscape, simulate


def test_percentile_interval_takes_the_central_level():
    values = np.arange(1001.0)  # the p-th percentile is 10 p exactly
    iv = percentile_interval(values)
    assert (iv.lo, iv.hi) == pytest.approx((25.0, 975.0), abs=1e-9)
    assert percentile_interval(values, 0.90)[:2] == pytest.approx((50.0, 950.0), abs=1e-9)
    assert percentile_interval(values, 0.50)[:2] == pytest.approx((250.0, 750.0), abs=1e-9)
    with_nan = np.append(values, [np.nan, np.inf])  # non-finite resamples are left out
    assert percentile_interval(with_nan)[:2] == pytest.approx((25.0, 975.0), abs=1e-9)
    assert len(percentile_interval(with_nan).values) == 1001


def test_seed_bootstrap_of_a_mean_has_the_normal_width():
    """Many seeds, the mean: the bootstrap distribution is close to normal with the standard
    error s / sqrt(n) (times sqrt((n-1)/n)), so the 95% interval spans +-1.96 of it, 19% more
    than a 90% interval's +-1.645."""
    rng = np.random.default_rng(3)
    n = 400
    data = rng.normal(0.0, 1.0, n)
    se = data.std(ddof=0) / np.sqrt(n)
    iv = seed_bootstrap(lambda idx: float(data[idx].mean()), n, reps=4000)
    half = (iv.hi - iv.lo) / 2
    assert half == pytest.approx(1.96 * se, rel=0.05)
    assert iv.lo < data.mean() < iv.hi
    tails = np.mean(iv.values < iv.lo), np.mean(iv.values > iv.hi)
    assert tails == pytest.approx((0.025, 0.025), abs=0.003)


@pytest.fixture
def requested(monkeypatch):
    """Every percentile q numpy is asked for while the test runs (np.percentile and
    np.nanpercentile, as the analysis calls them)."""
    asked: list[float] = []
    for name in ("percentile", "nanpercentile"):
        real = getattr(np, name)

        def spy(a, q, *args, _real=real, **kwargs):
            asked.extend(round(x, 9) for x in np.atleast_1d(np.asarray(q, float)).tolist())
            return _real(a, q, *args, **kwargs)

        monkeypatch.setattr(np, name, spy)
    return asked


def _frame(seeds: int = 4):
    lrs, wds, E = landscape(n_lr=4, slope=-1, gain=0.05)
    return simulate(lrs, wds, E, seeds=seeds, train_noise=0.01, rng_seed=1), lrs, wds


@pytest.mark.parametrize("level, tails", [(None, {2.5, 97.5}), (0.8, {10.0, 90.0})])
def test_every_interval_of_a_variant_is_at_the_stated_level(requested, level, tails):
    """The default analysis reports 95% intervals and says so; another level is honoured
    everywhere (no interval keeps a level of its own)."""
    frame, _, _ = _frame()
    opts = Options(reps=200) if level is None else Options(reps=200, level=level)
    result = variant_result(frame, "adam/l2", opts)
    asked = set(requested)
    assert asked, "no interval was computed"
    assert asked == tails, sorted(asked)
    stated = 95 if level is None else 80
    assert result.metrics["interval"].endswith(f" {stated}%"), result.metrics["interval"]
    assert result.metrics["interval"].startswith("seed bootstrap, 200 resamples of 4 seeds")
    for key in ("wd_gain", "coupling_slope"):
        lo, hi = result.metrics[f"{key}_lo"], result.metrics[f"{key}_hi"]
        assert np.isfinite(lo) and np.isfinite(hi) and lo <= hi, (key, lo, hi)


def test_the_coupling_slope_interval_is_at_the_stated_level(requested):
    frame, lrs, wds = _frame(seeds=5)
    S = np.stack(
        [
            frame[frame.seed == s].pivot(index="lr", columns="weight_decay", values="test_error")
            for s in sorted(frame.seed.unique())
        ]
    )
    lo, hi = bootstrap_coupling_slope(lrs, wds, S, reps=200)
    assert set(requested) == {2.5, 97.5}
    assert lo <= -1.0 <= hi


def test_seed_bootstrap_uses_the_level_the_seed_and_the_draws_it_is_given():
    """The interval of an arbitrary statistic is the stated percentiles of the statistic on the
    resamples that ``resample_picks`` draws (the same draws as ``resample_counts``)."""
    from analysis.metrics.selection import resample_counts, resample_picks

    data = np.array([0.31, 0.12, 0.57, 0.44, 0.05, 0.29])

    def stat(idx):
        return float(data[idx].mean())

    def expected(level, seed, reps=500):
        vals = [stat(idx) for idx in resample_picks(len(data), reps, seed)]
        a = 100 * (1 - level) / 2
        return np.percentile(vals, a), np.percentile(vals, 100 - a)

    for level, seed in [(0.8, 3), (0.5, 0), (0.95, 7)]:
        iv = seed_bootstrap(stat, len(data), reps=500, seed=seed, level=level)
        assert (iv.lo, iv.hi) == pytest.approx(expected(level, seed), abs=1e-12), (level, seed)
    # the default draws are resample_counts' default draws
    default = seed_bootstrap(stat, len(data), reps=500)
    counts = resample_counts(len(data), 500)
    assert np.sort(default.values) == pytest.approx(np.sort(counts @ data / len(data)), abs=1e-12)
    # an interval from min_seeds seeds on, never from one seed
    assert np.isfinite(seed_bootstrap(stat, 3, reps=50, min_seeds=3).lo)
    assert np.isnan(seed_bootstrap(stat, 2, reps=50, min_seeds=3).lo)
    assert np.isfinite(seed_bootstrap(stat, 2, reps=50, min_seeds=2).lo)
    assert np.isnan(seed_bootstrap(stat, 1, reps=50, min_seeds=1).lo)
    assert np.isnan(seed_bootstrap(stat, 6, reps=0).lo)
    assert np.isfinite(seed_bootstrap(stat, 6, reps=1).lo)


def test_evaluation_noise_is_the_binomial_error_of_each_live_cell():
    """Each cell's draw is N(0, p (1 - p) / n_eval) at its mean error p; a diverged (error 1) or
    unmeasured (nan) cell gets none; ``sd`` replaces the binomial; ``seed`` picks the draws."""
    from analysis.metrics.selection import evaluation_noise

    mean = np.array([[0.1, 0.5], [1.0, np.nan]])
    z = np.random.default_rng(5).normal(0.0, 1.0, (4, 2, 2))
    binomial = np.array([[np.sqrt(0.09 / 400), np.sqrt(0.25 / 400)], [0.0, 0.0]])
    assert evaluation_noise(mean, 400, 4, seed=5) == pytest.approx(z * binomial, abs=1e-15)
    fixed = np.array([[0.02, 0.02], [0.0, 0.0]])
    assert evaluation_noise(mean, 400, 4, seed=5, sd=0.02) == pytest.approx(z * fixed, abs=1e-15)
    # an evaluation set of unknown size (0) counts as one sample: p clipped to 1/2, sd 1/2
    half = np.array([[0.5, 0.5], [0.0, 0.0]])
    assert evaluation_noise(mean, 0, 4, seed=5) == pytest.approx(z * half, abs=1e-15)
    assert evaluation_noise(mean, 400, 0).shape == (0, 2, 2)
