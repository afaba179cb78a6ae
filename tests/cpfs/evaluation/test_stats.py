"""Tests of cpfs.evaluation.stats: the paired bootstrap covers the true difference at about its nominal rate."""

from __future__ import annotations

import numpy as np
import pytest

from cpfs.evaluation.stats import paired_bootstrap, paired_bootstrap_pooled, per_group_bootstrap, verdict


def _sample(rng: np.random.Generator, true_diff: float) -> tuple[np.ndarray, list[str], float]:
    """Paired differences of 3 videos x 32 pairs x 3 pixel seeds: a video effect, a pair effect and seed
    noise, as in the held-out evaluation. Returns the differences, the video of each row and the quantity
    the interval is about: the held-out videos are given (fixed strata), so the target is the true difference
    plus the mean of these videos' effects; pairs and seeds are the random draws."""
    rows, groups, effects = [], [], []
    for v in range(3):
        video = rng.normal(0, 0.01)
        effects.append(video)
        for _ in range(32):
            pair = rng.normal(0, 0.03)
            rows.append(true_diff + video + pair + rng.normal(0, 0.02, 3))
            groups.append(f"video{v}")
    return np.array(rows), groups, true_diff + float(np.mean(effects))


def test_interval_covers_the_true_difference_at_about_the_nominal_rate() -> None:
    # 200 simulated evaluations, seeded: the 95 % interval must contain the target in about 95 % of them. With
    # 200 draws a correct 95 % interval gives 181-198 hits (binomial, 99.9 % range); 0.88 guards against a
    # badly anti-conservative interval, 0.995 against a uselessly wide one.
    rng = np.random.default_rng(2026)
    n, hits = 200, 0
    for i in range(n):
        d, g, target = _sample(rng, 0.02)
        r = paired_bootstrap(d, g, n_boot=400, seed=i)
        hits += r["ci_low"] <= target <= r["ci_high"]
    assert 0.88 * n <= hits <= 0.995 * n, hits


def test_interval_is_deterministic_and_shrinks_with_more_data() -> None:
    rng = np.random.default_rng(0)
    d, g, _ = _sample(rng, 0.05)
    a, b = paired_bootstrap(d, g, seed=3), paired_bootstrap(d, g, seed=3)
    assert a == b and a["n_pairs"] == 96 and a["n_seeds"] == 3 and a["n_groups"] == 3
    assert a["ci_low"] < a["mean"] < a["ci_high"] and a["ci_low"] > 0 and a["p_below_zero"] == 0.0
    few = paired_bootstrap(d[::8], [g[i] for i in range(0, 96, 8)], seed=3)
    assert few["ci_high"] - few["ci_low"] > a["ci_high"] - a["ci_low"]
    per = per_group_bootstrap(d, g)
    assert set(per) == {"video0", "video1", "video2"} and all(p["n_pairs"] == 32 for p in per.values())


def test_verdict_says_what_the_interval_says() -> None:
    base = {"level": 0.95, "mean": 0.05}
    assert verdict({**base, "ci_low": 0.01, "ci_high": 0.09}, "x").startswith("the trained network beats random init on x by +0.050")
    assert "does not measurably beat" in verdict({**base, "ci_low": -0.01, "ci_high": 0.09}, "x")
    assert "is worse than" in verdict({**base, "mean": -0.05, "ci_low": -0.09, "ci_high": -0.01}, "x")


def test_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="one entry per row"):
        paired_bootstrap(np.zeros(4), ["a", "b"])
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(np.zeros(4), level=1.0)


def test_pooled_bootstrap_of_a_mean_is_the_paired_bootstrap() -> None:
    # With the mean as the pooled statistic, the resamples are the paired bootstrap's (same rows, seeds, order).
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.5, 0.1, (30, 3)), rng.normal(0.45, 0.1, (30, 3))
    groups = [f"v{i % 3}" for i in range(30)]
    batched_mean = lambda x: x.mean(axis=(1, 2))  # noqa: E731 - (B, rows, seeds) -> (B,)
    pooled = paired_bootstrap_pooled(a, b, batched_mean, groups, n_boot=500, seed=2, chunk=64)
    plain = paired_bootstrap(a - b, groups, n_boot=500, seed=2)
    assert set(pooled) == set(plain)
    for key in ("mean", "ci_low", "ci_high", "p_below_zero"):
        assert pooled[key] == pytest.approx(plain[key], abs=1e-12), key
    same = paired_bootstrap_pooled(a, a, batched_mean, n_boot=100)
    assert same["mean"] == same["ci_low"] == same["ci_high"] == 0.0
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap_pooled(a, b[:5], batched_mean)
