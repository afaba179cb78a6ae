"""Tests of cpfs.training.losses: naive double-loop references, properties, error cases, and optimisation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cpfs.training.kernels import embedding_kernel, flow_kernel, median_pairwise_distance
from cpfs.training.losses import (
    LOSSES,
    alignment,
    cross_entropy,
    cross_entropy_reversed,
    get_loss,
    kta,
    kta_centered,
)

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
MIDDLEBURY = DATA / "middlebury"



def real_flow_points(n: int, sequence: str = "RubberWhale", batch: int = 2) -> torch.Tensor:
    """(batch, n, 2) ground-truth Middlebury flow at random known pixels (one draw per image)."""
    path = MIDDLEBURY / sequence / "flow10.flo"
    if not path.exists():
        pytest.skip(f"Middlebury data not found at {path} (shared/ is not beside the repository)")
    raw = path.read_bytes()
    w, h = np.frombuffer(raw[4:12], np.int32)
    flow = np.frombuffer(raw[12:], np.float32, count=int(w) * int(h) * 2).reshape(-1, 2)
    known = np.flatnonzero((np.abs(flow) < 1e9).all(axis=1))
    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([flow[rng.choice(known, n, replace=False)] for _ in range(batch)]))


def random_kernels(B: int = 2, N: int = 6, D: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    f = 2.0 * torch.randn(B, N, 2, generator=g, dtype=torch.float64)
    return embedding_kernel(phi), flow_kernel(f, median_pairwise_distance(f))


# --- naive references, written as loops over pixels ------------------------------------------------------


def naive_alignment(K: torch.Tensor, Kp: torch.Tensor, centered: bool) -> list[float]:
    out = []
    for b in range(K.shape[0]):
        A, Bm = K[b].tolist(), Kp[b].tolist()
        n = len(A)
        if centered:
            A, Bm = naive_center(A), naive_center(Bm)
        inner = sum(A[p][q] * Bm[p][q] for p in range(n) for q in range(n))
        na = sum(A[p][q] ** 2 for p in range(n) for q in range(n))
        nb = sum(Bm[p][q] ** 2 for p in range(n) for q in range(n))
        out.append(inner / math.sqrt(na * nb))
    return out


def naive_center(A: list[list[float]]) -> list[list[float]]:
    n = len(A)
    row = [sum(A[p]) / n for p in range(n)]
    col = [sum(A[p][q] for p in range(n)) / n for q in range(n)]
    tot = sum(row) / n
    return [[A[p][q] - row[p] - col[q] + tot for q in range(n)] for p in range(n)]


def naive_column_softmax(A: list[list[float]]) -> list[list[float]]:
    n = len(A)
    S = [[0.0] * n for _ in range(n)]
    for q in range(n):
        z = sum(math.exp(A[p][q]) for p in range(n))
        for p in range(n):
            S[p][q] = math.exp(A[p][q]) / z
    return S


def naive_cross_entropy(K_phi: torch.Tensor, K_f: torch.Tensor, reversed_: bool) -> float:
    total, count = 0.0, 0
    for b in range(K_phi.shape[0]):
        Sp, Sf = naive_column_softmax(K_phi[b].tolist()), naive_column_softmax(K_f[b].tolist())
        n = len(Sp)
        for q in range(n):
            if reversed_:
                total += -sum(Sp[p][q] * math.log(Sf[p][q]) for p in range(n))
            else:
                total += -sum(Sf[p][q] * math.log(Sp[p][q]) for p in range(n))
            count += 1
    return total / count


def test_losses_match_naive_loops():
    K_phi, K_f = random_kernels()
    assert kta(K_phi, K_f).item() == pytest.approx(-np.mean(naive_alignment(K_phi, K_f, False)), rel=1e-6)
    assert kta_centered(K_phi, K_f).item() == pytest.approx(-np.mean(naive_alignment(K_phi, K_f, True)), rel=1e-6)
    assert cross_entropy(K_phi, K_f).item() == pytest.approx(naive_cross_entropy(K_phi, K_f, False), rel=1e-9)
    assert cross_entropy_reversed(K_phi, K_f).item() == pytest.approx(naive_cross_entropy(K_phi, K_f, True), rel=1e-9)
    for centered in (False, True):
        np.testing.assert_allclose(alignment(K_phi, K_f, centered).numpy(), naive_alignment(K_phi, K_f, centered), rtol=1e-6)


# --- properties -----------------------------------------------------------------------------------------


def test_alignment_of_identical_and_proportional_kernels_is_one():
    K_phi, K_f = random_kernels(N=12)
    for K in (K_phi, K_f):
        assert kta(K, K).item() == pytest.approx(-1.0, abs=1e-5)
        assert kta(K, 3.0 * K).item() == pytest.approx(-1.0, abs=1e-5)
        assert kta_centered(K, K).item() == pytest.approx(-1.0, abs=1e-5)
    assert kta(K_phi, K_f).item() > -0.999  # and not 1 for different kernels


def test_centered_alignment_scores_constant_embedding_zero_raw_does_not():
    f = real_flow_points(64)
    K_f = flow_kernel(f, median_pairwise_distance(f))
    phi_const = torch.tensor([0.3, -1.2, 0.5, 2.0]).expand(2, 64, 4)
    K_const = embedding_kernel(phi_const)
    raw = alignment(K_const, K_f, centered=False)
    cen = alignment(K_const, K_f, centered=True)
    assert (raw > 0.5).all()  # the all-positive Gaussian kernel fools raw KTA
    assert cen.abs().max() < 1e-3
    assert abs(kta_centered(K_const, K_f).item()) < 1e-3
    # an embedding built from the flow itself (an oracle) aligns far better than the constant
    phi_oracle = torch.cat([f / f.norm(dim=-1, keepdim=True).mean(), torch.ones(2, 64, 1)], dim=-1)
    assert (alignment(embedding_kernel(phi_oracle), K_f, centered=True) > 0.3).all()


def test_alignment_metric_has_no_grad():
    K_phi, K_f = random_kernels()
    K_phi.requires_grad_(True)
    a = alignment(K_phi, K_f, centered=True)
    assert a.shape == (2,) and not a.requires_grad


def test_cross_entropy_smallest_when_distributions_agree():
    _, K_f = random_kernels(N=10)
    at_target = cross_entropy(K_f, K_f).item()
    S_f = torch.softmax(K_f, dim=1)
    entropy = -(S_f * S_f.log()).sum(1).mean().item()
    assert at_target == pytest.approx(entropy, rel=1e-9)  # CE(p, p) = H(p)
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        noise = 0.3 * torch.randn(K_f.shape, generator=g, dtype=K_f.dtype)
        perturbed = K_f + noise + noise.transpose(1, 2)
        assert cross_entropy(perturbed, K_f).item() > at_target
    # adding a per-column constant does not change a column softmax: still at the minimum
    assert cross_entropy(K_f + 4.0, K_f).item() == pytest.approx(at_target, rel=1e-9)


def test_reversed_cross_entropy_is_swapped_and_bounded():
    K_phi, K_f = random_kernels(N=10)
    assert cross_entropy_reversed(K_phi, K_f).item() == pytest.approx(cross_entropy(K_f, K_phi).item(), rel=1e-12)
    bound = (-torch.log_softmax(K_f, dim=1)).min(dim=1).values.mean().item()  # all mass on the best p
    assert cross_entropy_reversed(K_phi, K_f).item() >= bound
    # a very confident embedding kernel that peaks where S_f peaks approaches the bound
    peaked = 50.0 * (K_f == K_f.max(dim=1, keepdim=True).values).double()
    assert cross_entropy_reversed(peaked, K_f).item() == pytest.approx(bound, rel=1e-6)


def test_cross_entropy_temperature_scales_both_kernels():
    K_phi, K_f = random_kernels(N=7)
    for loss in (cross_entropy, cross_entropy_reversed):
        assert loss(K_phi, K_f, temperature=0.1).item() == pytest.approx(loss(K_phi / 0.1, K_f / 0.1).item(), rel=1e-12)
        with pytest.raises(ValueError, match="temperature must be > 0"):
            loss(K_phi, K_f, temperature=0.0)
    # a lower temperature sharpens the target: its entropy drops
    assert cross_entropy(K_f, K_f, temperature=0.1).item() < cross_entropy(K_f, K_f).item()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_permutation_of_pixels_leaves_every_loss_unchanged(name):
    K_phi, K_f = random_kernels(N=9, seed=3)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    loss = get_loss(name)
    permuted = loss(K_phi[:, perm][:, :, perm], K_f[:, perm][:, :, perm])
    assert permuted.item() == pytest.approx(loss(K_phi, K_f).item(), rel=1e-10)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_finite_for_identical_points_and_zero_flow(name):
    loss = get_loss(name)
    # every pixel has the same embedding (identical points) and the flow is zero everywhere
    phi = torch.tensor([1.0, 2.0, -0.5]).repeat(2, 8, 1).requires_grad_(True)
    f = torch.zeros(2, 8, 2)
    value = loss(embedding_kernel(phi), flow_kernel(f, median_pairwise_distance(f)))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(phi.grad).all()
    # and for a generic case, including an all-zero embedding vector
    phi2 = torch.randn(2, 8, 3)
    phi2[0, 0] = 0.0
    phi2.requires_grad_(True)
    f2 = torch.randn(2, 8, 2)
    loss(embedding_kernel(phi2), flow_kernel(f2, median_pairwise_distance(f2))).backward()
    assert torch.isfinite(phi2.grad).all() and phi2.grad.abs().sum() > 0


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize(
    "shape_a, shape_b, match",
    [
        ((2, 5, 5), (2, 6, 6), "kernel shapes differ"),
        ((2, 5, 5), (3, 5, 5), "batch sizes differ"),
        ((2, 1, 1), (2, 1, 1), "N >= 2"),
        ((2, 5, 4), (2, 5, 4), r"square kernels \(B, N, N\)"),
        ((5, 5), (5, 5), r"square kernels \(B, N, N\)"),
    ],
)
def test_losses_reject_bad_shapes(name, shape_a, shape_b, match):
    with pytest.raises(ValueError, match=match):
        get_loss(name)(torch.zeros(shape_a), torch.zeros(shape_b))


def test_alignment_rejects_bad_shapes():
    with pytest.raises(ValueError, match="kernel shapes differ"):
        alignment(torch.zeros(1, 4, 4), torch.zeros(1, 3, 3), centered=True)


def test_get_loss_names():
    assert set(LOSSES) == {"kta", "kta-centered", "ce", "ce-rev"}
    assert get_loss("ce").func is cross_entropy and get_loss("kta-centered") is kta_centered
    # The temperature reaches the ce losses (and only them: the alignment losses have none).
    assert get_loss("ce", temperature=0.1).keywords == {"temperature": 0.1}
    assert get_loss("ce-rev", temperature=0.5).func is cross_entropy_reversed
    assert get_loss("kta", temperature=0.1) is kta
    with pytest.raises(ValueError, match="temperature must be > 0"):
        get_loss("ce", temperature=0.0)
    with pytest.raises(ValueError, match="unknown loss 'mse'.*ce, ce-rev, kta, kta-centered"):
        get_loss("mse")


# --- optimisation ---------------------------------------------------------------------------------------


def _optimise_free_embedding(name: str, f: torch.Tensor, steps: int = 60) -> tuple[float, float, torch.Tensor]:
    loss_fn = get_loss(name)
    K_f = flow_kernel(f, median_pairwise_distance(f))
    phi = torch.nn.Parameter(torch.randn(f.shape[0], f.shape[1], 8, generator=torch.Generator().manual_seed(0)))
    opt = torch.optim.Adam([phi], lr=0.05)
    first = loss_fn(embedding_kernel(phi), K_f).item()
    for _ in range(steps):
        loss = loss_fn(embedding_kernel(phi), K_f)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = loss_fn(embedding_kernel(phi), K_f).item()
    return first, last, alignment(embedding_kernel(phi.detach()), K_f, centered=True)


def reversed_ce_floor(K_f: torch.Tensor) -> float:
    """Lowest ce-rev over ANY K_phi with entries in [-1/4, 1/4] (a bound below what a cosine kernel reaches).

    Per column the loss is a weighted mean of costs c_p = -log S_f(p, q) with weights exp(K_phi(p, q)); it is
    smallest with K_phi = +1/4 on the k cheapest p and -1/4 elsewhere, for the best k.
    """
    c = (-torch.log_softmax(K_f.double(), dim=1)).sort(dim=1).values  # (B, N, N), ascending along p
    n = c.shape[1]
    hi, lo = math.exp(0.25), math.exp(-0.25)
    cum = c.cumsum(1)
    k = torch.arange(1, n + 1, dtype=torch.float64).view(1, n, 1)
    values = (hi * cum + lo * (cum[:, -1:] - cum)) / (k * hi + (n - k) * lo)  # (B, N, N): k cheapest up-weighted
    return values.min(dim=1).values.mean().item()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_falls_when_optimising_a_free_embedding(name):
    f = real_flow_points(48)
    K_f = flow_kernel(f, median_pairwise_distance(f))
    first, last, aligned = _optimise_free_embedding(name, f)
    if name.startswith("kta"):
        assert last < first - 0.3  # alignment up by more than 0.3 (of a [-1, 1] range)
    else:
        # CE: at unit temperature the values span a few hundredths of a nat, so measure the fall against the
        # gap to a lower bound: H(S_f) for "ce" (CE(p, q) >= H(p)), the box bound above for "ce-rev".
        if name == "ce":
            S_f = torch.softmax(K_f, dim=1)
            floor = -(S_f * S_f.log()).sum(1).mean().item()
        else:
            floor = reversed_ce_floor(K_f)
        assert last < first - 0.5 * (first - floor)
    # whatever the loss, the embedding ends up aligned with the flow (centered alignment well above 0)
    assert (aligned > 0.3).all()
