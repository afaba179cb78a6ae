"""Flow-kernel alignment on held-out video: does the embedding of one frame predict its motion similarity?

For each selected frame pair of each held-out video (``cpfs.evaluation.pairs``), ``points`` pixels are
drawn uniformly without replacement (seeded). At those pixels:

- the flow kernel ``K_f = exp(-||f_p - f_q||^2 / (2 sigma^2))`` with the training bandwidth, the median
  pairwise flow distance floored at 0.5 px (``cpfs.training.kernels.flow_kernel``, ``median_pairwise_distance``);
- the feature kernel ``K_phi``: for ``metric == "cosine"`` sources (CPFS embeddings, hypercolumns) the
  training kernel ``cpfs.training.kernels.embedding_kernel`` (a quarter of the cosine); for ``"euclidean"`` sources
  (position, colour, flow oracle) a Gaussian kernel of the feature vectors with their own median
  pairwise distance as bandwidth, the natural kernel for them; for the flow oracle (``"flow"``) the flow
  kernel's own rule, so its kernel is ``K_f`` itself: alignment 1 and the smallest possible cross entropy,
  the ceiling of the protocol.

Scores per pair, then mean and std over all pairs: raw alignment ``A(K_phi, K_f)`` and centered
alignment ``A(H K_phi H, H K_f H)`` (``cpfs.training.losses.alignment``; centered is the informative one: a
constant embedding scores 0 there but ~0.9 raw), the training loss ``ce`` (``cpfs.training.losses.cross_entropy``)
and ``ce_excess = ce - H(S_f)``, its distance to its floor (the entropy of the column-softmax of K_f,
i.e. the mean KL divergence; 0 for the oracle).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from cpfs.evaluation.features import FeatureFn, features_at
from cpfs.evaluation.pairs import PairStore, load_pair, select_pairs
from cpfs.training.kernels import MIN_SIGMA_PX, embedding_kernel, flow_kernel, median_pairwise_distance, pairwise_sq_distances
from cpfs.training.losses import alignment, cross_entropy


def gaussian_feature_kernel(x: Tensor, floor: float = 0.01) -> Tensor:
    """``K(p, q) = exp(-||x_p - x_q||^2 / (2 s^2))`` with a per-image bandwidth s.

    ``s = max(median_{p<q} ||x_p - x_q||, floor * rms_{p<q} ||x_p - x_q||, 1e-12)``: the median heuristic
    (as the flow kernel), floored at a fraction of the RMS distance so that a feature constant over most
    pixels (median 0) gives a kernel of its real differences, not of float rounding between them.

    Args:
        x: ``(B, N, C)`` feature vectors.
    Returns:
        ``(B, N, N)``.
    """
    d2 = pairwise_sq_distances(x)  # (B, N, N)
    n = x.shape[1]
    iu = torch.triu_indices(n, n, offset=1)
    pairs = d2[:, iu[0], iu[1]]  # (B, N(N-1)/2)
    s = torch.maximum(pairs.median(dim=1).values.sqrt(), floor * pairs.mean(dim=1).sqrt()).clamp_min(1e-12)  # (B,)
    return torch.exp(-d2 / (2.0 * s.view(-1, 1, 1).square()))


def softmax_entropy(K: Tensor) -> Tensor:
    """Mean entropy of the column-softmax distributions of ``K`` (B, N, N): the floor of ``cross_entropy(., K)``."""
    log_s = torch.log_softmax(K, dim=1)
    return -(log_s.exp() * log_s).sum(dim=1).mean()


@torch.no_grad()
def pair_scores(feature_fn: FeatureFn, image: Tensor, flow: Tensor, points: int, generator: torch.Generator) -> dict[str, float]:
    """The four scores of one frame ``(1, 3, H, W)`` with flow ``(1, 2, H, W)`` (see the module docstring)."""
    _, _, height, width = image.shape
    n = min(points, height * width)
    if n < 2:
        raise ValueError(f"need at least 2 points per frame, got {n}")
    index = torch.randperm(height * width, generator=generator)[:n]
    pts = torch.stack([index % width, index // width], dim=-1).unsqueeze(0)  # (1, n, 2) as (x, y)
    f = flow.reshape(2, -1)[:, index].T.unsqueeze(0)  # (1, n, 2) flow at the pixels
    sigma = median_pairwise_distance(f, MIN_SIGMA_PX)
    K_f = flow_kernel(f, sigma)
    phi = features_at(feature_fn(image, flow).float(), feature_fn.stride, pts)  # (1, n, C)
    if feature_fn.metric == "cosine":
        K_phi = embedding_kernel(phi)
    elif feature_fn.metric == "flow":
        K_phi = flow_kernel(phi, median_pairwise_distance(phi, MIN_SIGMA_PX))  # the target's own rule
    else:
        K_phi = gaussian_feature_kernel(phi)
    ce = float(cross_entropy(K_phi, K_f))
    return {
        "alignment": float(alignment(K_phi, K_f, centered=False)[0]),
        "alignment_centered": float(alignment(K_phi, K_f, centered=True)[0]),
        "ce": ce,
        "ce_excess": ce - float(softmax_entropy(K_f)),
        # 1 when the bandwidth hit the noise floor: the pair's flow kernel is then estimation noise.
        "sigma_at_floor": float(float(sigma[0]) <= MIN_SIGMA_PX),
    }


def flow_alignment(
    feature_fn: FeatureFn,
    store: PairStore,
    video_ids: Sequence[str],
    *,
    pairs_per_video: int = 8,
    points: int = 512,
    seed: int = 0,
) -> dict:
    """Flow-kernel alignment of ``feature_fn`` on the held-out ``video_ids`` (see the module docstring).

    Returns:
        ``{"protocol": "flow_alignment", "feature", "summary": {metric: {"mean", "std"}}, "per_video":
        {video_id: {metric: mean}}, "n_pairs", "points", "seed", "seconds"}``; std is over pairs.
    """
    if not video_ids:
        raise ValueError("flow_alignment needs at least one held-out video")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, float]] = []
    keys: list[tuple[str, int]] = []
    per_video = {}
    for vid in video_ids:
        video_rows = []
        for t in select_pairs(store, vid, pairs_per_video):
            pair = load_pair(store, vid, t)
            video_rows.append(pair_scores(feature_fn, pair.image, pair.flow, points, gen))
            keys.append((vid, int(t)))
        per_video[vid] = {k: float(np.mean([r[k] for r in video_rows])) for k in video_rows[0]}
        rows.extend(video_rows)
    metrics = list(rows[0])
    return {
        "protocol": "flow_alignment",
        "feature": feature_fn.name,
        "summary": {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))} for k in metrics},
        "per_video": per_video,
        # Every pair's scores, in order, for paired comparisons between sources (cpfs.evaluation.stats).
        "per_pair": {"video_id": [k[0] for k in keys], "t": [k[1] for k in keys],
                     **{m: [float(r[m]) for r in rows] for m in metrics}},
        "n_pairs": len(rows),
        "points": points,
        "seed": seed,
        "seconds": time.perf_counter() - t0,
    }
