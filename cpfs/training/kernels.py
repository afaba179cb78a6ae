"""Kernels over pixel embeddings and optical-flow vectors (CPFS, Mahendran, Thewlis, Vedaldi 2018).

CPFS trains a CNN so that the kernel over its per-pixel embeddings matches the kernel over the optical
flow of the same pixels. For one image with ``N`` sampled pixels both kernels are ``N x N`` matrices; every
function here works on a batch of ``B`` images at once, shapes ``(B, N, ...)``.

- ``embedding_kernel``: scaled cosine similarity of embeddings, ``K_phi`` in ``[-1/4, 1/4]``.
- ``flow_kernel``: Gaussian (RBF) kernel of flow vectors, ``K_f`` in ``(0, 1]``.
- ``median_pairwise_distance``: the per-frame bandwidth ``sigma`` of ``K_f`` (median heuristic).
- ``LearnedSigma``: a learned but *bounded* bandwidth (see its docstring for why it must be bounded).
- ``center_kernel``: ``H K H`` centering used by centered kernel-target alignment.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Smallest flow bandwidth, px. Optical-flow estimates carry errors of a few tenths of a pixel (TV-L1's
# end-point error on Middlebury's small-motion sequences is ~0.2-0.5 px), so differences below about half a
# pixel are noise. A bandwidth below that would turn estimation noise into "different motion"; on a static
# shot (median distance 0) it would also divide by zero. 0.5 px keeps K_f(p, q) >= exp(-1/2) = 0.61 for
# pixels whose flows differ by at most the noise level.
MIN_SIGMA_PX = 0.5


def _check_points(x: Tensor, name: str, last: int | None = None) -> None:
    """Raise ValueError unless ``x`` is (B, N, C) with N >= 2 (and C == last when given)."""
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, N, C), got {tuple(x.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"{name} needs N >= 2 points per image to form a kernel, got N={x.shape[1]}")
    if last is not None and x.shape[2] != last:
        raise ValueError(f"{name} must have shape (B, N, {last}), got {tuple(x.shape)}")


def embedding_kernel(phi: Tensor, eps: float = 1e-8) -> Tensor:
    """Scaled cosine kernel over embeddings.

    ``K_phi(p, q) = 1/4 * phi_p^T phi_q / (||phi_p|| ||phi_q||)``, so ``K_phi`` lies in ``[-1/4, 1/4]``.
    Each vector is divided by ``max(||phi_p||, eps)`` so a zero embedding gives a zero row, not NaN.

    Args:
        phi: ``(B, N, D)`` embeddings of N pixels per image.
    Returns:
        ``(B, N, N)`` symmetric kernel.
    """
    _check_points(phi, "phi")
    unit = phi / phi.norm(dim=-1, keepdim=True).clamp_min(eps)  # (B, N, D)
    return 0.25 * unit @ unit.transpose(1, 2)  # (B, N, N)


def pairwise_sq_distances(f: Tensor) -> Tensor:
    """Squared Euclidean distances ``||f_p - f_q||^2`` between all point pairs of each image.

    Computed by differences (exact, no cancellation; memory ``B*N*N*C``), which is affordable for the
    N of a few hundred to a few thousand sampled pixels that CPFS uses.

    Args:
        f: ``(B, N, C)`` vectors (flow: C = 2).
    Returns:
        ``(B, N, N)`` with a zero diagonal.
    """
    _check_points(f, "f")
    diff = f.unsqueeze(2) - f.unsqueeze(1)  # (B, N, 1, C) - (B, 1, N, C) -> (B, N, N, C)
    return diff.square().sum(-1)  # (B, N, N)


def _sigma_per_image(sigma: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """Broadcast a scalar or (B,) bandwidth to (B, 1, 1) and check that it is positive."""
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if s.dim() == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape ({batch},), got {tuple(s.shape)}")
    if not bool((s > 0).all()):
        raise ValueError(f"sigma must be > 0, got min {float(s.min())}")
    return s.view(batch, 1, 1)


def flow_kernel(f: Tensor, sigma: Tensor | float) -> Tensor:
    """Gaussian (RBF) kernel over flow vectors.

    ``K_f(p, q) = exp(-||f_p - f_q||^2 / (2 sigma^2))``, in ``(0, 1]`` with ones on the diagonal.

    Args:
        f: ``(B, N, 2)`` flow vectors (px) at N pixels per image.
        sigma: bandwidth in px, a scalar or ``(B,)`` (one per image); differentiable (see ``LearnedSigma``).
    Returns:
        ``(B, N, N)`` symmetric kernel.
    """
    _check_points(f, "f", last=2)
    s = _sigma_per_image(sigma, f.shape[0], f)  # (B, 1, 1)
    return torch.exp(-pairwise_sq_distances(f) / (2.0 * s.square()))


def median_pairwise_distance(f: Tensor, min_sigma: float = MIN_SIGMA_PX) -> Tensor:
    """Per-image bandwidth: the median distance ``||f_p - f_q||`` over the N(N-1)/2 pairs p < q.

    ``sigma_b = max(median_{p<q} ||f_p - f_q||, min_sigma)``. The median adapts sigma to each frame's motion
    range (a slow pan and a fast one both give a kernel that separates their pixels); ``min_sigma`` (default
    ``MIN_SIGMA_PX`` = 0.5 px, the order of flow-estimation noise) keeps static frames finite. For an even
    pair count it is the lower of the two middle values (``torch.median``). Not differentiable (flow is data).

    Args:
        f: ``(B, N, 2)`` flow vectors, px.
    Returns:
        ``(B,)`` bandwidths, px.
    """
    _check_points(f, "f", last=2)
    if min_sigma <= 0:
        raise ValueError(f"min_sigma must be > 0, got {min_sigma}")
    n = f.shape[1]
    with torch.no_grad():
        d = pairwise_sq_distances(f.detach())  # (B, N, N)
        iu = torch.triu_indices(n, n, offset=1, device=f.device)  # (2, N(N-1)/2) pairs p < q
        pairs = d[:, iu[0], iu[1]]  # (B, N(N-1)/2)
        med = pairs.median(dim=1).values.sqrt()  # (B,) median of distances = sqrt of median of squares
    return med.clamp_min(min_sigma)


class LearnedSigma(nn.Module):
    """A learned flow bandwidth that cannot run off to a trivial kernel.

    Why bounded: as ``sigma -> inf`` every ``K_f(p, q) -> 1``; the target kernel becomes constant and a constant
    embedding satisfies it, so an unconstrained learned sigma drifts upward (a trial saw 1.0 -> 1.9 px over
    1,000 steps) and the training signal fades. Here sigma is a bounded multiple of the frame's own median flow
    distance ``m_b`` (``median_pairwise_distance``):

        ``sigma_b = s * m_b``,   ``s = lo + (hi - lo) * sigmoid(theta)``,   theta the only parameter.

    Whatever the optimiser does to theta, ``lo <= s <= hi``. Consequence: at least half of the pairs (those at
    or beyond the median distance) keep ``K_f <= exp(-1 / (2 hi^2))`` (0.88 for hi = 2), so the kernel cannot
    flatten. (When ``m_b`` is clamped to ``min_sigma`` on a static frame the kernel is flat anyway: there is
    no motion to learn from.) The lower bound guards the opposite collapse: ``sigma -> 0`` turns ``K_f`` into
    the identity (every pixel unlike every other), which no smooth embedding can match. ``init`` is the
    starting multiplier, strictly inside ``(lo, hi)``.
    """

    def __init__(self, lo: float = 0.5, hi: float = 2.0, init: float = 1.0, min_sigma: float = MIN_SIGMA_PX) -> None:
        super().__init__()
        if not 0 < lo < init < hi:
            raise ValueError(f"LearnedSigma needs 0 < lo < init < hi, got lo={lo}, init={init}, hi={hi}")
        self.lo, self.hi, self.min_sigma = float(lo), float(hi), float(min_sigma)
        u = (init - lo) / (hi - lo)  # in (0, 1)
        self.theta = nn.Parameter(torch.tensor(math.log(u / (1.0 - u))))  # sigmoid(theta) = u

    def multiplier(self) -> Tensor:
        """The bounded multiplier ``s`` in ``[lo, hi]`` (0-dim tensor, differentiable in theta)."""
        return self.lo + (self.hi - self.lo) * torch.sigmoid(self.theta)

    def forward(self, f: Tensor) -> Tensor:
        """``(B, N, 2)`` flow -> ``(B,)`` bandwidths ``s * median_pairwise_distance(f)``, px."""
        return self.multiplier() * median_pairwise_distance(f, self.min_sigma)

    def extra_repr(self) -> str:
        return f"lo={self.lo}, hi={self.hi}, min_sigma={self.min_sigma}"


def center_kernel(K: Tensor) -> Tensor:
    """Centered kernel ``H K H`` with ``H = I - 1 1^T / N`` (Cortes, Mohri, Rostamizadeh 2012).

    Written without forming H: ``(HKH)_pq = K_pq - mean_p' K_p'q - mean_q' K_pq' + mean_p'q' K_p'q'``.
    Every row and column of the result sums to zero, so a constant kernel centers to zero.

    Args:
        K: ``(B, N, N)`` kernel.
    Returns:
        ``(B, N, N)`` centered kernel.
    """
    if K.dim() != 3 or K.shape[1] != K.shape[2]:
        raise ValueError(f"K must have shape (B, N, N), got {tuple(K.shape)}")
    col_mean = K.mean(dim=1, keepdim=True)  # (B, 1, N): mean over p of column q
    row_mean = K.mean(dim=2, keepdim=True)  # (B, N, 1): mean over q of row p
    all_mean = K.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    return K - col_mean - row_mean + all_mean
