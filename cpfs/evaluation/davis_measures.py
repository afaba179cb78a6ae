"""The DAVIS measures as the official benchmark code defines them: region similarity J, contour accuracy F,
and the per-object statistics mean, recall and decay over a sequence's scored frames.

Ported from davisvideochallenge/davis2017-evaluation, the code behind the DAVIS 2017 benchmark (DAVIS 2016's
``davis`` package, fperazzi/davis, defines J, F and the boundary map the same way; Perazzi et al. 2016):

- ``region_similarity_j``: ``davis2017/metrics.py``, ``db_eval_iou``: |pred ∩ gt| / |pred ∪ gt|, and 1 when the
  union is empty (both masks empty).
- ``contour_accuracy_f``: ``davis2017/metrics.py``, ``db_eval_boundary`` -> ``f_measure``. Boundaries are
  ``seg2bmap`` (``_seg2bmap`` there); a boundary pixel is matched when the other mask's boundary, dilated by
  ``disk(r)`` (skimage's ``morphology.disk``), covers it, with ``r = ceil(0.008 * image diagonal)``
  (``boundary_radius``; 8 px at 854 x 480); precision P = matched predicted / predicted boundary pixels,
  recall R = matched true / true boundary pixels, ``F = 2PR / (P + R)`` (0 when P + R = 0). An empty predicted
  boundary gives P = 1, R = 0; an empty true one P = 0, R = 1; both empty P = R = 1 (so F = 0, 0 and 1).
  A mask that covers the whole image has no boundary: the image border is not a contour.
- ``frame_statistics``: ``davis2017/utils.py``, ``db_statistics``: over one object's per-frame values, the mean
  M, the recall O (fraction of frames above 0.5) and the decay D (mean of the first quarter of the frames minus
  mean of the last; the quarters are ``decay_bins``, neighbours share their boundary frame).
- ``sequence_scores`` and ``dataset_scores``: ``davis2017/evaluation.py``, ``DAVISEvaluation.evaluate``, which
  takes the statistics of every object of every sequence, and the repository's ``evaluation_method.py``, which
  averages them over all objects (J-Mean, J-Recall, ..., F-Decay; not over sequences) and reports
  ``J&F-Mean = (J-Mean + F-Mean) / 2``.
- ``object_ids``: ``davis2017/davis.py``, ``DAVIS.get_all_masks``: objects 1..n, n the largest label of the first
  annotation, after void (255) is set to background.

Which frames are scored is the protocol's business (``cpfs.evaluation.davis``): the official semi-supervised
evaluation drops the first and the last frame of each sequence (``all_gt_masks[:, 1:-1]`` in ``evaluate``).

Departures, none with an effect on DAVIS data:
- Void pixels: the official functions take a void mask, but ``get_all_masks`` has set label 255 to background
  before the per-object masks are built, so in the semi-supervised evaluation the void mask never masks
  anything. Here there is no void argument; a void pixel of the ground truth counts as background, as there.
- ``decay_bins`` are integers; the official casts them to uint8, which wraps for sequences of over 256 frames
  (DAVIS's longest has 104).
- A ``tolerance`` of 1 or more is a radius in pixels and must be whole here: skimage's disk of a fractional
  radius is centred off the pixel grid.
- ``frame_statistics`` uses plain means where the official uses ``nanmean``: J and F are never NaN (their empty
  cases are numbers), and an empty series is an error here rather than a NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import cv2
import numpy as np

BOUNDARY_TOLERANCE = 0.008  # DAVIS (f_measure's bound_th): contour match tolerance as a fraction of the image diagonal
RECALL_THRESHOLD = 0.5  # db_statistics: a frame counts towards the recall O when its score is above this
DECAY_BINS = 4  # db_statistics: N_bins; the decay is the first bin's mean minus the last's
VOID_LABEL = 255  # davis2017 ``_VOID_LABEL``: unannotated pixels, background for every object


# -----------------------------------------------------------------------------------------------------------
# Per frame: J and F of one object


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask (H, W), got shape {mask.shape}")
    return mask.astype(bool)


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    return p, g


def region_similarity_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J = |pred ∩ gt| / |pred ∪ gt| of two binary ``(H, W)`` masks; 1 when both are empty
    (``db_eval_iou``: ``np.isclose(union, 0)``, for pixel counts the same as ``union == 0``)."""
    p, g = _pair(pred, gt)
    union = int(np.logical_or(p, g).sum())
    if union == 0:
        return 1.0
    return float(np.logical_and(p, g).sum() / union)


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """The one-pixel-wide boundary map of a binary ``(H, W)`` mask, ``_seg2bmap`` of davis2017 (after David
    Martin's Berkeley benchmark code): pixel (y, x) is a boundary pixel when its value differs from that of its
    east (y, x+1), south (y+1, x) or south-east (y+1, x+1) neighbour. In the last row only the east neighbour is
    compared, in the last column only the south one, and the bottom-right pixel is never a boundary: outside the
    image is not a neighbour, so the image border is not a contour. The boundary lies half a pixel towards the
    origin of the mask's edge: the pixels just outside the top and left edges, just inside the bottom and right.
    Returns a bool ``(H, W)`` array."""
    seg = _binary(mask, "mask")
    b = np.zeros_like(seg)
    core = seg[:-1, :-1]
    b[:-1, :-1] = (core != seg[:-1, 1:]) | (core != seg[1:, :-1]) | (core != seg[1:, 1:])
    b[-1, :-1] = seg[-1, :-1] != seg[-1, 1:]  # last row: the east neighbour only
    b[:-1, -1] = seg[:-1, -1] != seg[1:, -1]  # last column: the south neighbour only
    return b  # b[-1, -1] stays False


def disk(radius: int) -> np.ndarray:
    """skimage's ``morphology.disk(radius)`` as a bool ``(2r+1, 2r+1)`` array: the offsets (dy, dx) with
    ``dy^2 + dx^2 <= r^2``. (OpenCV's ``MORPH_ELLIPSE`` of the same size is larger, 213 pixels against 197 at
    r = 8: it holds (1, 8), which the disk does not.)"""
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"disk radius must be a whole number >= 0, got {radius!r}")
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def boundary_radius(shape: tuple[int, int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """``f_measure``'s ``bound_pix``: ``tolerance`` itself when >= 1 (pixels, whole), else
    ``ceil(tolerance * ||(H, W)||)``, the image diagonal's fraction rounded up (8 at 480 x 854, 2 at 100 x 100)."""
    if not tolerance > 0:
        raise ValueError(f"boundary tolerance must be > 0, got {tolerance}")
    if tolerance >= 1:
        if tolerance != int(tolerance):
            raise ValueError(f"a boundary tolerance >= 1 is a radius in pixels and must be whole, got {tolerance}")
        return int(tolerance)
    return int(np.ceil(tolerance * np.linalg.norm(shape)))


def _dilate(boundary: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # Binary dilation; OpenCV's default border for dilation adds nothing from outside the image.
    return cv2.dilate(boundary.astype(np.uint8), kernel.astype(np.uint8)) > 0


def boundary_precision_recall(pred: np.ndarray, gt: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> tuple[float, float]:
    """Boundary precision and recall of two binary ``(H, W)`` masks (``f_measure``; see the module docstring)."""
    p, g = _pair(pred, gt)
    pb, gb = seg2bmap(p), seg2bmap(g)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 or n_g == 0:
        return (1.0 if n_p == 0 else 0.0), (1.0 if n_g == 0 else 0.0)
    kernel = disk(boundary_radius(p.shape, tolerance))
    precision = int((pb & _dilate(gb, kernel)).sum()) / n_p
    recall = int((gb & _dilate(pb, kernel)).sum()) / n_g
    return precision, recall


def contour_accuracy_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """Contour accuracy F = 2PR / (P + R) of two binary ``(H, W)`` masks (``db_eval_boundary``; 0 when P + R = 0).

    ``tolerance`` < 1 is a fraction of the image diagonal (DAVIS: 0.008); >= 1 is a whole radius in pixels.
    """
    precision, recall = boundary_precision_recall(pred, gt, tolerance)
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def object_ids(first_gt: np.ndarray) -> list[int]:
    """The objects of a sequence, as ``get_all_masks`` counts them: 1..n, n the largest label of the first
    annotation, void (255) not counted."""
    labels = np.asarray(first_gt)
    n = int(labels[labels != VOID_LABEL].max(initial=0))
    if n <= 0:
        raise ValueError("the first annotation has no object to propagate")
    return list(range(1, n + 1))


# -----------------------------------------------------------------------------------------------------------
# Per object over frames, per sequence, per data set


@dataclass(frozen=True)
class Statistics:
    """``db_statistics`` of one object's per-frame values."""

    mean: float  # M: the mean over the scored frames
    recall: float  # O: the fraction of scored frames above RECALL_THRESHOLD
    decay: float  # D: the mean of the first of DECAY_BINS bins minus the mean of the last


def decay_bins(n: int) -> list[tuple[int, int]]:
    """The ``DECAY_BINS`` bins of ``n`` frames as ``[start, stop)`` ranges: with ``ids = round(linspace(1, n,
    5) + 1e-10) - 1`` (the 1e-10 rounds halves up, where ``np.round`` alone rounds them to even), bin i is frames
    ``ids[i]..ids[i+1]``, both ends included, so neighbouring bins share a frame (7 frames: 0-2, 2-3, 3-5, 5-6)."""
    if n < 1:
        raise ValueError(f"need at least one frame, got {n}")
    ids = (np.round(np.linspace(1, n, DECAY_BINS + 1) + 1e-10) - 1).astype(int)
    return [(int(ids[i]), int(ids[i + 1]) + 1) for i in range(DECAY_BINS)]


def frame_statistics(values: Sequence[float] | np.ndarray) -> Statistics:
    """Mean, recall and decay of one object's per-frame J (or F) over a sequence's scored frames, in order."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"need a non-empty 1-D series of per-frame values, got shape {x.shape}")
    bins = decay_bins(x.size)
    first, last = x[slice(*bins[0])], x[slice(*bins[-1])]
    return Statistics(float(x.mean()), float((x > RECALL_THRESHOLD).mean()), float(first.mean() - last.mean()))


def sequence_scores(j: np.ndarray, f: np.ndarray, objects: Sequence[int] | None = None) -> dict:
    """One sequence's scores from its per-object, per-frame J and F, both ``(n_objects, n_scored_frames)``.

    Returns ``{"J", "F", "J&F", "J_recall", "J_decay", "F_recall", "F_decay"}``, each the mean over the objects
    of their ``frame_statistics`` (J: the objects' mean J, J&F: (J + F) / 2), and ``"per_object": [{"object",
    "J", "F", "J&F", "J_recall", "J_decay", "F_recall", "F_decay"}, ...]``, the official per-object rows.
    """
    j, f = np.asarray(j, dtype=np.float64), np.asarray(f, dtype=np.float64)
    if j.ndim != 2 or j.shape != f.shape or j.size == 0:
        raise ValueError(f"need J and F of the same shape (n_objects, n_frames), non-empty; got {j.shape} and {f.shape}")
    labels = list(objects) if objects is not None else list(range(1, j.shape[0] + 1))
    if len(labels) != j.shape[0]:
        raise ValueError(f"{len(labels)} object labels for {j.shape[0]} objects")
    rows = []
    for k, jk, fk in zip(labels, j, f):
        sj, sf = frame_statistics(jk), frame_statistics(fk)
        rows.append({"object": int(k), "J": sj.mean, "F": sf.mean, "J&F": (sj.mean + sf.mean) / 2,
                     "J_recall": sj.recall, "J_decay": sj.decay, "F_recall": sf.recall, "F_decay": sf.decay})
    out = {key: float(np.mean([r[key] for r in rows])) for key in ("J", "F", "J_recall", "J_decay", "F_recall", "F_decay")}
    out["J&F"] = (out["J"] + out["F"]) / 2
    return {**out, "per_object": rows}


def dataset_scores(sequences: Mapping[str, Mapping] | Sequence[Mapping]) -> dict:
    """The data set's scores from ``sequence_scores`` results: every statistic is the mean over all objects of
    all sequences (``evaluation_method.py``), so a sequence with two objects weighs twice; ``JF_mean = (J_mean +
    F_mean) / 2``. Returns ``{"J_mean", "F_mean", "JF_mean", "J_recall", "J_decay", "F_recall", "F_decay",
    "J_std", "F_std", "JF_std", "n_objects"}``; the stds are over objects (of their means; J&F's of their
    (J + F) / 2)."""
    seqs = list(sequences.values()) if isinstance(sequences, Mapping) else list(sequences)
    rows = [r for s in seqs for r in s["per_object"]]
    if not rows:
        raise ValueError("no object scored")

    def col(key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=np.float64)

    j, f = col("J"), col("F")
    return {
        "J_mean": float(j.mean()), "F_mean": float(f.mean()), "JF_mean": float((j.mean() + f.mean()) / 2),
        **{key: float(col(key).mean()) for key in ("J_recall", "J_decay", "F_recall", "F_decay")},
        "J_std": float(j.std()), "F_std": float(f.std()), "JF_std": float(((j + f) / 2).std()),
        "n_objects": len(rows),
    }
