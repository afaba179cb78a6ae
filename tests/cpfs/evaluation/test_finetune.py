"""The fine-tuning protocol: VOC 2007 AP against hand-computed answers of the devkit's definition, the VOC
classification layout on a tiny synthetic tree, and fine-tuning a trained against a random trunk with paired
statistics (single- and multi-label), deterministic per seed, the trunks left untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpfs.config import EvalConfig
from cpfs.config.finetune import FinetuneConfig
from cpfs.evaluation.finetune import FinetuneData, FinetuneSchedule, compare_finetuning, finetune_scores
from cpfs.evaluation.protocols.finetune import load_data
from cpfs.evaluation.voc_classification import average_precision, mean_average_precision, read_voc_classification
from cpfs.training.model import AlexNetConfig, AlexNetTrunk

# -----------------------------------------------------------------------------------------------------------
# Average precision (VOCevalcls.m), worked by hand

# Ranked: +, -, +, -, +  ->  rec 1/3 1/3 2/3 2/3 1, prec 1 1/2 2/3 1/2 3/5
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
GT = np.array([1, -1, 1, -1, 1])


def test_eleven_point_ap_by_hand():
    # t = 0 .. 0.3: max prec = 1 (4 points); t = 0.4 .. 0.6: 2/3 (3 points); t = 0.7 .. 1: 3/5 (4 points)
    assert average_precision(SCORES, GT) == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 0.6) / 11)


def test_area_ap_by_hand():
    # precision envelope 1, 2/3, 3/5 over the recall steps of 1/3 each (VOCap.m)
    assert average_precision(SCORES, GT, mode="area") == pytest.approx((1 + 2 / 3 + 0.6) / 3)


def test_difficult_images_are_ignored_and_ties_keep_their_order():
    with_difficult = average_precision(np.array([0.9, 0.85, 0.8, 0.7, 0.6, 0.5]), np.array([1, 0, -1, 1, -1, 1]))
    assert with_difficult == pytest.approx(average_precision(SCORES, GT))
    # equal scores: MATLAB's stable sort keeps the listed order
    assert average_precision(np.array([0.5, 0.5]), np.array([-1, 1])) == pytest.approx(0.5)
    assert average_precision(np.array([0.5, 0.5]), np.array([1, -1])) == pytest.approx(1.0)


def test_recall_of_exactly_three_and_seven_tenths():
    # 10 positives, 3 ranked first then a negative: the devkit's t = 0.3 is 0.30000000000000004 (0:0.1:1 in
    # MATLAB), so recall 3/10 does not reach it; t = 0.7 is 0.7 itself, which recall 7/10 reaches.
    gt = np.array([1, 1, 1, -1, 1, 1, 1, 1, -1, 1, 1, 1])
    scores = -np.arange(len(gt), dtype=float)
    tp, fp = np.cumsum(gt > 0), np.cumsum(gt < 0)
    prec, rec = tp / (tp + fp), tp / 10
    ts = [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    expected = sum(prec[rec >= t].max() for t in ts) / 11
    assert average_precision(scores, gt) == pytest.approx(expected, abs=1e-15)


def test_map_and_errors():
    scores = np.stack([SCORES, -SCORES, SCORES], axis=1)
    gt = np.stack([GT, GT, -np.ones(5, dtype=int)], axis=1)  # the third class has no positive: left out
    assert mean_average_precision(scores, gt) == pytest.approx((average_precision(SCORES, GT)
                                                                + average_precision(-SCORES, GT)) / 2)
    assert np.isnan(average_precision(SCORES, -np.ones(5, dtype=int)))
    with pytest.raises(ValueError, match="1 \\(present\\), -1"):
        average_precision(SCORES, np.array([1, 2, 1, 1, 1]))
    with pytest.raises(ValueError, match="same length"):
        average_precision(SCORES, GT[:3])


# -----------------------------------------------------------------------------------------------------------
# The VOC 2007 classification layout

CLASSES = ("car", "cat", "dog")  # colour channel c is bright where class c is present


def _voc_tree(root: Path, per_split: int = 8) -> Path:
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("trainval", "test"):
        lines = {c: [] for c in CLASSES}
        for i in range(per_split):
            image_id = f"{split[:2]}{i:04d}"
            present = rng.random(3) < 0.5
            present[i % 3] = True  # every class has positives in every split
            pixels = (np.stack([np.full((64, 64), 200 if p else 20) for p in present], axis=-1)).astype(np.uint8)
            Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg")
            for c, name in enumerate(CLASSES):
                label = 1 if present[c] else -1
                if i == 1 and c == 2 and label == 1:
                    label = 0  # a difficult one
                lines[name].append(f"{image_id} {label:2d}")
        for name in CLASSES:
            (root / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("\n".join(lines[name]) + "\n")
    return root


def test_voc_layout_is_read_and_checked(tmp_path):
    root = _voc_tree(tmp_path / "VOC2007")
    ds = read_voc_classification(root, "trainval")
    assert ds.classes == CLASSES and len(ds) == 8 and ds.labels.shape == (8, 3)
    assert set(np.unique(ds.labels)) <= {-1, 0, 1} and ds.paths[0] == root / "JPEGImages" / "tr0000.jpg"
    with pytest.raises(FileNotFoundError, match="no <class>_val.txt"):
        read_voc_classification(root, "val")
    lines = (root / "ImageSets/Main/dog_test.txt").read_text().splitlines()
    (root / "ImageSets/Main/dog_test.txt").write_text("\n".join(lines[::-1]))
    with pytest.raises(ValueError, match="same images in the same order"):
        read_voc_classification(root, "test")
    (root / "JPEGImages" / "tr0003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="tr0003.jpg: image of split 'trainval' is missing"):
        read_voc_classification(root, "trainval")


# -----------------------------------------------------------------------------------------------------------
# Fine-tuning and the paired comparison

SCHEDULE = FinetuneSchedule(steps=3, batch_size=4, lr=0.05, layer="conv3")


def _trunk(seed: int) -> AlexNetTrunk:
    torch.manual_seed(seed)
    return AlexNetTrunk(AlexNetConfig(width=0.125)).eval()


def test_finetune_is_deterministic_and_leaves_the_trunk_alone(tmp_path):
    data = load_data(FinetuneConfig(voc07=str(_voc_tree(tmp_path / "voc")), size=64), str(tmp_path))
    assert data.multilabel and data.train_images.shape == (8, 3, 64, 64) and data.classes == CLASSES
    trunk = _trunk(0)
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    a, b = finetune_scores(trunk, data, SCHEDULE, seed=1), finetune_scores(trunk, data, SCHEDULE, seed=1)
    assert a.shape == (8, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, finetune_scores(trunk, data, SCHEDULE, seed=2))
    assert all(torch.equal(v, before[k]) for k, v in trunk.state_dict().items())

    # the multi-label comparison: mAP, paired by the pooled bootstrap, in words
    out = compare_finetuning({"cpfs": trunk}, _trunk(1), data, SCHEDULE, [0, 1], train_seed=1, n_boot=200)
    assert set(out) == {"cpfs", "random-init"} and "paired" not in out["random-init"]
    p = out["cpfs"]["paired"]
    assert p["metric"] == "mAP" and p["ci_low"] <= p["mean"] <= p["ci_high"]
    assert p["mean"] == pytest.approx(out["cpfs"]["summary"]["mAP"]["mean"] - out["random-init"]["summary"]["mAP"]["mean"])
    assert "random init (seed 1)" in p["verdict"] and "VOC mAP" in p["verdict"]
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in out["cpfs"]["per_seed"])  # p / 11 summed 11 times may round up


def test_single_label_comparison_on_the_digits(tmp_path):
    data = load_data(FinetuneConfig(digits_per_class=4, size=64), str(tmp_path))
    assert not data.multilabel and len(data.classes) == 10 and data.test_images.shape[0] == 20
    assert "SMOKE SCALE" in data.name
    out = compare_finetuning({"cpfs": _trunk(0)}, _trunk(1), data, SCHEDULE, [0, 1], train_seed=1)
    p = out["cpfs"]["paired"]
    assert p["metric"] == "accuracy" and p["n_pairs"] == 20 and p["n_seeds"] == 2
    acc = out["cpfs"]["summary"]["accuracy"]["mean"] - out["random-init"]["summary"]["accuracy"]["mean"]
    assert p["mean"] == pytest.approx(acc)


def test_the_protocol_is_off_unless_enabled():
    cfg = EvalConfig(checkpoint="runs/demo")
    assert "finetune" not in cfg.protocols()
    on = EvalConfig.model_validate({"checkpoint": "runs/demo", "finetune": {"enabled": True, "layer": "conv5"}})
    assert on.protocols()[-1] == "finetune"
    with pytest.raises(ValueError, match="layer must be one of"):
        FinetuneConfig(layer="conv9")


def test_finetuning_learns_an_easy_task():
    """Colour decides the class: a few steps take the fine-tuned network well above chance."""
    gen = torch.Generator().manual_seed(0)
    labels = np.arange(24) % 2
    images = torch.rand(24, 3, 64, 64, generator=gen) * 0.2
    images[labels == 1, 0] += 0.8  # class 1: red
    data = FinetuneData("red or not", images[:16], labels[:16], images[16:], labels[16:], ("grey", "red"))
    logits = finetune_scores(_trunk(0), data, FinetuneSchedule(steps=20, batch_size=8, lr=0.05, layer="conv3"), seed=0)
    assert (logits.argmax(1) == labels[16:]).mean() >= 0.75
