"""Motion statistics of optical-flow fields: how much, and how differently, the pixels of a frame pair move.

CPFS learns from differences of motion inside one frame: pixels that move together should embed together.
A pair whose flow is the same everywhere (a static shot, or a pure pan) carries no such signal, and on it
the per-frame flow kernel is estimator noise (project issue 10: on the demo store every bigbuckbunny pair had
a median pairwise flow distance below 0.5 px, the order of the flow's own error). The ingest stage therefore
stores, for every pair, the small vector of numbers below (``storage`` array ``motion``, columns
``MOTION_COLUMNS``), and training and evaluation choose their pairs by it.

Columns (all from the flow of one pair, ``(H, W, 2)`` px):

- ``spread_px``: the median pairwise distance ``||f_p - f_q||`` over a fixed sample of pixels (a regular grid
  of ``SAMPLE_GRID x SAMPLE_GRID`` pixel centres, so the value is a pure function of the flow field). It is the
  flow kernel's median-heuristic bandwidth (``cpfs.training.kernels.median_pairwise_distance``) on that sample: the
  scale of the motion *differences* training sees.
- ``moving_fraction``: the fraction of pixels whose flow differs from the frame's median flow (the dominant,
  usually camera, motion) by at least ``MOVING_PX`` px: how much of the frame moves on its own.
- ``mag_p50``, ``mag_p90``, ``mag_p99``: percentiles of the flow magnitude ``||f_p||`` over all pixels.

Cheap: a 256-point sample and three percentiles per pair, computed from the flow already in memory at ingest
(about 1 ms per 256x256 field).
"""

from __future__ import annotations

import numpy as np

MOTION_COLUMNS: tuple[str, ...] = ("spread_px", "moving_fraction", "mag_p50", "mag_p90", "mag_p99")
# Pixels sampled per axis for ``spread_px``: 16 x 16 = 256 points, the number of pixels a demo training step
# samples per image, so ``spread_px`` is on the scale of the bandwidth training computes.
SAMPLE_GRID = 16
# A pixel "moves on its own" when its flow differs from the frame's median flow by at least this, px: twice
# the flow-noise floor ``cpfs.training.kernels.MIN_SIGMA_PX`` (0.5 px), so estimation noise alone rarely crosses it.
MOVING_PX = 1.0


def sample_grid(height: int, width: int, n: int = SAMPLE_GRID) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices ``(n*n,)`` of an ``n x n`` grid of pixel centres spread evenly over the frame."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    ys = np.minimum(((np.arange(n) + 0.5) * height / n).astype(np.int64), height - 1)
    xs = np.minimum(((np.arange(n) + 0.5) * width / n).astype(np.int64), width - 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return yy.ravel(), xx.ravel()


# The three percentiles of the flow magnitude, as ``np.percentile`` turns them into fractions.
_PERCENTILES = np.true_divide(np.asanyarray([50, 90, 99]), 100)

# Ingest computes these for every pair, so each statistic below is computed the cheapest exact way: the same
# float operations as ``np.median`` / ``np.percentile`` (method "linear") on the same values, bit for bit
# (tests/cpfs/test_motion.py holds them equal to those calls), in ~7 ms instead of ~16 ms per 256 x 340 field
# (numpy 2.4: a partition with two kth values costs about five with one; a sort is cheaper than three).


def _median(x: np.ndarray) -> np.floating:
    """``np.median`` of a 1-d float array from one single-kth partition: the upper middle value, and for an
    even count the largest value below it, averaged as ``np.median`` does (``np.mean`` of the two)."""
    k = x.size // 2
    part = np.partition(x, k)
    if x.size % 2:
        return part[k]
    return np.mean(np.array([part[:k].max(), part[k]], dtype=x.dtype))


def _median_pairwise_distance(points: np.ndarray) -> float:
    """Median of ``||p_i - p_j||`` over the pairs i < j of ``points (n, 2)``, n >= 2.

    Differences in the points' dtype, then squares, sum and root in float64. Computed on the full n x n
    matrix: it holds n zeros (the diagonal) and every pair's distance twice (the same value: a difference
    and its negation square alike), so the pairs' k-th smallest distance is the matrix's (n + 2k)-th."""
    n = points.shape[0]
    dx = (points[:, 0][:, None] - points[:, 0][None, :]).astype(np.float64)
    dy = (points[:, 1][:, None] - points[:, 1][None, :]).astype(np.float64)
    np.square(dx, out=dx)
    np.square(dy, out=dy)
    d = np.sqrt(dx + dy, out=dx).ravel()
    m = n * (n - 1) // 2  # pairs
    if m % 2:
        k = n + m - 1  # the middle pair's first copy
        return float(np.partition(d, k)[k])
    k = n + m  # the upper middle pair's first copy; the lower middle one is the largest value before it
    part = np.partition(d, k)
    return float(np.mean(np.array([part[:k].max(), part[k]])))


def _percentiles(sorted_values: np.ndarray) -> np.ndarray:
    """``np.percentile(values, (50, 90, 99))`` (method "linear") from the sorted values: numpy's own steps
    (virtual index ``(n - 1) q``, its floor and the next index, the interpolation weight ``gamma`` and the
    two-sided ``_lerp``), on the order statistics it would have partitioned out."""
    n = sorted_values.size
    virtual = (n - 1) * _PERCENTILES
    previous = np.floor(virtual)
    following = previous + 1
    at_end = virtual >= n - 1
    previous[at_end] = following[at_end] = -1
    previous, following = previous.astype(np.intp), following.astype(np.intp)
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype)
    a, b = sorted_values[previous], sorted_values[following]
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=type(out.dtype))
    return out


def motion_statistics(flow: np.ndarray) -> np.ndarray:
    """The ``MOTION_COLUMNS`` of each flow field.

    Args:
        flow: ``(n, H, W, 2)`` float flow fields, px (or one ``(H, W, 2)`` field).
    Returns:
        ``(n, len(MOTION_COLUMNS))`` float32 (``(len(MOTION_COLUMNS),)`` for one field).
    """
    flow = np.asarray(flow)
    single = flow.ndim == 3
    if single:
        flow = flow[None]
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (n, H, W, 2) or (H, W, 2), got {flow.shape}")
    n, h, w, _ = flow.shape
    ys, xs = sample_grid(h, w)
    out = np.empty((n, len(MOTION_COLUMNS)), dtype=np.float32)
    for i in range(n):
        f = flow[i].astype(np.float32, copy=False)  # (H, W, 2)
        flat = f.reshape(-1, 2)
        finite = bool(np.isfinite(f).all())  # then the magnitudes are NaN-free too (at most inf)
        if finite:
            spread = _median_pairwise_distance(f[ys, xs])
            # dominant motion (u, v): np.median(flat, axis=0), one component at a time
            med = np.array([_median(np.ascontiguousarray(flat[:, 0])), _median(np.ascontiguousarray(flat[:, 1]))],
                           dtype=np.float32)
        else:  # NaN: numpy's own calls, which propagate it (the partitions above would not)
            p = f[ys, xs]
            i_, j_ = np.triu_indices(p.shape[0], k=1)
            spread = float(np.median(np.sqrt(np.square((p[i_] - p[j_]).astype(np.float64)).sum(-1))))
            med = np.median(flat, axis=0)
        # u^2 + v^2 written out: the same float32 sums as ``(x ** 2).sum(-1)``, without numpy's slow
        # reduction over a length-2 axis.
        sq = np.square(flat - med)  # (H*W, 2)
        own = np.sqrt(sq[:, 0] + sq[:, 1])  # (H*W,) motion relative to the dominant one
        sq = np.square(flat, out=sq)
        mag = np.sqrt(sq[:, 0] + sq[:, 1])  # (H*W,)
        p50, p90, p99 = _percentiles(np.sort(mag)) if finite else np.percentile(mag, (50, 90, 99))
        out[i] = (spread, float((own >= MOVING_PX).mean()), p50, p90, p99)
    return out[0] if single else out


def column(stats: np.ndarray, name: str) -> np.ndarray:
    """One named column of a ``(n, len(MOTION_COLUMNS))`` statistics array."""
    if name not in MOTION_COLUMNS:
        raise ValueError(f"unknown motion statistic {name!r}; known: {', '.join(MOTION_COLUMNS)}")
    return np.asarray(stats)[..., MOTION_COLUMNS.index(name)]
