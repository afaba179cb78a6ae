"""Protocol 3 over every source: flow-kernel alignment on the held-out pairs.

Sources: the checkpoints' unit embeddings (the training kernel), random init, position, colour and the flow
oracle. Headline: centered alignment, paired against random init of the training seed.
"""

from __future__ import annotations

from cpfs.evaluation import baselines
from cpfs.evaluation.context import EvalContext
from cpfs.evaluation.features import FeatureFn
from cpfs.evaluation.flow_alignment import flow_alignment
from cpfs.evaluation.paired import over_seeds, paired_comparison
from cpfs.evaluation.sources import RANDOM, Source

HEADLINE = "alignment_centered"


def run(ctx: EvalContext) -> dict:
    """Protocol 3 on the held-out pairs: the models' embeddings, random init, position, colour, flow oracle."""
    cfg = ctx.cfg
    stride = cfg.feature_stride
    vids = ctx.heldout.video_ids

    def one(fn: FeatureFn, seed: int) -> dict:
        return flow_alignment(fn, ctx.heldout, vids, pairs_per_video=cfg.pairs_per_video, points=cfg.points, seed=seed)

    # The oracle reads the flow at the sampled pixels themselves (stride 1): the exact ceiling of the protocol.
    sources = ctx.sources([baselines.position_features(stride), baselines.colour_features("lab", stride),
                           baselines.flow_oracle_features(1)])
    out = over_seeds(ctx, sources, "embedding", one, "flow alignment")
    ctx.say("flow alignment: random init of the training seed, for the paired comparison", 0, 1)
    # Its features are the random-init row's of that seed (memoized): only the scores are computed again.
    random_same = ctx.features(Source(RANDOM, "random-init"), ctx.train_seed, "embedding", memo=True)
    base = [one(random_same, s) for s in cfg.seed_list]
    position = out[baselines.position_features(stride).name]["per_seed"]
    for name in ctx.models:
        out[name]["paired"] = paired_comparison(ctx, out[name], base, HEADLINE, "held-out centered flow alignment")
        # The trivial baseline a motion-grouping network must beat too: nearby pixels tend to move together, so
        # pixel position alone aligns with the flow kernel. Same pairs and pixels: paired as well.
        out[name]["paired_position"] = paired_comparison(ctx, out[name], position, HEADLINE,
                                                         "held-out centered flow alignment", against="pixel position alone")
    return out
