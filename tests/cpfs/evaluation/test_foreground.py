"""The DAVIS foreground/background probe on synthetic DAVIS-layout trees whose answer is known (a red square on
blue: colour separates it exactly, a constant feature can only say "background"), its frame selection, and its
refusal to fit on the sequences it is scored on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cpfs.evaluation.baselines import colour_features
from cpfs.evaluation.features import FeatureFn
from cpfs.evaluation.foreground import (
    check_apart,
    foreground_probe,
    foreground_split,
    frame_confusions,
    layer_channels,
    pooled_miou,
    pooled_scores,
    read_davis_frames,
)

from tests.cpfs.evaluation.conftest import FG_H, FG_W


def constant_features(stride: int = 4) -> FeatureFn:
    def fn(images: torch.Tensor, flow: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = images.shape
        return torch.ones(b, 1, math.ceil(h / stride), math.ceil(w / stride))

    return FeatureFn(name="constant", stride=stride, fn=fn, metric="euclidean")


def test_colour_separates_the_square_exactly_and_every_channel_slice_is_probed(square_davis) -> None:
    fit_root, test_root, masks = square_davis
    fit, test = foreground_split(fit_root, test_root, step=1)
    calls = []
    rgb = colour_features("rgb", stride=1)
    counted = FeatureFn("rgb", 1, lambda images, flow: (calls.append(1), rgb.fn(images, flow))[1], metric="euclidean")
    res = foreground_probe(counted, fit, test, size=FG_H, pixels_per_image=300, seeds=(0, 1), max_iter=30,
                           channels={"red": slice(0, 1), "blue": slice(2, 3)})
    # Pure red on pure blue, unresized PNG frames, features at every pixel: no pixel can be wrong.
    for metric in ("mIoU", "IoU_fg", "pixel_acc", "mIoU_red", "mIoU_blue"):
        assert res["summary"][metric] == {"mean": 1.0, "std": 0.0}, metric
    assert res["layers"]["blue"]["IoU_fg"] == {"mean": 1.0, "std": 0.0}
    assert len(calls) == len(fit) + len(test) == 13  # features once per frame, shared by the whole and the slices
    assert res["n_fit_frames"] == 8 and res["n_test_frames"] == 5 and res["image_size"] == [FG_H, FG_W]
    assert res["foreground_fraction"] == pytest.approx(masks.mean())
    conf = frame_confusions(res)
    assert conf.shape == (5, 2, 2, 2) and res["per_frame"]["sequence"] == ["c", "c", "c", "d", "d"]
    assert (conf[:, :, 1, 1] == masks.reshape(5, -1).sum(1)[:, None]).all()  # every foreground pixel found


def test_constant_feature_scores_all_background(square_davis) -> None:
    fit_root, test_root, masks = square_davis
    fit, test = foreground_split(fit_root, test_root, step=1)
    res = foreground_probe(constant_features(), fit, test, size=FG_H, pixels_per_image=300, seeds=(0,), max_iter=30)
    # The classifier sees no information and predicts the majority class of its training pixels, background,
    # everywhere: IoU_bg = background pixels / all pixels, IoU_fg = 0, mIoU their mean.
    background = 1.0 - masks.mean()
    assert res["summary"]["IoU_fg"]["mean"] == 0.0
    assert res["summary"]["pixel_acc"]["mean"] == pytest.approx(background)
    assert res["summary"]["mIoU"]["mean"] == pytest.approx(background / 2)
    assert res["layers"] == {} and "mIoU_conv1" not in res["summary"]


def test_every_kth_frame_of_each_sequence(square_davis) -> None:
    fit_root, _, _ = square_davis
    frames = read_davis_frames(fit_root, step=3)
    assert frames.ids == ("a/00000", "a/00003", "b/00000", "b/00003")
    assert [p.name for p in frames.mask_paths] == ["00000.png", "00003.png"] * 2
    with pytest.raises(ValueError, match="step must be >= 1"):
        read_davis_frames(fit_root, step=0)


def test_refuses_to_fit_on_the_evaluation_sequences(square_davis, tmp_path: Path) -> None:
    fit_root, test_root, _ = square_davis
    with pytest.raises(ValueError, match=f"fit root {test_root} and the evaluation root {test_root} are the same"):
        foreground_split(test_root, test_root, step=1)
    alias = tmp_path / "alias"
    alias.symlink_to(test_root)  # another name of the same folder
    with pytest.raises(ValueError, match="same folder"):
        foreground_split(alias, test_root, step=1)
    # Another folder holding one of the evaluation's sequences (c).
    with pytest.raises(ValueError, match=f"fit root {fit_root} and the evaluation root {test_root} share sequence"):
        check_apart(fit_root, test_root, ["a", "b", "c"], ["c", "d"])
    # The probe itself checks its data sets too.
    fit, test = foreground_split(fit_root, test_root, step=1)
    with pytest.raises(ValueError, match="same folder"):
        foreground_probe(constant_features(), test, test, size=FG_H)
    assert len(fit) == 8


def test_layer_channels_follow_the_hypercolumn_order() -> None:
    slices = layer_channels({"conv1": 48, "conv2": 128, "conv3": 192}, ["conv1", "conv3"])
    assert slices == {"conv1": slice(0, 48), "conv3": slice(48, 240)}


def test_pooled_miou_is_the_mean_over_seeds_of_mean_iou_of_the_pooled_matrix() -> None:
    rng = np.random.default_rng(0)
    conf = rng.integers(0, 50, (7, 3, 2, 2))
    conf[:, 2, 1, :] = 0  # seed 2: no foreground in truth ...
    conf[:, 2, :, 1] = 0  # ... nor predicted: its mean is over the background only
    reference = np.mean([s["mIoU"] for s in pooled_scores(conf)])
    assert pooled_miou(conf) == pytest.approx(reference, abs=1e-12)
    assert pooled_scores(conf)[2]["mIoU"] == 1.0 and np.isnan(pooled_scores(conf)[2]["IoU_fg"])
    batch = np.stack([conf, conf[::-1], conf[[0, 0, 1, 2, 3, 3, 6]]])  # resamples along a leading axis
    assert np.allclose(pooled_miou(batch), [pooled_miou(c) for c in batch])


def test_the_evaluation_preflight_refuses_fitting_on_the_evaluation_sequences(square_davis) -> None:
    from cpfs.config import EvalConfig
    from cpfs.pipeline import PreflightError, check_evaluation_data

    fit_root, test_root, _ = square_davis
    check_evaluation_data(EvalConfig(checkpoint="x.pt", davis=str(test_root), davis_train=str(fit_root)))
    with pytest.raises(PreflightError, match="davis_train.*same folder"):
        check_evaluation_data(EvalConfig(checkpoint="x.pt", davis=str(test_root), davis_train=str(test_root)))
