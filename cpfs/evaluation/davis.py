"""Video object segmentation by label propagation in a frozen network's feature space (DAVIS protocol).

Protocol (Wang, Jabri, Efros 2019, "Learning Correspondence from the Cycle-Consistency of Time"; Jabri,
Owens, Efros 2020, "Space-Time Correspondence as a Contrastive Random Walk"): only the first frame's mask
is given. Every frame is resized (``size``) and mapped to per-pixel features on a grid (``FeatureFn``),
For frame t, the *references* are frame 0 (ground-truth labels) and the ``n_context`` previous frames
(their propagated soft labels). Each query cell q of frame t takes the ``topk`` reference cells r with the
highest affinity ``a(q, r) = -||f_q - f_r||^2 / (2 temperature)`` among those within ``radius`` grid cells
of q (Euclidean, same grid position in every reference frame), and

    ``label_t(q) = sum_{r in topk(q)} softmax_r(a(q, r)) * label_ref(r)``,

a soft label (a distribution over background and objects). For unit-length features (CPFS embeddings,
``hypercolumn_features``) ``a(q, r) = <f_q, f_r> / temperature - 1 / temperature``, and the constant
cancels in the softmax: this is exactly the cosine-affinity rule of the papers above. Features are not
re-normalised here, because for the baselines (position, colour) the length carries the information. The soft label is kept for later frames;
the prediction is its bilinear upsampling to the full annotation resolution, then an argmax.

Exact ties at the k-th place (equal affinities: the position baseline has them by construction, the colour
baseline often) are broken in an unspecified order, so which of the tied cells is used may change with the
implementation or its ``tile``; network features (continuous values) have them rarely, where two float32
affinities happen to round to the same value. The tiled evaluation (see "How the rule is evaluated" below)
gives the first implementation's labels bit for bit on network features on the test's sequences and J within
5e-4 on the colour baseline (``tests/cpfs/evaluation/test_davis.py``). The grouped top k
(``_topk_grouped``) orders such rare equal values otherwise than the per-reference top k before it: on all
199 frames of the four shared sequences J moved by at most 4e-6 and F by at most 4e-5 per sequence
(``bench/davis_speed.py --reference 980ddad --sequences 0 --frames 0``).

Scores: J, F and their statistics exactly as the official davis2017-evaluation code defines them
(``cpfs.evaluation.davis_measures``, which names the functions it ports). As there (``all_gt_masks[:, 1:-1]``
in ``davis2017/evaluation.py``), frame 0 (given) and the sequence's last frame are not scored: frames
1..T-2 are, and the last frame is not even propagated. Each object's per-frame J and F give its mean, recall
and decay; a sequence's scores are the means over its objects, the data set's (``J_mean``, ``F_mean``,
``JF_mean``) the means over all objects of all sequences. Where this protocol departs from the official one:
- the official code scores whatever full-resolution masks a method wrote; here they are this propagation's,
  made on frames resized to ``size`` and upsampled to the annotation's resolution, and scored there
  (``resolution``: 480p by default, as the benchmark's usual setting);
- ``max_frames`` (smoke tests) cuts a sequence short: frames 1..max_frames-1 are scored, the official
  per-frame scores of those frames (the sequence's own last frame is not among them); recall and decay
  are then over those frames only.

Length (about 600 lines, over the project's ~400): one protocol's science read top to bottom, the rule and its
tiled evaluation, which the tests check against each other and the reference values; the measures are
``cpfs.evaluation.davis_measures``, the runner over sources ``cpfs.evaluation.protocols.davis``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cpfs.evaluation.datasets import list_davis_sequences, load_image, load_images, load_mask, read_davis_sequence
from cpfs.evaluation.davis_measures import (
    VOID_LABEL,
    contour_accuracy_f,
    dataset_scores,
    object_ids,
    region_similarity_j,
    sequence_scores,
)
from cpfs.evaluation.features import FeatureFn, compute_features, grid_size, upsample_features
from cpfs.evaluation.segmentation import class_map

_TOPK_GROUP = 8  # candidates per group in ``_topk_grouped``: chosen by bench/davis_bound.py --groups (4, 8, 16, 32)


# -----------------------------------------------------------------------------------------------------------
# Label propagation


def labels_to_grid(mask: np.ndarray, num_labels: int, image_size: tuple[int, int], stride: int) -> Tensor:
    """Full-resolution integer mask -> soft one-hot labels on the feature grid, ``(K, Hg, Wg)``.

    The one-hot mask is area-resampled to the ``image_size`` the features saw, box-averaged over a
    ``stride``-wide window and read at the grid pixels ``(j * stride, i * stride)``.
    """
    onehot = F.one_hot(torch.from_numpy(np.asarray(mask, dtype=np.int64)), num_labels).permute(2, 0, 1).float()  # (K, H, W)
    small = F.adaptive_avg_pool2d(onehot.unsqueeze(0), image_size)  # (1, K, h, w): area resampling
    if stride > 1:
        k = stride + 1 - stride % 2  # odd window so it is centred on the grid pixel
        small = F.avg_pool2d(small, k, stride=1, padding=k // 2, count_include_pad=False)
    out = small[0, :, ::stride, ::stride]
    if tuple(out.shape[-2:]) != grid_size(image_size, stride):
        raise AssertionError("grid size mismatch")  # cannot happen: slicing gives ceil(n / stride)
    return out / out.sum(0, keepdim=True).clamp_min(1e-8)


# How the rule is evaluated. Comparing every query cell with every reference cell and masking those outside
# the window (the first implementation) costs n^2 R C multiply-adds per frame and, worse, allocates and
# fills several (queries x R n) matrices per block of queries. Here the grid is cut into ``tile x tile``
# query tiles and each tile is compared only with the cells that some query of the tile can reach: the
# union of its queries' discs (1112 cells for 144 queries with tile 12 and radius 12, against 452 for one
# disc and the R n = 6 x 6420 of a 240 px DAVIS frame). The reference frames are zero-padded by the radius,
# channel last, so every tile reads the same relative cells: one index table (tiles x M) gathers a block of tiles'
# keys into a preallocated buffer, one batched matrix product gives their affinities, and cells outside a
# query's disc or in the padding get -inf, as the masked rule gives them. The R references' affinities lie
# side by side in one row per query, and the top k of that row is taken by groups (``_topk_grouped``: the
# same elements as ``topk``, 3x faster on these rows than a top k per reference and then among those R k,
# the earlier way, measured by bench/davis_bound.py). A frame's reference layout is made once, when it becomes a
# reference, and dropped when it leaves the context. When the window holds the whole grid (``radius`` >=
# the grid diagonal, or ``inf``) there is one tile, no padding and no mask. On 688-channel hypercolumns
# the matrix products are most of the time (about 6e10 flops per 240 px frame); the gathers and top-k
# most of the rest. Tile 12 measured ~10% faster than 8 here (larger products, fewer gathers), 16 slower.


@dataclass(frozen=True)
class _Window:
    """Where each query tile reads its candidate reference cells, on the zero-padded reference grid."""

    hg: int  # grid rows
    wg: int  # grid columns
    th: int  # tile rows (queries per tile: th * tw)
    tw: int  # tile columns
    pad: int  # padding cells on each side of the reference grid
    nty: int  # tiles down the grid
    ntx: int  # tiles across the grid
    keys: Tensor | None  # (n_tiles, M) long, flat padded index of each tile's candidates; None: all cells, in order
    bias: Tensor | None  # (th * tw, M): 0 where the candidate is within radius of the query, -inf beyond; None: all
    inside: Tensor  # (hp * wp,) bool: the padded grid's real cells

    @property
    def hp(self) -> int:
        return self.nty * self.th + 2 * self.pad

    @property
    def wp(self) -> int:
        return self.ntx * self.tw + 2 * self.pad

    @property
    def m(self) -> int:
        return self.hg * self.wg if self.keys is None else self.keys.shape[1]


def _window(hg: int, wg: int, radius: float, tile: int) -> _Window:
    """The tiling of an ``hg x wg`` grid for a disc of ``radius`` cells (see the comment above)."""
    radius32 = float(np.float32(radius))  # the rule compares float32 distances with a float32 radius
    if radius32 >= math.hypot(hg - 1, wg - 1):
        inside = torch.ones(hg * wg, dtype=torch.bool)
        return _Window(hg, wg, hg, wg, 0, 1, 1, None, None, inside)
    th, tw = min(tile, hg), min(tile, wg)
    pad = min(int(math.floor(radius32)), max(hg, wg) - 1)
    nty, ntx = -(-hg // th), -(-wg // tw)
    sh, sw = th + 2 * pad, tw + 2 * pad  # a tile's reach: its cells and pad cells around
    qy, qx = torch.meshgrid(torch.arange(th), torch.arange(tw), indexing="ij")  # (th, tw) each
    ky, kx = torch.meshgrid(torch.arange(sh), torch.arange(sw), indexing="ij")  # (sh, sw) each
    d2 = (ky.reshape(1, -1) - pad - qy.reshape(-1, 1)) ** 2 + (kx.reshape(1, -1) - pad - qx.reshape(-1, 1)) ** 2
    within = ~(torch.sqrt(d2.to(torch.float32)) > radius)  # (th*tw, sh*sw): the rule's `dist > radius` test
    keep = within.any(0)  # the union of the tile's discs
    bias = torch.zeros(within.shape).masked_fill_(~within, float("-inf"))[:, keep]  # (th*tw, M)
    wp = ntx * tw + 2 * pad
    rel = (ky * wp + kx).reshape(-1)[keep]  # (M,): candidates' flat offsets from the tile's corner
    # M rounded up to whole top-k groups (``_topk_grouped``): the extra candidates repeat the first, at -inf.
    extra = -rel.numel() % _TOPK_GROUP
    if extra:
        rel = torch.cat([rel, rel[:1].expand(extra)])
        bias = torch.cat([bias, bias.new_full((bias.shape[0], extra), float("-inf"))], dim=1)
    ty, tx = torch.meshgrid(torch.arange(nty), torch.arange(ntx), indexing="ij")
    corner = (ty * th * wp + tx * tw).reshape(-1)  # (n_tiles,): padded flat index of each tile's reach corner
    inside = torch.zeros(nty * th + 2 * pad, wp, dtype=torch.bool)
    inside[pad : pad + hg, pad : pad + wg] = True
    return _Window(hg, wg, th, tw, pad, nty, ntx, corner[:, None] + rel[None, :], bias, inside.reshape(-1))


@dataclass(frozen=True)
class _Reference:
    """One reference frame in the padded, channel-last layout of its ``_Window``."""

    feats: Tensor  # (hp * wp, C); zeros in the padding
    key_sq: Tensor  # (hp * wp,) squared norms; +inf in the padding, so padded cells score -inf
    labels: Tensor  # (hp * wp, K) soft labels; zeros in the padding


def _reference(win: _Window, feats: Tensor, labels: Tensor) -> _Reference:
    """``feats (C, Hg, Wg)``, ``labels (K, Hg, Wg)`` -> their padded layout."""
    p, hg, wg = win.pad, win.hg, win.wg
    f = feats.new_zeros(win.hp, win.wp, feats.shape[0])
    f[p : p + hg, p : p + wg] = feats.permute(1, 2, 0)
    f = f.view(-1, feats.shape[0])  # (hp*wp, C)
    key_sq = f.square().sum(1).masked_fill_(~win.inside, float("inf"))
    lab = labels.new_zeros(win.hp, win.wp, labels.shape[0])
    lab[p : p + hg, p : p + wg] = labels.permute(1, 2, 0)
    return _Reference(f, key_sq, lab.view(-1, labels.shape[0]))


class _Buffers:
    """Flat float32 buffers reused across blocks and frames (grown, never shrunk), viewed at each use."""

    def __init__(self) -> None:
        self._store: dict[str, Tensor] = {}

    def get(self, name: str, *shape: int) -> Tensor:
        n = math.prod(shape)
        buf = self._store.get(name)
        if buf is None or buf.numel() < n:
            buf = self._store[name] = torch.empty(n)
        return buf[:n].view(shape)


class LabelPropagator:
    """Label propagation one frame at a time (the rule of the module docstring).

    Holds frame 0 and the last ``n_context`` frames as references, in the padded layout the tiled affinity
    reads, and nothing else; ``step(features_t)`` returns frame t's soft labels and makes frame t a reference.
    ``propagate_labels`` is this over a whole ``(T, C, Hg, Wg)`` stack.

    Args:
        first_features: ``(C, Hg, Wg)`` features of frame 0.
        first_labels: ``(K, Hg, Wg)`` soft labels of frame 0 (each cell sums to 1).
        n_context, topk, temperature, radius: the rule's parameters (see ``propagate_labels``).
        tile: query tile side in cells (speed only: 12 balances matrix-product size against wasted candidates).
        chunk: query cells per affinity block (bounds the work buffers: ``chunk / tile^2`` tiles' M keys of C
            floats, ``chunk * R * M`` affinities for R references side by side: 27 MB at the defaults on a
            240 px frame; with no window, M is the whole grid).
    """

    def __init__(
        self,
        first_features: Tensor,
        first_labels: Tensor,
        *,
        n_context: int = 5,
        topk: int = 10,
        temperature: float = 0.07,
        radius: float = 12.0,
        tile: int = 12,
        chunk: int = 1024,
    ) -> None:
        if first_features.dim() != 3 or first_labels.dim() != 3 or first_features.shape[-2:] != first_labels.shape[-2:]:
            raise ValueError(f"need first_features (C, Hg, Wg) and first_labels (K, Hg, Wg) on the same grid, got {tuple(first_features.shape)} and {tuple(first_labels.shape)}")
        if n_context < 0 or topk < 1 or not temperature > 0 or not radius >= 0:
            raise ValueError(f"need n_context >= 0, topk >= 1, temperature > 0, radius >= 0; got {n_context}, {topk}, {temperature}, {radius}")
        if tile < 1 or chunk < 1:
            raise ValueError(f"need tile >= 1 and chunk >= 1, got tile={tile}, chunk={chunk}")
        self.shape = tuple(first_features.shape)  # (C, Hg, Wg) every later frame must have
        self.n_context, self.topk, self.temperature, self.chunk = n_context, topk, temperature, chunk
        self._win = _window(self.shape[1], self.shape[2], radius, tile)
        self._first = _reference(self._win, first_features.float(), first_labels.float())
        self._context: deque[_Reference] = deque(maxlen=max(n_context, 1))
        self._buf = _Buffers()

    @torch.no_grad()
    def step(self, features: Tensor) -> Tensor:
        """``(C, Hg, Wg)`` features of the next frame -> its ``(K, Hg, Wg)`` soft labels."""
        if tuple(features.shape) != self.shape:
            raise ValueError(f"frame features must have shape {self.shape} (those of frame 0), got {tuple(features.shape)}")
        feats = features.float()
        refs = [self._first, *(list(self._context) if self.n_context > 0 else [])]
        labels = self._propagate(feats, refs)
        if self.n_context > 0:
            self._context.append(_reference(self._win, feats, labels))  # the oldest leaves the context
        return labels

    def _propagate(self, feats: Tensor, refs: list[_Reference]) -> Tensor:
        win, c = self._win, feats.shape[0]
        th, tw, hg, wg = win.th, win.tw, win.hg, win.wg
        nq_tile, m, r = th * tw, win.m, len(refs)
        # Query tiles: (n_tiles, th*tw, C), tile-major, row-major inside a tile; zeros beyond the grid.
        q = feats.new_zeros(win.nty * th, win.ntx * tw, c)
        q[:hg, :wg] = feats.permute(1, 2, 0)
        tiles = q.view(win.nty, th, win.ntx, tw, c).permute(0, 2, 1, 3, 4).reshape(win.nty * win.ntx, nq_tile, c)
        del q
        all_labels = torch.cat([ref.labels for ref in refs])  # (R*hp*wp, K)
        hwp = win.hp * win.wp
        out = feats.new_empty(tiles.shape[0], nq_tile, all_labels.shape[1])  # (n_tiles, th*tw, K)
        q_step = min(self.chunk, nq_tile)
        per_block = max(1, self.chunk // nq_tile)  # tiles per block
        k = min(self.topk, r * m)
        for a in range(0, tiles.shape[0], per_block):
            b = min(a + per_block, tiles.shape[0])
            nb = b - a
            idx = None if win.keys is None else win.keys[a:b].reshape(-1)  # (nb*M,)
            for s in range(0, nq_tile, q_step):
                e = min(s + q_step, nq_tile)
                queries = tiles[a:b, s:e]  # (nb, nq, C)
                nq = e - s
                # Every reference's affinities side by side: columns [i*M, (i+1)*M) are reference i's candidates.
                aff = self._buf.get("aff", nb, nq, r * m)
                for i, ref in enumerate(refs):
                    part = aff[:, :, i * m : (i + 1) * m]
                    if idx is None:
                        keys = ref.feats.unsqueeze(0)  # the whole grid
                        part.copy_(ref.key_sq.view(1, 1, m).neg())
                    else:
                        keys = torch.index_select(ref.feats, 0, idx, out=self._buf.get("keys", nb * m, c)).view(nb, m, c)
                        torch.sub(win.bias[s:e], ref.key_sq[idx].view(nb, 1, m), out=part)  # -inf outside each disc
                    # -||q - k||^2 / 2T without the per-query ||q||^2 (the softmax cancels it): (2 q.k - ||k||^2) / 2T,
                    # divided by 2T only for the top k (a positive scale keeps the order), as the rule's form.
                    part.baddbmm_(queries, keys.transpose(1, 2), alpha=2.0)
                top, col = _topk_grouped(aff, k)  # (nb, nq, k), sorted like torch.topk: largest first
                top = top / (2.0 * self.temperature)
                ref_i = torch.div(col, m, rounding_mode="floor")
                cell = col - ref_i * m  # candidate column within its reference
                if win.keys is not None:
                    cell = torch.gather(win.keys[a:b], 1, cell.view(nb, -1)).view(nb, nq, k)  # padded cell
                weights = torch.softmax(top, dim=2)  # -inf entries (outside the window) get weight 0
                values = all_labels[cell + ref_i * hwp]  # (nb, nq, k, K)
                out[a:b, s:e] = (weights.unsqueeze(-1) * values).sum(2)
        grid = out.view(win.nty, win.ntx, th, tw, -1).permute(0, 2, 1, 3, 4).reshape(win.nty * th, win.ntx * tw, -1)
        return grid[:hg, :wg].permute(2, 0, 1).contiguous()  # (K, Hg, Wg)


def _topk_grouped(x: Tensor, k: int, group: int = _TOPK_GROUP) -> tuple[Tensor, Tensor]:
    """``x.topk(k, dim=-1)`` of a 3-d ``x``, the same elements in the same order up to exact ties, faster for a
    small ``k`` of a long row: the row's ``n`` columns are cut into ``n / group`` groups (group j: columns j,
    j + n/group, j + 2 n/group, ...; a strided view, so each group's maximum is an elementwise max of ``group``
    contiguous slices), the ``k`` groups with the largest maxima are kept (every top-k element is in one of
    them: a group holding one has a maximum at least that large, and at most k - 1 other groups can beat it),
    and the top k of their ``k * group`` elements are the answer. Falls back to ``topk`` when ``n`` is not a
    multiple of ``group`` or there are too few groups to gain anything."""
    *lead, n = x.shape
    ng = n // group
    if n % group or ng <= 4 * k:
        return x.topk(k, dim=-1)
    maxima = x.view(*lead, group, ng).amax(-2)  # (..., ng)
    _, best = maxima.topk(k, dim=-1)  # (..., k) group ids
    offsets = torch.arange(0, n, ng, device=x.device).view(group, 1)
    cols = (best.unsqueeze(-2) + offsets).reshape(*lead, group * k)  # (..., group*k) their columns
    top, j = torch.gather(x, -1, cols).topk(k, dim=-1)
    return top, torch.gather(cols, -1, j)


def propagate_labels(
    features: Tensor,
    first_labels: Tensor,
    *,
    n_context: int = 5,
    topk: int = 10,
    temperature: float = 0.07,
    radius: float = 12.0,
    chunk: int = 1024,
    tile: int = 12,
) -> Tensor:
    """Propagate soft labels from frame 0 through a sequence (see the module docstring for the rule).

    Args:
        features: ``(T, C, Hg, Wg)`` per-frame features (used as they are: see the affinity above).
        first_labels: ``(K, Hg, Wg)`` soft labels of frame 0 (each cell sums to 1).
        n_context: previous frames used as references besides frame 0.
        topk: neighbours per query cell.
        temperature: softmax temperature of the affinities.
        radius: spatial window in grid cells (Euclidean); ``inf`` for none.
        chunk: query cells per affinity block (bounds the work buffers; no effect on the result).
        tile: query tile side in cells (speed only; the result is the same up to exact ties, see above).
    Returns:
        ``(T, K, Hg, Wg)`` soft labels; frame 0 is ``first_labels``.
    """
    if features.dim() != 4 or first_labels.dim() != 3 or features.shape[-2:] != first_labels.shape[-2:]:
        raise ValueError(f"need features (T, C, Hg, Wg) and first_labels (K, Hg, Wg) on the same grid, got {tuple(features.shape)} and {tuple(first_labels.shape)}")
    prop = LabelPropagator(features[0], first_labels, n_context=n_context, topk=topk, temperature=temperature,
                           radius=radius, tile=tile, chunk=chunk)
    return torch.stack([first_labels.float(), *(prop.step(features[t]) for t in range(1, features.shape[0]))])


def resized_size(full_size: tuple[int, int], size: int | tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` the feature source sees: ``size`` as (H, W), or an int short side keeping the aspect ratio."""
    if isinstance(size, int):
        h, w = full_size
        scale = size / min(h, w)
        return max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    return int(size[0]), int(size[1])


# -----------------------------------------------------------------------------------------------------------
# The protocol


def iter_segment_sequence(
    feature_fn: FeatureFn,
    frames: Sequence[Path],
    masks: Sequence[Path],
    size: int | tuple[int, int],
    *,
    n_context: int = 5,
    topk: int = 10,
    temperature: float = 0.07,
    radius: float = 12.0,
    batch_size: int = 4,
    tile: int = 12,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Propagate the first mask through ``frames``, yielding ``(t, pred_t, gt_t)`` (int64 ``(H, W)``, full res).

    Frame 0 yields its ground truth as the prediction. Frames are read and mapped to features
    ``batch_size`` at a time; only the current batch and the propagation's references stay in memory.
    """
    if len(frames) != len(masks) or not frames:
        raise ValueError(f"need as many frames as masks, at least one; got {len(frames)} frames, {len(masks)} masks")
    gt0 = load_mask(masks[0])
    # Void (255, unannotated pixels of palette masks) is background, as the official get_all_masks makes it before
    # anything else: propagated as a label of its own it would take soft-label mass from the background.
    given = np.where(gt0 == VOID_LABEL, 0, gt0)
    full = gt0.shape
    small = resized_size(full, size)
    first = labels_to_grid(given, max(int(given.max()) + 1, 2), small, feature_fn.stride)
    yield 0, given, gt0
    prop: LabelPropagator | None = None
    for start in range(0, len(frames), batch_size):
        images = torch.from_numpy(load_images(frames[start : start + batch_size], small))  # (b, 3, h, w)
        feats = compute_features(feature_fn, images, batch_size=batch_size)  # (b, C, Hg, Wg)
        for j in range(feats.shape[0]):
            t = start + j
            if prop is None:
                prop = LabelPropagator(feats[j], first, n_context=n_context, topk=topk, temperature=temperature,
                                       radius=radius, tile=tile)
                continue
            soft = prop.step(feats[j])  # (K, Hg, Wg)
            up = upsample_features(soft.unsqueeze(0), feature_fn.stride, full, source_size=small)  # (1, K, H, W)
            gt = load_mask(masks[t])
            if gt.shape != full:
                raise ValueError(f"{masks[t]}: annotation is {gt.shape[0]}x{gt.shape[1]}, frame 0's is {full[0]}x{full[1]}")
            yield t, class_map(up[0]), gt


@torch.no_grad()
def segment_sequence(
    feature_fn: FeatureFn,
    frames: Sequence[Path],
    masks: Sequence[Path],
    size: int | tuple[int, int],
    *,
    n_context: int = 5,
    topk: int = 10,
    temperature: float = 0.07,
    radius: float = 12.0,
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Propagate the first mask through ``frames``; returns ``(pred, gt)``, both ``(T, H, W)`` int64 at full res."""
    pairs = [(p, g) for _, p, g in iter_segment_sequence(
        feature_fn, frames, masks, size, n_context=n_context, topk=topk, temperature=temperature, radius=radius,
        batch_size=batch_size)]
    return np.stack([p for p, _ in pairs]), np.stack([g for _, g in pairs])


def _scored_stop(n_frames: int, max_frames: int | None = None) -> int:
    """Frames 1..stop-1 of a sequence of ``n_frames`` are propagated and scored: the official rule scores 1..T-2
    (the last frame is dropped); ``max_frames`` cuts the sequence shorter (see the module docstring)."""
    stop = n_frames - 1 if max_frames is None else min(max_frames, n_frames - 1)
    if stop < 2:
        raise ValueError(f"a DAVIS sequence of {n_frames} frames has no frame to score (frames 1..T-2 are scored; "
                         "it needs at least 3)")
    return stop


def _frame_scores(pred: np.ndarray, gt: np.ndarray, objects: Sequence[int]) -> tuple[list[float], list[float]]:
    """J and F of each object in one frame."""
    return ([region_similarity_j(pred == k, gt == k) for k in objects],
            [contour_accuracy_f(pred == k, gt == k) for k in objects])


def _sequence_result(js: list[list[float]], fs: list[list[float]], objects: Sequence[int], n_frames: int) -> dict:
    """``js``, ``fs``: per scored frame, each object's J and F -> the sequence's scores (``sequence_scores``)."""
    scores = sequence_scores(np.asarray(js).T, np.asarray(fs).T, objects)  # (n_objects, n_scored) each
    return {**scores, "n_frames": int(n_frames), "n_objects": len(objects), "n_scored": len(js)}


def score_sequence(pred: np.ndarray, gt: np.ndarray) -> dict:
    """The official scores of one whole sequence, ``pred`` and ``gt`` both ``(T, H, W)`` labels: the objects of
    frame 0 (``object_ids``) over frames 1..T-2 (``sequence_scores``), with ``n_frames``, ``n_objects``, ``n_scored``."""
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape (T, H, W), got {pred.shape} and {gt.shape}")
    objects = object_ids(gt[0])
    scores = [_frame_scores(pred[t], gt[t], objects) for t in range(1, _scored_stop(len(gt)))]
    return _sequence_result([j for j, _ in scores], [f for _, f in scores], objects, len(gt))


def _figure_indices(n_frames: int, n: int) -> list[int]:
    """``n`` of the frames 1..n_frames-1 spread evenly (``n_frames``: the scored stop, ``_scored_stop``)."""
    if n <= 0 or n_frames < 2:
        return []
    return sorted({int(round(x)) for x in np.linspace(1, n_frames - 1, min(n, n_frames - 1))})


@torch.no_grad()
def davis_protocol(
    feature_fn: FeatureFn,
    davis_root: str | Path,
    sequences: Sequence[str] | None = None,
    size: int | tuple[int, int] = 240,
    *,
    max_frames: int | None = None,
    resolution: str = "480p",
    n_context: int = 5,
    topk: int = 10,
    temperature: float = 0.07,
    radius: float = 12.0,
    batch_size: int = 4,
    figure_frames: int = 0,
) -> dict:
    """J and F of label propagation on DAVIS sequences (all under ``davis_root`` when ``sequences`` is None).

    ``size``: the frames' size for the feature source (int: short side; (H, W): exact); scores are at the
    annotations' full resolution. Frames 1..T-2 are scored, as the official evaluation does; ``max_frames``
    keeps the first frames of each sequence (smoke tests: frames 1..max_frames-1 are scored, see the module
    docstring). Frames stream through (features of ``batch_size`` frames at a time, scored as they come): memory does
    not grow with the sequence's length.

    Returns:
        ``{"protocol": "davis", "feature", "sequences": {name: S}, "per_sequence": [{"sequence", **S}, ...],
        "per_frame": {"sequence": [...], "t": [...], "J": [...], "F": [...], "J&F": [...]} (one entry per scored
        frame, mean over its objects), "J_mean", "F_mean", "JF_mean", "J_recall", "J_decay", "F_recall",
        "F_decay", "J_std", "F_std", "JF_std", "n_objects", "summary": {"J", "F", "J&F": {"mean", "std"}},
        parameters...}`` with S = ``{"J", "F", "J&F", "J_recall", "J_decay", "F_recall", "F_decay", "per_object":
        [...], "n_frames", "n_objects", "n_scored"}`` (``davis_measures.sequence_scores``; ``n_frames``: the
        sequence's frames taken, ``n_scored``: those scored). The data-set means and stds are over all objects
        of all sequences (``davis_measures.dataset_scores``), as the official J-Mean and F-Mean; ``summary``
        holds the same means and stds. With ``figure_frames`` > 0, also ``"figures": {name: {"frames": [t, ...],
        "image": uint8 (n, H, W, 3), "pred": uint8 (n, H, W), "gt": uint8 (n, H, W)}}`` for that many frames
        per sequence (the only arrays in the result; everything else is plain numbers).
    """
    t0 = time.perf_counter()
    names = list(sequences) if sequences is not None else list_davis_sequences(davis_root, resolution)
    if not names:
        raise ValueError(f"{davis_root}: no DAVIS sequence to evaluate")
    if max_frames is not None and max_frames < 2:
        raise ValueError(f"max_frames must be >= 2, got {max_frames}")
    if figure_frames < 0:
        raise ValueError(f"figure_frames must be >= 0, got {figure_frames}")
    per_seq, figures = {}, {}
    per_frame: dict[str, list] = {"sequence": [], "t": [], "J": [], "F": [], "J&F": []}
    for name in names:
        seq = read_davis_sequence(davis_root, name, resolution)
        taken = len(seq) if max_frames is None else min(max_frames, len(seq))
        stop = _scored_stop(len(seq), max_frames)  # frames 1..stop-1 are scored; the last frame never is
        shown = _figure_indices(stop, figure_frames)
        fig: dict[str, list] = {"frames": shown, "image": [], "pred": [], "gt": []}
        objects: list[int] = []
        js: list[list[float]] = []  # per scored frame, each object's J
        fs: list[list[float]] = []
        for t, pred, gt in iter_segment_sequence(
            feature_fn, seq.frame_paths[:stop], seq.mask_paths[:stop], size,
            n_context=n_context, topk=topk, temperature=temperature, radius=radius, batch_size=batch_size,
        ):
            if t == 0:
                objects = object_ids(gt)
                continue
            j, f = _frame_scores(pred, gt, objects)
            js.append(j)
            fs.append(f)
            fj, ff = float(np.mean(j)), float(np.mean(f))
            for key, value in (("sequence", name), ("t", t), ("J", fj), ("F", ff), ("J&F", (fj + ff) / 2)):
                per_frame[key].append(value)
            if t in shown:
                image = load_image(seq.frame_paths[t])  # (3, H, W) in [0, 1]
                fig["image"].append(np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8))
                fig["pred"].append(pred.astype(np.uint8))
                fig["gt"].append(gt.astype(np.uint8))
        per_seq[name] = _sequence_result(js, fs, objects, taken)
        if shown:
            figures[name] = {"frames": shown, **{k: np.stack(fig[k]) for k in ("image", "pred", "gt")}}
    overall = dataset_scores(per_seq)  # means over all objects of all sequences, as the official J-Mean
    out = {
        "protocol": "davis",
        "feature": feature_fn.name,
        "sequences": per_seq,
        "per_sequence": [{"sequence": name, **s} for name, s in per_seq.items()],
        "per_frame": per_frame,
        **overall,
        "summary": {
            "J": {"mean": overall["J_mean"], "std": overall["J_std"]},
            "F": {"mean": overall["F_mean"], "std": overall["F_std"]},
            "J&F": {"mean": overall["JF_mean"], "std": overall["JF_std"]},
        },
        "size": list(size) if isinstance(size, tuple) else size,
        "max_frames": max_frames,
        "n_context": n_context,
        "topk": topk,
        "temperature": temperature,
        "radius": radius,
        "seconds": time.perf_counter() - t0,
    }
    if figures:
        out["figures"] = figures
    return out
