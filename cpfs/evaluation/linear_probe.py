"""Layer-wise linear probes: how linearly separable are image classes in each frozen trunk layer?

Protocol of Zhang, Isola, Efros (ECCV 2016, "Colorful Image Colorization", Sec. 3.2) used for Table 2 of
the CPFS paper: the trunk is frozen; each of conv1..conv5 is average-pooled spatially to an ``s x s`` grid
chosen so that ``C * s * s`` is about 9,000 features; a linear (multinomial logistic) classifier is trained
on these features of a training split and its top-1 accuracy measured on held-out images.

Pooled grid: ``s = max(1, round(sqrt(9000 / C)))``. For the paper's AlexNet this reproduces Zhang et al.'s
choices exactly: conv1 96*10*10 = 9,600, conv2 256*6*6 = 9,216, conv3 384*5*5 = 9,600, conv4 384*5*5 =
9,600, conv5 256*6*6 = 9,216. With a width multiplier w the channels are ``max(1, round(C * w))`` (as
``cpfs.training.model.AlexNetTrunk``) and ``s`` follows from the same rule; e.g. w = 0.5: 48*14*14 = 9,408,
128*8*8 = 8,192, 192*7*7 = 9,408, 192*7*7, 128*8*8 (``pooled_feature_counts``). Pooling is
``adaptive_avg_pool2d``; a map smaller than ``s`` (small inputs) is repeated into the grid, which keeps the
feature count but adds no information. Departures: Zhang et al. fine-tuned nothing either but used
ImageNet's fixed train/val split; here a seeded stratified split of one ImageFolder is drawn per seed
(or an explicit held-out ImageFolder is used), and the classifier is fitted full-batch (``cpfs.evaluation.linear``).
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cpfs.evaluation.datasets import ImageFolderDataset, load_images, stratified_split
from cpfs.evaluation.linear import accuracy, fit_linear_classifier
from cpfs.training.model import ALEXNET_LAYERS, CONV_LAYERS, AlexNetTrunk

TARGET_FEATURES = 9000  # Zhang et al.'s budget of pooled features per layer


def pooled_grid_size(channels: int, target: int = TARGET_FEATURES) -> int:
    """Side ``s`` of the pooled grid of a ``channels``-deep layer: ``max(1, round(sqrt(target / channels)))``."""
    if channels < 1 or target < 1:
        raise ValueError(f"channels and target must be >= 1, got channels={channels}, target={target}")
    return max(1, int(round(math.sqrt(target / channels))))


def alexnet_channels(width: float = 1.0) -> dict[str, int]:
    """Channels of conv1..conv5 of ``AlexNetTrunk`` at width multiplier ``width``: ``max(1, round(C * width))``."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return {spec.name: max(1, int(round(spec.channels * width))) for spec in ALEXNET_LAYERS if spec.name in CONV_LAYERS}


def pooled_feature_counts(width: float = 1.0, target: int = TARGET_FEATURES) -> dict[str, int]:
    """Features per layer after pooling, ``C * s * s``; width 1.0 gives conv1 9600, conv2 9216, conv3 9600,
    conv4 9600, conv5 9216 (see the module docstring)."""
    return {name: c * pooled_grid_size(c, target) ** 2 for name, c in alexnet_channels(width).items()}


def pool_layer(fmap: Tensor, target: int = TARGET_FEATURES) -> Tensor:
    """``(B, C, h, w) -> (B, C * s * s)``: adaptive average pooling to ``s x s``, ``s = pooled_grid_size(C)``."""
    if fmap.dim() != 4:
        raise ValueError(f"feature map must have shape (B, C, h, w), got {tuple(fmap.shape)}")
    s = pooled_grid_size(fmap.shape[1], target)
    return F.adaptive_avg_pool2d(fmap, s).flatten(1)


@torch.no_grad()
def extract_pooled_features(
    trunk: AlexNetTrunk,
    dataset: ImageFolderDataset,
    layers: Sequence[str] = CONV_LAYERS,
    *,
    image_size: tuple[int, int] = (64, 64),
    batch_size: int = 64,
    target: int = TARGET_FEATURES,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Pooled features of every image: ``{layer: (N, C * s * s) float32}`` (trunk frozen, eval mode)."""
    if not layers:
        raise ValueError("extract_pooled_features needs at least one layer")
    was_training = trunk.training
    trunk.eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    try:
        for start in range(0, len(dataset), batch_size):
            images = torch.from_numpy(load_images(dataset.paths[start : start + batch_size], image_size)).to(device)
            maps = trunk.features(images, layers)
            for name in layers:
                out[name].append(pool_layer(maps[name].float(), target).cpu().numpy())
    finally:
        trunk.train(was_training)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def linear_probe(
    trunk: AlexNetTrunk,
    dataset: ImageFolderDataset,
    layers: Sequence[str] = CONV_LAYERS,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    heldout: ImageFolderDataset | None = None,
    train_fraction: float = 0.7,
    image_size: tuple[int, int] = (64, 64),
    weight_decay: float = 1e-3,
    max_iter: int = 200,
    batch_size: int = 64,
    target: int = TARGET_FEATURES,
    device: str | torch.device = "cpu",
    shuffle_labels: bool = False,
) -> dict:
    """Top-1 accuracy of a linear classifier on each layer's pooled features, mean and std over ``seeds``.

    Without ``heldout``, each seed draws a stratified ``train_fraction`` split of ``dataset``; with it,
    ``dataset`` is the training set and ``heldout`` the test set for every seed (the seed then changes
    nothing, since the fit is deterministic). ``shuffle_labels`` permutes the training labels (seeded): a
    sanity control that must give chance accuracy.

    Returns:
        ``{"protocol": "linear_probe", "layers": {layer: {"mean", "std", "per_seed", "features"}},
        "summary": {layer: {"mean", "std"}}, "num_classes", "chance", "n_train", "n_test", "image_size",
        "seeds", "seconds"}``; accuracies in [0, 1].
    """
    layers = tuple(layers)
    if not seeds:
        raise ValueError("linear_probe needs at least one seed")
    if heldout is not None and heldout.classes != dataset.classes:
        raise ValueError(f"held-out classes {heldout.classes} differ from training classes {dataset.classes}")
    t0 = time.perf_counter()
    feats = extract_pooled_features(trunk, dataset, layers, image_size=image_size, batch_size=batch_size, target=target, device=device)
    held_feats = (
        extract_pooled_features(trunk, heldout, layers, image_size=image_size, batch_size=batch_size, target=target, device=device)
        if heldout is not None
        else None
    )
    per_layer: dict[str, list[float]] = {name: [] for name in layers}
    n_train = n_test = 0
    for seed in seeds:
        if held_feats is None:
            train_idx, test_idx = stratified_split(dataset.labels, train_fraction, seed)
        else:
            train_idx, test_idx = np.arange(len(dataset)), np.arange(len(heldout))  # type: ignore[arg-type]
        y_train = dataset.labels[train_idx]
        if shuffle_labels:
            y_train = np.random.default_rng(seed + 10_007).permutation(y_train)
        y_test = (heldout.labels if heldout is not None else dataset.labels)[test_idx]
        n_train, n_test = len(train_idx), len(test_idx)
        for name in layers:
            x_test = (held_feats[name] if held_feats is not None else feats[name])[test_idx]
            clf = fit_linear_classifier(feats[name][train_idx], y_train, dataset.num_classes, weight_decay=weight_decay, max_iter=max_iter)
            pred = clf.predict(torch.from_numpy(x_test)).numpy()
            per_layer[name].append(accuracy(pred, y_test))
    results = {
        name: {
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs)),
            "per_seed": [float(a) for a in accs],
            "features": int(feats[name].shape[1]),
        }
        for name, accs in per_layer.items()
    }
    return {
        "protocol": "linear_probe",
        "layers": results,
        "summary": {name: {"mean": r["mean"], "std": r["std"]} for name, r in results.items()},
        "num_classes": dataset.num_classes,
        "chance": 1.0 / dataset.num_classes,
        "n_train": n_train,
        "n_test": n_test,
        "image_size": list(image_size),
        "seeds": [int(s) for s in seeds],
        "shuffle_labels": shuffle_labels,
        "seconds": time.perf_counter() - t0,
    }
