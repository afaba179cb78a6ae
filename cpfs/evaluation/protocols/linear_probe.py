"""Protocol 1 over every source: layer-wise linear probes on ``cfg.imagefolder``, else on the digits (smoke
scale). Sources: the checkpoints' and random init's pooled trunk layers (``cfg.layers``), and chance.

Headline: the best layer's accuracy (``headline``), since which layer is best differs between networks.
"""

from __future__ import annotations

import tempfile
from typing import Any, Mapping

import numpy as np

from cpfs.evaluation.context import EvalContext
from cpfs.evaluation.datasets import ImageFolderDataset, digits_imagefolder, read_image_folder
from cpfs.evaluation.linear_probe import linear_probe
from cpfs.evaluation.paired import combine_seeds
from cpfs.evaluation.sources import RANDOM

HEADLINE = "best_layer"


def headline(result: Mapping[str, Any]) -> float:
    """A source's headline number: the mean accuracy of its best layer."""
    return max(float(v["mean"]) for v in result["summary"].values())


def _subsample(ds: ImageFolderDataset, per_class: int | None, seed: int = 0) -> ImageFolderDataset:
    if per_class is None:
        return ds
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(ds.labels == c))[:per_class] for c in range(ds.num_classes)]
    return ds.subset(np.sort(np.concatenate(keep)))


def run(ctx: EvalContext) -> dict:
    """Protocol 1: a network's probes for every seed share one feature extraction (``linear_probe`` takes the
    seed list); random-init network s is probed with seed s. The "chance" row is ``1 / classes``."""
    cfg = ctx.cfg
    with tempfile.TemporaryDirectory(prefix="cpfs-digits-") as tmp:
        if cfg.imagefolder is None:
            train = read_image_folder(digits_imagefolder(tmp, size=cfg.probe_size, per_class=cfg.digits_per_class))
            dataset_name = f"scikit-learn digits, {cfg.digits_per_class} per class (SMOKE SCALE)"
        else:
            train = _subsample(read_image_folder(cfg.imagefolder), cfg.max_per_class)
            dataset_name = str(cfg.imagefolder)
        val = None if cfg.imagefolder_val is None else _subsample(read_image_folder(cfg.imagefolder_val), cfg.max_per_class)
        kw = dict(heldout=val, image_size=(cfg.probe_size, cfg.probe_size), max_iter=cfg.probe_max_iter)
        out: dict[str, dict] = {}
        seeds = cfg.seed_list
        total = len(ctx.models) + len(seeds)
        for i, (name, model) in enumerate(ctx.models.items()):
            ctx.say(f"linear probe: {name}", i, total)
            res = linear_probe(model.trunk, train, cfg.layers, seeds, **kw)
            per_seed = [{"summary": {l: {"mean": r["per_seed"][k], "std": 0.0} for l, r in res["layers"].items()}}
                        for k in range(len(seeds))]
            out[name] = {**combine_seeds(per_seed, ctx.source_meta(name)), "probe": res}
        rows = []
        for k, s in enumerate(seeds):
            ctx.say(f"linear probe: {RANDOM}, seed {s}", len(ctx.models) + k, total)
            rows.append(linear_probe(ctx.random_model(s).trunk, train, cfg.layers, (s,), **kw))
        out[RANDOM] = combine_seeds(rows, ctx.source_meta(RANDOM))
        chance = 1.0 / train.num_classes
        out["chance"] = {"summary": {l: {"mean": chance, "std": 0.0} for l in cfg.layers}, "kind": "baseline"}
        for res in out.values():
            res.update(dataset=dataset_name, smoke_scale=cfg.smoke_scale, num_classes=train.num_classes,
                       n_images=len(train) + (len(val) if val is not None else 0))
    ctx.say("linear probe: done", total, total)
    return out
