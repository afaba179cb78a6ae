"""Semantic segmentation probe: a per-pixel linear classifier on frozen features, scored by mean IoU.

Protocol: the feature source (a frozen trunk's hypercolumns, a CPFS embedding, a baseline) is computed on
each training image resized to ``image_size``; ``pixels_per_image`` labelled pixels (label != 255) are
sampled per image (seeded) and their feature vectors (bilinear between grid cells) train a multinomial
logistic regression (``cpfs.evaluation.linear``). On validation images the classifier is applied to every
grid cell and its *logits* are upsampled bilinearly to the mask's full resolution before the argmax.
Because the classifier is affine, this equals classifying bilinearly upsampled features, at a fraction of
the memory. Scores: ``confusion_matrix`` accumulated over all validation pixels, then ``mean_iou``.

Mean IoU convention (as Pascal VOC's devkit, over the whole data set): per class
``IoU_k = TP_k / (TP_k + FP_k + FN_k)`` from the accumulated confusion matrix; a class with
``TP + FP + FN = 0`` (absent from every ground truth and every prediction) has no IoU (None) and is
excluded from the mean; a class that is predicted but never present scores 0 and counts. Pixels labelled
``ignore_index`` (255, VOC's "void") count for nothing.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cpfs.evaluation.datasets import IGNORE_INDEX, SegmentationDataset, load_image, load_mask
from cpfs.evaluation.features import FeatureFn, features_at, upsample_features
from cpfs.evaluation.linear import fit_linear_classifier


def class_map(logits: torch.Tensor) -> np.ndarray:
    """``(K, H, W)`` logits -> ``(H, W)`` int64 index of the largest, the first one on a tie: ``argmax(0)``.

    A running comparison: torch's ``argmax`` over a leading axis walks memory with a stride of H * W; it was
    ~300 times slower on DAVIS's 480p frames and ~34 ms a 256 x 340 frame for K = 2 in the motion probe (a
    tenth of its time, bench/eval_profile.py). Used by every dense protocol (VOC, motion probe, DAVIS)."""
    if logits.dim() != 3 or logits.shape[0] < 1:
        raise ValueError(f"logits must have shape (K, H, W), got {tuple(logits.shape)}")
    best = logits[0].clone()
    index = torch.zeros(best.shape, dtype=torch.int64)
    for k in range(1, logits.shape[0]):
        higher = logits[k] > best  # strictly: a tie keeps the earlier class, as argmax does
        index.masked_fill_(higher, k)
        torch.maximum(best, logits[k], out=best)
    return index.numpy()


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``C[t, p]`` = number of pixels with ground truth t predicted as p (pixels with ``ignore_index`` skipped).

    Args:
        pred: integer predictions in [0, num_classes), any shape.
        target: integer labels of the same shape, in [0, num_classes) or ``ignore_index``.
    Returns:
        ``(num_classes, num_classes)`` int64.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    keep = target != ignore_index
    t = target[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target labels must lie in [0, {num_classes}) or equal {ignore_index}, got range [{t.min()}, {t.max()}]")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predictions must lie in [0, {num_classes}), got range [{p.min()}, {p.max()}]")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(conf: np.ndarray) -> dict:
    """IoU per class and their mean from a confusion matrix (rows: ground truth, columns: prediction).

    ``IoU_k = C[k, k] / (sum_p C[k, p] + sum_t C[t, k] - C[k, k])``; classes with a zero denominator (absent
    from ground truth and prediction) get None and are left out of ``miou`` (see the module docstring).

    Returns:
        ``{"miou", "iou_per_class" (list, None for absent classes), "pixel_accuracy", "classes_counted"}``;
        ``miou`` is NaN only when no class is counted (an all-ignored input).
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {conf.shape}")
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    present = denom > 0
    iou = np.where(present, tp / np.where(present, denom, 1.0), np.nan)
    total = conf.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "iou_per_class": [float(v) if ok else None for v, ok in zip(iou, present)],
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "classes_counted": int(present.sum()),
    }


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer mask to ``(H, W)`` (labels are never blended)."""
    if mask.shape == size:
        return mask
    im = Image.fromarray(mask.astype(np.int32))
    return np.asarray(im.resize((size[1], size[0]), Image.NEAREST)).astype(np.int64)


def _image_tensor(path, size: tuple[int, int] | None) -> torch.Tensor:
    return torch.from_numpy(load_image(path, size)).unsqueeze(0)  # (1, 3, H, W)


@torch.no_grad()
def segmentation_probe(
    feature_fn: FeatureFn,
    train: SegmentationDataset,
    val: SegmentationDataset,
    num_classes: int,
    *,
    image_size: tuple[int, int] | None = (128, 128),
    pixels_per_image: int = 500,
    seeds: Sequence[int] = (0,),
    weight_decay: float = 1e-3,
    max_iter: int = 200,
    ignore_index: int = IGNORE_INDEX,
    keep_confusions: bool = False,
) -> dict:
    """Train a per-pixel linear classifier on ``train``, report mean IoU on ``val`` (see the module docstring).

    ``image_size = (H, W)`` is the size the feature source sees (None: each image's own size); masks are
    scored at their full resolution. Features of all images are computed once; each seed draws its own
    training pixels. ``keep_confusions`` adds ``"confusions"``: int64 ``(n_val, n_seeds, K, K)``, each
    validation image's own confusion matrix under each seed's classifier (for a bootstrap over images).

    Returns:
        ``{"protocol": "segmentation", "feature", "miou" {"mean", "std", "per_seed"}, "pixel_accuracy"
        {"mean", "std"}, "iou_per_class" (of the first seed), "summary", "num_classes", ...}``.
    """
    if pixels_per_image < 1:
        raise ValueError(f"pixels_per_image must be >= 1, got {pixels_per_image}")
    if not seeds:
        raise ValueError("segmentation_probe needs at least one seed")
    t0 = time.perf_counter()
    stride = feature_fn.stride
    # Training images: features on the grid and the mask at the same size (nearest).
    train_feats, train_masks = [], []
    for image_path, mask_path in zip(train.image_paths, train.mask_paths):
        image = _image_tensor(image_path, image_size)
        mask = _resize_mask(load_mask(mask_path), tuple(image.shape[-2:]))
        train_feats.append(feature_fn(image).float())  # (1, C, Hg, Wg)
        train_masks.append(mask)
    val_feats = []
    for image_path, mask_path in zip(val.image_paths, val.mask_paths):
        image = _image_tensor(image_path, image_size)
        val_feats.append((feature_fn(image).float(), tuple(image.shape[-2:])))

    mious, accs, first = [], [], None
    per_image = np.zeros((len(val), len(seeds), num_classes, num_classes), dtype=np.int64)
    for k, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        for feat, mask in zip(train_feats, train_masks):
            labelled = np.flatnonzero(mask.ravel() != ignore_index)
            if labelled.size == 0:
                continue
            pick = rng.choice(labelled, size=min(pixels_per_image, labelled.size), replace=False)
            width = mask.shape[1]
            points = torch.from_numpy(np.stack([pick % width, pick // width], axis=-1)).unsqueeze(0)  # (1, n, 2) (x, y)
            xs.append(features_at(feat, stride, points)[0])  # (n, C)
            ys.append(torch.from_numpy(mask.ravel()[pick]))
        if not xs:
            raise ValueError(f"{train.root}: no labelled pixel in the training split")
        clf = fit_linear_classifier(torch.cat(xs), torch.cat(ys), num_classes, weight_decay=weight_decay, max_iter=max_iter)
        for i, ((feat, src_size), mask_path) in enumerate(zip(val_feats, val.mask_paths)):
            target = load_mask(mask_path)
            c, hg, wg = feat.shape[1:]
            logits = clf.logits(feat[0].reshape(c, -1).T).T.reshape(1, -1, hg, wg)  # (1, K, Hg, Wg)
            full = upsample_features(logits, stride, target.shape, source_size=src_size)  # (1, K, H, W)
            per_image[i, k] = confusion_matrix(class_map(full[0]), target, num_classes, ignore_index)
        scores = mean_iou(per_image[:, k].sum(0))
        first = first or scores
        mious.append(scores["miou"])
        accs.append(scores["pixel_accuracy"])
    return {
        "protocol": "segmentation",
        "feature": feature_fn.name,
        "miou": {"mean": float(np.mean(mious)), "std": float(np.std(mious)), "per_seed": [float(m) for m in mious]},
        "pixel_accuracy": {"mean": float(np.mean(accs)), "std": float(np.std(accs))},
        "iou_per_class": first["iou_per_class"] if first else [],
        "summary": {
            "mIoU": {"mean": float(np.mean(mious)), "std": float(np.std(mious))},
            "pixel_acc": {"mean": float(np.mean(accs)), "std": float(np.std(accs))},
        },
        "num_classes": num_classes,
        "n_train_images": len(train),
        "n_val_images": len(val),
        "pixels_per_image": pixels_per_image,
        "image_size": list(image_size) if image_size else None,
        "seeds": [int(s) for s in seeds],
        "seconds": time.perf_counter() - t0,
        **({"confusions": per_image} if keep_confusions else {}),
    }
