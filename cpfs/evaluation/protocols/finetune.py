"""The fine-tuning protocol over the checkpoints and random init of the training seed (``cpfs.evaluation.finetune``):
VOC 2007 classification when ``cfg.finetune.voc07`` is set (trainval -> test, the devkit's mAP), else, at smoke
scale, scikit-learn's digits (half fitted, half scored, accuracy).

Headline: the source's score (``headline``: accuracy or mAP, whichever the data set is scored by).
"""

from __future__ import annotations

import tempfile
from typing import Any, Mapping

import torch

from cpfs.config.finetune import FinetuneConfig
from cpfs.evaluation.context import EvalContext
from cpfs.evaluation.datasets import digits_imagefolder, load_images, read_image_folder, stratified_split
from cpfs.evaluation.finetune import FinetuneData, FinetuneSchedule, compare_finetuning
from cpfs.evaluation.sources import RANDOM
from cpfs.evaluation.voc_classification import read_voc_classification

HEADLINE = "score"


def headline(result: Mapping[str, Any]) -> float:
    """A source's headline number: its one metric's mean over fine-tuning seeds."""
    return float(next(iter(result["summary"].values()))["mean"])


def load_data(cfg: FinetuneConfig, tmpdir: str) -> FinetuneData:
    """The fine-tuning set at ``cfg.size`` px: VOC 2007 (``cfg.voc07``) or the digits (smoke scale)."""
    size = (cfg.size, cfg.size)
    if cfg.voc07 is not None:
        train, test = read_voc_classification(cfg.voc07, "trainval"), read_voc_classification(cfg.voc07, "test")
        if train.classes != test.classes:
            raise ValueError(f"{cfg.voc07}: trainval and test list different classes ({train.classes} vs {test.classes})")
        return FinetuneData(f"VOC2007 trainval -> test, {len(train)} + {len(test)} images",
                            torch.from_numpy(load_images(train.paths, size)), train.labels,
                            torch.from_numpy(load_images(test.paths, size)), test.labels, train.classes)
    digits = read_image_folder(digits_imagefolder(tmpdir, size=cfg.size, per_class=cfg.digits_per_class))
    tr, te = stratified_split(digits.labels, 0.5, seed=0)
    images = torch.from_numpy(load_images(digits.paths, size))
    return FinetuneData(f"scikit-learn digits, {cfg.digits_per_class} per class (SMOKE SCALE)", images[tr],
                        digits.labels[tr], images[te], digits.labels[te], digits.classes)


def schedule(cfg: FinetuneConfig) -> FinetuneSchedule:
    return FinetuneSchedule(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            layer=cfg.layer)


def run(ctx: EvalContext) -> dict:
    """Each checkpoint and random init of the training seed, fine-tuned with every seed of ``cfg.seed_list``."""
    cfg = ctx.cfg
    with tempfile.TemporaryDirectory(prefix="cpfs-finetune-") as tmp:
        data = load_data(cfg.finetune, tmp)
    ctx.say("fine-tuning", 0, 1)
    out = compare_finetuning({name: m.trunk for name, m in ctx.models.items()}, ctx.random_model(ctx.train_seed).trunk,
                             data, schedule(cfg.finetune), cfg.seed_list, train_seed=ctx.train_seed,
                             level=cfg.ci_level, random_name=RANDOM)
    for name, res in out.items():
        res.update(ctx.source_meta(name) if name != RANDOM else {"kind": "random-init", "seed": ctx.train_seed},
                   smoke_scale=cfg.finetune.voc07 is None)
    ctx.say("fine-tuning: done", 1, 1)
    return out
