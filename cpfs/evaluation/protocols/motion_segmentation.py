"""Protocol 4 over every source: the motion-segmentation probe on the held-out pairs, split in time.

Sources: the checkpoints' frozen trunk hypercolumns (``cfg.layers``), random init, position, colour. The
first half of each video's selected pairs trains the linear classifier, the second half scores it. Headline:
IoU of the moving pixels, paired per test pair against random init of the training seed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cpfs.evaluation import baselines
from cpfs.evaluation.context import EvalContext
from cpfs.evaluation.features import FeatureFn
from cpfs.evaluation.motion_segmentation import motion_segmentation_probe
from cpfs.evaluation.paired import all_seeds_at_once, paired_summary
from cpfs.evaluation.sources import RANDOM, Source

HEADLINE = "IoU_moving"


def run(ctx: EvalContext) -> dict:
    """Protocol 4 on the held-out pairs (split in time): hypercolumns of each network, position, colour."""
    cfg = ctx.cfg
    vids = ctx.heldout.video_ids

    def run_seeds(fn: FeatureFn, seeds: Sequence[int]) -> dict:
        return motion_segmentation_probe(fn, ctx.heldout, vids, vids, pairs_per_video=cfg.pairs_per_video,
                                         pixels_per_image=cfg.pixels_per_image, threshold=cfg.motion_threshold,
                                         seeds=tuple(seeds), max_iter=cfg.probe_max_iter)

    sources = ctx.sources([baselines.position_features(cfg.feature_stride),
                           baselines.colour_features("lab", cfg.feature_stride)])
    out = all_seeds_at_once(ctx, sources, "hypercolumns", run_seeds, "motion segmentation", paired=True)
    # Paired against random init of the training seed: the same test pairs and the same classifier seeds (its
    # features are the random-init row's of that seed, memoized).
    ctx.say("motion segmentation: random init of the training seed, for the paired comparison", 0, 1)
    base = run_seeds(ctx.features(Source(RANDOM, "random-init"), ctx.train_seed, "hypercolumns", memo=True), cfg.seed_list)
    b = np.asarray(base["per_pair"][HEADLINE])  # (pairs, seeds)
    for name in ctx.models:
        trained = out[name]["per_pair"]
        if list(zip(trained["video_id"], trained["t"])) != list(zip(base["per_pair"]["video_id"], base["per_pair"]["t"])):
            raise RuntimeError("motion segmentation paired comparison: the sources were scored on different pairs")
        out[name]["paired"] = paired_summary(np.asarray(trained[HEADLINE]), b, trained["video_id"], ctx.train_seed,
                                             HEADLINE, "the held-out motion-segmentation probe (IoU of moving pixels)",
                                             cfg.ci_level)
    return out
