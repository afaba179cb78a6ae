"""Optical-flow files and error measures: Middlebury ``.flo`` I/O, end-point error, warping, photometric error.

References: Baker, Scharstein, Lewis, Roth, Black, Szeliski, "A Database and Evaluation Methodology for Optical
Flow", IJCV 2011 (the ``.flo`` format, EPE, unknown flow > 1e9); torchvision ``references/optical_flow``
(``epe``, ``1px``, ``3px``, ``5px``). Flow convention as ``cpfs.flow.base``: frame_t(p) ≈ frame_{t+1}(p + f(p)).
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

FLO_MAGIC = 202021.25  # float32 whose bytes read 'PIEH'
UNKNOWN_FLOW_THRESHOLD = 1e9  # Middlebury: |u| or |v| above this means "unknown"


def _check_flow(flow: np.ndarray, who: str) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"{who}: flow must have shape (H, W, 2), got {flow.shape}")
    return flow


def read_flo(path: str | Path) -> np.ndarray:
    """Read a Middlebury ``.flo`` file -> (H, W, 2) float32 (u, v), px.

    Layout (little-endian): float32 202021.25 ('PIEH'), int32 width, int32 height, then width*height*2 float32
    values, u and v interleaved, row-major. Unknown pixels keep their (> 1e9) values; see ``valid_flow_mask``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing .flo file") from None
    if len(raw) < 12:
        raise ValueError(f"{path}: not a .flo file (only {len(raw)} bytes, the header alone is 12)")
    magic = np.frombuffer(raw, "<f4", count=1)[0]
    if magic != np.float32(FLO_MAGIC):
        raise ValueError(f"{path}: not a .flo file (magic {raw[:4]!r}, expected b'PIEH')")
    w, h = (int(x) for x in np.frombuffer(raw, "<i4", count=2, offset=4))
    if w <= 0 or h <= 0 or w * h > 1 << 28:
        raise ValueError(f"{path}: bad .flo size {w}x{h}")
    expected = 12 + w * h * 2 * 4
    if len(raw) != expected:
        raise ValueError(f"{path}: truncated or padded .flo ({len(raw)} bytes, expected {expected} for {w}x{h})")
    return np.frombuffer(raw, "<f4", offset=12).reshape(h, w, 2).astype(np.float32)


def write_flo(path: str | Path, flow: np.ndarray) -> None:
    """Write (H, W, 2) flow (u, v), px, as a Middlebury ``.flo`` file (float32, little-endian)."""
    flow = _check_flow(flow, f"write_flo({path})")
    h, w = flow.shape[:2]
    header = np.array([FLO_MAGIC], "<f4").tobytes() + np.array([w, h], "<i4").tobytes()
    Path(path).write_bytes(header + np.ascontiguousarray(flow, dtype="<f4").tobytes())


def valid_flow_mask(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) ground-truth flow -> (H, W) bool: finite and |u|, |v| < 1e9 (Middlebury's "known")."""
    flow = _check_flow(flow, "valid_flow_mask")
    return np.isfinite(flow).all(-1) & (np.abs(flow) < UNKNOWN_FLOW_THRESHOLD).all(-1)


def epe(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """End-point error of ``pred`` against ``gt`` over gt's known pixels.

    e(p) = ||pred(p) - gt(p)||_2 for p with known gt (``valid_flow_mask``). Returns plain floats:
    "epe" = mean e, "1px"/"3px"/"5px" = fraction of known pixels with e < 1, 3, 5 px (torchvision's
    optical-flow references). pred, gt: (H, W, 2). Raises ValueError if no pixel of gt is known.
    """
    pred = _check_flow(pred, "epe(pred)")
    gt = _check_flow(gt, "epe(gt)")
    if pred.shape != gt.shape:
        raise ValueError(f"epe: pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    valid = valid_flow_mask(gt)
    if not valid.any():
        raise ValueError("epe: the ground truth has no known pixel (all |flow| >= 1e9 or non-finite)")
    err = np.linalg.norm(pred[valid].astype(np.float64) - gt[valid].astype(np.float64), axis=-1)
    return {
        "epe": float(err.mean()),
        "1px": float((err < 1).mean()),
        "3px": float((err < 3).mean()),
        "5px": float((err < 5).mean()),
    }


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only float32 (H, W) pixel coordinates x and y, made once per frame size (ingest warps every
    pair of a video at one size)."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def _sample_maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 2) flow -> float32 maps x + u, y + v of where each pixel of frame t lands in frame t+1."""
    gx, gy = _pixel_grid(*flow.shape[:2])
    return gx + flow[..., 0].astype(np.float32), gy + flow[..., 1].astype(np.float32)


def _valid_from_maps(mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    # NaN fails every comparison and +-inf fails one bound, so the bounds alone also test finiteness.
    h, w = mx.shape
    with np.errstate(invalid="ignore"):
        return (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward-warp frame t+1 onto frame t: out(p) = image(p + flow(p)), bilinear (cv2.remap).

    image: (H, W) or (H, W, C), any dtype; flow: (H, W, 2) t -> t+1. Returns float32 of image's shape; samples
    falling outside the image are 0 (see ``warp_valid_mask``).
    """
    flow = _check_flow(flow, "warp")
    image = np.asarray(image)
    if image.shape[:2] != flow.shape[:2]:
        raise ValueError(f"warp: image {image.shape[:2]} and flow {flow.shape[:2]} must have the same H, W")
    return _remap(image, *_sample_maps(flow))


def _remap(image: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    return cv2.remap(image.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_valid_mask(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) flow -> (H, W) bool: p + flow(p) is finite and inside the image, [0, W-1] x [0, H-1]."""
    flow = _check_flow(flow, "warp_valid_mask")
    return _valid_from_maps(*_sample_maps(flow))


def photometric_error(a: np.ndarray, b: np.ndarray, flow: np.ndarray) -> float:
    """Mean absolute brightness-constancy error of ``flow`` between frame t (``a``) and t+1 (``b``).

    E = mean over valid p and channels c of |a_c(p) - b_c(p + f(p))|, valid p: p + f(p) inside the image.
    a, b: (H, W) or (H, W, C) same shape (uint8 frames give 0..255 units); flow: (H, W, 2). Returns nan when
    no pixel is valid (the flow sends every pixel out of frame).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"photometric_error: frames must have the same shape, got {a.shape} and {b.shape}")
    flow = _check_flow(flow, "photometric_error")
    if a.shape[:2] != flow.shape[:2]:
        raise ValueError(f"photometric_error: frames {a.shape[:2]} and flow {flow.shape[:2]} must have the same H, W")
    mx, my = _sample_maps(flow)  # built once, used for the mask and the warp
    valid = _valid_from_maps(mx, my)
    if not valid.any():
        return float("nan")
    diff = np.abs(a.astype(np.float32) - _remap(b, mx, my))  # (H, W) or (H, W, C)
    if diff.ndim == 3:
        # The channel mean written out: the same float32 sum in the same order as ``diff.mean(-1)``,
        # without numpy's slow reduction over a short last axis (ingest does this for every pair).
        total = diff[..., 0].copy()
        for c in range(1, diff.shape[-1]):
            total += diff[..., c]
        diff = total / np.float32(diff.shape[-1])
    return float(diff[valid].mean())
