"""Tests of cpfs.motion: the per-pair motion statistics on flows whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from cpfs.motion import MOTION_COLUMNS, MOVING_PX, SAMPLE_GRID, column, motion_statistics, sample_grid

H, W = 64, 96


def test_uniform_flow_has_no_spread_and_nothing_moving_on_its_own() -> None:
    f = np.zeros((H, W, 2), np.float32)
    f[..., 0], f[..., 1] = 3.0, -4.0  # a pure pan of 5 px
    s = motion_statistics(f)
    assert s.shape == (len(MOTION_COLUMNS),) and s.dtype == np.float32
    assert column(s, "spread_px") == 0.0 and column(s, "moving_fraction") == 0.0
    np.testing.assert_allclose([column(s, c) for c in ("mag_p50", "mag_p90", "mag_p99")], 5.0, rtol=1e-6)


def test_object_on_a_known_fraction_of_the_frame() -> None:
    # An object on the left quarter of the columns moves 4 px right; the rest is static.
    f = np.zeros((2, H, W, 2), np.float32)
    f[1, :, : W // 4, 0] = 4.0
    s = motion_statistics(f)
    assert s.shape == (2, len(MOTION_COLUMNS))
    np.testing.assert_array_equal(s[0], 0.0)  # the static pair
    assert column(s, "moving_fraction")[1] == pytest.approx(0.25)
    assert column(s, "mag_p50")[1] == 0.0 and column(s, "mag_p90")[1] == pytest.approx(4.0)
    # The grid samples 4 of 16 columns on the object: pairs (object, background) are 2 x 64 x 192 of the
    # 32,640 grid pairs (37.6 %): fewer than half, so the median pairwise distance is 0 although the object
    # moves 4 px. That is why the training filter uses moving_fraction, not the median distance.
    assert column(s, "spread_px")[1] == 0.0


def test_spread_is_the_median_pairwise_distance_of_the_grid_sample() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(0, 2, (H, W, 2)).astype(np.float32)
    ys, xs = sample_grid(H, W)
    assert ys.shape == (SAMPLE_GRID**2,)
    p = f[ys, xs].astype(np.float64)
    naive = np.median([np.hypot(*(p[i] - p[j])) for i in range(len(p)) for j in range(i + 1, len(p))])
    assert column(motion_statistics(f), "spread_px") == pytest.approx(naive, rel=1e-5)


def test_moving_is_relative_to_the_dominant_motion() -> None:
    # The camera pans 10 px; a third of the rows move 10 + MOVING_PX px: they (and only they) move on their own.
    f = np.zeros((H, W, 2), np.float32)
    f[..., 0] = 10.0
    f[: H // 3, :, 0] += MOVING_PX
    assert column(motion_statistics(f), "moving_fraction") == pytest.approx((H // 3) / H)


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"flow must have shape \(n, H, W, 2\)"):
        motion_statistics(np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="unknown motion statistic 'speed'"):
        column(np.zeros(5), "speed")


def _numpy_statistics(f: np.ndarray) -> np.ndarray:
    """The statistics with numpy's own median and percentile calls (the first implementation, kept here as
    the reference the fast one has to equal bit for bit: stored statistics must not depend on the code path)."""
    ys, xs = sample_grid(*f.shape[:2])
    p = f[ys, xs]
    i, j = np.triu_indices(p.shape[0], k=1)
    d = (p[i] - p[j]).astype(np.float64)
    spread = float(np.median(np.sqrt(np.square(d[:, 0]) + np.square(d[:, 1]))))
    flat = f.reshape(-1, 2)
    med = np.median(flat, axis=0)
    sq = np.square(flat - med)
    own = np.sqrt(sq[:, 0] + sq[:, 1])
    mag = np.sqrt(np.square(flat[:, 0]) + np.square(flat[:, 1]))
    p50, p90, p99 = np.percentile(mag, (50, 90, 99))
    return np.array([spread, float((own >= MOVING_PX).mean()), p50, p90, p99], dtype=np.float32)


@pytest.mark.parametrize("case", range(120))
def test_the_statistics_equal_numpys_median_and_percentile_bit_for_bit(case: int) -> None:
    rng = np.random.default_rng(case)
    h, w = rng.integers(1, 50, 2) if case % 3 else rng.integers(40, 200, 2)
    f = (rng.standard_normal((h, w, 2)) * rng.uniform(0.01, 20)).astype(np.float32)
    if case % 4 == 1:
        f = np.round(f)  # many ties
    elif case % 4 == 2:
        f[:] = 1.5  # constant
    elif case % 4 == 3:
        f[: h // 2] += 5.0  # two motions
    got, want = motion_statistics(f), _numpy_statistics(f)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_a_field_with_nan_gives_numpys_nan_statistics() -> None:
    f = np.random.default_rng(0).standard_normal((20, 30, 2)).astype(np.float32)
    f[3, 4, 0] = np.nan
    got, want = motion_statistics(f), _numpy_statistics(f)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got).any()
