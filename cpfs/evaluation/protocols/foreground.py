"""The DAVIS foreground/background probe over every source: fitted on ``cfg.davis_train``'s masks, scored on
``cfg.davis``'s sequences (never fitted there; ``cpfs.evaluation.foreground``).

Sources: the checkpoints' and random init's frozen trunk hypercolumns (``cfg.layers`` concatenated: the
headline, and each layer alone: ``mIoU_<layer>``), position, colour. Headline: mIoU (mean of the background
and foreground IoU over the pooled test pixels), paired against random init of the training seed
(``foreground_paired``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from cpfs.evaluation import baselines, stats
from cpfs.evaluation.context import EvalContext
from cpfs.evaluation.features import FeatureFn
from cpfs.evaluation.foreground import foreground_probe, foreground_split, frame_confusions, layer_channels, pooled_miou
from cpfs.evaluation.paired import all_seeds_at_once
from cpfs.evaluation.sources import RANDOM, Source

HEADLINE = "mIoU"


def run(ctx: EvalContext) -> dict:
    """The probe on every source: a fixed source once with every seed, random-init network s with seed s;
    then random init of the training seed under every seed for the paired comparison."""
    cfg = ctx.cfg
    if cfg.davis is None or cfg.davis_train is None:
        raise ValueError("protocol 'foreground' needs EvalConfig.davis (the sequences it is scored on) and "
                         "EvalConfig.davis_train (other sequences, whose masks fit it)")
    fit, test = foreground_split(cfg.davis_train, cfg.davis, step=cfg.foreground_frame_step,
                                 test_sequences=cfg.davis_sequences)

    def channels(fn: FeatureFn) -> dict[str, slice] | None:
        # A network's hypercolumn is named after its source (``EvalContext.features``); random init has the
        # main checkpoint's architecture. Baselines have no layers.
        model = ctx.models.get(fn.name) or (ctx.models["cpfs"] if fn.name == RANDOM else None)
        return None if model is None else layer_channels(model.trunk.channels, cfg.layers)

    def run_seeds(fn: FeatureFn, seeds: Sequence[int], layers: bool = True) -> dict:
        return foreground_probe(fn, fit, test, size=cfg.foreground_size, pixels_per_image=cfg.pixels_per_image,
                                seeds=tuple(seeds), max_iter=cfg.probe_max_iter,
                                channels=channels(fn) if layers else None)

    sources = ctx.sources([baselines.position_features(cfg.feature_stride),
                           baselines.colour_features("lab", cfg.feature_stride)])
    out = all_seeds_at_once(ctx, sources, "hypercolumns", run_seeds, "DAVIS foreground probe", paired=True)
    # Paired against random init of the training seed under the same classifier seeds, on the same test frames
    # (its features are the random-init row's of that seed, memoized); the headline feature only.
    ctx.say("DAVIS foreground probe: random init of the training seed, for the paired comparison", 0, 1)
    base = run_seeds(ctx.features(Source(RANDOM, "random-init"), ctx.train_seed, "hypercolumns", memo=True),
                     cfg.seed_list, layers=False)
    for name in ctx.models:
        out[name]["paired"] = foreground_paired(out[name], base, ctx.train_seed, cfg.ci_level)
    return out


def foreground_paired(trained: Mapping[str, Any], random_same: Mapping[str, Any], seed: int, level: float) -> dict:
    """The paired difference of mIoU, trained - random init of the same seed, with a bootstrap CI.

    The unit of resampling is the **test frame**, resampled with replacement inside each sequence (sequences are
    strata), together with the classifier seeds; the statistic is recomputed on each resample from the pooled
    confusion matrices (``stats.paired_bootstrap_pooled``), since a pooled mIoU is not a mean of per-frame
    scores. Why frames, not sequences: there are four test sequences, too few for a sequence-level bootstrap
    (its percentile interval from 4 clusters is unreliable). So, as for DAVIS label propagation, the interval
    is about these sequences' frames, not about unseen videos; frames of one video are correlated, which makes
    it narrower than a between-video interval. The per-sequence differences and their spread are given beside
    it for that reason."""
    a, b = frame_confusions(trained), frame_confusions(random_same)
    ta, tb = trained["per_frame"], random_same["per_frame"]
    if list(zip(ta["sequence"], ta["frame"])) != list(zip(tb["sequence"], tb["frame"])) or a.shape != b.shape:
        raise RuntimeError("foreground paired comparison: the two sources were scored on different frames or seeds")
    groups = np.asarray(ta["sequence"])
    overall = stats.paired_bootstrap_pooled(a, b, pooled_miou, groups, level=level)
    per_seq = {str(g): stats.paired_bootstrap_pooled(a[groups == g], b[groups == g], pooled_miou, level=level)
               for g in dict.fromkeys(groups.tolist())}
    return {
        "metric": HEADLINE, "against": f"{RANDOM} seed {seed}",
        "unit": "test frame, resampled inside each sequence, with the classifier seeds",
        "trained_mean": float(pooled_miou(a)), "random_same_seed_mean": float(pooled_miou(b)),
        **overall,
        "per_video": per_seq,
        "per_sequence_difference": {g: v["mean"] for g, v in per_seq.items()},
        "spread_over_videos": float(np.std([float(pooled_miou(a[groups == g])) for g in per_seq])),
        "verdict": stats.verdict(overall, "the DAVIS foreground/background probe (mIoU)", f"random init (seed {seed})"),
    }
