"""``cpfs.load_backbone``: the evaluation's features from a checkpoint or a run folder, frozen and in eval mode,
features at pixels that agree with the dense ones, a trainable module view that leaves the backbone as it was,
and a fresh process that needs nothing of the project but ``cpfs``. (Export folders: ``test_export.py``.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cpfs
from cpfs.training.checkpoint import CheckpointError, load_model
from cpfs.evaluation.features import hypercolumn_features, model_embedding_features
from cpfs.training.model import CONV_LAYERS, LAYER_NAMES, sample_hypercolumns
from tests.cpfs.export.tiny_run import write_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("backbone") / "run"
    write_run(path)
    return path


def _images(b: int = 2, h: int = 70, w: int = 90) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(1))


def test_features_equal_the_evaluations(run_dir):
    backbone = cpfs.load_backbone(run_dir)  # a run folder: its latest checkpoint, as the evaluation reads it
    model, _ = load_model(run_dir)
    images = _images()
    assert torch.equal(backbone.dense_hypercolumns(images, CONV_LAYERS, stride=4),
                       hypercolumn_features(model.trunk, CONV_LAYERS, stride=4)(images))
    assert torch.equal(backbone.dense_embedding(images, stride=4), model_embedding_features(model, stride=4)(images))
    file_backbone = cpfs.load_backbone(next((run_dir / "checkpoints").glob("step-*.pt")))
    assert torch.equal(file_backbone.dense_embedding(images), backbone.dense_embedding(images))


def test_frozen_in_eval_mode_with_named_layers_and_shapes(run_dir):
    backbone = cpfs.load_backbone(run_dir)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()  # a parent model's train() must not switch the frozen batch norm to batch statistics
    assert not any(m.training for m in backbone.modules())
    images = _images(1, 96, 128)
    maps = backbone.feature_maps(images)
    assert tuple(maps) == LAYER_NAMES
    for name, fmap in maps.items():
        assert fmap.shape[:2] == (1, backbone.channels[name])
    assert backbone.feature_maps(images, ["conv3"])["conv3"].shape == (1, backbone.channels["conv3"], 5, 7)
    assert backbone.dense_embedding(images).shape == (1, backbone.embed_dim, 24, 32)
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.min_input_size == 63


def test_features_at_pixels_agree_with_the_dense_grid(run_dir):
    backbone = cpfs.load_backbone(run_dir)
    images = _images(2, 72, 88)
    ys, xs = torch.meshgrid(torch.arange(0, 72, 4.0), torch.arange(0, 88, 4.0), indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=-1).expand(2, -1, -1)  # (2, 18 * 22, 2) grid pixels
    dense = backbone.dense_hypercolumns(images).flatten(2).transpose(1, 2)  # (2, N, C)
    assert torch.allclose(backbone.hypercolumns_at(images, points), dense, atol=1e-5)
    raw = backbone.hypercolumns_at(images, points, ["conv2", "fc7"], normalize=False)
    maps = backbone.feature_maps(images, ["conv2", "fc7"])
    assert torch.equal(raw, sample_hypercolumns(maps, ["conv2", "fc7"], points, (72, 88)))
    emb = backbone.embed_at(images, points)  # (2, N, D)
    assert torch.allclose(emb, backbone.dense_embedding(images).flatten(2).transpose(1, 2), atol=1e-5)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2, points.shape[1]), atol=1e-5)


def test_module_view_fine_tunes_a_copy(run_dir):
    backbone = cpfs.load_backbone(run_dir)
    images = _images(2, 64, 64)
    view = backbone.module("conv5")
    assert view.out_channels == backbone.channels["conv5"]
    assert all(p.requires_grad for p in view.parameters())
    assert not any(k.startswith(("trunk.fc", "trunk.pool5")) for k in view.state_dict())  # only conv1..conv5
    view.eval()
    assert torch.equal(view(images), backbone.feature_maps(images, ["conv5"])["conv5"])
    before = backbone.feature_maps(images, ["conv5"])["conv5"]
    model = torch.nn.Sequential(view, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(view.out_channels, 3))
    model.train()
    torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 2])).backward()
    with torch.no_grad():  # one plain SGD step (torch.optim's first use costs seconds of imports)
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert not torch.equal(view.trunk.conv1.conv.weight, backbone.trunk.conv1.conv.weight)
    assert torch.equal(backbone.feature_maps(images, ["conv5"])["conv5"], before)  # the backbone is untouched
    frozen = backbone.module("fc7", trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        backbone.module("conv9")


def test_a_missing_path_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        cpfs.load_backbone(tmp_path / "nowhere")


def test_a_fresh_process_needs_only_cpfs(run_dir):
    code = ("import sys, torch, cpfs\n"
            f"b = cpfs.load_backbone({str(run_dir)!r})\n"
            "x = torch.rand(1, 3, 64, 64)\n"
            "b.dense_embedding(x); b.dense_hypercolumns(x); b.feature_maps(x)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'flows', 'tasks', 'prefect', 'storage'})\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
