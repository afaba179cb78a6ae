"""CPFS losses: how far the embedding kernel ``K_phi`` is from the flow kernel ``K_f`` (both ``(B, N, N)``).

Every loss is a scalar to MINIMISE, averaged over the batch. By convention the first argument is the
embedding kernel (the one that carries gradients) and the second the flow kernel (the target); for the
alignment losses the order does not matter.

- ``kta``: kernel-target alignment (Cristianini et al. 2002), loss ``-mean_b A(K_phi, K_f)``.
- ``kta_centered``: the same on centered kernels (Cortes, Mohri, Rostamizadeh 2012). Raw alignment is
  fooled by the all-positive Gaussian flow kernel: a constant embedding already scores 0.87-0.89 in a
  trial, while centered alignment gives it 0 (random init 0.21-0.35, a flow oracle 0.74-0.79).
- ``cross_entropy``: columns of both kernels made into distributions by a softmax, then
  ``-sum S_f log S_phi`` (the paper's best loss).
- ``cross_entropy_reversed``: ``-sum S_phi log S_f``.

``LOSSES`` maps the CLI names ("kta", "kta-centered", "ce", "ce-rev") to these functions; ``get_loss``
looks one up. ``alignment`` is the evaluation metric (per image, no gradients).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cpfs.training.kernels import center_kernel

# Added to the mean square of a kernel before its square root in the alignment. Kernels here have entries of
# order 0.01-1, so 1e-8 changes a real alignment by < 1e-5, while a kernel that is zero up to rounding (the
# centered kernel of a constant embedding, entries ~1e-8) scores ~0 instead of 0/0 = NaN or rounding noise.
ALIGNMENT_EPS = 1e-8


def _check_kernels(K: Tensor, Kp: Tensor, names: tuple[str, str] = ("K", "Kp")) -> None:
    """Raise ValueError unless K and Kp are both (B, N, N) with the same B and N >= 2."""
    for name, k in zip(names, (K, Kp)):
        if k.dim() != 3 or k.shape[1] != k.shape[2]:
            raise ValueError(f"{name} must be a batch of square kernels (B, N, N), got shape {tuple(k.shape)}")
        if k.shape[1] < 2:
            raise ValueError(f"{name} needs N >= 2 pixels per image, got N={k.shape[1]}")
    if K.shape[0] != Kp.shape[0]:
        raise ValueError(f"batch sizes differ: {names[0]} has B={K.shape[0]}, {names[1]} has B={Kp.shape[0]}")
    if K.shape != Kp.shape:
        raise ValueError(f"kernel shapes differ: {names[0]} {tuple(K.shape)} vs {names[1]} {tuple(Kp.shape)}")


def _alignment(K: Tensor, Kp: Tensor, eps: float = ALIGNMENT_EPS) -> Tensor:
    """``A_b = sum_pq K_pq K'_pq / sqrt(sum_pq K_pq^2 * sum_pq K'_pq^2)`` per image, ``(B,)``, in [-1, 1].

    Written with means instead of sums (the N^2 factors cancel) and ``eps`` added to each mean square, so
    the value and its gradient stay finite for a kernel that is (numerically) zero.
    """
    inner = (K * Kp).mean(dim=(1, 2))  # (B,)
    rms = (K.square().mean(dim=(1, 2)) + eps).sqrt()  # (B,)
    rms_p = (Kp.square().mean(dim=(1, 2)) + eps).sqrt()  # (B,)
    return inner / (rms * rms_p)


def alignment(K: Tensor, Kp: Tensor, centered: bool = True) -> Tensor:
    """Kernel alignment per image as a metric: ``A(K, K')`` or, when ``centered``, ``A(HKH, HK'H)``.

    ``A = <K, K'>_F / (||K||_F ||K'||_F)``, 1 for proportional kernels; centered: 0 for a constant kernel.

    Args:
        K, Kp: ``(B, N, N)`` kernels.
    Returns:
        ``(B,)`` alignments (computed without gradients).
    """
    _check_kernels(K, Kp)
    with torch.no_grad():
        if centered:
            K, Kp = center_kernel(K), center_kernel(Kp)
        return _alignment(K, Kp)


def kta(K: Tensor, Kp: Tensor) -> Tensor:
    """Kernel-target alignment loss ``L = -mean_b A(K_b, K'_b)``, ``A`` as in ``alignment`` (uncentered).

    Args:
        K, Kp: ``(B, N, N)`` kernels (embedding, flow).
    Returns:
        scalar in [-1, 1]; -1 when the kernels are proportional.
    """
    _check_kernels(K, Kp)
    return -_alignment(K, Kp).mean()


def kta_centered(K: Tensor, Kp: Tensor) -> Tensor:
    """Centered kernel-target alignment loss ``L = -mean_b A(H K_b H, H K'_b H)``, ``H = I - 11^T / N``.

    Centering removes the kernels' mean so that an all-positive flow kernel is no longer "aligned" with a
    constant embedding kernel: a constant embedding gives A = 0, hence L = 0.

    Args:
        K, Kp: ``(B, N, N)`` kernels (embedding, flow).
    Returns:
        scalar in [-1, 1].
    """
    _check_kernels(K, Kp)
    return -_alignment(center_kernel(K), center_kernel(Kp)).mean()


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def cross_entropy(K_phi: Tensor, K_f: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Cross entropy between column-softmax distributions of the flow and embedding kernels.

    Normalisation: each column q becomes a distribution over the N pixels p (the diagonal p = q included)
    by a softmax with temperature ``t`` (default 1),

        ``S(p, q) = exp(K(p, q) / t) / sum_p' exp(K(p', q) / t)``,

    and ``L = mean_b mean_q [ -sum_p S_f(p, q) log S_phi(p, q) ]`` (summed over p, averaged over the N columns
    and the B images). ``log S_phi`` is a log-softmax (no log of a softmax). For fixed K_f the loss is
    smallest, equal to the entropy of S_f, when ``S_phi = S_f``. The kernels are symmetric, so columns and
    rows give the same value.

    Why a temperature: at t = 1 the distributions are close to uniform, because ``K_phi`` spans only
    [-1/4, 1/4] and ``K_f`` only (0, 1] (with N = 48 real-flow pixels, H(S_f) = 3.83 nats against
    log 48 = 3.87). The loss still orders embeddings correctly, but its values span a few hundredths of a
    nat; a smaller t sharpens both distributions.

    Args:
        K_phi: ``(B, N, N)`` embedding kernel (carries gradients).
        K_f: ``(B, N, N)`` flow kernel (the target).
        temperature: softmax temperature t > 0, applied to both kernels.
    Returns:
        scalar.
    """
    _check_kernels(K_phi, K_f, ("K_phi", "K_f"))
    _check_temperature(temperature)
    target = torch.softmax(K_f / temperature, dim=1)  # (B, N, N): S_f(p, q), each column q sums to 1 over p
    log_pred = F.log_softmax(K_phi / temperature, dim=1)  # (B, N, N): log S_phi(p, q)
    return -(target * log_pred).sum(dim=1).mean()


def cross_entropy_reversed(K_phi: Tensor, K_f: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Reversed cross entropy ``L = mean_b mean_q [ -sum_p S_phi(p, q) log S_f(p, q) ]``.

    Same column-softmax normalisation as ``cross_entropy``; the roles are swapped, so
    ``cross_entropy_reversed(A, B) == cross_entropy(B, A)``. Since ``-sum S_phi log S_f = H(S_phi) +
    KL(S_phi || S_f)``, it rewards confident embeddings that put their mass where S_f is large, rather than
    matching S_f exactly; its lower bound per column is ``min_p -log S_f(p, q)``.

    Args:
        K_phi: ``(B, N, N)`` embedding kernel (carries gradients).
        K_f: ``(B, N, N)`` flow kernel.
        temperature: softmax temperature t > 0, applied to both kernels.
    Returns:
        scalar.
    """
    _check_kernels(K_phi, K_f, ("K_phi", "K_f"))
    _check_temperature(temperature)
    pred = torch.softmax(K_phi / temperature, dim=1)  # (B, N, N): S_phi(p, q)
    log_target = F.log_softmax(K_f / temperature, dim=1)  # (B, N, N): log S_f(p, q)
    return -(pred * log_target).sum(dim=1).mean()


# Loss names as used on the command line and in configs.
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "kta": kta,
    "kta-centered": kta_centered,
    "ce": cross_entropy,
    "ce-rev": cross_entropy_reversed,
}


# Losses that take a softmax temperature.
TEMPERED: frozenset[str] = frozenset({"ce", "ce-rev"})


def get_loss(name: str, *, temperature: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss function called ``name`` (the ce losses with ``temperature`` bound); ValueError listing the
    valid names otherwise. The alignment losses have no temperature and ignore it."""
    try:
        fn = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}") from None
    if name in TEMPERED:
        _check_temperature(temperature)
        return functools.partial(fn, temperature=temperature)
    return fn
