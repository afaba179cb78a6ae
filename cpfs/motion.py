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
  flow kernel's median-heuristic bandwidth (``cpfs.kernels.median_pairwise_distance``) on that sample: the
  scale of the motion *differences* training sees.
- ``moving_fraction``: the fraction of pixels whose flow differs from the frame's median flow (the dominant,
  usually camera, motion) by at least ``MOVING_PX`` px: how much of the frame moves on its own.
- ``mag_p50``, ``mag_p90``, ``mag_p99``: percentiles of the flow magnitude ``||f_p||`` over all pixels.

Cheap: a 256-point sample and three percentiles per pair, computed from the flow already in memory at ingest
(about 1 ms per 256x256 field).
"""

from __future__ import annotations

import functools

import numpy as np

MOTION_COLUMNS: tuple[str, ...] = ("spread_px", "moving_fraction", "mag_p50", "mag_p90", "mag_p99")
# Pixels sampled per axis for ``spread_px``: 16 x 16 = 256 points, the number of pixels a demo training step
# samples per image, so ``spread_px`` is on the scale of the bandwidth training computes.
SAMPLE_GRID = 16
# A pixel "moves on its own" when its flow differs from the frame's median flow by at least this, px: twice
# the flow-noise floor ``cpfs.kernels.MIN_SIGMA_PX`` (0.5 px), so estimation noise alone rarely crosses it.
MOVING_PX = 1.0


def sample_grid(height: int, width: int, n: int = SAMPLE_GRID) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices ``(n*n,)`` of an ``n x n`` grid of pixel centres spread evenly over the frame."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    ys = np.minimum(((np.arange(n) + 0.5) * height / n).astype(np.int64), height - 1)
    xs = np.minimum(((np.arange(n) + 0.5) * width / n).astype(np.int64), width - 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return yy.ravel(), xx.ravel()


@functools.lru_cache(maxsize=4)
def _upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays ``(i, j)`` of the pairs i < j of n points (made once per n)."""
    return np.triu_indices(n, k=1)


def _median_pairwise_distance(points: np.ndarray) -> float:
    """Median of ``||p_i - p_j||`` over the pairs i < j of ``points (n, 2)``.

    Only the n(n-1)/2 pairs are computed (the median does not depend on their order): the difference in
    the points' dtype, then squares, sum and root in float64."""
    i, j = _upper_pairs(points.shape[0])
    diff = (points[i] - points[j]).astype(np.float64)  # (n(n-1)/2, 2)
    np.square(diff, out=diff)
    return float(np.median(np.sqrt(diff[:, 0] + diff[:, 1])))


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
        spread = _median_pairwise_distance(f[ys, xs])
        flat = f.reshape(-1, 2)
        med = np.median(flat, axis=0)  # dominant motion (u, v)
        # u^2 + v^2 written out: the same float32 sums as ``(x ** 2).sum(-1)``, without numpy's slow
        # reduction over a length-2 axis (ingest computes this for every pair).
        sq = np.square(flat - med)  # (H*W, 2)
        own = np.sqrt(sq[:, 0] + sq[:, 1])  # (H*W,) motion relative to the dominant one
        sq = np.square(flat, out=sq)
        mag = np.sqrt(sq[:, 0] + sq[:, 1])  # (H*W,)
        p50, p90, p99 = np.percentile(mag, (50, 90, 99))
        out[i] = (spread, float((own >= MOVING_PX).mean()), p50, p90, p99)
    return out[0] if single else out


def column(stats: np.ndarray, name: str) -> np.ndarray:
    """One named column of a ``(n, len(MOTION_COLUMNS))`` statistics array."""
    if name not in MOTION_COLUMNS:
        raise ValueError(f"unknown motion statistic {name!r}; known: {', '.join(MOTION_COLUMNS)}")
    return np.asarray(stats)[..., MOTION_COLUMNS.index(name)]
