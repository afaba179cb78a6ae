"""Confusion matrix and mean IoU against hand-computed values and a naive loop; the per-pixel probe on a
VOC-layout fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpfs.evaluation.baselines import colour_features, position_features
from cpfs.evaluation.datasets import read_voc_segmentation
from cpfs.evaluation.segmentation import confusion_matrix, mean_iou, segmentation_probe


def naive_confusion(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> np.ndarray:
    conf = np.zeros((k, k), dtype=np.int64)
    for p, t in zip(pred.ravel(), target.ravel()):
        if t != ignore:
            conf[t, p] += 1
    return conf


def test_confusion_matches_naive_loop() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(17, 23))
    target[rng.random(target.shape) < 0.2] = 255
    pred = rng.integers(0, 5, size=(17, 23))
    assert np.array_equal(confusion_matrix(pred, target, 5), naive_confusion(pred, target, 5, 255))


def test_mean_iou_hand_computed_with_ignored_pixels_and_absent_classes() -> None:
    # 4 classes. Class 3 appears nowhere (neither truth nor prediction): excluded from the mean.
    # Class 2 is predicted once but never true: IoU 0, counted.
    target = np.array([[0, 0, 1, 1],
                       [0, 255, 1, 1],
                       [255, 255, 0, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 1, 1],
                     [1, 1, 2, 1]])
    conf = confusion_matrix(pred, target, 4)
    # Counted pixels (not 255): class 0 at (0,0),(0,1),(1,0),(2,2); class 1 at (0,2),(0,3),(1,2),(1,3),(2,3).
    # pred there: 0->[0,1,0,2], 1->[1,1,1,1,1]. The ignored pixels' predictions (2, 1, 1) do not count.
    assert conf.tolist() == [[2, 1, 1, 0], [0, 5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    res = mean_iou(conf)
    iou0 = 2 / (4 + 2 - 2)  # TP 2, row 4, column 2
    iou1 = 5 / (5 + 6 - 5)  # TP 5, row 5, column 6
    iou2 = 0 / (0 + 1 - 0)
    assert res["iou_per_class"][:3] == pytest.approx([iou0, iou1, iou2])
    assert res["iou_per_class"][3] is None
    assert res["classes_counted"] == 3
    assert res["miou"] == pytest.approx((iou0 + iou1 + iou2) / 3)
    assert res["pixel_accuracy"] == pytest.approx(7 / 9)


def test_perfect_prediction_and_all_ignored() -> None:
    t = np.array([[0, 1], [2, 255]])
    assert mean_iou(confusion_matrix(np.array([[0, 1], [2, 0]]), t, 3))["miou"] == 1.0
    empty = mean_iou(confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 255), 3))
    assert np.isnan(empty["miou"]) and empty["classes_counted"] == 0


def test_confusion_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)
    with pytest.raises(ValueError, match=r"target labels must lie in \[0, 2\)"):
        confusion_matrix(np.zeros(3, int), np.array([0, 1, 7]), 2)
    with pytest.raises(ValueError, match="predictions must lie"):
        confusion_matrix(np.array([0, 5]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="square"):
        mean_iou(np.zeros((2, 3)))


def test_probe_on_voc_fixture_colour_beats_position(voc_root: Path) -> None:
    train = read_voc_segmentation(voc_root, "train")
    val = read_voc_segmentation(voc_root, "val")
    colour = segmentation_probe(colour_features("lab", stride=2), train, val, 3, image_size=(72, 96), pixels_per_image=300, seeds=(0, 1))
    position = segmentation_probe(position_features(stride=2), train, val, 3, image_size=(72, 96), pixels_per_image=300, seeds=(0,))
    # The blobs are red/blue on grey at random places: colour separates them, position cannot.
    assert colour["summary"]["mIoU"]["mean"] > 0.85, colour["summary"]
    assert position["summary"]["mIoU"]["mean"] < 0.5, position["summary"]
    assert colour["num_classes"] == 3 and len(colour["miou"]["per_seed"]) == 2
    assert all(v is not None for v in colour["iou_per_class"])
