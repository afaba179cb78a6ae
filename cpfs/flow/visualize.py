"""Optical flow as colour: the Middlebury colour wheel (Baker et al., IJCV 2011).

Direction sets the hue, magnitude the saturation: zero flow is white, flow of length ``max_flow`` (or more)
has the full wheel colour, longer flow is darkened to 75%. The wheel has 55 colours going through red,
yellow, green, cyan, blue, magenta with the segment lengths of the Middlebury code
(RY 15, YG 6, GC 4, CB 11, BM 13, MR 6: finer steps where the eye separates hues better); between two
wheel colours the hue is interpolated linearly. Flow to the right (+x) is red, down (+y, image rows)
is orange-yellow, left is cyan-blue, up is blue-violet.
"""

from __future__ import annotations

import numpy as np

from cpfs.flow.metrics import valid_flow_mask

_SEGMENTS = (15, 6, 4, 11, 13, 6)  # RY, YG, GC, CB, BM, MR


def color_wheel() -> np.ndarray:
    """(55, 3) float64 RGB in [0, 255]: the Middlebury wheel, one colour per step around the circle."""
    ry, yg, gc, cb, bm, mr = _SEGMENTS
    rows: list[tuple[float, float, float]] = []
    rows += [(255.0, 255.0 * i / ry, 0.0) for i in range(ry)]  # red -> yellow: green rises
    rows += [(255.0 - 255.0 * i / yg, 255.0, 0.0) for i in range(yg)]  # yellow -> green: red falls
    rows += [(0.0, 255.0, 255.0 * i / gc) for i in range(gc)]  # green -> cyan: blue rises
    rows += [(0.0, 255.0 - 255.0 * i / cb, 255.0) for i in range(cb)]  # cyan -> blue: green falls
    rows += [(255.0 * i / bm, 0.0, 255.0) for i in range(bm)]  # blue -> magenta: red rises
    rows += [(255.0, 0.0, 255.0 - 255.0 * i / mr) for i in range(mr)]  # magenta -> red: blue falls
    return np.floor(np.array(rows))


def flow_to_color(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """(H, W, 2) flow (u, v), px -> (H, W, 3) uint8 RGB image with the Middlebury colour coding.

    Flow is divided by ``max_flow`` (default: the largest |f| over known pixels, so the longest vector
    reaches the wheel's rim). With r = |f| / max_flow and c the wheel colour of angle atan2(-v, -u) (in [0, 1]):
    colour = 1 - r (1 - c) when r <= 1 (white at r = 0), else 0.75 c. Unknown pixels (|f| >= 1e9, nan) are black.
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow_to_color: flow must have shape (H, W, 2), got {flow.shape}")
    if max_flow is not None and not max_flow > 0:
        raise ValueError(f"flow_to_color: max_flow must be > 0 (got {max_flow})")
    known = valid_flow_mask(flow)
    u = np.where(known, flow[..., 0], 0.0)
    v = np.where(known, flow[..., 1], 0.0)
    rad = np.hypot(u, v)
    if max_flow is None:
        max_flow = float(rad.max()) if rad.max() > 0 else 1.0
    u, v, rad = u / max_flow, v / max_flow, rad / max_flow

    wheel = color_wheel() / 255.0  # (55, 3)
    n = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # (-1, 1]; -1 and 1 are both "right"
    fk = (angle + 1.0) / 2.0 * (n - 1)  # position on the wheel, [0, n-1]
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % n
    f = (fk - k0)[..., None]
    col = (1.0 - f) * wheel[k0] + f * wheel[k1]  # (H, W, 3) in [0, 1]
    inside = (rad <= 1.0)[..., None]
    col = np.where(inside, 1.0 - rad[..., None] * (1.0 - col), col * 0.75)
    out = np.floor(255.0 * col).astype(np.uint8)
    out[~known] = 0
    return out
