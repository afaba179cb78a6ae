# Frozen copy of cpfs/evaluation/davis.py at commit ac4bc53 (the first implementation), kept for bench/davis_speed.py.
"""Video object segmentation by label propagation in a frozen network's feature space (DAVIS protocol).

Protocol (Wang, Jabri, Efros 2019, "Learning Correspondence from the Cycle-Consistency of Time"; Jabri,
Owens, Efros 2020, "Space-Time Correspondence as a Contrastive Random Walk"): only the first frame's mask
is given. Every frame is resized (``size``) and mapped to per-pixel features on a grid (``FeatureFn``),
For frame t, the *references* are frame 0 (ground-truth labels) and the ``n_context`` previous frames
(their propagated soft labels). Each query cell q of frame t takes the ``topk`` reference cells r with the
highest affinity ``a(q, r) = -||f_q - f_r||^2 / (2 temperature)`` among those within ``radius`` grid cells
of q (Euclidean, same grid position in every reference frame), and

    ``label_t(q) = sum_{r in topk(q)} softmax_r(a(q, r)) * label_ref(r)``,

a soft label (a distribution over background and objects). For unit-length features (CPFS embeddings,
``hypercolumn_features``) ``a(q, r) = <f_q, f_r> / temperature - 1 / temperature``, and the constant
cancels in the softmax: this is exactly the cosine-affinity rule of the papers above. Features are not
re-normalised here, because for the baselines (position, colour) the length carries the information. The soft label is kept for later frames;
the prediction is its bilinear upsampling to the full annotation resolution, then an argmax.

Scores, as the DAVIS benchmark (Perazzi et al. 2016; davis2017-evaluation):
- ``region_similarity_j``: mask IoU; an empty prediction of an empty ground truth scores 1.
- ``contour_accuracy_f``: boundary F-measure. Boundaries are the internal morphological gradient
  (mask minus its 3x3 erosion, image borders not counted as contours: one-pixel-thick contours like
  DAVIS's ``seg2bmap``); a boundary pixel is matched when the other mask's boundary lies within
  ``ceil(0.008 * image diagonal)`` px (a disk); precision = matched predicted / predicted boundary
  pixels, recall = matched true / true boundary pixels, ``F = 2PR / (P + R)``. Both boundaries empty: 1;
  exactly one empty: 0.
Per sequence, J and F are averaged over objects and over frames 1..T-1 (the given first frame is not
scored; departure: the official evaluation also drops the last frame, which matters little and would
waste one of the few frames of a short test). The data-set score is the mean over sequences.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cpfs.evaluation.datasets import list_davis_sequences, load_image, load_mask, read_davis_sequence
from cpfs.evaluation.features import FeatureFn, compute_features, grid_size, upsample_features

BOUNDARY_TOLERANCE = 0.008  # DAVIS: contour match tolerance as a fraction of the image diagonal


# -----------------------------------------------------------------------------------------------------------
# Scores


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask (H, W), got shape {mask.shape}")
    return mask.astype(bool)


def region_similarity_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J = |pred ∩ gt| / |pred ∪ gt| of two binary ``(H, W)`` masks; 1 when both are empty."""
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    union = np.logical_or(p, g).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(p, g).sum() / union)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """One-pixel-thick boundary of a binary mask: ``mask & ~erode(mask, 3x3)`` (borders replicated)."""
    m = _binary(mask, "mask").astype(np.uint8)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return (m > 0) & (eroded == 0)


def contour_accuracy_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """Contour accuracy F (boundary F-measure) of two binary ``(H, W)`` masks (see the module docstring).

    ``tolerance`` < 1 is a fraction of the image diagonal (DAVIS: 0.008); >= 1 is a radius in pixels.
    """
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    radius = int(math.ceil(tolerance * math.hypot(*p.shape))) if tolerance < 1 else int(round(tolerance))
    pb, gb = mask_boundary(p), mask_boundary(g)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    g_dil = cv2.dilate(gb.astype(np.uint8), disk) > 0
    p_dil = cv2.dilate(pb.astype(np.uint8), disk) > 0
    precision = float((pb & g_dil).sum()) / n_p
    recall = float((gb & p_dil).sum()) / n_g
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


# -----------------------------------------------------------------------------------------------------------
# Label propagation


def labels_to_grid(mask: np.ndarray, num_labels: int, image_size: tuple[int, int], stride: int) -> Tensor:
    """Full-resolution integer mask -> soft one-hot labels on the feature grid, ``(K, Hg, Wg)``.

    The one-hot mask is area-resampled to the ``image_size`` the features saw, box-averaged over a
    ``stride``-wide window and read at the grid pixels ``(j * stride, i * stride)``.
    """
    onehot = F.one_hot(torch.from_numpy(np.asarray(mask, dtype=np.int64)), num_labels).permute(2, 0, 1).float()  # (K, H, W)
    small = F.adaptive_avg_pool2d(onehot.unsqueeze(0), image_size)  # (1, K, h, w): area resampling
    if stride > 1:
        k = stride + 1 - stride % 2  # odd window so it is centred on the grid pixel
        small = F.avg_pool2d(small, k, stride=1, padding=k // 2, count_include_pad=False)
    out = small[0, :, ::stride, ::stride]
    if tuple(out.shape[-2:]) != grid_size(image_size, stride):
        raise AssertionError("grid size mismatch")  # cannot happen: slicing gives ceil(n / stride)
    return out / out.sum(0, keepdim=True).clamp_min(1e-8)


def propagate_labels(
    features: Tensor,
    first_labels: Tensor,
    *,
    n_context: int = 5,
    topk: int = 10,
    temperature: float = 0.07,
    radius: float = 12.0,
    chunk: int = 2048,
) -> Tensor:
    """Propagate soft labels from frame 0 through a sequence (see the module docstring for the rule).

    Args:
        features: ``(T, C, Hg, Wg)`` per-frame features (used as they are: see the affinity above).
        first_labels: ``(K, Hg, Wg)`` soft labels of frame 0 (each cell sums to 1).
        n_context: previous frames used as references besides frame 0.
        topk: neighbours per query cell.
        temperature: softmax temperature of the affinities.
        radius: spatial window in grid cells (Euclidean); ``inf`` for none.
        chunk: query cells per affinity block (bounds memory at ``chunk * refs * Hg * Wg`` floats).
    Returns:
        ``(T, K, Hg, Wg)`` soft labels; frame 0 is ``first_labels``.
    """
    if features.dim() != 4 or first_labels.dim() != 3 or features.shape[-2:] != first_labels.shape[-2:]:
        raise ValueError(f"need features (T, C, Hg, Wg) and first_labels (K, Hg, Wg) on the same grid, got {tuple(features.shape)} and {tuple(first_labels.shape)}")
    if n_context < 0 or topk < 1 or not temperature > 0 or not radius >= 0:
        raise ValueError(f"need n_context >= 0, topk >= 1, temperature > 0, radius >= 0; got {n_context}, {topk}, {temperature}, {radius}")
    t_len, c, hg, wg = features.shape
    n = hg * wg
    feats = features.float().reshape(t_len, c, n).transpose(1, 2)  # (T, n, C)
    ys, xs = torch.meshgrid(torch.arange(hg), torch.arange(wg), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1).float()  # (n, 2)
    labels = [first_labels.float().reshape(first_labels.shape[0], n).T]  # per frame (n, K)
    for t in range(1, t_len):
        refs = sorted({0, *range(max(1, t - n_context), t)})
        keys = torch.cat([feats[r] for r in refs])  # (R*n, C)
        key_sq = keys.square().sum(1)  # (R*n,)
        values = torch.cat([labels[r] for r in refs])  # (R*n, K)
        out = []
        for start in range(0, n, chunk):
            q = feats[t, start : start + chunk]  # (Q, C)
            # -||q - k||^2 / 2T without the per-query ||q||^2 (the softmax cancels it): (2 q.k - ||k||^2) / 2T
            aff = (2.0 * (q @ keys.T) - key_sq) / (2.0 * temperature)  # (Q, R*n)
            if math.isfinite(radius):
                dist = torch.cdist(pos[start : start + chunk], pos)  # (Q, n)
                far = (dist > radius).repeat(1, len(refs))  # (Q, R*n): same grid position in every reference
                aff = aff.masked_fill(far, float("-inf"))
            k = min(topk, aff.shape[1])
            top, idx = aff.topk(k, dim=1)  # (Q, k)
            weights = torch.softmax(top, dim=1)  # -inf entries (outside the window) get weight 0
            out.append((weights.unsqueeze(-1) * values[idx]).sum(1))  # (Q, K)
        labels.append(torch.cat(out))
    return torch.stack([lab.T.reshape(-1, hg, wg) for lab in labels])  # (T, K, Hg, Wg)


def resized_size(full_size: tuple[int, int], size: int | tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` the feature source sees: ``size`` as (H, W), or an int short side keeping the aspect ratio."""
    if isinstance(size, int):
        h, w = full_size
        scale = size / min(h, w)
        return max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    return int(size[0]), int(size[1])


# -----------------------------------------------------------------------------------------------------------
# The protocol


@torch.no_grad()
def segment_sequence(
    feature_fn: FeatureFn,
    frames: Sequence[Path],
    masks: Sequence[Path],
    size: int | tuple[int, int],
    *,
    n_context: int = 5,
    topk: int = 10,
    temperature: float = 0.07,
    radius: float = 12.0,
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Propagate the first mask through ``frames``; returns ``(pred, gt)``, both ``(T, H, W)`` int64 at full res."""
    gt = np.stack([load_mask(p) for p in masks])  # (T, H, W)
    full = gt.shape[1:]
    small = resized_size(full, size)
    images = torch.from_numpy(np.stack([load_image(p, small) for p in frames]))  # (T, 3, h, w)
    feats = compute_features(feature_fn, images, batch_size=batch_size)  # (T, C, Hg, Wg)
    num_labels = int(gt[0].max()) + 1
    first = labels_to_grid(gt[0], max(num_labels, 2), small, feature_fn.stride)
    soft = propagate_labels(feats, first, n_context=n_context, topk=topk, temperature=temperature, radius=radius)
    pred = np.empty_like(gt)
    pred[0] = gt[0]
    for t in range(1, len(frames)):
        up = upsample_features(soft[t : t + 1], feature_fn.stride, full, source_size=small)  # (1, K, H, W)
        pred[t] = up[0].argmax(0).numpy()
    return pred, gt


def score_sequence(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Mean J and F over the objects of frame 0 and frames 1..T-1 of one sequence."""
    objects = [k for k in np.unique(gt[0]).tolist() if k != 0]
    if not objects:
        raise ValueError("the first annotation has no object to propagate")
    js, fs = [], []
    for t in range(1, len(gt)):
        for k in objects:
            js.append(region_similarity_j(pred[t] == k, gt[t] == k))
            fs.append(contour_accuracy_f(pred[t] == k, gt[t] == k))
    j, f = float(np.mean(js)), float(np.mean(fs))
    return {"J": j, "F": f, "J&F": (j + f) / 2, "n_frames": int(len(gt)), "n_objects": len(objects)}


def davis_protocol(
    feature_fn: FeatureFn,
    davis_root: str | Path,
    sequences: Sequence[str] | None = None,
    size: int | tuple[int, int] = 240,
    *,
    max_frames: int | None = None,
    resolution: str = "480p",
    n_context: int = 5,
    topk: int = 10,
    temperature: float = 0.07,
    radius: float = 12.0,
) -> dict:
    """J and F of label propagation on DAVIS sequences (all under ``davis_root`` when ``sequences`` is None).

    ``size``: the frames' size for the feature source (int: short side; (H, W): exact); scores are at the
    annotations' full resolution. ``max_frames`` keeps the first frames of each sequence (smoke tests).

    Returns:
        ``{"protocol": "davis", "feature", "sequences": {name: {"J", "F", "J&F", "n_frames", "n_objects"}},
        "J_mean", "F_mean", "JF_mean", "summary": {"J", "F", "J&F": {"mean", "std"}}, parameters...}``;
        std is over sequences.
    """
    t0 = time.perf_counter()
    names = list(sequences) if sequences is not None else list_davis_sequences(davis_root, resolution)
    if not names:
        raise ValueError(f"{davis_root}: no DAVIS sequence to evaluate")
    if max_frames is not None and max_frames < 2:
        raise ValueError(f"max_frames must be >= 2, got {max_frames}")
    per_seq = {}
    for name in names:
        seq = read_davis_sequence(davis_root, name, resolution)
        stop = len(seq) if max_frames is None else min(max_frames, len(seq))
        pred, gt = segment_sequence(
            feature_fn, seq.frame_paths[:stop], seq.mask_paths[:stop], size,
            n_context=n_context, topk=topk, temperature=temperature, radius=radius,
        )
        per_seq[name] = score_sequence(pred, gt)
    j = [s["J"] for s in per_seq.values()]
    f = [s["F"] for s in per_seq.values()]
    jf = [s["J&F"] for s in per_seq.values()]
    return {
        "protocol": "davis",
        "feature": feature_fn.name,
        "sequences": per_seq,
        "J_mean": float(np.mean(j)),
        "F_mean": float(np.mean(f)),
        "JF_mean": float(np.mean(jf)),
        "summary": {
            "J": {"mean": float(np.mean(j)), "std": float(np.std(j))},
            "F": {"mean": float(np.mean(f)), "std": float(np.std(f))},
            "J&F": {"mean": float(np.mean(jf)), "std": float(np.std(jf))},
        },
        "size": list(size) if isinstance(size, tuple) else size,
        "max_frames": max_frames,
        "n_context": n_context,
        "topk": topk,
        "temperature": temperature,
        "radius": radius,
        "seconds": time.perf_counter() - t0,
    }
