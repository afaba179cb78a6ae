"""Multinomial logistic regression on fixed features: the linear classifier of every probe.

Model: ``p(y = k | x) = softmax_k(W z + b)`` with standardised inputs ``z = (x - mu) / sd`` (``mu``, ``sd``
per feature from the training set; ``sd`` floored at 1e-6 so constant features give 0). Objective:

    ``L(W, b) = mean_i [ -log p(y_i | x_i) ] + weight_decay * ||W||_F^2``

(cross-entropy as a log-softmax), minimised full-batch with L-BFGS (strong-Wolfe line search) from
``W = 0``. The objective is strictly convex for ``weight_decay > 0``, so the result does not depend on
initialisation or ordering: probes are deterministic, and their seeds only choose splits and samples.
Full-batch optimisation fits the probe sizes used here (up to ~10^5 samples x ~10^4 features in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LinearClassifier:
    """A fitted linear classifier: ``logits = ((x - mean) / std) @ weight.T + bias``."""

    weight: Tensor  # (K, D)
    bias: Tensor  # (K,)
    mean: Tensor  # (D,)
    std: Tensor  # (D,)

    def logits(self, x: Tensor) -> Tensor:
        """``(N, D) -> (N, K)``."""
        if x.dim() != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"features must have shape (N, {self.weight.shape[1]}), got {tuple(x.shape)}")
        z = (x.to(self.weight.dtype) - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict(self, x: Tensor, batch_size: int = 65536) -> Tensor:
        """Most likely class per row, ``(N, D) -> (N,)`` int64 (in slices, to bound memory)."""
        return torch.cat([self.logits(x[i : i + batch_size]).argmax(1) for i in range(0, max(len(x), 1), batch_size)])[: len(x)]


def fit_linear_classifier(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    num_classes: int,
    *,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> LinearClassifier:
    """Fit multinomial logistic regression (see the module docstring) to ``x (N, D)``, ``y (N,)`` in [0, K).

    Raises:
        ValueError: shapes disagree, labels out of range, fewer than 2 classes, or non-finite features.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.int64)
    if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need features (N, D) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if x.shape[0] == 0:
        raise ValueError("no training samples")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or infinite values")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std  # (N, D)
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearClassifier(weight.detach(), bias.detach(), mean, std)


def accuracy(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> float:
    """Fraction of equal entries (top-1 accuracy)."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape or pred.size == 0:
        raise ValueError(f"pred and target must have the same non-empty shape, got {pred.shape} and {target.shape}")
    return float((pred == target).mean())
