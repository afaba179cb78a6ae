"""Motion-segmentation probe on held-out video: can a linear read-out of one frame's features tell which
pixels move independently of the dominant motion?

Labels, from the stored flow of each pair (no annotation needed): the *dominant motion* is the per-frame
median flow ``m = (median u, median v)`` (camera motion or the static background when more than half the
frame moves together); a pixel is *independently moving* (label 1) when ``||f - m|| >= threshold`` px,
else it moves with the dominant motion (label 0). Departure from a hand-annotated benchmark: labels
inherit the flow's errors; ``threshold`` (default 1 px) sits above typical flow noise (~0.2-0.5 px EPE).

Probe: as ``cpfs.evaluation.segmentation`` -- frozen features, ``pixels_per_image`` training pixels per
pair, half from each class when both are present (independent motion is often a small part of a frame,
and an unbalanced sample teaches "never moving"), multinomial logistic regression, dense prediction of the
test pairs by upsampled logits. Train and test pairs come from different videos; a video listed in both
is split in time (its first half of selected pairs trains, the second half tests).
Scores: IoU of the "moving" class (``iou_moving``, the headline), mean IoU over both classes and pixel
accuracy, from the confusion matrix accumulated over all test pixels (``segmentation.mean_iou``); plus
``moving_fraction``, the share of moving pixels in the test labels (the score of "all moving" is about it).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from cpfs.evaluation.features import FeatureFn, features_at, upsample_features
from cpfs.evaluation.linear import LinearClassifier, fit_linear_classifier
from cpfs.evaluation.pairs import FramePair, PairStore, load_pair, select_pairs
from cpfs.evaluation.segmentation import class_map, confusion_matrix, mean_iou


def motion_labels(flow: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """``(H, W, 2)`` flow, px -> ``(H, W)`` int64: 1 where ``||f - median(f)|| >= threshold``, else 0."""
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (H, W, 2), got {flow.shape}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 px, got {threshold}")
    dominant = np.median(flow.reshape(-1, 2), axis=0)  # (2,)
    return (np.linalg.norm(flow - dominant, axis=-1) >= threshold).astype(np.int64)


def _split_pairs(store: PairStore, train_videos: Sequence[str], test_videos: Sequence[str], n: int) -> tuple[list, list]:
    train, test = [], []
    for vid in dict.fromkeys([*train_videos, *test_videos]):
        idx = select_pairs(store, vid, n)
        if vid in train_videos and vid in test_videos:
            if len(idx) < 2:
                raise ValueError(f"video {vid!r} is in both the training and test lists but has only {len(idx)} usable pair")
            half = len(idx) // 2
            train += [(vid, t) for t in idx[:half]]
            test += [(vid, t) for t in idx[half:]]
        elif vid in train_videos:
            train += [(vid, t) for t in idx]
        else:
            test += [(vid, t) for t in idx]
    return train, test


def _balanced_pick(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to n flat indices, half from each class present (the rest from the other class when one is short)."""
    flat = labels.ravel()
    pools = [np.flatnonzero(flat == c) for c in (0, 1)]
    pools = [p for p in pools if p.size]
    share = [n // len(pools)] * len(pools)
    if len(pools) == 2:  # give a short class's unused share to the other
        short = [max(0, s - p.size) for s, p in zip(share, pools)]
        share = [min(p.size, s + short[1 - i]) for i, (s, p) in enumerate(zip(share, pools))]
    return np.concatenate([rng.choice(p, size=min(s, p.size), replace=False) for s, p in zip(share, pools)])


def _fit(train: list, stride: int, pixels_per_image: int, seed: int, weight_decay: float, max_iter: int) -> LinearClassifier:
    """Classifier on balanced pixel samples of ``train``, a list of ``(pair, features, labels)``."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _, feat, labels in train:
        pick = _balanced_pick(labels, pixels_per_image, rng)
        width = labels.shape[1]
        pts = torch.from_numpy(np.stack([pick % width, pick // width], axis=-1)).unsqueeze(0)  # (1, n, 2) (x, y)
        xs.append(features_at(feat, stride, pts)[0])
        ys.append(torch.from_numpy(labels.ravel()[pick]))
    return fit_linear_classifier(torch.cat(xs), torch.cat(ys), 2, weight_decay=weight_decay, max_iter=max_iter)


def _prepare(feature_fn: FeatureFn, store: PairStore, vid: str, t: int, threshold: float) -> tuple[FramePair, torch.Tensor, np.ndarray]:
    pair = load_pair(store, vid, t)
    labels = motion_labels(pair.flow[0].permute(1, 2, 0).numpy(), threshold)
    return pair, feature_fn(pair.image, pair.flow).float(), labels


@torch.no_grad()
def fit_motion_classifier(
    feature_fn: FeatureFn,
    store: PairStore,
    videos: Sequence[str],
    *,
    pairs_per_video: int = 8,
    pixels_per_image: int = 512,
    threshold: float = 1.0,
    seed: int = 0,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> LinearClassifier:
    """The probe's classifier trained on ``videos`` (for figures: apply it with ``predict_motion_mask``)."""
    if not videos:
        raise ValueError("fit_motion_classifier needs at least one video")
    train = [_prepare(feature_fn, store, v, t, threshold) for v in videos for t in select_pairs(store, v, pairs_per_video)]
    return _fit(train, feature_fn.stride, pixels_per_image, seed, weight_decay, max_iter)


@torch.no_grad()
def motion_segmentation_probe(
    feature_fn: FeatureFn,
    store: PairStore,
    train_videos: Sequence[str],
    test_videos: Sequence[str],
    *,
    pairs_per_video: int = 8,
    pixels_per_image: int = 512,
    threshold: float = 1.0,
    seeds: Sequence[int] = (0,),
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> dict:
    """Train on pairs of ``train_videos``, score IoU on pairs of ``test_videos`` (see the module docstring).

    Returns:
        ``{"protocol": "motion_segmentation", "feature", "summary": {"IoU_moving", "mIoU", "pixel_acc":
        {"mean", "std"}}, "moving_fraction", "n_train_pairs", "n_test_pairs", "threshold", ...}``; std over seeds.
    """
    if not train_videos or not test_videos:
        raise ValueError("motion_segmentation_probe needs at least one training and one test video")
    if not seeds:
        raise ValueError("motion_segmentation_probe needs at least one seed")
    t0 = time.perf_counter()
    train_ids, test_ids = _split_pairs(store, train_videos, test_videos, pairs_per_video)
    if not train_ids or not test_ids:
        raise ValueError(f"no usable pairs: {len(train_ids)} for training, {len(test_ids)} for testing")

    train = [_prepare(feature_fn, store, v, t, threshold) for v, t in train_ids]
    test = [_prepare(feature_fn, store, v, t, threshold) for v, t in test_ids]
    stride = feature_fn.stride
    moving_fraction = float(np.mean(np.concatenate([lab.ravel() for _, _, lab in test])))
    scores = []
    per_pair_iou: list[list[float]] = []  # [seed][test pair]: IoU of the moving class in that pair alone
    for seed in seeds:
        clf = _fit(train, stride, pixels_per_image, seed, weight_decay, max_iter)
        conf = np.zeros((2, 2), dtype=np.int64)
        ious = []
        for _, feat, labels in test:
            c, hg, wg = feat.shape[1:]
            logits = clf.logits(feat[0].reshape(c, -1).T).T.reshape(1, 2, hg, wg)  # (1, 2, Hg, Wg)
            full = upsample_features(logits, stride, labels.shape)  # (1, 2, H, W)
            pair_conf = confusion_matrix(class_map(full[0]), labels, 2)
            conf += pair_conf
            union = pair_conf[1, :].sum() + pair_conf[:, 1].sum() - pair_conf[1, 1]
            ious.append(float(pair_conf[1, 1] / union) if union > 0 else 1.0)  # nothing moving, none predicted
        per_pair_iou.append(ious)
        miou = mean_iou(conf)
        iou_moving = miou["iou_per_class"][1]
        scores.append({"IoU_moving": 0.0 if iou_moving is None else iou_moving, "mIoU": miou["miou"], "pixel_acc": miou["pixel_accuracy"]})
    return {
        "protocol": "motion_segmentation",
        "feature": feature_fn.name,
        "summary": {k: {"mean": float(np.mean([s[k] for s in scores])), "std": float(np.std([s[k] for s in scores]))} for k in scores[0]},
        "per_seed": scores,
        # Each test pair's own IoU of the moving class under each seed's classifier, for paired comparisons.
        "per_pair": {"video_id": [v for v, _ in test_ids], "t": [int(t) for _, t in test_ids],
                     "IoU_moving": [list(x) for x in zip(*per_pair_iou)]},
        "moving_fraction": moving_fraction,
        "n_train_pairs": len(train),
        "n_test_pairs": len(test),
        "threshold": threshold,
        "pixels_per_image": pixels_per_image,
        "seeds": [int(s) for s in seeds],
        "seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def predict_motion_mask(feature_fn: FeatureFn, clf: LinearClassifier, image: torch.Tensor, flow: torch.Tensor | None = None) -> np.ndarray:
    """Dense prediction of a fitted motion classifier on one frame: ``(1, 3, H, W) -> (H, W)`` int64 (for figures)."""
    feat = feature_fn(image, flow).float()
    c, hg, wg = feat.shape[1:]
    logits = clf.logits(feat[0].reshape(c, -1).T).T.reshape(1, -1, hg, wg)
    return class_map(upsample_features(logits, feature_fn.stride, tuple(image.shape[-2:]))[0])
