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
