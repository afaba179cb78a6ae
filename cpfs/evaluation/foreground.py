"""Foreground/background probe on DAVIS: a per-pixel linear classifier on frozen features, fitted on the masks
of one DAVIS-layout root (``davis-train``) and scored on another's (``davis``), never on the same sequences.

It is the VOC segmentation probe (``cpfs.evaluation.segmentation.segmentation_probe``) with two classes
(0 background, 1 the annotated moving object) at the scale of the data we have, run with the same machinery:

- Frames: every ``step``-th frame of each sequence (frames 0, step, 2 step, ...) of both roots, with its
  ground-truth mask (DAVIS 2016: binary 0/255, read as 0/1 by ``datasets.load_mask``).
- Features: each frame resized to ``size`` px on its short side, aspect kept (the exact ``(H, W)`` is computed
  from the first fitted frame and used for every frame: DAVIS 480p frames are all 854 x 480; a frame of
  another shape would be stretched to it), mapped to a feature grid by the ``FeatureFn``.
- Fit: ``pixels_per_image`` pixels per fitted frame drawn uniformly (seeded; not class-balanced, as the VOC
  probe) train a 2-class logistic regression (``cpfs.evaluation.linear``); one classifier per seed.
- Score: on each test frame the classifier's logits are upsampled bilinearly to the **annotation's full
  resolution** (480p) before the argmax, exactly as ``segmentation_probe`` does; the confusion matrix is
  accumulated over every pixel of every test frame (VOC convention, ``segmentation.mean_iou``).
  ``mIoU = (IoU_background + IoU_foreground) / 2`` of that pooled matrix; ``IoU_fg`` is the foreground
  class's alone (the harder number: background is most of a frame, so "all background" already scores
  ``mIoU = background fraction / 2``).
- Layers: with ``channels`` (a name -> slice of the feature's channels, e.g. each layer of a hypercolumn), the
  probe is run on the whole feature (the headline) and on each slice; features are computed once per frame.

``check_apart`` refuses a fit root that is the evaluation root or shares a sequence name with it: the
evaluation sequences must never be fitted on, or the score means nothing.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from cpfs.evaluation.context import memoize_features
from cpfs.evaluation.datasets import SegmentationDataset, list_davis_sequences, read_davis_sequence
from cpfs.evaluation.davis import resized_size
from cpfs.evaluation.features import FeatureFn
from cpfs.evaluation.segmentation import mean_iou, segmentation_probe

NUM_CLASSES = 2  # 0 background, 1 foreground (the annotated object)


def sequence_of(frame_id: str) -> str:
    """The sequence of a frame id ``"<sequence>/<frame>"`` of ``read_davis_frames``."""
    return frame_id.rsplit("/", 1)[0]


def read_davis_frames(root: str | Path, sequences: Sequence[str] | None = None, step: int = 1,
                      resolution: str = "480p") -> SegmentationDataset:
    """Every ``step``-th frame (0, step, 2 step, ...) of each of ``sequences`` (None: every one) of a DAVIS
    root with its mask, as a ``SegmentationDataset`` whose ids are ``"<sequence>/<frame stem>"``.

    Raises:
        FileNotFoundError / ValueError: the layout is wrong (``datasets.read_davis_sequence`` names the path),
        no sequence, or ``step`` < 1.
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    names = list(sequences) if sequences is not None else list_davis_sequences(root, resolution)
    if not names:
        raise ValueError(f"{Path(root) / 'JPEGImages' / resolution}: no DAVIS sequence folders")
    ids, images, masks = [], [], []
    for name in names:
        seq = read_davis_sequence(root, name, resolution)
        for frame, mask in zip(seq.frame_paths[::step], seq.mask_paths[::step]):
            ids.append(f"{name}/{frame.stem}")
            images.append(frame)
            masks.append(mask)
    return SegmentationDataset(Path(root), tuple(ids), tuple(images), tuple(masks))


def check_apart(fit_root: str | Path, test_root: str | Path, fit_sequences: Sequence[str],
                test_sequences: Sequence[str]) -> None:
    """Refuse to fit where the probe is scored: the same folder, or a sequence name in both.

    Raises:
        ValueError: naming both roots (and the shared sequences).
    """
    fit, test = Path(fit_root).expanduser().resolve(), Path(test_root).expanduser().resolve()
    if fit == test:
        raise ValueError(f"foreground probe: the fit root {fit_root} and the evaluation root {test_root} are the "
                         "same folder; fit on other sequences (davis-train), never on the ones it is scored on")
    shared = sorted(set(fit_sequences) & set(test_sequences))
    if shared:
        raise ValueError(f"foreground probe: the fit root {fit_root} and the evaluation root {test_root} share "
                         f"sequence(s) {', '.join(shared)}; the evaluation sequences must never be fitted on")


def foreground_split(fit_root: str | Path, test_root: str | Path, *, step: int,
                     test_sequences: Sequence[str] | None = None) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The probe's fit frames (every sequence of ``fit_root``) and test frames (``test_sequences`` of
    ``test_root``, None: every one), every ``step``-th frame of each, after ``check_apart``."""
    fit_names = list_davis_sequences(fit_root)
    test_names = list(test_sequences) if test_sequences is not None else list_davis_sequences(test_root)
    check_apart(fit_root, test_root, fit_names, test_names)
    return read_davis_frames(fit_root, fit_names, step), read_davis_frames(test_root, test_names, step)


def layer_channels(channels: Mapping[str, int], layers: Sequence[str]) -> dict[str, slice]:
    """Where each layer sits in a hypercolumn of ``layers`` (concatenated in that order): name -> slice."""
    out, start = {}, 0
    for name in layers:
        out[name] = slice(start, start + int(channels[name]))
        start += int(channels[name])
    return out


def pooled_scores(confusions: np.ndarray) -> list[dict[str, float]]:
    """Per seed, from ``(n_frames, n_seeds, 2, 2)`` confusion matrices pooled over the frames: ``{"mIoU",
    "IoU_fg", "pixel_acc"}`` (``IoU_fg`` NaN when no frame has foreground in truth or prediction)."""
    out = []
    for k in range(confusions.shape[1]):
        s = mean_iou(confusions[:, k].sum(0))
        fg = s["iou_per_class"][1]
        out.append({"mIoU": s["miou"], "IoU_fg": float("nan") if fg is None else fg, "pixel_acc": s["pixel_accuracy"]})
    return out


def pooled_miou(confusions: np.ndarray) -> np.ndarray | float:
    """``(..., n_frames, n_seeds, K, K)`` -> ``(...)``: the mean over seeds of the pooled mIoU, the paired
    bootstrap's statistic, vectorised over leading (resample) axes; a float for one ``(n_frames, n_seeds, K, K)``.
    ``pooled_scores`` (``segmentation.mean_iou`` per seed) is its reference, tested equal: a class absent from
    truth and prediction is left out of a seed's mean."""
    conf = np.asarray(confusions, dtype=np.float64).sum(-4)  # (..., n_seeds, K, K)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)  # (..., n_seeds, K)
    denom = conf.sum(-1) + conf.sum(-2) - tp  # truth + predicted - both
    present = denom > 0
    iou = np.where(present, tp / np.where(present, denom, 1.0), 0.0)
    out = (iou.sum(-1) / present.sum(-1)).mean(-1)
    return float(out) if out.ndim == 0 else out


def _sliced(feature_fn: FeatureFn, name: str, part: slice) -> FeatureFn:
    """``feature_fn`` restricted to the channels ``part`` (a view of its output, no copy)."""
    return dataclasses.replace(feature_fn, name=f"{feature_fn.name}[{name}]",
                               fn=lambda images, flow: feature_fn.fn(images, flow)[:, part])


def _summary(scores: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {m: {"mean": float(np.mean([s[m] for s in scores])), "std": float(np.std([s[m] for s in scores]))}
            for m in scores[0]}


def foreground_probe(
    feature_fn: FeatureFn,
    fit: SegmentationDataset,
    test: SegmentationDataset,
    *,
    size: int = 128,
    pixels_per_image: int = 512,
    seeds: Sequence[int] = (0,),
    max_iter: int = 50,
    weight_decay: float = 1e-3,
    channels: Mapping[str, slice] | None = None,
) -> dict:
    """Fit on ``fit``'s masks, score on ``test``'s (see the module docstring); ``size``: short side, px.

    Returns:
        ``{"protocol": "foreground", "feature", "summary": {"mIoU", "IoU_fg", "pixel_acc", "mIoU_<layer>"...:
        {"mean", "std"}}, "per_seed", "layers": {layer: {"mIoU", "IoU_fg", "pixel_acc"}}, "per_frame":
        {"sequence", "frame", "confusion" (n_frames x n_seeds x 2 x 2, rows truth, columns prediction)},
        "foreground_fraction", "n_fit_frames", "n_test_frames", ...}``; std over seeds.
    Raises:
        ValueError: ``fit`` and ``test`` overlap (``check_apart``), or either is empty.
    """
    if not len(fit) or not len(test):
        raise ValueError(f"foreground probe needs fit and test frames, got {len(fit)} ({fit.root}) and "
                         f"{len(test)} ({test.root})")
    test_groups = [sequence_of(i) for i in test.ids]
    check_apart(fit.root, test.root, sorted({sequence_of(i) for i in fit.ids}), test_groups)
    t0 = time.perf_counter()
    with Image.open(fit.image_paths[0]) as im:
        image_size = resized_size((im.height, im.width), size)
    kw = dict(image_size=image_size, pixels_per_image=pixels_per_image, seeds=tuple(seeds), max_iter=max_iter,
              weight_decay=weight_decay)
    base = memoize_features(feature_fn) if channels else feature_fn  # each frame's features once for all slices
    whole = segmentation_probe(base, fit, test, NUM_CLASSES, keep_confusions=True, **kw)
    confusions = whole["confusions"]  # (n_test, n_seeds, 2, 2)
    per_seed = pooled_scores(confusions)
    summary = _summary(per_seed)
    layers = {}
    for name, part in (channels or {}).items():
        res = segmentation_probe(_sliced(base, name, part), fit, test, NUM_CLASSES, keep_confusions=True, **kw)
        layers[name] = _summary(pooled_scores(res["confusions"]))
        summary[f"mIoU_{name}"] = layers[name]["mIoU"]  # the report's table: one column per layer
    total = confusions[:, 0].sum()
    return {
        "protocol": "foreground",
        "feature": feature_fn.name,
        "summary": summary,
        "per_seed": per_seed,
        "layers": layers,
        "per_frame": {"sequence": test_groups, "frame": [i.rsplit("/", 1)[1] for i in test.ids],
                      "confusion": confusions.tolist()},
        "foreground_fraction": float(confusions[:, 0, 1, :].sum() / total) if total else float("nan"),
        "fit_root": str(fit.root),
        "test_root": str(test.root),
        "fit_sequences": sorted({sequence_of(i) for i in fit.ids}),
        "test_sequences": list(dict.fromkeys(test_groups)),
        "n_fit_frames": len(fit),
        "n_test_frames": len(test),
        "image_size": list(image_size),
        "scored_at": "annotation resolution",
        "pixels_per_image": pixels_per_image,
        "seeds": [int(s) for s in seeds],
        "seconds": time.perf_counter() - t0,
    }


def frame_confusions(result: Mapping) -> np.ndarray:
    """A ``foreground_probe`` result's per-frame confusion matrices: int64 ``(n_frames, n_seeds, 2, 2)``."""
    return np.asarray(result["per_frame"]["confusion"], dtype=np.int64)
