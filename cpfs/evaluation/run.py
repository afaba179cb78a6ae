"""The evaluation stage end to end: a trained CPFS checkpoint against a random-init network and baselines.

``evaluate(cfg)`` loads the checkpoint(s) (``cpfs.train.load_checkpoint``: an unusable file or another
architecture raises ``CheckpointError`` naming the path), recovers the held-out videos of the checkpoint's own
training split (``cpfs.data.plan_split`` with the training seed and fraction), builds one random-init network
of the same architecture per seed, and runs every configured protocol with identical settings on all of
them and on the trivial baselines:

=======================  ==============================================  ==================================
protocol                 feature of a network                             baselines
=======================  ==============================================  ==================================
3 ``flow_alignment``     the model's unit embeddings (training kernel)    position, colour, flow oracle
4 ``motion_segmentation`` frozen trunk hypercolumns (``cfg.layers``)      position, colour
1 ``linear_probe``       pooled trunk layers (``cfg.layers``)             chance
2 ``segmentation``       frozen trunk hypercolumns                        position, colour
5 ``davis``              frozen trunk hypercolumns                        position, colour
=======================  ==============================================  ==================================

Seeds: seed s draws the probe's split and sampled pixels, and builds random-init network s. Every source's
``summary`` is ``{metric: {"mean", "std"}}`` over seeds (std over seeds of the per-seed scores; the
protocols' own spreads, over pairs or sequences, are kept in ``per_seed``). A fixed source (a checkpoint, a
baseline) has its features computed once for all seeds. Deterministic protocols (DAVIS, a probe with an
explicit held-out set) give std 0 for a fixed network.

A fair random baseline: BatchNorm running statistics of a freshly initialised network are 0/1, which is not
what its layers output; left so, the random network is crippled (a trial scored 0.20 instead of 0.31) and
flatters the trained model. ``recalibrate_batchnorm`` re-estimates them on training crops (train-mode forward
passes with ``momentum=None``, i.e. a cumulative average, no gradient), leaving every weight untouched.

Protocols 3 and 4 read only held-out pairs. With a single video in the store the split is by frames
(``plan_split``); ``PairSubset`` then hides the training frames from ``cpfs.evaluation.pairs``. The
motion probe is split in time within the held-out videos (first half of the selected pairs trains the
linear classifier, the second half scores it), so it never reads a training frame either.

Library only: no Prefect. ``tasks.evaluate`` runs the protocols one task each (``run_protocol``), then
``write_evaluation_report``; ``evaluate`` here does the same in one process, sharing the loaded models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from cpfs.data import FlowPairDataset, complete_videos, plan_split, store_version
from cpfs.errors import StoreError
from cpfs.evaluation import baselines, stats
from cpfs.evaluation.config import EvalConfig
from cpfs.evaluation.datasets import (
    ImageFolderDataset,
    digits_imagefolder,
    read_image_folder,
    read_voc_segmentation,
)
from cpfs.evaluation.davis import davis_protocol
from cpfs.evaluation.features import FeatureFn, hypercolumn_features, model_embedding_features
from cpfs.evaluation.flow_alignment import flow_alignment
from cpfs.evaluation.linear_probe import linear_probe
from cpfs.evaluation.motion_segmentation import fit_motion_classifier, motion_segmentation_probe, predict_motion_mask
from cpfs.evaluation.pairs import load_pair, select_pairs
from cpfs.evaluation.plots import davis_figure, qualitative_row
from cpfs.evaluation.report import ReportPaths, write_report
from cpfs.evaluation.segmentation import segmentation_probe
from cpfs.model import AlexNetConfig, CPFSModel, CPFSModelConfig, sample_points
from cpfs.motion import MOTION_COLUMNS
from cpfs.records import FrameRange
from cpfs.train import CheckpointError, file_sha256, latest_checkpoint, load_checkpoint, read_checkpoint
from storage import VideoStore

Progress = Callable[[str, int, int], None]  # (stage description, done, total)
RANDOM = "random-init"


# -----------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a model's weights came from: enough to find and verify them again."""

    name: str  # source name in the results ("cpfs" for the checkpoint under evaluation)
    path: Path
    sha256: str  # of the checkpoint file's bytes
    step: int
    store_version: str | None  # index version of the store it was trained on
    run_dir: Path  # the training run folder (metrics.jsonl)
    train_config: dict  # the TrainConfig it was trained with (JSON form)
    architecture: dict  # width, batch_norm, hypercolumn_layers, hidden, embed_dim

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256, "step": self.step,
                "store_version": self.store_version, "run_dir": str(self.run_dir),
                "architecture": {k: v for k, v in self.architecture.items() if k != "shapes"},
                "train_config": self.train_config}


@dataclass(frozen=True)
class EvalInputs:
    """The small, typed identity of an evaluation's inputs: what a cache key needs (no arrays)."""

    checkpoint_sha256: tuple[str, ...]  # main checkpoint first, then ``compare`` in order
    store_version: str  # index version of the store now
    heldout_videos: tuple[str, ...]


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


# -----------------------------------------------------------------------------------------------------------
# Checkpoints


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the latest checkpoint of a training run folder.

    Raises:
        CheckpointError: the path does not exist, or is a folder without ``checkpoints/step-*.pt``.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise CheckpointError(f"{p}: training run folder holds no checkpoint (expected checkpoints/step-*.pt)")
        return found
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    return p


def model_config_of(payload: Mapping[str, Any], path: Path) -> CPFSModelConfig:
    """The ``CPFSModelConfig`` a training checkpoint describes (its ``architecture`` record)."""
    arch = payload.get("architecture")
    if not isinstance(arch, Mapping) or arch.get("class") != CPFSModel.__name__:
        found = arch.get("class") if isinstance(arch, Mapping) else None
        raise CheckpointError(f"{path}: not a CPFSModel checkpoint (architecture class {found!r})")
    try:
        return CPFSModelConfig(
            trunk=AlexNetConfig(width=float(arch["width"]), batch_norm=bool(arch["batch_norm"])),
            hypercolumn_layers=tuple(arch["hypercolumn_layers"]),
            hidden=int(arch["hidden"]),
            embed_dim=int(arch["embed_dim"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: architecture record is incomplete or invalid ({exc})") from None


def load_model(path: str | Path, name: str = "cpfs") -> tuple[CPFSModel, CheckpointInfo]:
    """Load a training checkpoint (file or run folder) into a ``CPFSModel`` of the architecture it records.

    Raises:
        CheckpointError: missing or unreadable file, not a CPFS training checkpoint, or weights that do not fit
        the recorded architecture (the message names the path and the mismatched keys).
    """
    ckpt = resolve_checkpoint(path)
    payload = read_checkpoint(ckpt)
    model = CPFSModel(model_config_of(payload, ckpt))
    load_checkpoint(ckpt, model)
    model.eval()
    info = CheckpointInfo(
        name=name, path=ckpt.resolve(), sha256=file_sha256(ckpt), step=int(payload.get("step", 0)),
        store_version=payload.get("store_version"), run_dir=ckpt.resolve().parent.parent,
        train_config=dict(payload.get("config") or {}), architecture=dict(payload["architecture"]),
    )
    return model, info


# -----------------------------------------------------------------------------------------------------------
# Held-out pairs


class PairSubset:
    """A read-only view of a ``VideoStore`` in which only the ``allowed`` pairs of each video are usable.

    ``cpfs.evaluation.pairs`` finds usable pairs through ``read_cut``; here a pair outside ``allowed`` reads as
    a cut, so held-out protocols never see training frames. Frames and flow are read from the store as is.
    """

    def __init__(self, store: VideoStore, allowed: Mapping[str, Sequence[int] | None]) -> None:
        self.store = store
        self.path = store.path
        self.allowed = {vid: None if pairs is None else frozenset(int(t) for t in pairs) for vid, pairs in allowed.items()}

    @classmethod
    def from_ranges(cls, store: VideoStore, ranges: Sequence[FrameRange], min_moving_fraction: float = 0.0) -> "PairSubset":
        """Pairs t with both frames in a range: ``start <= t`` and ``t + 1 < stop``; with ``min_moving_fraction``
        > 0 only pairs in which at least that fraction of the pixels moves on its own (``cpfs.motion``
        ``moving_fraction``): on the others the flow kernel is estimation noise and the protocol would
        measure noise."""
        allowed: dict[str, set[int]] = {}
        for r in ranges:
            pairs = set(range(r.start, r.stop - 1))
            if min_moving_fraction > 0:
                moving = store.read_motion(r.video_id)[:, MOTION_COLUMNS.index("moving_fraction")]
                pairs = {t for t in pairs if t < moving.size and moving[t] >= min_moving_fraction}
            allowed.setdefault(r.video_id, set()).update(pairs)
        return cls(store, allowed)

    @property
    def video_ids(self) -> list[str]:
        return list(self.allowed)

    def read_cut(self, video_id: str) -> np.ndarray:
        if video_id not in self.allowed:
            raise StoreError(f"{self.path}: video {video_id!r} is not part of this evaluation's held-out set")
        cut = np.asarray(self.store.read_cut(video_id), dtype=bool).copy()
        pairs = self.allowed[video_id]
        if pairs is not None:
            keep = np.zeros_like(cut)
            keep[[t for t in pairs if t < cut.size]] = True
            cut |= ~keep
        return cut

    def read_frames(self, video_id: str, start: int, stop: int) -> np.ndarray:
        return self.store.read_frames(video_id, start, stop)

    def read_flow(self, video_id: str, start: int, stop: int) -> np.ndarray:
        return self.store.read_flow(video_id, start, stop)


def motion_probe_halves(heldout: PairSubset, pairs_per_video: int) -> tuple[PairSubset, PairSubset]:
    """The pairs the motion probe trains on and tests on, as ``motion_segmentation_probe`` splits a video
    listed in both lists: the first half of ``select_pairs`` trains, the second half tests."""
    train, test = {}, {}
    for vid in heldout.video_ids:
        idx = select_pairs(heldout, vid, pairs_per_video)  # type: ignore[arg-type]
        half = len(idx) // 2
        train[vid], test[vid] = idx[:half], idx[half:]
    return PairSubset(heldout.store, train), PairSubset(heldout.store, test)


# -----------------------------------------------------------------------------------------------------------
# The random-init baseline


@torch.no_grad()
def recalibrate_batchnorm(model: CPFSModel, batches: Sequence[Tensor], points_per_image: int = 256, seed: int = 0) -> CPFSModel:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` of images; weights untouched.

    Running statistics are reset, momentum set to None (PyTorch then keeps the cumulative average of the batch
    statistics: with equal batch sizes, the mean over all images), and the model runs forward in train mode on
    each batch ``(B, 3, H, W)`` in [0, 1] with ``points_per_image`` seeded pixels per image (the head's
    BatchNorm1d sees hypercolumns). Momenta and eval mode are restored. Returns ``model``.
    """
    if not batches:
        raise ValueError("recalibrate_batchnorm needs at least one batch of images")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    gen = torch.Generator().manual_seed(seed)
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for images in batches:
            b, _, h, w = images.shape
            model(images, sample_points(b, h, w, points_per_image, generator=gen))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return model


def training_crops(cfg: EvalConfig, info: CheckpointInfo, train: Sequence[FrameRange], seed: int) -> list[Tensor]:
    """``cfg.bn_batches`` batches of centre crops (the training crop size) of seeded random training pairs."""
    crop = int(info.train_config.get("crop", 112))
    dataset = FlowPairDataset(cfg.store, list(train), crop=crop, augment=None, seed=seed)
    n = cfg.bn_batches * cfg.bn_batch_size
    rng = np.random.default_rng([seed, 7919])
    idx = rng.choice(len(dataset), size=n, replace=len(dataset) < n)
    images = torch.stack([dataset[int(i)][0] for i in idx])  # (n, 3, crop, crop)
    return list(images.split(cfg.bn_batch_size))


# -----------------------------------------------------------------------------------------------------------
# The evaluation context: everything the protocols share


@dataclass
class EvalContext:
    """Loaded models, the store and the held-out split of one evaluation (built by ``prepare``)."""

    cfg: EvalConfig
    models: dict[str, CPFSModel]  # checkpoint sources: "cpfs" first, then the ``compare`` ones
    checkpoints: dict[str, CheckpointInfo]
    store: VideoStore
    store_version: str
    train_ranges: tuple[FrameRange, ...]
    heldout: PairSubset
    heldout_ranges: tuple[FrameRange, ...]
    warnings: list[str]
    progress: Progress | None = None
    _random: dict[int, CPFSModel] = field(default_factory=dict)

    @property
    def main(self) -> CheckpointInfo:
        return next(iter(self.checkpoints.values()))

    def random_model(self, seed: int) -> CPFSModel:
        """Random-init network ``seed`` of the main checkpoint's architecture, BN recalibrated (cached)."""
        if seed not in self._random:
            model = baselines.random_init_model(self.models["cpfs"].config, seed=seed)
            if self.cfg.bn_batches > 0:
                points = int(self.main.train_config.get("points_per_image", 256))
                recalibrate_batchnorm(model, training_crops(self.cfg, self.main, self.train_ranges, seed), points, seed)
            self._random[seed] = model
        return self._random[seed]

    def inputs(self) -> EvalInputs:
        return EvalInputs(tuple(c.sha256 for c in self.checkpoints.values()), self.store_version,
                          tuple(r.video_id for r in self.heldout_ranges))

    def say(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)


def _source_names(cfg: EvalConfig) -> list[str]:
    names = ["cpfs"]
    for i, path in enumerate(cfg.compare):
        p = Path(path)
        base = (p.name if p.is_dir() else f"{p.parent.parent.name}-{p.stem}") or f"compare{i + 1}"
        name = base
        while name in names or name == RANDOM:
            name = f"{base}#{i + 1}"
        names.append(name)
    return names


def prepare(cfg: EvalConfig, progress: Progress | None = None) -> EvalContext:
    """Load the checkpoints, open the store and recover the held-out split; fail before any protocol runs.

    Raises:
        CheckpointError: a checkpoint is missing, unreadable or of another architecture (naming its path).
        StoreError: the store is missing or has no complete video; ValueError: no held-out video, or a
        configured data folder is missing (naming it).
    """
    for what, path in (("imagefolder", cfg.imagefolder), ("imagefolder_val", cfg.imagefolder_val),
                       ("voc", cfg.voc), ("davis", cfg.davis)):
        if path is not None and not Path(path).expanduser().is_dir():
            raise FileNotFoundError(f"{path}: {what} folder is missing or not a folder")
    models, infos = {}, {}
    for name, path in zip(_source_names(cfg), [cfg.checkpoint, *cfg.compare]):
        models[name], infos[name] = load_model(path, name)
    main = infos["cpfs"]
    store = VideoStore.open(cfg.store, create=False)
    videos = complete_videos(cfg.store)
    version = store_version(cfg.store)
    warnings = []
    if main.store_version is not None and main.store_version != version:
        warnings.append(f"the checkpoint was trained on store index version {main.store_version}, but "
                        f"{cfg.store.path} is now version {version}: the held-out split is recomputed on the "
                        "current videos and may include videos the network was trained on")
    tc = main.train_config
    heldout_ids = cfg.heldout_videos if cfg.heldout_videos is not None else tc.get("heldout_videos")
    try:
        split = plan_split(videos, float(tc.get("holdout_fraction", 0.2)), int(tc.get("seed", 0)), heldout_ids)
    except ValueError as exc:
        raise ValueError(f"{cfg.store.path}: cannot recover the held-out split of {main.path} ({exc})") from None
    if not split.heldout:
        raise ValueError(f"{main.path}: its training held out no video (holdout_fraction 0); "
                         "set EvalConfig.heldout_videos to the store's videos to evaluate on")
    heldout = PairSubset.from_ranges(store, split.heldout, min_moving_fraction=cfg.min_moving_fraction)
    kept = {vid: pairs for vid, pairs in heldout.allowed.items() if pairs is None or len(pairs) >= 2}
    for vid in sorted(set(heldout.allowed) - set(kept)):
        warnings.append(f"held-out video {vid} has fewer than 2 pairs in which at least {cfg.min_moving_fraction:g} of "
                        "the pixels move on their own: left out of the held-out protocols")
    if not kept:
        raise ValueError(f"{cfg.store.path}: no held-out video of {main.path} has 2 or more pairs with motion "
                         f"(min_moving_fraction {cfg.min_moving_fraction:g}); hold out videos with real motion, "
                         "or lower min_moving_fraction")
    heldout = PairSubset(store, kept)
    ctx = EvalContext(cfg=cfg, models=models, checkpoints=infos, store=store, store_version=version,
                      train_ranges=split.train, heldout=heldout, heldout_ranges=split.heldout,
                      warnings=warnings, progress=progress)
    if cfg.recalibrate_checkpoints and cfg.bn_batches > 0:
        # The same crops and pixels as random-init network <training seed>: the paired comparison then differs
        # in the weights only.
        for name, model in models.items():
            seed = int(infos[name].train_config.get("seed", 0))
            points = int(infos[name].train_config.get("points_per_image", 256))
            recalibrate_batchnorm(model, training_crops(cfg, infos[name], split.train, seed), points, seed)
    return ctx


# -----------------------------------------------------------------------------------------------------------
# Aggregation over seeds


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


def _source_meta(ctx: EvalContext, name: str) -> dict:
    if name in ctx.checkpoints:
        c = ctx.checkpoints[name]
        return {"kind": "checkpoint", "checkpoint": str(c.path), "checkpoint_sha256": c.sha256, "step": c.step}
    if name == RANDOM:
        return {"kind": "random-init", "architecture_of": str(ctx.main.path),
                "bn_recalibrated_batches": ctx.cfg.bn_batches, "seeds": ctx.cfg.seed_list}
    return {"kind": "baseline"}


def memoize_features(feature_fn: FeatureFn) -> FeatureFn:
    """``feature_fn`` with its outputs cached by the content (SHA-1 of the bytes) of its inputs.

    A fixed network's features of a frame do not depend on the seed, so a protocol run once per seed computes
    them once. The cache lives as long as the returned FeatureFn (one protocol run of one source).
    """
    cache: dict[str, Tensor] = {}

    def fn(images: Tensor, flow: Tensor | None) -> Tensor:
        key = hashlib.sha1(images.detach().contiguous().cpu().numpy().tobytes()).hexdigest()
        if feature_fn.needs_flow and flow is not None:
            key += hashlib.sha1(flow.detach().contiguous().cpu().numpy().tobytes()).hexdigest()
        if key not in cache:
            cache[key] = feature_fn.fn(images, flow)
        return cache[key]

    return dataclasses.replace(feature_fn, fn=fn)


def _sources(ctx: EvalContext, features: Callable[[CPFSModel, str], FeatureFn],
             baseline_fns: Sequence[FeatureFn]) -> list[tuple[str, Callable[[int], FeatureFn], bool]]:
    """``(name, feature_fn of seed, fixed)``: the checkpoints and baselines are fixed (the same for every
    seed), random-init network s is built with seed s."""
    out: list[tuple[str, Callable[[int], FeatureFn], bool]] = [
        (n, lambda s, m=m, n=n: features(m, n), True) for n, m in ctx.models.items()]
    out.append((RANDOM, lambda s: features(ctx.random_model(s), RANDOM), False))
    out += [(fn.name, lambda s, fn=fn: fn, True) for fn in baseline_fns]
    return out


def _over_seeds(ctx: EvalContext, sources: Sequence[tuple[str, Callable[[int], FeatureFn], bool]],
                run_one: Callable[[FeatureFn, int], dict], what: str) -> dict:
    """``run_one(feature_fn, seed)`` for every seed and source, combined over seeds (``combine_seeds``);
    a fixed source's features are computed once (``memoize_features``)."""
    seeds = ctx.cfg.seed_list
    out = {}
    total, done = len(sources) * len(seeds), 0
    for name, make, fixed in sources:
        shared = memoize_features(make(seeds[0])) if fixed else None
        rows = []
        for s in seeds:
            ctx.say(f"{what}: {name}, seed {s}", done, total)
            rows.append(run_one(shared if shared is not None else make(s), s))
            done += 1
        out[name] = combine_seeds(rows, _source_meta(ctx, name))
    ctx.say(f"{what}: done", total, total)
    return out


def _all_seeds_at_once(ctx: EvalContext, sources: Sequence[tuple[str, Callable[[int], FeatureFn], bool]],
                       run_seeds: Callable[[FeatureFn, Sequence[int]], dict], what: str) -> dict:
    """For probes that fit one classifier per seed on features computed once (``seeds`` argument): a fixed
    source runs once with every seed (its summary's std is over seeds already); random-init network s runs
    with seed s, combined over seeds (``combine_seeds``)."""
    seeds = ctx.cfg.seed_list
    out = {}
    for i, (name, make, fixed) in enumerate(sources):
        ctx.say(f"{what}: {name}", i, len(sources))
        if fixed:
            out[name] = {**run_seeds(make(seeds[0]), seeds), "n_seeds": len(seeds), **_source_meta(ctx, name)}
        else:
            out[name] = combine_seeds([run_seeds(make(s), [s]) for s in seeds], _source_meta(ctx, name))
    ctx.say(f"{what}: done", len(sources), len(sources))
    return out


def _hypercolumns(cfg: EvalConfig) -> Callable[[CPFSModel, str], FeatureFn]:
    return lambda model, name: hypercolumn_features(model.trunk, cfg.layers, stride=cfg.feature_stride, name=name)


# -----------------------------------------------------------------------------------------------------------
# The protocols, each over every source


def run_flow_alignment(ctx: EvalContext) -> dict:
    """Protocol 3 on the held-out pairs: the models' embeddings, random init, position, colour, flow oracle."""
    cfg = ctx.cfg
    stride = cfg.feature_stride
    vids = ctx.heldout.video_ids

    def one(fn: FeatureFn, seed: int) -> dict:
        return flow_alignment(fn, ctx.heldout, vids, pairs_per_video=cfg.pairs_per_video, points=cfg.points, seed=seed)  # type: ignore[arg-type]

    sources = _sources(
        ctx, lambda model, name: model_embedding_features(model, stride=stride, name=name),
        # The oracle reads the flow at the sampled pixels themselves (stride 1): the exact ceiling of the protocol.
        [baselines.position_features(stride), baselines.colour_features("lab", stride), baselines.flow_oracle_features(1)])
    out = _over_seeds(ctx, sources, one, "flow alignment")
    embed = lambda model, name: model_embedding_features(model, stride=stride, name=name)  # noqa: E731
    for name in ctx.models:
        ctx.say(f"flow alignment: {name} against random init of its seed", 0, 1)
        out[name]["paired"] = paired_comparison(ctx, out[name], one, embed, "alignment_centered",
                                                "held-out centered flow alignment")
    return out


def paired_comparison(ctx: EvalContext, trained: Mapping[str, Any], one: Callable[[FeatureFn, int], dict],
                      features: Callable[[CPFSModel, str], FeatureFn], metric: str, what: str) -> dict:
    """The headline of a per-pair protocol: the paired difference trained - random init of the *same*
    initialisation seed (the weights training started from, BN recalibrated like the trained network's), every
    held-out pair under every pixel seed, with a bootstrap CI over pairs (stratified by video) and seeds
    (``cpfs.evaluation.stats``), overall and per video, and a sentence that says it."""
    seed = int(ctx.main.train_config.get("seed", 0))
    fn = memoize_features(features(ctx.random_model(seed), f"{RANDOM} seed {seed}"))
    base = [one(fn, s) for s in ctx.cfg.seed_list]
    a = np.stack([np.asarray(r["per_pair"][metric]) for r in trained["per_seed"]], axis=1)  # (pairs, seeds)
    b = np.stack([np.asarray(r["per_pair"][metric]) for r in base], axis=1)
    groups = list(base[0]["per_pair"]["video_id"])
    if list(trained["per_seed"][0]["per_pair"]["video_id"]) != groups:
        raise RuntimeError("paired comparison: the two sources were scored on different pairs")
    return paired_summary(a, b, groups, seed, metric, what, ctx.cfg.ci_level)


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


def run_motion_segmentation(ctx: EvalContext) -> dict:
    """Protocol 4 on the held-out pairs (split in time): hypercolumns of each network, position, colour."""
    cfg = ctx.cfg
    vids = ctx.heldout.video_ids

    def run_seeds(fn: FeatureFn, seeds: Sequence[int]) -> dict:
        return motion_segmentation_probe(fn, ctx.heldout, vids, vids, pairs_per_video=cfg.pairs_per_video,  # type: ignore[arg-type]
                                         pixels_per_image=cfg.pixels_per_image, threshold=cfg.motion_threshold,
                                         seeds=tuple(seeds), max_iter=cfg.probe_max_iter)

    sources = _sources(ctx, _hypercolumns(cfg), [baselines.position_features(cfg.feature_stride),
                                                 baselines.colour_features("lab", cfg.feature_stride)])
    out = _all_seeds_at_once(ctx, sources, run_seeds, "motion segmentation")
    # Paired against random init of the training seed: the same test pairs and the same classifier seeds.
    seed = int(ctx.main.train_config.get("seed", 0))
    base = run_seeds(_hypercolumns(cfg)(ctx.random_model(seed), f"{RANDOM} seed {seed}"), cfg.seed_list)
    b = np.asarray(base["per_pair"]["IoU_moving"])  # (pairs, seeds)
    for name in ctx.models:
        trained = out[name]["per_pair"]
        if list(zip(trained["video_id"], trained["t"])) != list(zip(base["per_pair"]["video_id"], base["per_pair"]["t"])):
            raise RuntimeError("motion segmentation paired comparison: the sources were scored on different pairs")
        out[name]["paired"] = paired_summary(np.asarray(trained["IoU_moving"]), b, trained["video_id"], seed,
                                             "IoU_moving", "the held-out motion-segmentation probe (IoU of moving pixels)",
                                             cfg.ci_level)
    return out


def _subsample(ds: ImageFolderDataset, per_class: int | None, seed: int = 0) -> ImageFolderDataset:
    if per_class is None:
        return ds
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(ds.labels == c))[:per_class] for c in range(ds.num_classes)]
    return ds.subset(np.sort(np.concatenate(keep)))


def run_linear_probe(ctx: EvalContext) -> dict:
    """Protocol 1: layer-wise linear probes on ``cfg.imagefolder``, else on the digits (smoke scale).

    A network's probes for every seed share one feature extraction (``linear_probe`` takes the seed list);
    random-init network s is probed with seed s. The "chance" row is ``1 / classes``.
    """
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
            per_seed = [{"summary": {l: {"mean": r["per_seed"][k], "std": 0.0} for l, r in res["layers"].items()}} for k in range(len(seeds))]
            out[name] = {**combine_seeds(per_seed, _source_meta(ctx, name)), "probe": res}
        rows = []
        for k, s in enumerate(seeds):
            ctx.say(f"linear probe: {RANDOM}, seed {s}", len(ctx.models) + k, total)
            rows.append(linear_probe(ctx.random_model(s).trunk, train, cfg.layers, (s,), **kw))
        out[RANDOM] = combine_seeds(rows, _source_meta(ctx, RANDOM))
        chance = 1.0 / train.num_classes
        out["chance"] = {"summary": {l: {"mean": chance, "std": 0.0} for l in cfg.layers}, "kind": "baseline"}
        for res in out.values():
            res.update(dataset=dataset_name, smoke_scale=cfg.smoke_scale, num_classes=train.num_classes,
                       n_images=len(train) + (len(val) if val is not None else 0))
    ctx.say("linear probe: done", total, total)
    return out


def run_segmentation(ctx: EvalContext) -> dict:
    """Protocol 2 on the VOC tree ``cfg.voc`` (train split trains, val split scores)."""
    cfg = ctx.cfg
    if cfg.voc is None:
        raise ValueError("protocol 'segmentation' needs EvalConfig.voc (a Pascal VOC root)")
    train, val = read_voc_segmentation(cfg.voc, "train"), read_voc_segmentation(cfg.voc, "val")

    def run_seeds(fn: FeatureFn, seeds: Sequence[int]) -> dict:
        return segmentation_probe(fn, train, val, cfg.voc_classes, image_size=(cfg.voc_size, cfg.voc_size),
                                  pixels_per_image=cfg.pixels_per_image, seeds=tuple(seeds), max_iter=cfg.probe_max_iter)

    sources = _sources(ctx, _hypercolumns(cfg), [baselines.position_features(cfg.feature_stride),
                                                 baselines.colour_features("lab", cfg.feature_stride)])
    return _all_seeds_at_once(ctx, sources, run_seeds, "VOC segmentation")


def run_davis(ctx: EvalContext) -> dict:
    """Protocol 5 on the DAVIS tree ``cfg.davis``. Label propagation has no randomness: a fixed network runs
    once (std over seeds 0); random-init network s runs for each seed."""
    cfg = ctx.cfg
    if cfg.davis is None:
        raise ValueError("protocol 'davis' needs EvalConfig.davis (a DAVIS root)")
    feats = _hypercolumns(cfg)
    sources: list[tuple[str, Callable[[int], FeatureFn], Sequence[int]]] = [
        (n, lambda s, m=m, n=n: feats(m, n), [0]) for n, m in ctx.models.items()]
    sources.append((RANDOM, lambda s: feats(ctx.random_model(s), RANDOM), cfg.seed_list))
    for fn in (baselines.position_features(cfg.feature_stride), baselines.colour_features("lab", cfg.feature_stride)):
        sources.append((fn.name, lambda s, fn=fn: fn, [0]))
    out = {}
    train_seed = int(ctx.main.train_config.get("seed", 0))
    same_seed: dict | None = None
    for i, (name, make, seeds) in enumerate(sources):
        ctx.say(f"DAVIS: {name}", i, len(sources))
        rows = []
        for s in seeds:
            rows.append(davis_protocol(make(s), cfg.davis, cfg.davis_sequences, size=cfg.davis_size,
                                       max_frames=cfg.davis_max_frames,
                                       figure_frames=cfg.davis_figure_frames if name in ctx.models or (name == RANDOM and s == train_seed) else 0))
            if name == RANDOM and s == train_seed:
                same_seed = rows[-1]
        out[name] = combine_seeds(rows, _source_meta(ctx, name))
    figures = {name: out[name]["per_seed"][0].pop("figures", {}) for name in ctx.models}
    random_figures = same_seed.pop("figures", {}) if same_seed is not None else {}
    for name in list(out):
        for row in out[name].get("per_seed", []):
            row.pop("figures", None)  # arrays: drawn below, never stored in results.json
    if same_seed is None:  # the training seed is not among the evaluation's seeds: run its network too
        same_seed = davis_protocol(feats(ctx.random_model(train_seed), RANDOM), cfg.davis, cfg.davis_sequences,
                                   size=cfg.davis_size, max_frames=cfg.davis_max_frames)
    for name in ctx.models:
        out[name]["paired"] = davis_paired(out[name]["per_seed"][0], same_seed, train_seed, cfg.ci_level)
    # Figures: propagated masks against the ground truth for a few frames of every sequence, written as PNG
    # files beside the report (the report embeds them), so they survive a protocol run in another process.
    folder = cfg.out_path() / "figures"
    files = {}
    for seq, fig in figures.get("cpfs", {}).items():
        preds = {"cpfs": fig["pred"]}
        if seq in random_figures:
            preds[f"{RANDOM} seed {train_seed}"] = random_figures[seq]["pred"]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"davis_{seq}.png"
        Image.fromarray(davis_figure(fig["image"], fig["gt"], preds, fig["frames"])).save(path)
        files[f"DAVIS {seq}: propagated masks (red) against ground truth (green)"] = str(path)
    out["cpfs"]["figure_files"] = files
    return out


def davis_paired(trained: Mapping[str, Any], random_same: Mapping[str, Any], seed: int, level: float) -> dict:
    """DAVIS's second headline: the paired difference of J&F, trained - random init of the same seed, per
    scored frame, with a bootstrap CI that resamples frames inside each sequence (sequences are strata).
    Frames of one sequence are correlated (a propagation error persists), so this interval is about these
    sequences' frames; the per-sequence differences and their spread are reported beside it."""
    a, b = trained["per_frame"], random_same["per_frame"]
    if list(zip(a["sequence"], a["t"])) != list(zip(b["sequence"], b["t"])):
        raise RuntimeError("DAVIS paired comparison: the two sources were scored on different frames")
    diff = np.asarray(a["J&F"]) - np.asarray(b["J&F"])
    overall = stats.paired_bootstrap(diff, a["sequence"], level=level)
    per_seq = {name: float(trained["sequences"][name]["J&F"] - random_same["sequences"][name]["J&F"])
               for name in trained["sequences"]}
    return {
        "metric": "J&F", "against": f"{RANDOM} seed {seed}",
        "trained_mean": float(np.mean(a["J&F"])), "random_same_seed_mean": float(np.mean(b["J&F"])),
        **overall,
        "per_video": stats.per_group_bootstrap(diff, a["sequence"], level=level),
        "per_sequence_difference": per_seq,
        "spread_over_videos": float(np.std([trained["sequences"][n]["J&F"] for n in trained["sequences"]])),
        "verdict": stats.verdict(overall, "DAVIS J&F (label propagation)", f"random init (seed {seed})"),
    }


PROTOCOLS: dict[str, Callable[[EvalContext], dict]] = {
    "flow_alignment": run_flow_alignment,
    "motion_segmentation": run_motion_segmentation,
    "linear_probe": run_linear_probe,
    "segmentation": run_segmentation,
    "davis": run_davis,
}


def _with_threads(cfg: EvalConfig) -> int:
    """Set torch's intra-op threads to ``cfg.threads`` (None: the core count); returns the previous value."""
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    return before


def run_protocol(name: str, cfg: EvalConfig, progress: Progress | None = None) -> dict:
    """One protocol over every source, in a fresh context: ``{source: {"summary": ..., ...}}``."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid names: {', '.join(PROTOCOLS)}")
    before = _with_threads(cfg)
    try:
        t0 = time.perf_counter()
        out = PROTOCOLS[name](prepare(cfg, progress))
        for res in out.values():
            res.setdefault("protocol_seconds", time.perf_counter() - t0)
        return out
    finally:
        torch.set_num_threads(before)


# -----------------------------------------------------------------------------------------------------------
# Figures and the report


@torch.no_grad()
def qualitative_figures(ctx: EvalContext) -> dict[str, np.ndarray]:
    """For ``cfg.qualitative_frames`` held-out test frames of the motion probe: frame | flow (Middlebury
    colours) | embedding PCA -> RGB | motion prediction, for the CPFS model and random-init network 0. The
    motion classifiers are fitted on the probe's training half only."""
    cfg = ctx.cfg
    if cfg.qualitative_frames == 0:
        return {}
    train_pairs, test_pairs = motion_probe_halves(ctx.heldout, cfg.pairs_per_video)
    picks = [(vid, t) for vid in test_pairs.video_ids for t in sorted(test_pairs.allowed[vid] or ())]
    if not picks:
        return {}
    chosen = [picks[i] for i in np.unique(np.round(np.linspace(0, len(picks) - 1, min(cfg.qualitative_frames, len(picks)))).astype(int))]
    figures = {}
    for label, model in (("cpfs", ctx.models["cpfs"]), (RANDOM, ctx.random_model(0))):
        hyper = hypercolumn_features(model.trunk, cfg.layers, stride=cfg.feature_stride, name=label)
        clf = fit_motion_classifier(hyper, train_pairs, train_pairs.video_ids, pairs_per_video=cfg.pairs_per_video,  # type: ignore[arg-type]
                                    pixels_per_image=cfg.pixels_per_image, threshold=cfg.motion_threshold,
                                    max_iter=cfg.probe_max_iter)
        for i, (vid, t) in enumerate(chosen):
            pair = load_pair(ctx.heldout, vid, t)  # type: ignore[arg-type]
            frame = (pair.image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            emb = model.dense_embedding(pair.image, stride=cfg.feature_stride)[0].numpy()
            mask = predict_motion_mask(hyper, clf, pair.image)
            figures[f"heldout_{i}_{label}"] = qualitative_row(
                frame, pair.flow[0].permute(1, 2, 0).numpy(), emb, mask,
                labels=(f"{vid[:10]} frame {t}", "flow", f"{label} embedding (PCA)", f"{label} motion prediction"))
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
    verdicts = [src["paired"]["verdict"] + (f" [{name}]" if name != "cpfs" else "")
                for proto in protocols.values() for name, src in proto.items() if isinstance(src.get("paired"), Mapping)]
    meta = {
        "config": cfg.model_dump(mode="json"),
        "checkpoint": str(ctx.main.path),
        "checkpoint_sha256": ctx.main.sha256,
        "checkpoints": [c.to_json() for c in ctx.checkpoints.values()],
        "store": {"path": cfg.store.path, "index_version": ctx.store_version,
                  "matches_checkpoint": ctx.main.store_version == ctx.store_version},
        "heldout": [{"video_id": r.video_id, "start": r.start, "stop": r.stop} for r in ctx.heldout_ranges],
        "seeds": cfg.seed_list,
        "torch_threads": cfg.threads or os.cpu_count(),
        "smoke_scale": cfg.smoke_scale and "linear_probe" in protocols,
        "notes": notes,
        "warnings": list(ctx.warnings),
        "verdicts": verdicts,
    }
    if seconds is not None:
        meta["seconds"] = seconds
    return {"meta": meta, "protocols": {name: dict(sources) for name, sources in protocols.items()}}


def write_evaluation_report(cfg: EvalConfig, protocols: Mapping[str, Mapping[str, Any]], seconds: float | None = None,
                            ctx: EvalContext | None = None) -> EvalResult:
    """Figures, ``results.json``, ``report.md`` and ``report.html`` in ``cfg.out`` (``write_report``)."""
    t0 = time.perf_counter()
    before = _with_threads(cfg)
    try:
        ctx = ctx or prepare(cfg)
        figures = qualitative_figures(ctx)
        for proto in protocols.values():  # figures a protocol wrote as files (DAVIS)
            for src in proto.values():
                for caption, path in (src.get("figure_files") or {}).items() if isinstance(src, Mapping) else ():
                    if Path(path).is_file():
                        figures[caption] = np.asarray(Image.open(path).convert("RGB"))
    finally:
        torch.set_num_threads(before)
    results = build_results(ctx, protocols, seconds)
    metrics = ctx.main.run_dir / "metrics.jsonl"
    title = "CPFS evaluation report" + (" (linear probe at smoke scale: digits)" if results["meta"]["smoke_scale"] else "")
    paths: ReportPaths = write_report(results, cfg.out_path(), figures,
                                      metrics_path=metrics if metrics.is_file() else None, title=title)
    return EvalResult(cfg.out_path(), paths.results_json, paths.report_md, paths.report_html, results,
                      seconds if seconds is not None else time.perf_counter() - t0)


def evaluate(cfg: EvalConfig, progress: Progress | None = None) -> EvalResult:
    """Every configured protocol (``cfg.protocols()``) on the checkpoint(s), random init and baselines, then
    the report in ``cfg.out``. ``progress(stage, done, total)`` is called as the work advances."""
    t0 = time.perf_counter()
    before = _with_threads(cfg)
    try:
        ctx = prepare(cfg, progress)
        protocols = {}
        for name in cfg.protocols():
            t = time.perf_counter()
            protocols[name] = PROTOCOLS[name](ctx)
            for res in protocols[name].values():
                res.setdefault("protocol_seconds", time.perf_counter() - t)
        result = write_evaluation_report(cfg, protocols, None, ctx)
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
    """The flow's small return value: paths and the first metric of each protocol per source."""
    headline: dict[str, dict[str, float]] = {}
    for proto, sources in result.results["protocols"].items():
        first = next(iter(next(iter(sources.values()))["summary"]))
        key = {"flow_alignment": "alignment_centered", "motion_segmentation": "IoU_moving", "segmentation": "mIoU",
               "davis": "J&F"}.get(proto, first)
        if proto == "linear_probe":  # the best layer of each source
            headline[f"{proto}/best_layer"] = {s: max(v["mean"] for v in r["summary"].values()) for s, r in sources.items()}
            continue
        headline[f"{proto}/{key}"] = {s: float(r["summary"][key]["mean"]) for s, r in sources.items() if key in r["summary"]}
    meta = result.results["meta"]
    return EvalSummary(str(result.out_dir), str(result.results_json), str(result.report_md), str(result.report_html),
                       meta["checkpoint_sha256"], meta["store"]["index_version"], tuple(result.results["protocols"]),
                       headline, float(meta.get("seconds", result.seconds)))
