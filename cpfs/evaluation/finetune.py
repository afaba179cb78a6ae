"""Fine-tuning: does pretraining help when the whole trunk is trained on a labelled task?

The paper's Table 3 fine-tunes the pretrained AlexNet on Pascal VOC 2007 classification and reports mAP; every
self-supervised learning library (solo-learn, VISSL, MMSelfSup) proves pretraining the same way, against the
same network from random init under the identical schedule. Here:

- the network is ``cpfs.export.backbone.TrunkFeatures`` (the trunk up to ``layer``, weights trainable) followed by
  global average pooling and a new linear head, all trained with SGD (momentum 0.9, weight decay, cosine decay of
  the learning rate to 0 over ``steps``), on images resized to ``size`` with random horizontal flips;
- single-label sets (an ImageFolder, the digits at smoke scale) use cross-entropy and are scored by top-1
  accuracy; multi-label sets (VOC 2007) use a binary cross-entropy per class that ignores "difficult" labels and
  are scored by the devkit's mAP (``cpfs.evaluation.voc_classification``);
- the fine-tuning seed sets the head's initialisation, the batch order and the flips. Both networks are
  fine-tuned with every seed of ``seeds``; the comparison is paired per test image and seed
  (``cpfs.evaluation.paired.paired_summary`` for accuracy; mAP is a pooled statistic, so
  ``stats.paired_bootstrap_pooled``), with the bootstrap CI of the difference and the sentence that says it.

Departures from the paper: no random-resized crops or multi-crop testing, a short schedule for CPU runs
(``FinetuneConfig``'s ``paper`` values in ``docs/finetune.md`` are the GPU scale), and the trunk's own fc6/fc7
convolutions (pooled) rather than AlexNet's fully connected classifier.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpfs.export.backbone import TrunkFeatures
from cpfs.evaluation import stats
from cpfs.evaluation.paired import paired_summary
from cpfs.evaluation.voc_classification import mean_average_precision
from cpfs.training.model import AlexNetTrunk


@dataclass(frozen=True)
class FinetuneData:
    """Images and targets of one fine-tuning task, loaded once (``size`` x ``size``, RGB in [0, 1])."""

    name: str  # shown in the report: "scikit-learn digits (SMOKE SCALE)", "VOC2007 trainval -> test"
    train_images: Tensor  # (N, 3, size, size)
    train_targets: np.ndarray  # (N,) class index, or (N, C) in {1, -1, 0} for multi-label
    test_images: Tensor  # (M, 3, size, size)
    test_targets: np.ndarray  # (M,) or (M, C)
    classes: tuple[str, ...]

    @property
    def multilabel(self) -> bool:
        return self.train_targets.ndim == 2


@dataclass(frozen=True)
class FinetuneSchedule:
    """The schedule both networks get, identically."""

    steps: int = 60  # SGD steps
    batch_size: int = 16
    lr: float = 0.01  # peak learning rate, cosine-decayed to 0
    weight_decay: float = 5e-4
    layer: str = "fc7"  # the trunk is cut after this layer; the head reads it globally average-pooled


class FinetuneNet(nn.Module):
    """Trunk up to ``layer`` (a trainable copy) -> global average pool -> linear head:
    ``(B, 3, H, W)`` -> ``(B, classes)`` logits."""

    def __init__(self, trunk: AlexNetTrunk, layer: str, classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.features = TrunkFeatures(trunk, layer).requires_grad_(True)
        self.head = nn.Linear(self.features.out_channels, classes)
        with torch.no_grad():  # the head's initialisation is the fine-tuning seed's
            bound = 1.0 / math.sqrt(self.features.out_channels)
            self.head.weight.copy_(torch.empty_like(self.head.weight).uniform_(-bound, bound, generator=generator))
            self.head.bias.zero_()

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))  # (B, C_layer) -> (B, classes)


def _loss(logits: Tensor, targets: Tensor, multilabel: bool) -> Tensor:
    if not multilabel:
        return F.cross_entropy(logits, targets)
    known = targets != 0  # difficult labels: neither positive nor negative
    per = F.binary_cross_entropy_with_logits(logits, (targets > 0).float(), reduction="none")
    return (per * known).sum() / known.sum().clamp(min=1)


def finetune_scores(trunk: AlexNetTrunk, data: FinetuneData, schedule: FinetuneSchedule, seed: int) -> np.ndarray:
    """Fine-tune ``trunk`` (a copy: the argument is left as it is) with ``seed`` and score the test images:
    ``(M, classes)`` logits."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = FinetuneNet(trunk, schedule.layer, len(data.classes), gen)
    opt = torch.optim.SGD(net.parameters(), lr=schedule.lr, momentum=0.9, weight_decay=schedule.weight_decay)
    targets = torch.as_tensor(data.train_targets)
    n = data.train_images.shape[0]
    order = np.empty(0, dtype=np.int64)
    net.train()
    for step in range(schedule.steps):
        while order.size < schedule.batch_size:  # epochs of seeded permutations
            order = np.concatenate([order, rng.permutation(n)])
        batch, order = order[: schedule.batch_size], order[schedule.batch_size :]
        images = data.train_images[torch.as_tensor(batch)]
        flip = torch.as_tensor(rng.random(len(batch)) < 0.5)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        for group in opt.param_groups:
            group["lr"] = schedule.lr * 0.5 * (1.0 + math.cos(math.pi * step / schedule.steps))
        loss = _loss(net(images), targets[torch.as_tensor(batch)], data.multilabel)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return torch.cat([net(data.test_images[i : i + 64]) for i in range(0, data.test_images.shape[0], 64)]).numpy()


def score(logits: np.ndarray, data: FinetuneData) -> float:
    """Top-1 accuracy (single-label) or the devkit's 11-point mAP (multi-label) of test ``logits``."""
    if data.multilabel:
        return mean_average_precision(logits, data.test_targets)
    return float((logits.argmax(axis=1) == data.test_targets).mean())


def compare_finetuning(
    trunks: Mapping[str, AlexNetTrunk],
    random_trunk: AlexNetTrunk,
    data: FinetuneData,
    schedule: FinetuneSchedule,
    seeds: Sequence[int],
    *,
    train_seed: int,
    level: float = 0.95,
    random_name: str = "random-init",
    n_boot: int = 1000,
) -> dict[str, dict[str, Any]]:
    """Every trained trunk and ``random_trunk`` (random init of the training seed ``train_seed``) fine-tuned
    with each of ``seeds`` under ``schedule``: ``{source: {"summary", "per_seed", "paired"?}}``.

    ``summary`` holds the metric (``accuracy`` or ``mAP``) as mean and std over the fine-tuning seeds; each
    trained source's ``paired`` is its difference from random init, paired per test image and seed, with a
    bootstrap CI (``n_boot`` resamples) and a verdict."""
    if not seeds:
        raise ValueError("compare_finetuning needs at least one fine-tuning seed")
    metric = "mAP" if data.multilabel else "accuracy"
    logits = {name: [finetune_scores(t, data, schedule, s) for s in seeds]
              for name, t in {**trunks, random_name: random_trunk}.items()}
    out: dict[str, dict[str, Any]] = {}
    for name, per_seed in logits.items():
        values = [score(lg, data) for lg in per_seed]
        out[name] = {"summary": {metric: {"mean": float(np.mean(values)), "std": float(np.std(values))}},
                     "per_seed": values, "dataset": data.name, "schedule": asdict(schedule), "seeds": list(seeds)}
    what = f"fine-tuned {'VOC mAP' if data.multilabel else 'top-1 accuracy'} ({data.name})"
    base = np.stack(logits[random_name], axis=1)  # (M, S, classes)
    for name in trunks:
        a = np.stack(logits[name], axis=1)
        if data.multilabel:
            out[name]["paired"] = _paired_map(a, base, data.test_targets, train_seed, what, level, n_boot)
        else:
            correct = lambda x: (x.argmax(axis=2) == data.test_targets[:, None]).astype(np.float64)  # noqa: E731
            paired = paired_summary(correct(a), correct(base), ["test"] * len(a), train_seed, metric, what, level)
            out[name]["paired"] = {**paired, "per_video": {}}  # one test set: no per-video rows to report
    return out


def _paired_map(a: np.ndarray, b: np.ndarray, gt: np.ndarray, seed: int, what: str, level: float, n_boot: int) -> dict:
    """mAP is pooled over the test images, so its CI resamples images (and seeds) and recomputes it: the labels
    travel with the scores as the last ``C`` columns of each row."""
    c = gt.shape[1]
    pack = lambda x: np.concatenate([x, np.broadcast_to(gt[:, None, :], x.shape).astype(x.dtype)], axis=2)  # noqa: E731

    def statistic(batch: np.ndarray) -> np.ndarray:  # (B, n, s, 2C) -> (B,): each resample's mAP, mean over seeds
        return np.array([np.mean([mean_average_precision(x[:, k, :c], x[:, k, c:].astype(np.int8))
                                  for k in range(x.shape[1])]) for x in batch])

    overall = stats.paired_bootstrap_pooled(pack(a), pack(b), statistic, level=level, n_boot=n_boot)
    return {"metric": "mAP", "against": f"random-init seed {seed}", "trained_mean": float(statistic(pack(a)[None])[0]),
            "random_same_seed_mean": float(statistic(pack(b)[None])[0]), **overall, "per_video": {},
            "verdict": stats.verdict(overall, what, f"random init (seed {seed})")}
