"""Layer-wise linear probe: documented pooled feature counts, the classifier against scikit-learn's, a
separable fixture classified near-perfectly and shuffled labels at chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from cpfs.evaluation.baselines import random_init_model
from cpfs.evaluation.datasets import read_image_folder
from cpfs.evaluation.linear import accuracy, fit_linear_classifier
from cpfs.evaluation.linear_probe import (
    alexnet_channels,
    linear_probe,
    pool_layer,
    pooled_feature_counts,
    pooled_grid_size,
)
from cpfs.training.model import AlexNetConfig, AlexNetTrunk


def test_pooled_feature_counts_match_zhang_et_al_at_full_width() -> None:
    # Zhang et al. 2016 / CPFS Table 2: conv1 96*10^2, conv2 256*6^2, conv3 384*5^2, conv4 384*5^2, conv5 256*6^2.
    assert pooled_feature_counts(1.0) == {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}
    assert [pooled_grid_size(c) for c in (96, 256, 384)] == [10, 6, 5]
    assert pooled_feature_counts(0.5) == {"conv1": 9408, "conv2": 8192, "conv3": 9408, "conv4": 9408, "conv5": 8192}
    for width in (0.25, 0.5, 1.0):
        assert all(8000 <= n <= 10000 for n in pooled_feature_counts(width).values())


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_pooling_the_real_trunk_gives_the_documented_counts(width: float) -> None:
    trunk = AlexNetTrunk(AlexNetConfig(width=width)).eval()
    assert {k: trunk.channels[k] for k in alexnet_channels(width)} == alexnet_channels(width)
    with torch.no_grad():
        maps = trunk.features(torch.rand(2, 3, 96, 96))
    counts = {name: pool_layer(fmap).shape[1] for name, fmap in maps.items()}
    assert counts == pooled_feature_counts(width)


def test_pool_layer_averages_blocks() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 2250, 4, 4)  # 2250 channels -> s = 2
    out = pool_layer(x).view(1, 2250, 2, 2)
    assert torch.allclose(out[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        pool_layer(torch.zeros(3, 4))


def test_classifier_agrees_with_scikit_learn_reference() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 20)) * rng.uniform(0.5, 3, size=20)
    w = rng.normal(size=(20, 3))
    y = (x / x.std(0) @ w + rng.normal(0, 1.0, size=(120, 3))).argmax(1)
    lam = 1e-2
    clf = fit_linear_classifier(x, y, 3, weight_decay=lam, max_iter=500)
    z = (x - x.mean(0)) / x.std(0)
    # sklearn minimises C * sum_i CE + 0.5 ||W||^2, i.e. ours (mean CE + lam ||W||^2) with C = 1 / (2 lam N).
    ref = LogisticRegression(C=1.0 / (2 * lam * len(y)), tol=1e-10, max_iter=5000).fit(z, y)
    ours = torch.softmax(clf.logits(torch.as_tensor(x, dtype=torch.float32)), 1).numpy()
    assert np.abs(ours - ref.predict_proba(z)).max() < 2e-3
    assert accuracy(clf.predict(torch.as_tensor(x, dtype=torch.float32)), y) > 0.8


def test_classifier_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels must lie in"):
        fit_linear_classifier(np.zeros((4, 2)), np.array([0, 1, 2, 1]), 2)
    with pytest.raises(ValueError, match=r"\(N, D\) and labels \(N,\)"):
        fit_linear_classifier(np.zeros((4, 2)), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="NaN"):
        fit_linear_classifier(np.full((2, 2), np.nan), np.array([0, 1]), 2)


def test_probe_separates_orientations_and_shuffled_labels_give_chance(orientation_folder: Path) -> None:
    ds = read_image_folder(orientation_folder)
    trunk = random_init_model(width=0.25, seed=0).trunk
    layers = ("conv1", "conv3")
    res = linear_probe(trunk, ds, layers, seeds=(0, 1), train_fraction=0.5)
    assert res["n_train"] == 18 and res["n_test"] == 18 and res["chance"] == pytest.approx(1 / 3)
    for name in layers:
        assert res["layers"][name]["features"] == pooled_feature_counts(0.25)[name]
        assert res["summary"][name]["mean"] >= 0.9, res["summary"]  # at most one error in 18 per seed
    assert np.mean([res["summary"][n]["mean"] for n in layers]) >= 0.95
    shuffled = linear_probe(trunk, ds, layers, seeds=(0, 1, 2, 3), train_fraction=0.5, shuffle_labels=True)
    for name in layers:
        assert shuffled["summary"][name]["mean"] < 0.6, shuffled["summary"]  # chance 1/3; separable gave >= 0.95
    mean_all = np.mean([shuffled["summary"][n]["mean"] for n in layers])
    assert abs(mean_all - 1 / 3) < 0.2


def test_probe_with_explicit_heldout_must_share_classes(orientation_folder: Path, tmp_path: Path) -> None:
    ds = read_image_folder(orientation_folder)
    other = ds.subset(np.flatnonzero(ds.labels < 2))
    other = type(other)(other.root, other.paths, other.labels, other.classes[:2])
    with pytest.raises(ValueError, match="classes"):
        linear_probe(random_init_model(width=0.25).trunk, ds, ("conv1",), heldout=other)
