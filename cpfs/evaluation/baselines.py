"""Trivial per-pixel feature baselines, usable wherever a ``FeatureFn`` is.

They bound what a protocol measures: a learned feature that does not beat *pixel position* or *colour*
has learned nothing the protocol rewards, and the *flow oracle* (the flow itself, which CPFS tries to
predict from one image) is the ceiling of flow alignment. ``random_init_model`` is the untrained network
(same architecture, fixed seed), the usual lower bound of self-supervised learning.

A fair random baseline: BatchNorm running statistics of a freshly initialised network are 0/1, which is not
what its layers output; left so, the random network is crippled (a trial scored 0.20 instead of 0.31) and
flatters the trained model. ``recalibrate_batchnorm`` re-estimates them on ``training_crops`` (train-mode
forward passes with ``momentum=None``, i.e. a cumulative average, no gradient), leaving every weight untouched.

All return ``(B, C, Hg, Wg)`` maps on the grid of ``cpfs.evaluation.features`` (cell (i, j) = input pixel
``(j * stride, i * stride)``), read there without smoothing.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from cpfs.config import StoreConfig
from cpfs.training.data import FlowPairDataset
from cpfs.evaluation.features import FeatureFn
from cpfs.training.model import AlexNetConfig, CPFSModel, CPFSModelConfig, sample_points
from cpfs.records import FrameRange


def _on_grid(x: Tensor, stride: int) -> Tensor:
    """Values at the grid pixels: ``(B, C, H, W) -> (B, C, ceil(H/stride), ceil(W/stride))``."""
    return x[..., ::stride, ::stride]


def position_features(stride: int = 1) -> FeatureFn:
    """Pixel position only: ``(x / (W - 1), y / (H - 1))`` in [0, 1], 2 channels."""

    def fn(images: Tensor, flow: Tensor | None) -> Tensor:
        b, _, height, width = images.shape
        ys = torch.linspace(0.0, 1.0, height, device=images.device, dtype=images.dtype)
        xs = torch.linspace(0.0, 1.0, width, device=images.device, dtype=images.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
        pos = torch.stack([gx, gy]).unsqueeze(0).expand(b, -1, -1, -1)  # (B, 2, H, W)
        return _on_grid(pos, stride)

    return FeatureFn(name="position", stride=stride, fn=fn, metric="euclidean")


def rgb_to_lab(images: Tensor) -> Tensor:
    """sRGB in [0, 1] -> CIE L*a*b* (D65 white), ``(B, 3, H, W) -> (B, 3, H, W)``; L in [0, 100], a, b ~ [-128, 127].

    sRGB is linearised (``c / 12.92`` below 0.04045, else ``((c + 0.055) / 1.055) ^ 2.4``), mapped to XYZ
    with the sRGB matrix, divided by the D65 white point, then ``f(t) = t^(1/3)`` above ``(6/29)^3``, else
    ``t / (3 (6/29)^2) + 4/29``; ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``, ``b = 200 (f(Y) - f(Z))``.
    """
    c = images.clamp(0.0, 1.0)
    lin = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = torch.tensor(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
        dtype=images.dtype,
        device=images.device,
    )
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)  # (B, 3, H, W)
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    t = xyz / white
    delta = 6.0 / 29.0
    f = torch.where(t > delta**3, t.clamp_min(1e-12) ** (1.0 / 3.0), t / (3 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def colour_features(space: Literal["rgb", "lab"] = "lab", stride: int = 1) -> FeatureFn:
    """Colour only: RGB in [0, 1], or Lab scaled to about unit range (``L / 100``, ``a / 128``, ``b / 128``)."""
    if space not in ("rgb", "lab"):
        raise ValueError(f"colour space must be 'rgb' or 'lab', got {space!r}")

    def fn(images: Tensor, flow: Tensor | None) -> Tensor:
        if space == "rgb":
            return _on_grid(images, stride)
        lab = rgb_to_lab(images)
        scale = torch.tensor([100.0, 128.0, 128.0], dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
        return _on_grid(lab / scale, stride)

    return FeatureFn(name=f"colour-{space}", stride=stride, fn=fn, metric="euclidean")


def flow_oracle_features(stride: int = 1) -> FeatureFn:
    """The optical flow itself, ``(u, v)`` px (2 channels): the oracle of flow alignment.

    Needs the flow: protocols without flow (the probes, DAVIS) raise a ValueError naming this feature.
    """

    def fn(images: Tensor, flow: Tensor | None) -> Tensor:
        assert flow is not None  # FeatureFn.__call__ checks it before calling
        return _on_grid(flow.to(images.dtype), stride)

    return FeatureFn(name="flow-oracle", stride=stride, fn=fn, needs_flow=True, metric="flow")


def random_init_model(config: CPFSModelConfig | None = None, seed: int = 0, width: float = 0.5) -> CPFSModel:
    """An untrained ``CPFSModel`` (PyTorch default / Kaiming init) with a fixed seed, in eval mode.

    ``config`` defaults to ``CPFSModelConfig(trunk=AlexNetConfig(width=width))``; pass the trained model's
    config so the random baseline has the same architecture. The global RNG state is restored afterwards.
    """
    config = config or CPFSModelConfig(trunk=AlexNetConfig(width=width))
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = CPFSModel(config)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: CPFSModel, batches: Sequence[Tensor], points_per_image: int = 256, seed: int = 0) -> CPFSModel:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` of images; weights untouched.

    Running statistics are reset, momentum set to None (PyTorch then keeps the cumulative average of the batch
    statistics: with equal batch sizes, the mean over all images), and the model runs forward in train mode on
    each batch ``(B, 3, H, W)`` in [0, 1] with ``points_per_image`` seeded pixels per image (the head's
    BatchNorm1d sees hypercolumns). Momenta and eval mode are restored. Returns ``model``.
    """
    if not batches:
        raise ValueError("recalibrate_batchnorm needs at least one batch of images")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    gen = torch.Generator().manual_seed(seed)
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for images in batches:
            b, _, h, w = images.shape
            model(images, sample_points(b, h, w, points_per_image, generator=gen))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return model


def training_crops(store: StoreConfig, train: Sequence[FrameRange], crop: int, batches: int, batch_size: int,
                   seed: int) -> list[Tensor]:
    """``batches`` batches of ``batch_size`` centre crops (``crop`` px: the training crop size) of seeded random
    training pairs: what ``recalibrate_batchnorm`` runs on."""
    dataset = FlowPairDataset(store, list(train), crop=crop, augment=None, seed=seed)
    n = batches * batch_size
    rng = np.random.default_rng([seed, 7919])
    idx = rng.choice(len(dataset), size=n, replace=len(dataset) < n)
    images = torch.stack([dataset[int(i)][0] for i in idx])  # (n, 3, crop, crop)
    return list(images.split(batch_size))
