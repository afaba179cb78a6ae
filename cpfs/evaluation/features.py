"""One interface for per-pixel features, so every dense protocol treats all feature sources alike.

A feature function maps a batch of images (and, for the flow oracle only, their optical flow) to a
feature map on a regular grid of pixels:

    ``fn(images (B, 3, H, W) in [0, 1], flow (B, 2, H, W) px or None) -> (B, C, Hg, Wg)``,

with ``Hg = ceil(H / stride)``, ``Wg = ceil(W / stride)`` and grid cell ``(i, j)`` describing input pixel
``(x, y) = (j * stride, i * stride)``, the convention of ``CPFSModel.dense_embedding``. ``features_at``
and ``upsample_features`` read such a map back at arbitrary pixels (bilinear between grid pixels).

Sources: ``model_embedding_features`` (a trained or random-init ``CPFSModel``'s unit embeddings),
``hypercolumn_features`` (a frozen trunk's layers, each L2-normalised, concatenated), ``network_features``
(trunk layers and the embedding side by side) and the trivial baselines of ``cpfs.evaluation.baselines``
(position, colour, flow oracle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cpfs.training.model import EMBEDDING, AlexNetTrunk, CPFSModel, grid_pixels, sample_on_grid

FeatureCallable = Callable[[Tensor, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class FeatureFn:
    """A named per-pixel feature source with its grid stride (see the module docstring)."""

    name: str  # shown in reports: "cpfs", "random-init", "position", "colour-lab", "flow-oracle", ...
    stride: int  # input pixels between grid cells of the output map
    fn: FeatureCallable  # (images, flow) -> (B, C, Hg, Wg)
    needs_flow: bool = False  # True only for the flow oracle
    # How two feature vectors compare: "cosine" for learned unit embeddings and hypercolumns (the CPFS
    # embedding kernel), "euclidean" for the baselines whose vector length carries the information.
    # "flow": the flow oracle, compared by the flow kernel's own rule (so its kernel is the target itself).
    metric: Literal["cosine", "euclidean", "flow"] = "cosine"

    def __call__(self, images: Tensor, flow: Tensor | None = None) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"feature {self.name!r}: images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if self.needs_flow:
            if flow is None:
                raise ValueError(f"feature {self.name!r} needs the optical flow of the images; this protocol has none")
            if flow.shape != (images.shape[0], 2, *images.shape[-2:]):
                raise ValueError(f"feature {self.name!r}: flow must have shape {(images.shape[0], 2, *images.shape[-2:])}, got {tuple(flow.shape)}")
        out = self.fn(images, flow)
        expected = grid_size(tuple(images.shape[-2:]), self.stride)
        if out.dim() != 4 or tuple(out.shape[-2:]) != expected or out.shape[0] != images.shape[0]:
            raise ValueError(f"feature {self.name!r} returned {tuple(out.shape)}; expected (B={images.shape[0]}, C, {expected[0]}, {expected[1]}) for stride {self.stride}")
        return out


def grid_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """``(ceil(H / stride), ceil(W / stride))``: the grid of a feature map of an ``(H, W)`` image."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)


def features_at(features: Tensor, stride: int, points: Tensor) -> Tensor:
    """Feature vectors at input pixels: ``(B, C, Hg, Wg)``, ``(B, N, 2)`` (x, y) px -> ``(B, N, C)``.

    Pixel ``x`` sits at grid coordinate ``u = x / stride`` (grid cells at integers); values are bilinear
    between cells and clamped to the border cells beyond the last one (``grid_sample`` with
    ``align_corners=True``: normalised -1/+1 are the first/last cell centres, so ``g = 2u / (Wg - 1) - 1``).
    """
    if features.dim() != 4 or points.dim() != 3 or points.shape[-1] != 2 or points.shape[0] != features.shape[0]:
        raise ValueError(f"need features (B, C, Hg, Wg) and points (B, N, 2) with the same B, got {tuple(features.shape)} and {tuple(points.shape)}")
    hg, wg = features.shape[-2:]
    pts = points.to(features.dtype)
    gx = 2.0 * (pts[..., 0] / stride) / max(wg - 1, 1) - 1.0  # (B, N)
    gy = 2.0 * (pts[..., 1] / stride) / max(hg - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1).unsqueeze(2)  # (B, N, 1, 2)
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)  # (B, C, N, 1)
    return out.squeeze(-1).transpose(1, 2)  # (B, N, C)


def upsample_features(
    features: Tensor, stride: int, size: tuple[int, int], source_size: tuple[int, int] | None = None
) -> Tensor:
    """A grid feature map read at every pixel of an ``(H, W)`` image: ``(B, C, Hg, Wg) -> (B, C, H, W)``.

    ``source_size = (H0, W0)`` is the size of the image the features were computed on (default: ``size``).
    When it differs (features of a down-scaled frame read at full resolution), target pixel ``x`` is mapped
    to source pixel ``x0 = (x + 0.5) * W0 / W - 0.5`` (pixel centres aligned, as image resizing does) and
    then to grid coordinate ``u = x0 / stride``; bilinear between cells, clamped at the border cells.
    """
    if features.dim() != 4:
        raise ValueError(f"features must have shape (B, C, Hg, Wg), got {tuple(features.shape)}")
    b = features.shape[0]
    height, width = size
    src_h, src_w = source_size if source_size is not None else size
    hg, wg = features.shape[-2:]
    if (hg, wg) != grid_size((src_h, src_w), stride):
        raise ValueError(f"features of grid {hg}x{wg} do not come from a {src_h}x{src_w} image at stride {stride}")
    ys = (torch.arange(height, dtype=features.dtype, device=features.device) + 0.5) * (src_h / height) - 0.5
    xs = (torch.arange(width, dtype=features.dtype, device=features.device) + 0.5) * (src_w / width) - 0.5
    gy = 2.0 * (ys / stride) / max(hg - 1, 1) - 1.0  # (H,)
    gx = 2.0 * (xs / stride) / max(wg - 1, 1) - 1.0  # (W,)
    grid_y, grid_x = torch.meshgrid(gy, gx, indexing="ij")  # (H, W) each
    grid = torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0).expand(b, -1, -1, -1)  # (B, H, W, 2) as (x, y)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)


def model_embedding_features(model: CPFSModel, stride: int = 4, name: str = "cpfs") -> FeatureFn:
    """The model's unit embeddings (``CPFSModel.dense_embedding``): ``(B, D, Hg, Wg)``, frozen, eval mode."""

    def fn(images: Tensor, flow: Tensor | None) -> Tensor:
        return model.dense_embedding(images, stride=stride)

    return FeatureFn(name=name, stride=stride, fn=fn)


def hypercolumn_features(
    trunk: AlexNetTrunk,
    layers: Sequence[str] = ("conv1", "conv2", "conv3", "conv4", "conv5"),
    stride: int = 4,
    name: str = "hypercolumn",
) -> FeatureFn:
    """A frozen trunk's hypercolumns on the grid: ``(B, sum_l C_l, Hg, Wg)``.

    Each layer's map is read at the grid pixels with ``cpfs.training.model.sample_on_grid`` (bilinear in the
    layer's own receptive-field geometry), L2-normalised over its channels and divided by
    ``sqrt(len(layers))``, so every layer weighs the same in dot products (label propagation) whatever its
    channel count or activation scale, and the hypercolumn has unit norm. Runs in eval mode, no gradients.
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError("hypercolumn_features needs at least one layer")

    @torch.no_grad()
    def fn(images: Tensor, flow: Tensor | None) -> Tensor:
        was_training = trunk.training
        trunk.eval()
        try:
            return _hypercolumns(trunk, trunk.features(images, layers), layers, stride, tuple(images.shape[-2:]))
        finally:
            trunk.train(was_training)

    return FeatureFn(name=name, stride=stride, fn=fn)


def _hypercolumns(trunk: AlexNetTrunk, maps: dict[str, Tensor], layers: tuple[str, ...], stride: int,
                  image_size: tuple[int, int]) -> Tensor:
    """``hypercolumn_features``' output from the trunk's ``maps`` of the images: ``(B, sum C_l, Hg, Wg)``."""
    ys, xs = grid_pixels(image_size, stride, maps[layers[0]])
    cols = [F.normalize(sample_on_grid(maps[layer], trunk.geometry[layer], xs, ys), dim=1)
            for layer in layers]  # each (B, C_l, Hg, Wg), unit norm over its channels
    return torch.cat(cols, dim=1) / math.sqrt(len(layers))  # (B, sum C, Hg, Wg)


def network_features(model: CPFSModel, layers: Sequence[str], stride: int = 4, name: str = "cpfs") -> FeatureFn:
    """A network's features on the grid: the hypercolumns of the trunk ``layers`` and, where ``layers`` names
    ``EMBEDDING`` ("embedding"), the model's unit embedding (``model_embedding_features``) as one more block after
    them: ``(B, sum_l C_l [+ D], Hg, Wg)``.

    Every block (each trunk layer, the embedding) has unit length and is divided by ``sqrt(number of blocks)``, so
    each weighs the same in dot products and the whole has unit norm, as in ``hypercolumn_features`` (which this
    is when the embedding is not named). The embedding is what the CPFS loss trains directly, "pixels that move
    together are alike"; the trunk layers are what a downstream user reads from the backbone.
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError("network_features needs at least one layer (a trunk layer or 'embedding')")
    if len(set(layers)) != len(layers):
        raise ValueError(f"network_features: a layer named twice in {list(layers)}")
    trunk_layers = tuple(layer for layer in layers if layer != EMBEDDING)
    if len(trunk_layers) == len(layers):
        return hypercolumn_features(model.trunk, trunk_layers, stride=stride, name=name)
    if not trunk_layers:
        return model_embedding_features(model, stride=stride, name=name)
    blocks = len(trunk_layers) + 1
    needed = tuple(dict.fromkeys(trunk_layers + model.layers))  # the trunk runs once for both parts

    @torch.no_grad()
    def fn(images: Tensor, flow: Tensor | None) -> Tensor:
        was_training = model.training
        model.eval()
        try:
            maps = model.trunk.features(images, needed)
            hyper = _hypercolumns(model.trunk, maps, trunk_layers, stride, tuple(images.shape[-2:]))
            embedding = model.dense_embedding(images, stride=stride, maps=maps)
        finally:
            model.train(was_training)
        # The trunk layers weigh 1/sqrt(len(trunk_layers)) each in ``hyper``: rescaled to 1/sqrt(blocks), like
        # the embedding.
        return torch.cat([hyper * math.sqrt(len(trunk_layers) / blocks), embedding / math.sqrt(blocks)], dim=1)

    return FeatureFn(name=name, stride=stride, fn=fn)


@torch.no_grad()
def compute_features(feature_fn: FeatureFn, images: Tensor, flow: Tensor | None = None, batch_size: int = 8) -> Tensor:
    """``feature_fn`` over a large batch in slices of ``batch_size``: ``(N, 3, H, W) -> (N, C, Hg, Wg)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outs = []
    for start in range(0, images.shape[0], batch_size):
        f = None if flow is None else flow[start : start + batch_size]
        outs.append(feature_fn(images[start : start + batch_size], f).float())
    return torch.cat(outs)
