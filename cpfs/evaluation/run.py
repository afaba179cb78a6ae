"""The evaluation stage end to end: a trained CPFS checkpoint against a random-init network and baselines.

``evaluate(cfg)`` builds the context once (``cpfs.evaluation.context.prepare``: the checkpoints, each read and
hashed once, the held-out split of the checkpoint's own training, BN recalibration), runs every configured
protocol of ``PROTOCOLS`` on it with identical settings for every source, and writes the report:

=======================  ==============================================  ==================================
protocol                 feature of a network                             baselines
=======================  ==============================================  ==================================
3 ``flow_alignment``     the model's unit embeddings (training kernel)    position, colour, flow oracle
4 ``motion_segmentation`` frozen trunk hypercolumns (``cfg.layers``)      position, colour
1 ``linear_probe``       pooled trunk layers (``cfg.layers``)             chance
2 ``segmentation``       frozen trunk hypercolumns                        position, colour
5 ``davis``              embedding and trunk layers (``davis_layers``)    position, colour
``foreground``           frozen trunk hypercolumns, and each layer        position, colour
``finetune``             the trunk fine-tuned with a new head (trained)   random init of the training seed
=======================  ==============================================  ==================================

Each protocol is a module of ``cpfs.evaluation.protocols`` with ``run(ctx) -> dict`` and its ``HEADLINE``
metric; seeds and the paired comparison against random init of the training seed are in
``cpfs.evaluation.paired``; the random-init networks' fair BatchNorm statistics in ``baselines``.

Library only: no Prefect. ``tasks.evaluate`` runs ``run_protocol`` one task each on a context the flow builds
once, then ``write_evaluation_report``; ``evaluate`` here does the same in one process.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np
import torch

from cpfs.config import EvalConfig
from cpfs.evaluation.outlook import outlook
from cpfs.evaluation.context import EvalContext, Progress, prepare
from cpfs.evaluation.features import hypercolumn_features
from cpfs.evaluation.heldout import motion_probe_halves
from cpfs.evaluation.motion_segmentation import fit_motion_classifier, predict_motion_mask
from cpfs.evaluation.pairs import load_pair
from cpfs.evaluation.plots import qualitative_row
from cpfs.evaluation.protocols import (
    davis,
    finetune,
    flow_alignment,
    foreground,
    linear_probe,
    motion_segmentation,
    segmentation,
)
from cpfs.evaluation.report import ReportFigure, ReportPaths, write_report
from cpfs.evaluation.sources import RANDOM
from cpfs.evaluation.tables import COMPARISONS

# Every protocol by its configuration name, in the order ``EvalConfig.protocols`` lists them.
PROTOCOLS: dict[str, ModuleType] = {
    "flow_alignment": flow_alignment,
    "motion_segmentation": motion_segmentation,
    "linear_probe": linear_probe,
    "segmentation": segmentation,
    "davis": davis,
    "foreground": foreground,
    "finetune": finetune,
}


@dataclass(frozen=True)
class EvalResult:
    """Outcome of ``evaluate``: the report files and every number."""

    out_dir: Path
    results_json: Path
    report_md: Path
    report_html: Path
    results: dict = field(repr=False)  # {"meta": ..., "protocols": {protocol: {source: result}}}
    seconds: float = 0.0


@dataclass(frozen=True)
class EvalSummary:
    """What the Prefect flow returns: where the report is and the headline numbers (CPFS vs random)."""

    out_dir: str
    results_json: str
    report_md: str
    report_html: str
    checkpoint_sha256: str
    store_version: str
    protocols: tuple[str, ...]
    headline: dict[str, dict[str, float]]  # {"protocol/metric": {source: mean}}
    seconds: float


def _with_threads(cfg: EvalConfig) -> int:
    """Set torch's intra-op threads to ``cfg.threads`` (None: the core count); returns the previous value."""
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    return before


def run_protocol(name: str, ctx: EvalContext) -> dict:
    """One protocol over every source of ``ctx``: ``{source: {"summary": ..., ...}}``."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid names: {', '.join(PROTOCOLS)}")
    before = _with_threads(ctx.cfg)
    try:
        t0 = time.perf_counter()
        out = PROTOCOLS[name].run(ctx)
        for res in out.values():
            res.setdefault("protocol_seconds", time.perf_counter() - t0)
        return out
    finally:
        ctx.release_features()
        torch.set_num_threads(before)


# -----------------------------------------------------------------------------------------------------------
# Figures and the report


@torch.no_grad()
def qualitative_figures(ctx: EvalContext) -> list[ReportFigure]:
    """For ``cfg.qualitative_frames`` held-out test frames of the motion probe, one strip each: frame | flow
    (Middlebury colours) | embedding PCA -> RGB of the trained network and of random init of its seed | each
    one's motion prediction. The motion classifiers are fitted on the probe's training half only."""
    cfg = ctx.cfg
    if cfg.qualitative_frames == 0:
        return []
    train_pairs, test_pairs = motion_probe_halves(ctx.heldout, cfg.pairs_per_video)
    picks = [(vid, t) for vid in test_pairs.video_ids for t in sorted(test_pairs.allowed[vid] or ())]
    if not picks:
        return []
    chosen = [picks[i] for i in np.unique(np.round(np.linspace(0, len(picks) - 1, min(cfg.qualitative_frames, len(picks)))).astype(int))]
    pairs = [load_pair(ctx.heldout, vid, t) for vid, t in chosen]
    random_name = f"{RANDOM} seed {ctx.train_seed}"
    embeddings: list[dict[str, np.ndarray]] = [{} for _ in chosen]
    masks: list[dict[str, np.ndarray]] = [{} for _ in chosen]
    for label, model in (("cpfs", ctx.models["cpfs"]), (random_name, ctx.random_model(ctx.train_seed))):
        hyper = hypercolumn_features(model.trunk, cfg.layers, stride=cfg.feature_stride, name=label)
        clf = fit_motion_classifier(hyper, train_pairs, train_pairs.video_ids, pairs_per_video=cfg.pairs_per_video,
                                    pixels_per_image=cfg.pixels_per_image, threshold=cfg.motion_threshold,
                                    max_iter=cfg.probe_max_iter)
        for i, pair in enumerate(pairs):
            embeddings[i][label] = model.dense_embedding(pair.image, stride=cfg.feature_stride)[0].numpy()
            masks[i][label] = predict_motion_mask(hyper, clf, pair.image)
    figures = []
    for i, ((vid, t), pair) in enumerate(zip(chosen, pairs)):
        name = ctx.video_names.get(vid, vid)
        frame = (pair.image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        strip = qualitative_row(frame, pair.flow[0].permute(1, 2, 0).numpy(), embeddings[i], masks[i],
                                frame_label=f"{name}, frame {t}")
        figures.append(ReportFigure(
            f"heldout_{i}", f"Held-out video {name}, frame {t}: the trained network (cpfs) and {random_name} side by "
            "side. Embedding: the first three principal components of the pixel embeddings as colours (pixels of "
            "one colour are embedded alike); motion: the motion probe's prediction (red), fitted on the first half "
            "of the held-out pairs.", image=strip))
    return figures


def build_results(ctx: EvalContext, protocols: Mapping[str, Mapping[str, Any]], seconds: float | None = None) -> dict:
    """The results document: every protocol's numbers with the configuration and checkpoints they came from."""
    cfg = ctx.cfg
    notes = []
    if "linear_probe" in protocols and cfg.smoke_scale:
        notes.append("SMOKE SCALE: the linear probe ran on scikit-learn's handwritten digits "
                     f"({cfg.digits_per_class} per class, {cfg.probe_size} px), not ImageNet; set imagefolder for a real run.")
    notes.append("std is over seeds; random-init network s is built with seed s, BN statistics recalibrated "
                 f"on {cfg.bn_batches}x{cfg.bn_batch_size} training crops"
                 + (" (the checkpoints' too, on the crops of their training seed)." if cfg.recalibrate_checkpoints else "."))
    verdicts = [src[key]["verdict"] + (f" [{name}]" if name != "cpfs" else "")
                for proto in protocols.values() for name, src in proto.items()
                for key in COMPARISONS if isinstance(src.get(key), Mapping)]
    meta = {
        "config": cfg.model_dump(mode="json"),
        "checkpoint": str(ctx.main.path),
        "checkpoint_sha256": ctx.main.sha256,
        "checkpoints": [c.to_json() for c in ctx.checkpoints.values()],
        "store": {"path": cfg.store.path, "index_version": ctx.store_version,
                  "matches_checkpoint": ctx.main.store_version == ctx.store_version},
        "heldout": [{"video_id": r.video_id, "name": ctx.video_names.get(r.video_id, r.video_id), "start": r.start,
                     "stop": r.stop} for r in ctx.heldout_ranges],
        "seeds": cfg.seed_list,
        "torch_threads": cfg.threads or os.cpu_count(),
        "smoke_scale": cfg.smoke_scale and "linear_probe" in protocols,
        "notes": notes,
        "warnings": list(ctx.warnings),
        "verdicts": verdicts,
        "outlook": outlook(protocols, ctx.main.train_config, smoke_scale=cfg.smoke_scale and "linear_probe" in protocols,
                           step=ctx.main.step),
    }
    if seconds is not None:
        meta["seconds"] = seconds
    return {"meta": meta, "protocols": {name: dict(sources) for name, sources in protocols.items()}}


def protocol_figures(protocols: Mapping[str, Mapping[str, Any]]) -> list[ReportFigure]:
    """The figures protocols wrote as files (DAVIS: ``figure_files``, ``{caption: path}``), each shown under its
    protocol's table from the file as it is."""
    return [ReportFigure(Path(path).stem, caption, section=proto, path=Path(path))
            for proto, sources in protocols.items() for src in sources.values() if isinstance(src, Mapping)
            for caption, path in (src.get("figure_files") or {}).items() if Path(path).is_file()]


def write_evaluation_report(ctx: EvalContext, protocols: Mapping[str, Mapping[str, Any]],
                            seconds: float | None = None) -> EvalResult:
    """Figures, ``results.json``, ``report.md`` and ``report.html`` in ``cfg.out`` (``write_report``), with the
    training run's ``metrics.jsonl`` and ``validation.jsonl`` when it has them."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    before = _with_threads(cfg)
    try:
        figures = qualitative_figures(ctx) + protocol_figures(protocols)
    finally:
        torch.set_num_threads(before)
    results = build_results(ctx, protocols, seconds)
    run = ctx.main.checkpoint.run
    title = "CPFS evaluation report" + (" (linear probe at smoke scale: digits)" if results["meta"]["smoke_scale"] else "")
    paths: ReportPaths = write_report(results, cfg.out_path(), figures,
                                      metrics_path=run.metrics if run.metrics.is_file() else None,
                                      validation_path=run.validation if run.validation.is_file() else None, title=title)
    return EvalResult(cfg.out_path(), paths.results_json, paths.report_md, paths.report_html, results,
                      seconds if seconds is not None else time.perf_counter() - t0)


def evaluate(cfg: EvalConfig, progress: Progress | None = None) -> EvalResult:
    """Every configured protocol (``cfg.protocols()``) on the checkpoint(s), random init and baselines, then
    the report in ``cfg.out``. ``progress(stage, done, total)`` is called as the work advances."""
    t0 = time.perf_counter()
    before = _with_threads(cfg)
    try:
        ctx = prepare(cfg, progress)
        protocols = {name: run_protocol(name, ctx) for name in cfg.protocols()}
        result = write_evaluation_report(ctx, protocols, None)
    finally:
        torch.set_num_threads(before)
    seconds = time.perf_counter() - t0
    # Record the total time in results.json too (the report was written before the total was known).
    doc = json.loads(result.results_json.read_text())
    doc["meta"]["seconds"] = seconds
    result.results_json.write_text(json.dumps(doc, indent=2) + "\n")
    result.results["meta"]["seconds"] = seconds
    return EvalResult(result.out_dir, result.results_json, result.report_md, result.report_html, result.results, seconds)


def summarize(result: EvalResult) -> EvalSummary:
    """The flow's small return value: paths and each protocol's headline metric (``HEADLINE``) per source."""
    headline: dict[str, dict[str, float]] = {}
    for proto, sources in result.results["protocols"].items():
        module = PROTOCOLS.get(proto)
        key = getattr(module, "HEADLINE", None) or next(iter(next(iter(sources.values()))["summary"]))
        value = getattr(module, "headline", None)
        if value is not None:  # a protocol that computes its headline (the linear probe's best layer)
            headline[f"{proto}/{key}"] = {s: value(r) for s, r in sources.items()}
            continue
        headline[f"{proto}/{key}"] = {s: float(r["summary"][key]["mean"]) for s, r in sources.items() if key in r["summary"]}
    meta = result.results["meta"]
    return EvalSummary(str(result.out_dir), str(result.results_json), str(result.report_md), str(result.report_html),
                       meta["checkpoint_sha256"], meta["store"]["index_version"], tuple(result.results["protocols"]),
                       headline, float(meta.get("seconds", result.seconds)))
