"""Every source's row over seeds, and the paired comparison of a trained network against random init.

Seeds: seed s draws the probe's split and sampled pixels, and builds random-init network s. Every source's
``summary`` is ``{metric: {"mean", "std"}}`` over seeds (std over seeds of the per-seed scores; the protocols'
own spreads, over pairs or sequences, are kept in ``per_seed``). A fixed source (a checkpoint, a baseline) has
its features computed once for all seeds (``EvalContext.features``).

The headline of a per-pair protocol is paired: trained - random init of the *same* initialisation seed (the
weights training started from, BN recalibrated like the trained network's), on the same held-out pairs under
the same pixel seeds, with a bootstrap CI (``cpfs.evaluation.stats``), overall and per video.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cpfs.evaluation import stats
from cpfs.evaluation.context import EvalContext, FeatureKind
from cpfs.evaluation.features import FeatureFn
from cpfs.evaluation.sources import RANDOM, Source


def combine_seeds(per_seed: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None) -> dict:
    """One source's result from per-seed protocol results: ``summary[metric] = {mean, std}`` over the seeds'
    means (``std`` 0 for a single seed); the per-seed results are kept whole under ``per_seed``."""
    if not per_seed:
        raise ValueError("combine_seeds needs at least one per-seed result")
    metrics = list(per_seed[0]["summary"])
    summary = {}
    for m in metrics:
        values = np.array([float(r["summary"][m]["mean"]) for r in per_seed])
        summary[m] = {"mean": float(values.mean()), "std": float(values.std())}
    return {"summary": summary, "per_seed": [dict(r) for r in per_seed], "n_seeds": len(per_seed), **(extra or {})}


def over_seeds(ctx: EvalContext, sources: Sequence[Source], kind: FeatureKind,
               run_one: Callable[[FeatureFn, int], dict], what: str) -> dict:
    """``run_one(features, seed)`` for every seed and source, combined over seeds (``combine_seeds``)."""
    seeds = ctx.cfg.seed_list
    out = {}
    total, done = len(sources) * len(seeds), 0
    for src in sources:
        rows = []
        for s in seeds:
            ctx.say(f"{what}: {src.name}, seed {s}", done, total)
            # Memoized: a fixed source's features serve every seed, random init of the training seed's the
            # paired comparison too.
            rows.append(run_one(ctx.features(src, s, kind, memo=src.fixed or s == ctx.train_seed), s))
            done += 1
        out[src.name] = combine_seeds(rows, ctx.source_meta(src.name))
    ctx.say(f"{what}: done", total, total)
    return out


def all_seeds_at_once(ctx: EvalContext, sources: Sequence[Source], kind: FeatureKind,
                      run_seeds: Callable[[FeatureFn, Sequence[int]], dict], what: str, paired: bool = False) -> dict:
    """For probes that fit one classifier per seed on features computed once (``seeds`` argument): a fixed
    source runs once with every seed (its summary's std is over seeds already); random-init network s runs
    with seed s, combined over seeds (``combine_seeds``). ``paired``: keep random init of the training seed's
    features for the paired comparison that follows."""
    seeds = ctx.cfg.seed_list
    out = {}
    for i, src in enumerate(sources):
        ctx.say(f"{what}: {src.name}", i, len(sources))
        if src.fixed:
            out[src.name] = {**run_seeds(ctx.features(src, seeds[0], kind), seeds), "n_seeds": len(seeds),
                             **ctx.source_meta(src.name)}
        else:
            out[src.name] = combine_seeds([run_seeds(ctx.features(src, s, kind, memo=paired and s == ctx.train_seed), [s])
                                           for s in seeds], ctx.source_meta(src.name))
    ctx.say(f"{what}: done", len(sources), len(sources))
    return out


def paired_comparison(ctx: EvalContext, trained: Mapping[str, Any], base: Sequence[Mapping[str, Any]],
                      metric: str, what: str, against: str | None = None) -> dict:
    """The headline of a per-pair protocol: ``trained``'s per-seed results against ``base``, the per-seed
    results of random init of the training seed under every pixel seed (``cfg.seed_list``), paired per pair.
    ``against``: another source than random init (e.g. "pixel position alone"), named in the result."""
    a = np.stack([np.asarray(r["per_pair"][metric]) for r in trained["per_seed"]], axis=1)  # (pairs, seeds)
    b = np.stack([np.asarray(r["per_pair"][metric]) for r in base], axis=1)
    groups = list(base[0]["per_pair"]["video_id"])
    if list(trained["per_seed"][0]["per_pair"]["video_id"]) != groups:
        raise RuntimeError("paired comparison: the two sources were scored on different pairs")
    out = paired_summary(a, b, groups, ctx.train_seed, metric, what, ctx.cfg.ci_level)
    if against is not None:
        out["against"] = against
        out["verdict"] = stats.verdict(out, what, against)
    return out


def paired_summary(a: np.ndarray, b: np.ndarray, groups: Sequence[str], seed: int, metric: str, what: str,
                   level: float) -> dict:
    """Paired difference ``a - b`` of ``(pairs, seeds)`` scores of the trained network and random init of its
    seed: the mean, its bootstrap CI (``stats.paired_bootstrap``), per video, and the sentence that says it."""
    overall = stats.paired_bootstrap(a - b, groups, level=level)
    return {
        "metric": metric,
        "against": f"{RANDOM} seed {seed}",
        "trained_mean": float(a.mean()),
        "random_same_seed_mean": float(b.mean()),
        "random_same_seed_per_seed": [float(x) for x in b.mean(axis=0)],  # mean over pairs, per pixel seed
        **overall,
        "per_video": stats.per_group_bootstrap(a - b, groups, level=level),
        "spread_over_videos": float(np.std([a[np.asarray(groups) == g].mean() for g in dict.fromkeys(groups)])),
        "verdict": stats.verdict(overall, what, f"random init (seed {seed})"),
    }
