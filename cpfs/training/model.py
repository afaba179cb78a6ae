"""The CPFS network: an AlexNet trunk, hypercolumns read at sampled pixels, and an embedding head.

Reference: A. Mahendran, J. Thewlis, A. Vedaldi, "Cross Pixel Optical-Flow Similarity for Self-Supervised
Learning", ACCV 2018 (arXiv:1807.05636). The network maps one image to a D-dimensional unit vector per pixel;
training (see ``cpfs.training.kernels`` and ``cpfs.training.losses``) makes the similarity of these vectors match the similarity
of the pixels' optical flow. Only the trunk is kept afterwards, as a pretrained feature extractor.

Reading order:
1. ``AlexNetConfig`` and the layer table ``ALEXNET_LAYERS``.
2. ``LayerGeometry``: where each layer's units sit in input pixels (stride, offset), derived from the table.
3. ``AlexNetTrunk``: the convolutional trunk, fc6/fc7 made convolutional so they exist at every position.
4. ``sample_hypercolumns``: each layer bilinearly interpolated at the sampled pixels only.
5. ``CPFSModel``: trunk + hypercolumns + MLP head + L2 normalisation; ``dense_embedding`` for evaluation.
6. ``sample_points`` / ``read_at_points``: which pixels a training step looks at, and their flow.
7. ``load_trunk_state``: checkpoint loading that names what does not match.

Length (~480 lines, over the project's ~400): the network is read top to bottom as one unit, in the order
above; splitting the geometry from the trunk that uses it would make the reader jump between files.

Pixel convention used throughout: a point ``(x, y)`` is in input pixel units with pixel centres at integers
(pixel ``(0, 0)`` covers ``[-0.5, 0.5]^2``); x is the column, y the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# -----------------------------------------------------------------------------------------------------------
# 1. Configuration and the layer table


@dataclass(frozen=True)
class AlexNetConfig:
    """Shape of the AlexNet trunk."""

    # Channel multiplier: 1.0 = the paper's AlexNet (96-256-384-384-256-4096-4096); 0.5 half-width for CPU demos.
    width: float = 1.0
    # BatchNorm after every conv (training from scratch needs it); False: plain conv with bias.
    batch_norm: bool = True
    in_channels: int = 3  # RGB input

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"AlexNetConfig.width must be > 0, got {self.width}")
        if self.in_channels < 1:
            raise ValueError(f"AlexNetConfig.in_channels must be >= 1, got {self.in_channels}")


@dataclass(frozen=True)
class LayerSpec:
    """One trunk layer: a conv(+BN)+ReLU block or a max-pool."""

    name: str
    kind: str  # "conv" or "pool"
    kernel: int
    stride: int
    padding: int
    channels: int = 0  # output channels at width 1.0 (conv only; a pool keeps its input's channels)


# AlexNet as in Krizhevsky et al. 2012 / Caffe's single-tower variant (no channel groups, as torchvision's).
# Departure from the classifier: fc6 and fc7 are convolutions so that they exist at every spatial position
# for any input >= MIN_INPUT_SIZE px, which hypercolumns need. fc6 is a 3x3 conv with padding 1 (not the
# classifier's 6x6 over the whole pool5 map): it keeps pool5's grid (same stride and offset, one fc6 unit per
# pool5 unit, a symmetric kernel so the unit is centred on its pool5 position), and it costs a quarter of the
# 6x6's parameters. fc7 is 1x1.
ALEXNET_LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec("conv1", "conv", kernel=11, stride=4, padding=2, channels=96),
    LayerSpec("pool1", "pool", kernel=3, stride=2, padding=0),
    LayerSpec("conv2", "conv", kernel=5, stride=1, padding=2, channels=256),
    LayerSpec("pool2", "pool", kernel=3, stride=2, padding=0),
    LayerSpec("conv3", "conv", kernel=3, stride=1, padding=1, channels=384),
    LayerSpec("conv4", "conv", kernel=3, stride=1, padding=1, channels=384),
    LayerSpec("conv5", "conv", kernel=3, stride=1, padding=1, channels=256),
    LayerSpec("pool5", "pool", kernel=3, stride=2, padding=0),
    LayerSpec("fc6", "conv", kernel=3, stride=1, padding=1, channels=4096),
    LayerSpec("fc7", "conv", kernel=1, stride=1, padding=0, channels=4096),
)
LAYER_NAMES: tuple[str, ...] = tuple(spec.name for spec in ALEXNET_LAYERS)

# The paper's hypercolumn: two early layers for position/edges, a middle one, and two deep ones for semantics.
HYPERCOLUMN_LAYERS: tuple[str, ...] = ("conv1", "pool1", "conv3", "pool5", "fc7")

# Default feature layers for the evaluation stage (trunk as a frozen feature extractor).
CONV_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5")

# Among the feature layers of a dense protocol (``cpfs.evaluation.features.network_features``): the model's own
# unit embedding, the head's output that the CPFS loss trains, as one more block beside trunk layers.
EMBEDDING = "embedding"

# Per-channel mean and std of ImageNet RGB in [0, 1]: the trunk standardises its input with them, so callers
# pass plain [0, 1] images and training and evaluation cannot disagree on the normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# -----------------------------------------------------------------------------------------------------------
# 2. Receptive geometry: where a layer's unit sits in the input image


@dataclass(frozen=True)
class LayerGeometry:
    """Unit ``i`` of a layer is centred on input pixel coordinate ``offset + stride * i`` (both axes alike).

    For a conv/pool with kernel k, stride s, padding p applied to a map with geometry (S, O), output unit i
    reads input units ``i*s - p ... i*s - p + k - 1``, centred on input unit ``i*s - p + (k - 1)/2``, hence
    ``S' = S * s`` and ``O' = O + S * ((k - 1)/2 - p)``. Flooring of output sizes does not change this.
    """

    stride: int  # input pixels between neighbouring units
    offset: float  # input pixel coordinate of unit 0's centre

    def to_layer(self, x: Tensor) -> Tensor:
        """Input pixel coordinate(s) -> this layer's (fractional) unit coordinate(s)."""
        return (x - self.offset) / self.stride


def _receptive_geometry(layers: Sequence[LayerSpec]) -> dict[str, LayerGeometry]:
    stride, offset = 1, 0.0  # the input image: unit i is pixel i
    out = {}
    for spec in layers:
        offset = offset + stride * ((spec.kernel - 1) / 2 - spec.padding)
        stride = stride * spec.stride
        out[spec.name] = LayerGeometry(stride=stride, offset=offset)
    return out


def _min_input_size(layers: Sequence[LayerSpec]) -> int:
    """Smallest input side for which every layer has at least one unit (inverse of floor((n+2p-k)/s)+1 >= 1)."""
    size = 1
    for spec in reversed(layers):
        size = (size - 1) * spec.stride + spec.kernel - 2 * spec.padding
    return size


# conv1 (4, 3), pool1 (8, 7), conv2 (8, 7), pool2 (16, 15), conv3-5 (16, 15), pool5/fc6/fc7 (32, 31).
ALEXNET_GEOMETRY: dict[str, LayerGeometry] = _receptive_geometry(ALEXNET_LAYERS)
MIN_INPUT_SIZE: int = _min_input_size(ALEXNET_LAYERS)  # 63 px

# -----------------------------------------------------------------------------------------------------------
# 3. The trunk


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class ConvBlock(nn.Module):
    """conv -> BatchNorm (optional) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, batch_norm: bool) -> None:
        super().__init__()
        # With BN the conv bias is redundant (BN's shift replaces it).
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class AlexNetTrunk(nn.Module):
    """AlexNet conv1..fc7, fully convolutional; returns every layer's map by name.

    Input: RGB images ``(B, 3, H, W)`` with values in [0, 1], ``H, W >= MIN_INPUT_SIZE`` (63 px); the trunk
    standardises them with the ImageNet mean/std. Output maps have the channels
    ``channels[name]`` and the receptive geometry ``geometry[name]`` (independent of width and input size).
    """

    def __init__(self, config: AlexNetConfig = AlexNetConfig()) -> None:
        super().__init__()
        self.config = config
        self.geometry: dict[str, LayerGeometry] = dict(ALEXNET_GEOMETRY)
        self.channels: dict[str, int] = {}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        c = config.in_channels
        for spec in ALEXNET_LAYERS:
            if spec.kind == "conv":
                c_out = _scaled(spec.channels, config.width)
                block: nn.Module = ConvBlock(c, c_out, spec.kernel, spec.stride, spec.padding, config.batch_norm)
                c = c_out
            else:
                block = nn.MaxPool2d(spec.kernel, stride=spec.stride, padding=spec.padding)
            self.add_module(spec.name, block)  # attribute names = layer names = state-dict prefixes
            self.channels[spec.name] = c

    def _standardise(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"images must have shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"images must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} px for pool5/fc7 to exist, "
                f"got {x.shape[-1]}x{x.shape[-2]} (W x H)"
            )
        if self.config.in_channels == 3:
            return (x - self.mean) / self.std
        return x

    def features(self, x: Tensor, layers: Iterable[str] = CONV_LAYERS) -> dict[str, Tensor]:
        """The maps of the requested layers, ``{name: (B, C_name, H_name, W_name)}``.

        Runs the trunk only as deep as the deepest requested layer (conv1..conv5 never pays for fc6/fc7).
        """
        wanted = set(layers)
        unknown = wanted - set(LAYER_NAMES)
        if unknown:
            raise ValueError(f"unknown layer(s) {sorted(unknown)}; AlexNetTrunk layers are {list(LAYER_NAMES)}")
        if not wanted:
            raise ValueError("features() needs at least one layer name")
        h = self._standardise(x)
        out: dict[str, Tensor] = {}
        for name in LAYER_NAMES:
            h = getattr(self, name)(h)
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    break
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """All layer maps, conv1 to fc7 (see ``features`` for a subset)."""
        return self.features(x, LAYER_NAMES)


# -----------------------------------------------------------------------------------------------------------
# 4. Hypercolumns at sampled pixels


def sample_hypercolumns(
    maps: Mapping[str, Tensor],
    layers: Sequence[str],
    points: Tensor,
    image_size: tuple[int, int],
    geometry: Mapping[str, LayerGeometry] = ALEXNET_GEOMETRY,
) -> Tensor:
    """Concatenate each layer's value at each point, bilinearly interpolated in that layer's own grid.

    For layer l with geometry (S, O) and a map of size (h, w), the point (x, y) in input pixels sits at unit
    coordinate ``u = (x - O) / S``, ``v = (y - O) / S`` (unit centres at integers). ``F.grid_sample`` with
    ``align_corners=True`` puts normalised -1 and +1 on the centres of the first and last units, so
    ``g_x = 2u / (w - 1) - 1`` reads exactly unit coordinate u. Points outside the span of unit centres
    (e.g. x < 3 for conv1) take the nearest edge value (``padding_mode="border"``, i.e. u clamped to
    [0, w-1]) rather than blending with zeros. Only the N points are read: no map is upsampled.

    Args:
        maps: ``{name: (B, C_l, h_l, w_l)}`` from ``AlexNetTrunk``.
        layers: which maps to read, in the order of concatenation.
        points: ``(B, N, 2)`` pixel coordinates (x, y), integer or fractional, inside the image.
        image_size: ``(H, W)`` of the input image, to validate the points.
        geometry: stride/offset of each layer (default: AlexNet's).
    Returns:
        ``(B, N, sum_l C_l)`` hypercolumns.
    """
    if points.dim() != 3 or points.shape[2] != 2:
        raise ValueError(f"points must have shape (B, N, 2) as (x, y), got {tuple(points.shape)}")
    if not layers:
        raise ValueError("sample_hypercolumns needs at least one layer")
    missing = [name for name in layers if name not in maps or name not in geometry]
    if missing:
        raise ValueError(f"layer(s) {missing} missing from the maps {list(maps)} or the geometry")
    height, width = image_size
    pts = points.to(dtype=maps[layers[0]].dtype)
    x, y = pts[..., 0], pts[..., 1]  # (B, N) each
    if bool((x < 0).any() | (x > width - 1).any() | (y < 0).any() | (y > height - 1).any()):
        raise ValueError(
            f"points must lie inside the {width}x{height} image (0 <= x <= {width - 1}, 0 <= y <= {height - 1})"
        )
    columns = []
    for name in layers:
        fmap = maps[name]  # (B, C, h, w)
        if fmap.shape[0] != points.shape[0]:
            raise ValueError(f"map {name!r} has batch {fmap.shape[0]} but points have batch {points.shape[0]}")
        h, w = fmap.shape[-2:]
        geo = geometry[name]
        u, v = geo.to_layer(x), geo.to_layer(y)  # (B, N) unit coordinates
        # A 1-unit axis: align_corners=True maps any g to unit 0, so the divisor only has to be non-zero.
        gx = 2.0 * u / max(w - 1, 1) - 1.0
        gy = 2.0 * v / max(h - 1, 1) - 1.0
        grid = torch.stack([gx, gy], dim=-1).unsqueeze(2)  # (B, N, 1, 2): N "rows" of one sample each
        # (B, C, N, 1): bilinear, edge-clamped, unit centres on the grid's -1/+1
        sampled = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=True)
        columns.append(sampled.squeeze(-1).transpose(1, 2))  # (B, N, C)
    return torch.cat(columns, dim=-1)  # (B, N, sum C)


def grid_pixels(image_size: tuple[int, int], stride: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The rows ``ys`` and columns ``xs`` of the pixel grid of an ``(H, W)`` image at ``stride`` (grid cell
    ``(i, j)`` is pixel ``(xs[j], ys[i]) = (j * stride, i * stride)``), in ``like``'s dtype and device."""
    ys = torch.arange(0, image_size[0], stride, device=like.device).to(like.dtype)
    xs = torch.arange(0, image_size[1], stride, device=like.device).to(like.dtype)
    return ys, xs


def sample_on_grid(fmap: Tensor, geometry: LayerGeometry, xs: Tensor, ys: Tensor) -> Tensor:
    """A layer's map read at every pixel ``(xs[j], ys[i])`` of a regular grid: ``(B, C, h, w) ->
    (B, C, len(ys), len(xs))``, channel-major. The same values as ``sample_hypercolumns`` at those pixels
    (the same unit coordinates and bilinear, edge-clamped reads), without the ``(B, N, C)`` transpose."""
    h, w = fmap.shape[-2:]
    xs, ys = xs.to(fmap.dtype), ys.to(fmap.dtype)
    gx = (2.0 * geometry.to_layer(xs) / max(w - 1, 1) - 1.0).view(1, -1).expand(len(ys), -1)
    gy = (2.0 * geometry.to_layer(ys) / max(h - 1, 1) - 1.0).view(-1, 1).expand(-1, len(xs))
    grid = torch.stack([gx, gy], dim=-1).unsqueeze(0).expand(fmap.shape[0], -1, -1, -1)  # (B, len(ys), len(xs), 2)
    return F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=True)


# -----------------------------------------------------------------------------------------------------------
# 5. The CPFS model


@dataclass(frozen=True)
class CPFSModelConfig:
    """Trunk, hypercolumn and embedding head of the CPFS network."""

    trunk: AlexNetConfig = field(default_factory=AlexNetConfig)  # the AlexNet trunk
    hypercolumn_layers: tuple[str, ...] = HYPERCOLUMN_LAYERS  # layers concatenated into each pixel's hypercolumn
    hidden: int = 256  # width of the head's hidden layer
    embed_dim: int = 16  # D, the embedding dimension (the paper: 16)

    def __post_init__(self) -> None:
        unknown = [name for name in self.hypercolumn_layers if name not in LAYER_NAMES]
        if unknown or not self.hypercolumn_layers:
            raise ValueError(
                f"hypercolumn_layers must be a non-empty subset of {list(LAYER_NAMES)}, got {self.hypercolumn_layers}"
            )
        if self.hidden < 1 or self.embed_dim < 1:
            raise ValueError(f"hidden and embed_dim must be >= 1, got hidden={self.hidden}, embed_dim={self.embed_dim}")


class EmbeddingHead(nn.Module):
    """Hypercolumn -> embedding: Linear -> BatchNorm -> ReLU -> Linear -> L2 normalisation (per pixel).

    BatchNorm here matters: hypercolumn parts from conv1 and fc7 have very different scales and the head
    would otherwise be dominated by the larger one.
    """

    def __init__(self, c_in: int, hidden: int, out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c_in, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, h: Tensor) -> Tensor:
        b, n, c = h.shape
        z = h.reshape(b * n, c)  # (B*N, C): every sampled pixel is one sample for BatchNorm1d
        z = self.fc2(F.relu(self.bn(self.fc1(z))))  # (B*N, D)
        z = z.view(b, n, -1)  # (B, N, D)
        return F.normalize(z, dim=-1, eps=1e-8)  # unit vectors: the embedding kernel is a cosine

    def from_first_layer(self, z1: Tensor) -> Tensor:
        """The rest of the head, channel-major: ``fc1``'s output ``(B, hidden, N) -> (B, D, N)`` unit vectors
        (BatchNorm1d normalises dim 1 of a 3-d input, the same per-channel statistics as ``forward``)."""
        z = F.relu(self.bn(z1))
        z = torch.matmul(self.fc2.weight, z) + self.fc2.bias.view(1, -1, 1)  # (B, D, N)
        return F.normalize(z, dim=1, eps=1e-8)


class CPFSModel(nn.Module):
    """CPFS network: image + sampled pixels -> unit-norm D-dimensional embedding per pixel."""

    def __init__(self, config: CPFSModelConfig = CPFSModelConfig()) -> None:
        super().__init__()
        self.config = config
        self.trunk = AlexNetTrunk(config.trunk)
        self.layers = tuple(config.hypercolumn_layers)
        c_in = sum(self.trunk.channels[name] for name in self.layers)
        self.head = EmbeddingHead(c_in, config.hidden, config.embed_dim)

    def forward(self, images: Tensor, points: Tensor) -> Tensor:
        """``images (B, 3, H, W)`` in [0, 1], ``points (B, N, 2)`` as (x, y) px -> ``(B, N, D)`` unit vectors."""
        if points.dim() != 3 or points.shape[0] != images.shape[0]:
            raise ValueError(f"points must have shape (B={images.shape[0]}, N, 2), got {tuple(points.shape)}")
        maps = self.trunk.features(images, self.layers)
        columns = sample_hypercolumns(maps, self.layers, points, tuple(images.shape[-2:]), self.trunk.geometry)
        return self.head(columns)  # (B, N, D)

    @torch.no_grad()
    def dense_embedding(self, images: Tensor, stride: int = 4, chunk: int = 4096,
                        maps: Mapping[str, Tensor] | None = None) -> Tensor:
        """Embeddings on a regular grid of pixels, for evaluation: ``(B, 3, H, W) -> (B, D, Hg, Wg)``.

        Grid pixel ``(i, j)`` is input pixel ``(x, y) = (j * stride, i * stride)``; ``Hg = ceil(H / stride)``,
        ``Wg = ceil(W / stride)``. The value at each grid pixel is ``forward`` at that pixel (up to float
        rounding), computed another way: the head's first layer is linear and has no bias, and bilinear
        interpolation is linear too, so they commute. A layer wider than the head's hidden width (fc7: 2,048
        channels on a 7 x 9 map at 256 px) is projected on its own small map first and then interpolated at
        ``hidden`` channels; a narrower one is interpolated and then projected. Everything stays channel-major
        (no ``(points, channels)`` hypercolumn is built): about 3x faster than sampling the hypercolumns (the demo
        checkpoint, one 256 x 340 frame, one thread: 0.63 -> 0.20 s; ``bench/eval_profile.py`` for a whole evaluation).
        The trunk runs once per image; the grid is done in blocks of whole rows of at most ``chunk`` points
        (at least one row), which bounds the memory of the ``(B, hidden, n)`` pre-activations.
        Runs in eval mode (BatchNorm with running statistics) and restores the previous mode afterwards. ``maps``:
        the trunk's maps of ``images`` (at least the head's layers), already computed in eval mode by a caller that
        reads other layers too (``cpfs.evaluation.features.network_features``), so the trunk runs once.
        """
        if stride < 1 or chunk < 1:
            raise ValueError(f"stride and chunk must be >= 1, got stride={stride}, chunk={chunk}")
        was_training = self.training
        self.eval()
        try:
            b = images.shape[0]
            if maps is None:
                maps = self.trunk.features(images, self.layers)
            ys, xs = grid_pixels(tuple(images.shape[-2:]), stride, maps[self.layers[0]])
            assert self.head.fc1.bias is None  # a bias would have to be added once, after the sum over layers
            weight = self.head.fc1.weight  # (hidden, sum C): one column block per layer, in self.layers order
            hidden = weight.shape[0]
            sources = []  # per layer: (map to interpolate, its geometry, the projection still to apply or None)
            start = 0
            for name in self.layers:
                fmap = maps[name]
                w_l = weight[:, start : start + fmap.shape[1]]
                start += fmap.shape[1]
                if fmap.shape[1] > hidden:  # project on the layer's own grid, then interpolate `hidden` channels
                    sources.append((F.conv2d(fmap, w_l[:, :, None, None]), self.trunk.geometry[name], None))
                else:
                    sources.append((fmap, self.trunk.geometry[name], w_l))
            rows = max(1, chunk // len(xs))
            parts = []
            for r0 in range(0, len(ys), rows):
                y = ys[r0 : r0 + rows]
                pre = None  # (B, hidden, n): the head's first layer at the block's grid pixels
                for fmap, geo, w_l in sources:
                    v = sample_on_grid(fmap, geo, xs, y).flatten(2)  # (B, C or hidden, n)
                    if w_l is not None:
                        v = torch.matmul(w_l, v)  # (B, hidden, n)
                    pre = v if pre is None else pre.add_(v)
                parts.append(self.head.from_first_layer(pre))  # (B, D, n)
            emb = torch.cat(parts, dim=2)  # (B, D, Hg*Wg)
            return emb.view(b, -1, len(ys), len(xs))  # (B, D, Hg, Wg)
        finally:
            self.train(was_training)


# -----------------------------------------------------------------------------------------------------------
# 6. Which pixels a training step looks at


def sample_points(
    B: int,
    H: int,
    W: int,
    N: int,
    generator: torch.Generator | None = None,
    valid_mask: Tensor | None = None,
) -> Tensor:
    """N pixels per image, uniformly at random, without replacement where possible.

    ``valid_mask`` (``(H, W)`` or ``(B, H, W)`` bool, True = usable, e.g. finite flow) restricts the choice.
    An image with fewer than N usable pixels draws them with replacement (uniformly among its usable ones);
    an image with none raises ValueError. Sampling runs on the CPU with ``generator`` (a CPU generator).

    Returns:
        ``(B, N, 2)`` int64 pixel coordinates (x, y); read the flow at them with ``read_at_points``.
    """
    if min(B, H, W, N) < 1:
        raise ValueError(f"sample_points needs B, H, W, N >= 1, got B={B}, H={H}, W={W}, N={N}")
    if valid_mask is None:
        mask = torch.ones(B, H * W, dtype=torch.bool)
    else:
        if valid_mask.dtype != torch.bool or valid_mask.shape[-2:] != (H, W) or valid_mask.dim() not in (2, 3):
            raise ValueError(
                f"valid_mask must be a bool tensor of shape ({H}, {W}) or ({B}, {H}, {W}), "
                f"got {valid_mask.dtype} {tuple(valid_mask.shape)}"
            )
        mask = valid_mask.cpu().reshape(-1, H * W)  # (1 or B', H*W)
        if mask.shape[0] not in (1, B):
            raise ValueError(f"valid_mask has batch {mask.shape[0]}, expected {B}")
        mask = mask.expand(B, -1)  # (B, H*W)
    counts = mask.sum(dim=1)  # (B,)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"image(s) {empty} of the batch have no valid pixel to sample")
    # Uniform sampling without replacement = the N largest of i.i.d. uniform keys; unusable pixels get key -1.
    keys = torch.rand(B, H * W, generator=generator).masked_fill(~mask, -1.0)  # (B, H*W)
    index = keys.topk(min(N, H * W), dim=1).indices  # (B, min(N, H*W))
    if index.shape[1] < N or bool((counts < N).any()):
        rows = []
        for b in range(B):
            if counts[b] >= N:
                rows.append(index[b, :N])
            else:  # too few usable pixels: draw with replacement among them
                rows.append(torch.multinomial(mask[b].float(), N, replacement=True, generator=generator))
        index = torch.stack(rows)  # (B, N)
    return torch.stack([index % W, index // W], dim=-1)  # (B, N, 2) as (x, y)


def read_at_points(field_map: Tensor, points: Tensor) -> Tensor:
    """Values of a dense map at integer pixels: ``(B, C, H, W)``, ``(B, N, 2)`` (x, y) -> ``(B, N, C)``.

    Used for the flow at the sampled pixels (no interpolation: the points are the flow's own pixels).
    """
    if field_map.dim() != 4 or points.dim() != 3 or points.shape[2] != 2 or points.shape[0] != field_map.shape[0]:
        raise ValueError(
            "need field_map (B, C, H, W) and points (B, N, 2) with the same B, "
            f"got {tuple(field_map.shape)} and {tuple(points.shape)}"
        )
    if points.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"points must be integer pixel coordinates, got dtype {points.dtype}")
    b, c, h, w = field_map.shape
    x, y = points[..., 0].long(), points[..., 1].long()  # (B, N)
    if bool((x < 0).any() | (x >= w).any() | (y < 0).any() | (y >= h).any()):
        raise ValueError(f"points must lie inside the {w}x{h} map")
    flat = field_map.reshape(b, c, h * w)  # (B, C, H*W)
    index = (y * w + x).unsqueeze(1).expand(-1, c, -1)  # (B, C, N)
    return flat.gather(2, index).transpose(1, 2)  # (B, N, C)


# -----------------------------------------------------------------------------------------------------------
# 7. Checkpoints


def load_trunk_state(trunk: AlexNetTrunk, state_dict: Mapping[str, Tensor]) -> None:
    """Load trunk weights, or raise ValueError naming every missing, unexpected and mis-shaped key.

    Accepts a trunk's own state dict or a whole ``CPFSModel`` state dict (its ``trunk.`` entries are used).
    """
    if any(key.startswith("trunk.") for key in state_dict):
        state_dict = {key[len("trunk.") :]: value for key, value in state_dict.items() if key.startswith("trunk.")}
    expected = trunk.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        cfg = trunk.config
        raise ValueError(
            f"checkpoint does not fit AlexNetTrunk(width={cfg.width}, batch_norm={cfg.batch_norm}, "
            f"in_channels={cfg.in_channels}); it is probably from another architecture. " + "; ".join(problems)
        )
    trunk.load_state_dict(dict(state_dict), strict=True)
