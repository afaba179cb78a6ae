"""A trained CPFS network as a backbone for your own code: ``load_backbone`` and ``Backbone``.

``load_backbone`` reads a training checkpoint file, a training run folder (its best validated checkpoint, else its latest) or an export
folder (``cpfs export``: safetensors weights and ``architecture.json``) and returns a ``Backbone``: the frozen
network in eval mode, with the features the evaluation uses and an ``nn.Module`` view to fine-tune::

    import torch, cpfs
    backbone = cpfs.load_backbone("runs/demo")                  # or a step-*.pt file, or an export folder
    images = torch.rand(2, 3, 224, 224)                         # RGB in [0, 1]
    maps = backbone.feature_maps(images, ["conv3", "conv5"])    # {"conv3": (2, C3, 13, 13), "conv5": ...}
    emb = backbone.dense_embedding(images, stride=4)            # (2, D, 56, 56) unit vectors

Preprocessing: every method takes RGB images ``(B, 3, H, W)`` with values in [0, 1] and ``H, W >= 63``; the
network standardises them itself with the ImageNet mean and std (``Backbone.mean``/``std``), as in training and
evaluation, so a caller never normalises. Layers are named as in ``cpfs.training.model.LAYER_NAMES``
(``conv1 pool1 conv2 pool2 conv3 conv4 conv5 pool5 fc6 fc7``); unit ``i`` of layer ``l`` is centred on input
pixel ``geometry[l].offset + geometry[l].stride * i``.

The features are the evaluation's own (``cpfs.evaluation.features``): ``dense_hypercolumns`` is what the dense
protocols read, ``dense_embedding`` what flow alignment reads. The evaluation re-estimates batch-norm statistics
on training crops before measuring (``EvalConfig.recalibrate_checkpoints``); a backbone keeps the weights' own.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpfs.training.model import (
    CONV_LAYERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_NAMES,
    MIN_INPUT_SIZE,
    AlexNetTrunk,
    CPFSModel,
    LayerGeometry,
    sample_hypercolumns,
)


class TrunkFeatures(nn.Module):
    """The trunk from the input to ``layer`` as a plain module, to put in your own model and fine-tune:
    ``images (B, 3, H, W)`` in [0, 1] -> ``(B, out_channels, H_l, W_l)``.

    Holds its own copy of the weights (fine-tuning it leaves the ``Backbone`` as loaded) and only the layers up
    to ``layer``; state-dict keys are ``trunk.<layer>.*`` as in a checkpoint. Switch training of the weights
    with ``requires_grad_(True/False)``; ``train()``/``eval()`` switch batch norm as for any module.
    """

    def __init__(self, trunk: AlexNetTrunk, layer: str) -> None:
        super().__init__()
        if layer not in LAYER_NAMES:
            raise ValueError(f"unknown layer {layer!r}; layers are {list(LAYER_NAMES)}")
        self.trunk = copy.deepcopy(trunk)
        for name in LAYER_NAMES[LAYER_NAMES.index(layer) + 1 :]:
            delattr(self.trunk, name)  # features() stops at `layer`: the deeper blocks would be dead weights
        self.layer = layer
        self.out_channels: int = trunk.channels[layer]
        self.geometry: LayerGeometry = trunk.geometry[layer]

    def forward(self, images: Tensor) -> Tensor:
        return self.trunk.features(images, (self.layer,))[self.layer]


class Backbone(nn.Module):
    """A trained CPFS network, frozen (no parameter requires a gradient) and always in eval mode.

    ``train()`` leaves it in eval mode, so a parent model's ``train()`` cannot switch its batch norm to batch
    statistics; use ``module()`` for a trainable copy. Every method runs without gradients.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN  # the standardisation the network applies to [0, 1] RGB
    std: tuple[float, float, float] = IMAGENET_STD
    min_input_size: int = MIN_INPUT_SIZE  # smallest height and width, px (pool5 and fc7 need one unit)
    layer_names: tuple[str, ...] = LAYER_NAMES

    def __init__(self, model: CPFSModel, source: str = "") -> None:
        super().__init__()
        self.model = model
        self.source = source  # the path it was loaded from
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(False)

    @property
    def trunk(self) -> AlexNetTrunk:
        return self.model.trunk

    @property
    def channels(self) -> dict[str, int]:
        """``{layer: channels}`` of every trunk layer."""
        return dict(self.model.trunk.channels)

    @property
    def geometry(self) -> dict[str, LayerGeometry]:
        """``{layer: LayerGeometry}``: where each layer's units sit in input pixels (stride, offset)."""
        return dict(self.model.trunk.geometry)

    @property
    def embed_dim(self) -> int:
        """D, the embedding dimension."""
        return self.model.config.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- features ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def feature_maps(self, images: Tensor, layers: Sequence[str] = LAYER_NAMES) -> dict[str, Tensor]:
        """The maps of ``layers``: ``(B, 3, H, W)`` -> ``{name: (B, C_name, H_name, W_name)}`` (the trunk runs
        only as deep as the deepest layer asked for)."""
        return self.model.trunk.features(images, layers)

    @torch.no_grad()
    def hypercolumns_at(self, images: Tensor, points: Tensor, layers: Sequence[str] = CONV_LAYERS,
                        normalize: bool = True) -> Tensor:
        """Hypercolumns at given pixels: ``images (B, 3, H, W)``, ``points (B, N, 2)`` as (x, y) px (fractional
        allowed, inside the image) -> ``(B, N, sum_l C_l)``, each layer read bilinearly in its own grid.

        ``normalize``: each layer's part L2-normalised and divided by ``sqrt(len(layers))`` (unit-norm
        hypercolumns, the evaluation's); False: the raw activations (what the embedding head reads)."""
        layers = tuple(layers)
        maps = self.model.trunk.features(images, layers)
        cols = sample_hypercolumns(maps, layers, points, tuple(images.shape[-2:]), self.model.trunk.geometry)
        if not normalize:
            return cols
        parts = torch.split(cols, [self.model.trunk.channels[name] for name in layers], dim=-1)
        return torch.cat([F.normalize(p, dim=-1) for p in parts], dim=-1) / math.sqrt(len(layers))

    @torch.no_grad()
    def dense_hypercolumns(self, images: Tensor, layers: Sequence[str] = CONV_LAYERS, stride: int = 4) -> Tensor:
        """The evaluation's dense features (``cpfs.evaluation.features.hypercolumn_features``): ``(B, 3, H, W)``
        -> ``(B, sum_l C_l, ceil(H/stride), ceil(W/stride))``, unit norm; cell ``(i, j)`` = pixel
        ``(j * stride, i * stride)``."""
        from cpfs.evaluation.features import hypercolumn_features

        return hypercolumn_features(self.model.trunk, layers, stride=stride)(images)

    @torch.no_grad()
    def embed_at(self, images: Tensor, points: Tensor) -> Tensor:
        """The D-dimensional embedding at given pixels: ``(B, 3, H, W)``, ``(B, N, 2)`` (x, y) px ->
        ``(B, N, D)`` unit vectors."""
        return self.model(images, points)

    @torch.no_grad()
    def dense_embedding(self, images: Tensor, stride: int = 4) -> Tensor:
        """The embedding on a pixel grid (``CPFSModel.dense_embedding``, as flow alignment reads it):
        ``(B, 3, H, W)`` -> ``(B, D, ceil(H/stride), ceil(W/stride))`` unit vectors."""
        return self.model.dense_embedding(images, stride=stride)

    def forward(self, images: Tensor, layers: Sequence[str] = LAYER_NAMES) -> dict[str, Tensor]:
        """``feature_maps``: ``{name: (B, C_name, H_name, W_name)}``."""
        return self.feature_maps(images, layers)

    # --- fine-tuning ---------------------------------------------------------------------------------------

    def module(self, layer: str = "conv5", trainable: bool = True) -> TrunkFeatures:
        """A copy of the trunk up to ``layer`` as an ``nn.Module`` (``TrunkFeatures``) for your own model, its
        weights trainable or frozen (``trainable``; switch later with ``requires_grad_``)."""
        view = TrunkFeatures(self.model.trunk, layer)
        return view.requires_grad_(trainable)


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """The network at ``path`` as a frozen ``Backbone`` on ``device``.

    ``path``: a training checkpoint (``checkpoints/step-*.pt``), a training run folder (its best validated checkpoint, else its latest),
    or an export folder of ``cpfs export`` (or its ``model.safetensors``).

    Raises:
        CheckpointError: nothing loadable at ``path`` (missing, unreadable, another architecture), naming it.
    """
    from cpfs.training.checkpoint import load_model
    from cpfs.training.run_folder import ExportFolder

    p = Path(path).expanduser()
    export = ExportFolder(p.parent if p.suffix == ".safetensors" else p)
    if export.weights.is_file() or export.architecture.is_file():
        from cpfs.export.exporter import load_exported_model

        model = load_exported_model(export.path)
    else:
        model, _ = load_model(p)
    return Backbone(model.to(device).eval(), source=str(p))
