"""Protocol 5 over every source: DAVIS label propagation in a frozen network's features (``cfg.davis_layers``:
the model's own embedding and/or trunk layers' hypercolumns, ``cpfs.evaluation.features.network_features``).

Label propagation has no randomness: a fixed network runs once (std over seeds 0); random-init network s
runs for each seed. Headline: J&F, paired per scored frame against random init of the training seed
(``davis_paired``), with figures of the propagated masks written beside the report.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from cpfs.evaluation import baselines, stats
from cpfs.evaluation.context import EvalContext
from cpfs.evaluation.davis import davis_protocol
from cpfs.evaluation.features import network_features
from cpfs.evaluation.paired import combine_seeds
from cpfs.evaluation.plots import davis_figure
from cpfs.evaluation.sources import RANDOM, Source
from cpfs.training.run_folder import EvalFolder

HEADLINE = "J&F"
RECALL_DECAY = ("J_recall", "J_decay", "F_recall", "F_decay")


def run(ctx: EvalContext) -> dict:
    """Protocol 5 on the DAVIS tree ``cfg.davis``."""
    cfg = ctx.cfg
    if cfg.davis is None:
        raise ValueError("protocol 'davis' needs EvalConfig.davis (a DAVIS root)")
    sources = ctx.sources([baselines.position_features(cfg.feature_stride),
                           baselines.colour_features("lab", cfg.feature_stride)])
    train_seed = ctx.train_seed

    def score(fn, figure_frames: int = 0) -> dict:
        res = davis_protocol(fn, cfg.davis, cfg.davis_sequences, size=cfg.davis_size, max_frames=cfg.davis_max_frames,
                             figure_frames=figure_frames)
        # The official statistics beside J, F and J&F in the table (means over objects; the std over seeds is
        # added by combine_seeds).
        res["summary"].update({k: {"mean": res[k]} for k in RECALL_DECAY})
        return res

    def one(src: Source, seed: int, figure_frames: int = 0) -> dict:
        # Not memoized: every frame is read once per network (the DAVIS frames' features can be large).
        return score(ctx.features(src, seed, "propagation"), figure_frames)

    out = {}
    same_seed: dict | None = None
    for i, src in enumerate(sources):
        ctx.say(f"DAVIS: {src.name}", i, len(sources))
        rows = []
        for s in (cfg.seed_list if not src.fixed else [0]):
            drawn = src.kind == "trained" or (src.kind == "random-init" and s == train_seed)
            rows.append(one(src, s, cfg.davis_figure_frames if drawn else 0))
            if src.kind == "random-init" and s == train_seed:
                same_seed = rows[-1]
        out[src.name] = combine_seeds(rows, ctx.source_meta(src.name))
    figures = {name: out[name]["per_seed"][0].pop("figures", {}) for name in ctx.models}
    random_figures = same_seed.pop("figures", {}) if same_seed is not None else {}
    for name in list(out):
        for row in out[name].get("per_seed", []):
            row.pop("figures", None)  # arrays: drawn below, never stored in results.json
    if same_seed is None:  # the training seed is not among the evaluation's seeds: run its network too
        same_seed = one(Source(RANDOM, "random-init"), train_seed)
    for name in ctx.models:
        out[name]["paired"] = davis_paired(out[name]["per_seed"][0], same_seed, train_seed, cfg.ci_level)
    # The stricter baseline: random init of the training seed read at its own best layers (chosen on davis-train),
    # not at the trained network's. A random network's embedding groups nothing, so at davis_layers it is weaker
    # than it can be; a gain that holds against this row is the network's, not the choice of features.
    strict = cfg.davis_baseline_layers
    if strict and list(strict) != list(cfg.davis_layers):
        name = f"{RANDOM} ({'+'.join(strict)})"
        ctx.say(f"DAVIS: {name}", len(sources), len(sources) + 1)
        res = score(network_features(ctx.random_model(train_seed), strict, stride=cfg.feature_stride, name=name))
        out[name] = combine_seeds([res], {**ctx.source_meta(RANDOM), "seeds": [train_seed], "layers": list(strict)})
        for model in ctx.models:
            out[model]["paired_random_layers"] = davis_paired(out[model]["per_seed"][0], res, train_seed, cfg.ci_level,
                                                              layers=strict)
    # Figures: propagated masks against the ground truth for a few frames of every sequence, written once as PNG
    # files in the report's figures folder (the report embeds them as they are), so they survive a protocol run
    # in another process.
    folder = EvalFolder(cfg.out_path()).figures
    files = {}
    for seq, fig in figures.get("cpfs", {}).items():
        preds = {"cpfs": fig["pred"]}
        if seq in random_figures:
            preds[f"{RANDOM} seed {train_seed}"] = random_figures[seq]["pred"]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"davis_{seq}.png"
        Image.fromarray(davis_figure(fig["image"], fig["gt"], preds, fig["frames"])).save(path)
        files[f"DAVIS {seq}: the propagated masks (red) of the trained network and of random init of its seed, "
              "against the ground truth (green)"] = str(path)
    out["cpfs"]["figure_files"] = files
    return out


def davis_paired(trained: Mapping[str, Any], random_same: Mapping[str, Any], seed: int, level: float,
                 layers: Sequence[str] | None = None) -> dict:
    """DAVIS's second headline: the paired difference of J&F, trained - random init of the same seed, per
    scored frame, with a bootstrap CI that resamples frames inside each sequence (sequences are strata).
    Frames of one sequence are correlated (a propagation error persists), so this interval is about these
    sequences' frames; the per-sequence differences and their spread are reported beside it. ``layers``: random
    init was read at these layers rather than the trained network's (the stricter baseline), as its name says."""
    a, b = trained["per_frame"], random_same["per_frame"]
    if list(zip(a["sequence"], a["t"])) != list(zip(b["sequence"], b["t"])):
        raise RuntimeError("DAVIS paired comparison: the two sources were scored on different frames")
    diff = np.asarray(a["J&F"]) - np.asarray(b["J&F"])
    overall = stats.paired_bootstrap(diff, a["sequence"], level=level)
    per_seq = {name: float(trained["sequences"][name]["J&F"] - random_same["sequences"][name]["J&F"])
               for name in trained["sequences"]}
    return {
        "metric": "J&F", "against": f"{RANDOM} seed {seed}" + (f" ({'+'.join(layers)})" if layers else ""),
        **({"random_layers": list(layers)} if layers else {}),
        "trained_mean": float(np.mean(a["J&F"])), "random_same_seed_mean": float(np.mean(b["J&F"])),
        **overall,
        "per_video": stats.per_group_bootstrap(diff, a["sequence"], level=level),
        "per_sequence_difference": per_seq,
        "spread_over_videos": float(np.std([trained["sequences"][n]["J&F"] for n in trained["sequences"]])),
        "verdict": stats.verdict(overall, "DAVIS J&F (label propagation)", f"random init (seed {seed})"
                                 + (f" at its own best layers ({'+'.join(layers)})" if layers else "")),
    }
