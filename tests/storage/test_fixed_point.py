"""Fixed-point flow: round-trip error, clipping count, non-finite values, errors; against a naive loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from storage.fixed_point import decode_flow, encode_flow


def naive_encode(flow: np.ndarray, scale: float, bound: float) -> tuple[np.ndarray, int]:
    """Pixel-by-pixel reference of encode_flow, written from the docstring's formula."""
    flat = flow.reshape(-1, 2)
    q = np.zeros_like(flat, dtype=np.int16)
    clipped = 0
    for i, (u, v) in enumerate(flat):
        hit = False
        for c, x in enumerate((float(u), float(v))):
            if not math.isfinite(x):
                hit = True
                x = 0.0
            elif abs(x) > bound:
                hit = True
                x = math.copysign(bound, x)
            q[i, c] = int(np.rint(np.float32(x) * np.float32(scale)))
        clipped += hit
    return q.reshape(flow.shape), clipped


@pytest.mark.parametrize("scale,bound", [(64.0, 500.0), (16.0, 100.0), (3.0, 1000.0), (100.0, 327.0)])
def test_round_trip_error_is_at_most_half_a_step_inside_the_bound(scale: float, bound: float) -> None:
    rng = np.random.default_rng(0)
    flow = rng.uniform(-bound, bound, size=(3, 17, 23, 2)).astype(np.float32)
    q, clipped = encode_flow(flow, scale, bound)
    assert q.dtype == np.int16 and q.shape == flow.shape
    assert clipped == 0
    back = decode_flow(q, scale)
    assert back.dtype == np.float32 and back.shape == flow.shape
    # half a quantisation step, plus float32 rounding of values up to `bound`
    tol = 0.5 / scale + 4 * np.finfo(np.float32).eps * bound
    assert np.abs(back - flow).max() <= tol
    # the quantisation is actually used: errors are not all zero and reach a good part of the half step
    assert np.abs(back - flow).max() > 0.25 / scale


def test_multiples_of_the_step_are_exact() -> None:
    scale = 64.0
    k = np.arange(-32000, 32000, 37, dtype=np.int64)
    flow = np.stack([k, -k], axis=-1).astype(np.float32) / scale
    q, clipped = encode_flow(flow, scale, 500.0)
    assert clipped == 0
    assert np.array_equal(q[:, 0], k.astype(np.int16))
    assert np.array_equal(decode_flow(q, scale), flow)


def test_beyond_the_bound_is_clipped_and_counted_per_pixel() -> None:
    bound, scale = 10.0, 64.0
    flow = np.zeros((2, 3, 2), np.float32)
    flow[0, 0] = (12.0, 0.0)  # u beyond
    flow[0, 1] = (0.0, -30.0)  # v beyond
    flow[0, 2] = (50.0, -50.0)  # both beyond: one pixel
    flow[1, 0] = (10.0, -10.0)  # exactly at the bound: not clipped
    flow[1, 1] = (9.99, 3.0)
    q, clipped = encode_flow(flow, scale, bound)
    assert clipped == 3
    back = decode_flow(q, scale)
    assert np.array_equal(back[0, 0], [10.0, 0.0])
    assert np.array_equal(back[0, 1], [0.0, -10.0])
    assert np.array_equal(back[0, 2], [10.0, -10.0])
    assert np.array_equal(back[1, 0], [10.0, -10.0])
    assert np.abs(back[1, 1] - flow[1, 1]).max() <= 0.5 / scale


def test_non_finite_values_are_stored_as_zero_and_counted() -> None:
    flow = np.ones((4, 2), np.float32)
    flow[0, 0] = np.nan
    flow[1, 1] = np.inf
    flow[2] = (-np.inf, np.nan)
    q, clipped = encode_flow(flow, 64.0, 500.0)
    assert clipped == 3
    assert np.array_equal(q, [[0, 64], [64, 0], [0, 0], [64, 64]])


def test_matches_naive_reference_on_random_flow_with_outliers() -> None:
    rng = np.random.default_rng(1)
    flow = rng.normal(0, 8, size=(5, 7, 2)).astype(np.float32)
    flow[rng.random((5, 7, 2)) < 0.1] = np.nan
    flow[rng.random((5, 7, 2)) < 0.1] *= 100  # some beyond the bound
    q, clipped = encode_flow(flow, 16.0, 50.0)
    q_ref, clipped_ref = naive_encode(flow, 16.0, 50.0)
    assert clipped == clipped_ref > 0
    assert np.array_equal(q, q_ref)


def test_float64_input_is_accepted() -> None:
    flow = np.array([[1.25, -2.5]], np.float64)
    q, _ = encode_flow(flow, 4.0, 10.0)
    assert np.array_equal(q, [[5, -10]])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: encode_flow(np.zeros((4, 3), np.float32), 64.0, 500.0), r"\(\.\.\., 2\)"),
        (lambda: encode_flow(np.zeros((4, 2), np.int32), 64.0, 500.0), "float"),
        (lambda: encode_flow(np.zeros((4, 2), np.float32), 64.0, 600.0), "int16"),
        (lambda: encode_flow(np.zeros((4, 2), np.float32), 0.0, 10.0), "scale"),
        (lambda: encode_flow(np.zeros((4, 2), np.float32), 64.0, -1.0), "bound"),
        (lambda: decode_flow(np.zeros((4, 2), np.int32), 64.0), "int16"),
        (lambda: decode_flow(np.zeros((4, 1), np.int16), 64.0), r"\(\.\.\., 2\)"),
        (lambda: decode_flow(np.zeros((4, 2), np.int16), float("nan")), "scale"),
    ],
)
def test_errors_name_the_problem(call, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        call()
