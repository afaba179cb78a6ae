"""Fixed-point storage of optical flow as int16.

Flow is stored the way KITTI stores it in 16-bit PNGs (Geiger, Lenz, Urtasun 2012; the format the CPFS
authors used for their precomputed flow), minus KITTI's unsigned offset since Zarr stores signed
integers directly:

    q = rint(clip(f, -bound, +bound) * scale)      (int16; encode)
    f' = q / scale                                   (float32 px; decode)

so inside the bound the round-trip error is at most half a quantisation step, ``|f' - f| <= 1/(2*scale)``
(1/128 px at the default scale 64), and ``bound * scale`` must fit int16 (<= 32767).

A *clipped pixel* is one where any component was clipped: ``|u| > bound`` or ``|v| > bound``, or where a
component is not finite. Non-finite flow (NaN, +-inf) is a numerical failure of the flow solver, not a real
large motion, so such a pixel is stored as (0, 0) rather than at the bound, and counted as clipped.
"""

from __future__ import annotations

import numpy as np

INT16_MAX = 32767


def _check_params(scale: float, bound: float | None = None) -> None:
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"flow fixed-point scale must be a finite number > 0 (got {scale})")
    if bound is not None:
        if not np.isfinite(bound) or bound <= 0:
            raise ValueError(f"flow bound must be a finite number > 0 px (got {bound})")
        if round(bound * scale) > INT16_MAX:
            raise ValueError(f"flow bound*scale must fit int16 (<= {INT16_MAX}), got {bound}*{scale}")


def encode_flow(flow: np.ndarray, scale: float, bound: float) -> tuple[np.ndarray, int]:
    """Quantise flow to int16 fixed point, clipping it to +-``bound`` px.

    ``q = rint(clip(f, -bound, bound) * scale)``; non-finite components are stored as 0.

    Args:
        flow: float array (..., 2), (u, v) displacement in px (e.g. (T-1, H, W, 2)).
        scale: quantisation steps per px (> 0).
        bound: clipping bound in px (> 0, ``bound * scale <= 32767``).

    Returns:
        ``(q, n_clipped)``: q int16 (..., 2) of the same shape, and the number of pixels (positions of the
        leading dimensions) where any component was beyond the bound or not finite.
    """
    _check_params(scale, bound)
    flow = np.asarray(flow)
    if flow.ndim < 1 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (..., 2) (got {flow.shape})")
    if not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"flow must be a float array (got dtype {flow.dtype})")
    f = flow.astype(np.float32, copy=False)
    # Few full passes (ingest encodes every flow field): a component is kept when |f| <= bound, which is
    # False for NaN and +-inf too, so one comparison finds every clipped pixel; the finite test runs only
    # when something was clipped.
    with np.errstate(invalid="ignore"):
        kept = np.abs(f) <= bound  # (..., 2)
    kept_pixel = kept[..., 0] & kept[..., 1]  # (...,)
    n_clipped = kept_pixel.size - int(np.count_nonzero(kept_pixel))
    g = np.clip(f, -bound, bound)  # a new array: NaN stays NaN, +-inf becomes +-bound
    if n_clipped:
        g[~np.isfinite(f)] = 0.0
    g *= np.float32(scale)
    np.rint(g, out=g)
    return g.astype(np.int16), n_clipped


def decode_flow(q: np.ndarray, scale: float) -> np.ndarray:
    """Decode int16 fixed-point flow to px: ``f = q / scale``.

    Args:
        q: int16 array (..., 2) as written by :func:`encode_flow`.
        scale: the scale it was encoded with (the ``scale`` attribute of the stored array).

    Returns:
        float32 array (..., 2), flow in px.
    """
    _check_params(scale)
    q = np.asarray(q)
    if q.dtype != np.int16:
        raise ValueError(f"fixed-point flow must be int16 (got dtype {q.dtype})")
    if q.ndim < 1 or q.shape[-1] != 2:
        raise ValueError(f"fixed-point flow must have shape (..., 2) (got {q.shape})")
    return q.astype(np.float32) / np.float32(scale)
