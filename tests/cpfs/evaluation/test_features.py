"""The feature interface and the trivial baselines: grid convention, reading features back at pixels,
position/colour/flow-oracle values, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpfs.training.model import sample_hypercolumns
from cpfs.evaluation.baselines import colour_features, flow_oracle_features, position_features, random_init_model, rgb_to_lab
from cpfs.evaluation.features import (
    FeatureFn,
    features_at,
    grid_size,
    hypercolumn_features,
    model_embedding_features,
    network_features,
    upsample_features,
)


def test_position_features_on_the_grid() -> None:
    images = torch.rand(2, 3, 9, 13)
    out = position_features(stride=4)(images)
    assert out.shape == (2, 2, 3, 4) == (2, 2, *grid_size((9, 13), 4))
    # Cell (i, j) is pixel (x, y) = (4j, 4i): x / 12, y / 8.
    assert torch.allclose(out[0, 0, 0], torch.tensor([0, 4, 8, 12]) / 12.0)
    assert torch.allclose(out[1, 1, :, 0], torch.tensor([0, 4, 8]) / 8.0)


def test_lab_of_known_colours() -> None:
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T.reshape(1, 3, 4, 1)
    lab = rgb_to_lab(rgb)[0, :, :, 0].T
    expected = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]])
    assert torch.allclose(lab, expected, atol=0.05)
    out = colour_features("lab", stride=1)(rgb.expand(1, 3, 4, 1).contiguous())
    assert torch.allclose(out[0, 0, 0, 0], torch.tensor(1.0), atol=1e-3)  # L / 100 of white


def test_flow_oracle_needs_flow_and_returns_it() -> None:
    images = torch.rand(1, 3, 6, 8)
    flow = torch.randn(1, 2, 6, 8)
    oracle = flow_oracle_features(stride=2)
    assert torch.equal(oracle(images, flow), flow[..., ::2, ::2])
    with pytest.raises(ValueError, match="flow-oracle.*needs the optical flow"):
        oracle(images)
    with pytest.raises(ValueError, match="flow must have shape"):
        oracle(images, torch.randn(1, 2, 5, 8))


def test_feature_fn_checks_the_grid_it_returns() -> None:
    bad = FeatureFn("bad", 2, lambda images, flow: images)  # stride 2 promised, full resolution returned
    with pytest.raises(ValueError, match="'bad' returned"):
        bad(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        position_features()(torch.rand(3, 8, 8))


def test_features_at_grid_pixels_and_between() -> None:
    feats = torch.randn(1, 5, 4, 6)
    stride = 3
    pts = torch.tensor([[[0, 0], [3, 0], [15, 9], [6, 3]]])  # grid pixels (x, y)
    got = features_at(feats, stride, pts)[0]
    exp = torch.stack([feats[0, :, 0, 0], feats[0, :, 0, 1], feats[0, :, 3, 5], feats[0, :, 1, 2]])
    assert torch.allclose(got, exp, atol=1e-6)
    mid = features_at(feats, stride, torch.tensor([[[4.5, 0.0]]]))[0, 0]  # halfway between cells 1 and 2
    assert torch.allclose(mid, (feats[0, :, 0, 1] + feats[0, :, 0, 2]) / 2, atol=1e-6)


def test_upsample_at_the_same_size_equals_features_at_every_pixel() -> None:
    feats = torch.randn(2, 3, 4, 5)
    up = upsample_features(feats, 4, (13, 17))
    ys, xs = torch.meshgrid(torch.arange(13), torch.arange(17), indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).unsqueeze(0).expand(2, -1, -1)
    ref = features_at(feats, 4, pts).transpose(1, 2).reshape(2, 3, 13, 17)
    assert torch.allclose(up, ref, atol=1e-5)
    with pytest.raises(ValueError, match="do not come from"):
        upsample_features(feats, 4, (13, 17), source_size=(40, 40))


def test_network_features_have_the_grid_shape_and_unit_norm() -> None:
    model = random_init_model(width=0.25, seed=0)
    images = torch.rand(2, 3, 64, 72)
    emb = model_embedding_features(model, stride=8)(images)
    assert emb.shape == (2, model.config.embed_dim, 8, 9)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2, 8, 9), atol=1e-4)
    hyper = hypercolumn_features(model.trunk, ("conv1", "conv5"), stride=8)(images)
    assert hyper.shape == (2, model.trunk.channels["conv1"] + model.trunk.channels["conv5"], 8, 9)
    assert torch.allclose(hyper.norm(dim=1), torch.ones(2, 8, 9), atol=1e-4)
    assert model.training is False and model.trunk.training is False


def test_network_features_put_the_embedding_beside_trunk_layers_each_block_weighing_the_same() -> None:
    model = random_init_model(width=0.25, seed=1)
    images = torch.rand(2, 3, 64, 72)
    emb = model_embedding_features(model, stride=8)(images)
    conv1 = hypercolumn_features(model.trunk, ("conv1",), stride=8)(images)
    conv15 = hypercolumn_features(model.trunk, ("conv1", "conv5"), stride=8)(images)
    # Trunk layers alone: exactly the hypercolumns; the embedding alone: exactly the embedding.
    torch.testing.assert_close(network_features(model, ("conv1", "conv5"), stride=8)(images), conv15, rtol=0, atol=0)
    torch.testing.assert_close(network_features(model, ("embedding",), stride=8)(images), emb, rtol=0, atol=0)
    # Both: the trunk blocks first, then the embedding, three blocks of length 1/sqrt(3) each.
    both = network_features(model, ("embedding", "conv1", "conv5"), stride=8, name="n")(images)
    c1 = model.trunk.channels["conv1"]
    c15 = conv15.shape[1]
    assert both.shape == (2, c15 + model.config.embed_dim, 8, 9)
    for block in (both[:, :c1], both[:, c1:c15], both[:, c15:]):
        torch.testing.assert_close(block.norm(dim=1), torch.full((2, 8, 9), 3 ** -0.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(both[:, c15:], emb / 3 ** 0.5, rtol=0, atol=1e-6)
    torch.testing.assert_close(both[:, :c1], conv1 / 3 ** 0.5, rtol=0, atol=1e-6)
    # So a dot product of two such features is the mean of the blocks' cosines.
    a, b = both[0, :, 0, 0], both[1, :, 3, 4]
    cosines = [torch.dot(x[:c1] / x[:c1].norm(), y[:c1] / y[:c1].norm()) for x, y in [(a, b)]]
    cosines += [torch.dot(a[c1:c15], b[c1:c15]) / (a[c1:c15].norm() * b[c1:c15].norm()),
                torch.dot(a[c15:], b[c15:]) / (a[c15:].norm() * b[c15:].norm())]
    torch.testing.assert_close(torch.dot(a, b), sum(cosines) / 3, rtol=0, atol=1e-5)
    # The trunk runs once for both parts, and the model is left in the mode it was in.
    calls = []
    hook = model.trunk.conv1.register_forward_hook(lambda *a: calls.append(1))
    model.train()
    network_features(model, ("embedding", "conv1", "conv5"), stride=8)(images)
    hook.remove()
    assert len(calls) == 1 and model.training
    with pytest.raises(ValueError, match="at least one layer"):
        network_features(model, ())
    with pytest.raises(ValueError, match="named twice"):
        network_features(model, ("embedding", "embedding"))


def test_hypercolumns_on_the_grid_are_the_sampled_hypercolumns_per_layer_normalised() -> None:
    # The definition, point by point: sample_hypercolumns at the grid pixels, each layer L2-normalised, / sqrt(L).
    model = random_init_model(width=0.25, seed=2)
    images = torch.rand(2, 3, 67, 77)
    layers = ("conv1", "conv2", "conv5")
    hyper = hypercolumn_features(model.trunk, layers, stride=4)(images)
    with torch.no_grad():
        maps = model.trunk.features(images, layers)
    ys, xs = torch.arange(0, 67, 4), torch.arange(0, 77, 4)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy], dim=-1).view(1, -1, 2).expand(2, -1, -1)
    ref = torch.cat([torch.nn.functional.normalize(sample_hypercolumns(maps, [l], pts, (67, 77), model.trunk.geometry), dim=-1)
                     for l in layers], dim=-1) / 3 ** 0.5  # (2, G, C)
    torch.testing.assert_close(hyper, ref.transpose(1, 2).reshape(2, -1, len(ys), len(xs)), rtol=0, atol=1e-6)

def test_random_init_model_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = random_init_model(width=0.25, seed=7)
    after = torch.rand(1)
    b = random_init_model(width=0.25, seed=7)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not np.allclose(random_init_model(width=0.25, seed=8).trunk.conv1.conv.weight.detach(), a.trunk.conv1.conv.weight.detach())
