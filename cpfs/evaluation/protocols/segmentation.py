"""Protocol 2 over every source: the per-pixel VOC segmentation probe (train split trains, val split scores).

Sources: the checkpoints' frozen trunk hypercolumns, random init, position, colour. Headline: mean IoU.
"""

from __future__ import annotations

from typing import Sequence

from cpfs.evaluation import baselines
from cpfs.evaluation.context import EvalContext
from cpfs.evaluation.datasets import read_voc_segmentation
from cpfs.evaluation.features import FeatureFn
from cpfs.evaluation.paired import all_seeds_at_once
from cpfs.evaluation.segmentation import segmentation_probe

HEADLINE = "mIoU"


def run(ctx: EvalContext) -> dict:
    """Protocol 2 on the VOC tree ``cfg.voc`` (train split trains, val split scores)."""
    cfg = ctx.cfg
    if cfg.voc is None:
        raise ValueError("protocol 'segmentation' needs EvalConfig.voc (a Pascal VOC root)")
    train, val = read_voc_segmentation(cfg.voc, "train"), read_voc_segmentation(cfg.voc, "val")

    def run_seeds(fn: FeatureFn, seeds: Sequence[int]) -> dict:
        return segmentation_probe(fn, train, val, cfg.voc_classes, image_size=(cfg.voc_size, cfg.voc_size),
                                  pixels_per_image=cfg.pixels_per_image, seeds=tuple(seeds), max_iter=cfg.probe_max_iter)

    sources = ctx.sources([baselines.position_features(cfg.feature_stride),
                           baselines.colour_features("lab", cfg.feature_stride)])
    return all_seeds_at_once(ctx, sources, "hypercolumns", run_seeds, "VOC segmentation")
