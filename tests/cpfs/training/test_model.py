"""Tests of cpfs.training.model: geometry, trunk shapes, hypercolumn sampling by hand, the CPFS model, point
sampling, checkpoint loading, and a few training steps on real data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cpfs.training.kernels import embedding_kernel, flow_kernel, median_pairwise_distance
from cpfs.training.losses import alignment, kta_centered
from cpfs.training.model import (
    ALEXNET_GEOMETRY,
    ALEXNET_LAYERS,
    HYPERCOLUMN_LAYERS,
    LAYER_NAMES,
    MIN_INPUT_SIZE,
    AlexNetConfig,
    AlexNetTrunk,
    CPFSModel,
    CPFSModelConfig,
    load_trunk_state,
    read_at_points,
    sample_hypercolumns,
    sample_points,
)

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
MIDDLEBURY = DATA / "middlebury"



def small_model(width: float = 0.25, embed_dim: int = 16, seed: int = 0) -> CPFSModel:
    torch.manual_seed(seed)
    return CPFSModel(CPFSModelConfig(trunk=AlexNetConfig(width=width), embed_dim=embed_dim))


# --- receptive geometry ---------------------------------------------------------------------------------


def naive_receptive_centre(layer: str, unit: int) -> float:
    """Centre of the input pixels that feed ``unit`` of ``layer``, by tracking the [first, last] input index."""
    specs = ALEXNET_LAYERS[: LAYER_NAMES.index(layer) + 1]
    first = last = unit
    for spec in reversed(specs):  # map the unit interval back through each layer to its input
        first = first * spec.stride - spec.padding
        last = last * spec.stride - spec.padding + spec.kernel - 1
    return (first + last) / 2


@pytest.mark.parametrize("layer", LAYER_NAMES)
def test_layer_geometry_matches_receptive_field_centres(layer):
    geo = ALEXNET_GEOMETRY[layer]
    for unit in range(4):
        assert geo.offset + geo.stride * unit == naive_receptive_centre(layer, unit)
        assert geo.to_layer(torch.tensor(naive_receptive_centre(layer, unit))).item() == pytest.approx(unit)


def test_known_alexnet_geometry_and_min_size():
    expected = {"conv1": (4, 3), "pool1": (8, 7), "conv3": (16, 15), "pool5": (32, 31), "fc7": (32, 31)}
    for name, (stride, offset) in expected.items():
        assert (ALEXNET_GEOMETRY[name].stride, ALEXNET_GEOMETRY[name].offset) == (stride, offset)
    trunk = AlexNetTrunk(AlexNetConfig(width=0.125)).eval()
    maps = trunk(torch.rand(1, 3, MIN_INPUT_SIZE, MIN_INPUT_SIZE))
    assert maps["fc7"].shape[-2:] == (1, 1)
    with pytest.raises(ValueError, match="at least 63x63 px"):
        trunk(torch.rand(1, 3, MIN_INPUT_SIZE - 1, 100))


# --- trunk ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, spatial",
    [
        (128, {"conv1": 31, "pool1": 15, "conv2": 15, "pool2": 7, "conv3": 7, "conv4": 7, "conv5": 7, "pool5": 3, "fc6": 3, "fc7": 3}),
        (224, {"conv1": 55, "pool1": 27, "conv2": 27, "pool2": 13, "conv3": 13, "conv4": 13, "conv5": 13, "pool5": 6, "fc6": 6, "fc7": 6}),
    ],
)
def test_trunk_output_shapes(size, spatial):
    width = 0.25
    channels = {"conv1": 96, "pool1": 96, "conv2": 256, "pool2": 256, "conv3": 384, "conv4": 384, "conv5": 256, "pool5": 256, "fc6": 4096, "fc7": 4096}
    trunk = AlexNetTrunk(AlexNetConfig(width=width))
    maps = trunk(torch.rand(2, 3, size, size))
    assert list(maps) == list(LAYER_NAMES)
    for name, fmap in maps.items():
        assert fmap.shape == (2, int(channels[name] * width), spatial[name], spatial[name]), name
        assert trunk.channels[name] == fmap.shape[1]


def test_features_returns_requested_layers_only_and_stops_early():
    trunk = AlexNetTrunk(AlexNetConfig(width=0.125))
    called = []
    trunk.fc6.register_forward_hook(lambda *_: called.append("fc6"))
    feats = trunk.features(torch.rand(1, 3, 80, 96))  # default: conv1..conv5
    assert list(feats) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert called == []  # fc6/fc7 never ran
    assert list(trunk.features(torch.rand(1, 3, 80, 96), ["fc7", "conv1"])) == ["conv1", "fc7"]
    assert called == ["fc6"]
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['fc8'\]"):
        trunk.features(torch.rand(1, 3, 80, 96), ["conv1", "fc8"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        trunk.features(torch.rand(3, 80, 96))


def test_trunk_without_batch_norm_has_conv_biases():
    trunk = AlexNetTrunk(AlexNetConfig(width=0.125, batch_norm=False))
    keys = trunk.state_dict().keys()
    assert "conv1.conv.bias" in keys and not any(".bn." in k for k in keys)


# --- hypercolumn sampling --------------------------------------------------------------------------------


def hand_bilinear(fmap: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """fmap (C, h, w) at unit coordinate (u, v), clamped to the span of unit centres, by the textbook formula."""
    _, h, w = fmap.shape
    u, v = min(max(u, 0.0), w - 1.0), min(max(v, 0.0), h - 1.0)
    i0, j0 = int(math.floor(u)), int(math.floor(v))
    i1, j1 = min(i0 + 1, w - 1), min(j0 + 1, h - 1)
    a, b = u - i0, v - j0
    return (
        (1 - a) * (1 - b) * fmap[:, j0, i0]
        + a * (1 - b) * fmap[:, j0, i1]
        + (1 - a) * b * fmap[:, j1, i0]
        + a * b * fmap[:, j1, i1]
    )


def test_hypercolumns_equal_bilinear_interpolation_by_hand():
    H, W = 100, 132
    trunk = AlexNetTrunk(AlexNetConfig(width=0.125)).eval()
    with torch.no_grad():
        maps = trunk(torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0)))
    points = torch.tensor(
        [
            [[0.0, 0.0], [W - 1.0, H - 1.0], [40.0, 23.0], [47.0, 47.0], [63.0, 31.0], [17.5, 80.25]],
            [[3.0, 7.0], [95.0, 63.0], [10.3, 55.9], [131.0, 0.0], [66.6, 44.4], [120.0, 99.0]],
        ]
    )  # (2, 6, 2): integer pixels, fractional positions, corners, and exact unit centres (e.g. x=47 is pool1's unit 5)
    out = sample_hypercolumns(maps, HYPERCOLUMN_LAYERS, points, (H, W))
    sizes = [maps[name].shape[1] for name in HYPERCOLUMN_LAYERS]
    assert out.shape == (2, 6, sum(sizes))
    for name, part in zip(HYPERCOLUMN_LAYERS, out.split(sizes, dim=-1)):
        geo = ALEXNET_GEOMETRY[name]
        for b in range(2):
            for n in range(6):
                x, y = points[b, n].tolist()
                expected = hand_bilinear(maps[name][b], (x - geo.offset) / geo.stride, (y - geo.offset) / geo.stride)
                torch.testing.assert_close(part[b, n], expected, rtol=1e-5, atol=1e-5, msg=f"{name} at {(x, y)}")
    # a point on a unit centre reads exactly that unit: (47, 23) is conv1 unit (11, 5)
    col = sample_hypercolumns(maps, ["conv1"], torch.tensor([[[47.0, 23.0]], [[47.0, 23.0]]]), (H, W))
    torch.testing.assert_close(col[:, 0], maps["conv1"][:, :, 5, 11])


def test_hypercolumns_accept_integer_points_and_reject_bad_ones():
    maps = AlexNetTrunk(AlexNetConfig(width=0.125)).eval()(torch.rand(1, 3, 64, 80))
    pts = torch.tensor([[[5, 9], [79, 63]]])
    torch.testing.assert_close(
        sample_hypercolumns(maps, ["conv1", "fc7"], pts, (64, 80)),
        sample_hypercolumns(maps, ["conv1", "fc7"], pts.float(), (64, 80)),
    )
    with pytest.raises(ValueError, match="inside the 80x64 image"):
        sample_hypercolumns(maps, ["conv1"], torch.tensor([[[80.0, 3.0]]]), (64, 80))
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        sample_hypercolumns(maps, ["conv1"], torch.zeros(1, 3), (64, 80))
    with pytest.raises(ValueError, match="missing"):
        sample_hypercolumns({"conv1": maps["conv1"]}, ["conv1", "fc7"], pts, (64, 80))


# --- the CPFS model --------------------------------------------------------------------------------------


def test_model_outputs_unit_vectors_with_d_dims_and_trains_the_trunk():
    model = small_model(embed_dim=16)
    images = torch.rand(2, 3, 72, 96)
    points = sample_points(2, 72, 96, 32, torch.Generator().manual_seed(0))
    emb = model(images, points)
    assert emb.shape == (2, 32, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 32))
    emb.sum().backward()
    assert model.trunk.conv1.conv.weight.grad.abs().sum() > 0
    assert small_model(embed_dim=8)(images, points).shape == (2, 32, 8)
    with pytest.raises(ValueError, match="hypercolumn_layers"):
        CPFSModelConfig(hypercolumn_layers=("conv1", "fc9"))


def test_dense_embedding_matches_forward_on_the_grid():
    model = small_model()
    model.train()
    images = torch.rand(2, 3, 70, 90)
    dense = model.dense_embedding(images, stride=8, chunk=50)  # several chunks
    assert dense.shape == (2, 16, math.ceil(70 / 8), math.ceil(90 / 8))
    assert model.training  # mode restored
    model.eval()
    pts = torch.tensor([[8 * j, 8 * i] for i, j in [(0, 0), (3, 7), (8, 11), (5, 2)]]).expand(2, -1, -1)
    with torch.no_grad():
        direct = model(images, pts)  # (2, 4, 16)
    for n, (i, j) in enumerate([(0, 0), (3, 7), (8, 11), (5, 2)]):
        torch.testing.assert_close(dense[:, :, i, j], direct[:, n], rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("hidden", [16, 256, 4096])
def test_dense_embedding_projects_wide_layers_first_and_still_equals_forward(hidden):
    # hidden 16: every layer is projected before interpolation; 4096: none; 256 (width 0.25): fc7 only.
    torch.manual_seed(1)
    model = CPFSModel(CPFSModelConfig(trunk=AlexNetConfig(width=0.25), hidden=hidden))
    with torch.no_grad():  # BatchNorm statistics away from 0/1, so the head's BN is not the identity
        model.head.bn.running_mean.uniform_(-0.5, 0.5)
        model.head.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    images = torch.rand(1, 3, 67, 83)
    dense = model.dense_embedding(images, stride=4, chunk=1)  # one row per block
    ij = [(0, 0), (16, 20), (7, 13), (3, 1)]
    pts = torch.tensor([[4 * j, 4 * i] for i, j in ij]).unsqueeze(0)
    with torch.no_grad():
        direct = model(images, pts)
    for n, (i, j) in enumerate(ij):
        torch.testing.assert_close(dense[0, :, i, j], direct[0, n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.dense_embedding(images, stride=4), dense, rtol=0, atol=1e-6)

# --- point sampling --------------------------------------------------------------------------------------


def test_sample_points_uniform_without_replacement():
    pts = sample_points(3, 20, 30, 64, torch.Generator().manual_seed(0))
    assert pts.shape == (3, 64, 2) and pts.dtype == torch.int64
    assert (pts[..., 0] >= 0).all() and (pts[..., 0] < 30).all() and (pts[..., 1] >= 0).all() and (pts[..., 1] < 20).all()
    for b in range(3):
        assert len({tuple(p) for p in pts[b].tolist()}) == 64  # no repeats
    again = sample_points(3, 20, 30, 64, torch.Generator().manual_seed(0))
    assert torch.equal(pts, again)  # reproducible from the generator
    # uniform: 4 of 16 pixels, 4000 times -> each pixel ~1000 times
    counts = torch.zeros(16)
    g = torch.Generator().manual_seed(1)
    for _ in range(4000):
        p = sample_points(1, 4, 4, 4, g)[0]
        counts.index_add_(0, p[:, 1] * 4 + p[:, 0], torch.ones(4))
    assert counts.min() > 900 and counts.max() < 1100


def test_sample_points_respects_valid_mask():
    mask = torch.zeros(2, 10, 12, dtype=torch.bool)
    mask[0, 2:8, 3:9] = True  # 36 valid pixels
    mask[1, 0, :5] = True  # 5 valid pixels: fewer than N
    pts = sample_points(2, 10, 12, 20, torch.Generator().manual_seed(0), valid_mask=mask)
    for b in range(2):
        assert mask[b, pts[b, :, 1], pts[b, :, 0]].all()
    assert len({tuple(p) for p in pts[0].tolist()}) == 20  # enough valid pixels: no repeats
    assert len({tuple(p) for p in pts[1].tolist()}) == 5  # too few: all of them, with repeats
    shared = sample_points(2, 10, 12, 4, torch.Generator().manual_seed(0), valid_mask=mask[0])  # (H, W) mask
    assert mask[0, shared[..., 1], shared[..., 0]].all()
    mask[1] = False
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] of the batch have no valid pixel"):
        sample_points(2, 10, 12, 4, valid_mask=mask)
    with pytest.raises(ValueError, match="valid_mask must be a bool tensor"):
        sample_points(2, 10, 12, 4, valid_mask=torch.ones(10, 11, dtype=torch.bool))


def test_read_at_points_reads_integer_pixels():
    flow = torch.randn(2, 2, 10, 12)
    pts = sample_points(2, 10, 12, 7, torch.Generator().manual_seed(3))
    values = read_at_points(flow, pts)
    assert values.shape == (2, 7, 2)
    for b in range(2):
        for n in range(7):
            x, y = pts[b, n].tolist()
            torch.testing.assert_close(values[b, n], flow[b, :, y, x])
    with pytest.raises(ValueError, match="integer pixel coordinates"):
        read_at_points(flow, pts.float())
    with pytest.raises(ValueError, match="inside the 12x10 map"):
        read_at_points(flow, torch.tensor([[[12, 0]], [[0, 0]]]))


# --- checkpoints -----------------------------------------------------------------------------------------


def test_load_trunk_state_round_trip_and_from_model_checkpoint():
    source = small_model(seed=1)
    target = AlexNetTrunk(AlexNetConfig(width=0.25))
    assert not torch.equal(target.conv1.conv.weight, source.trunk.conv1.conv.weight)
    load_trunk_state(target, source.state_dict())  # whole-model checkpoint: "trunk." entries used
    for key, value in source.trunk.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    load_trunk_state(target, source.trunk.state_dict())  # the trunk's own state dict


def test_load_trunk_state_from_another_architecture_raises():
    trunk = AlexNetTrunk(AlexNetConfig(width=0.25))
    wider = AlexNetTrunk(AlexNetConfig(width=0.5)).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatches: conv1\.bn\.bias: checkpoint \(48,\) vs model \(24,\)"):
        load_trunk_state(trunk, wider)
    no_bn = AlexNetTrunk(AlexNetConfig(width=0.25, batch_norm=False)).state_dict()
    with pytest.raises(ValueError, match=r"missing keys: conv1\.bn\.bias.*unexpected keys: conv1\.conv\.bias"):
        load_trunk_state(trunk, no_bn)
    foreign = {"features.0.weight": torch.zeros(64, 3, 11, 11), "classifier.6.weight": torch.zeros(1000, 4096)}
    with pytest.raises(ValueError, match=r"another architecture.*missing keys: .*\(\d+ more\).*unexpected keys: classifier"):
        load_trunk_state(trunk, foreign)


# --- a few training steps on real data -------------------------------------------------------------------


def test_a_few_adam_steps_on_real_frame_and_flow_raise_alignment():
    """Tiny model, one Middlebury frame with its ground-truth flow: centered KTA must improve clearly."""
    from PIL import Image

    seq = MIDDLEBURY / "RubberWhale"
    if not (seq / "flow10.flo").exists():
        pytest.skip(f"Middlebury data not found at {seq} (shared/ is not beside the repository)")
    raw = (seq / "flow10.flo").read_bytes()
    w, h = (int(v) for v in np.frombuffer(raw[4:12], np.int32))
    flow = np.frombuffer(raw[12:], np.float32, count=w * h * 2).reshape(h, w, 2)
    image = np.asarray(Image.open(seq / "frame10.png").convert("RGB"), dtype=np.float32) / 255.0
    y0, x0, size = 120, 200, 96  # a crop holding several moving objects
    img = torch.from_numpy(image[y0 : y0 + size, x0 : x0 + size]).permute(2, 0, 1).unsqueeze(0)  # (1, 3, 96, 96)
    fl = torch.from_numpy(flow[y0 : y0 + size, x0 : x0 + size].copy()).permute(2, 0, 1).unsqueeze(0)  # (1, 2, 96, 96)
    valid = (fl.abs() < 1e9).all(dim=1)  # (1, 96, 96)
    points = sample_points(1, size, size, 64, torch.Generator().manual_seed(0), valid_mask=valid)
    f = read_at_points(fl, points)  # (1, 64, 2)
    K_f = flow_kernel(f, median_pairwise_distance(f))

    model = small_model(width=0.25, seed=0).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = kta_centered(embedding_kernel(model(img, points)), K_f)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = alignment(embedding_kernel(model(img, points)), K_f, centered=True).item()
    initial = -losses[0]
    assert final > initial and (1 - final) < 0.5 * (1 - initial), (initial, final)  # gap to perfect halved
