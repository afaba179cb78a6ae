"""What every protocol of one evaluation shares, built once by ``prepare``: the loaded checkpoints, the store,
the held-out split, the random-init networks and a feature memo.

``prepare`` loads each checkpoint once (``cpfs.training.checkpoint.load_model``: one read of the file gives the weights
and the SHA-256), recovers the held-out videos of the main checkpoint's training split (``plan_split`` with the
training seed and fraction), and, with ``recalibrate_checkpoints``, re-estimates the checkpoints' BatchNorm
statistics exactly like random init's (same crops, same seed). Protocols read held-out pairs through
``ctx.heldout`` (a ``PairSubset``) and features through ``ctx.features``, which computes a source's features of
an image once per protocol run where it is read again: a fixed source (a checkpoint, a baseline) for every
seed, and random-init network of the training seed for both its row and the paired comparison.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from torch import Tensor

from cpfs.training.checkpoint import Checkpoint, load_model
from cpfs.config import EvalConfig
from cpfs.training.data import complete_videos, plan_split, store_version
from cpfs.evaluation import baselines
from cpfs.evaluation.features import FeatureFn, hypercolumn_features, model_embedding_features, network_features
from cpfs.evaluation.heldout import PairSubset
from cpfs.evaluation.sources import RANDOM, Source
from cpfs.training.model import CPFSModel
from cpfs.records import FrameRange
from cpfs.ingest.video_names import display_names
from storage import VideoStore

Progress = Callable[[str, int, int], None]  # (stage description, done, total)
FeatureKind = Literal["embedding", "hypercolumns", "propagation"]


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint under evaluation: its source name in the results and its ``cpfs.training.checkpoint.Checkpoint``."""

    name: str  # source name in the results ("cpfs" for the checkpoint under evaluation)
    checkpoint: Checkpoint

    path = property(lambda self: self.checkpoint.path)
    sha256 = property(lambda self: self.checkpoint.sha256)
    step = property(lambda self: self.checkpoint.step)
    store_version = property(lambda self: self.checkpoint.store_version)
    train_config = property(lambda self: self.checkpoint.train_config)
    architecture = property(lambda self: self.checkpoint.architecture)

    @property
    def run_dir(self) -> Path:
        return self.checkpoint.run.path

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


def memoize_features(feature_fn: FeatureFn) -> FeatureFn:
    """``feature_fn`` with its outputs cached by the content (SHA-1 of the bytes) of its inputs.

    A fixed network's features of a frame do not depend on the seed, so a protocol run once per seed computes
    them once. The cache lives as long as the returned FeatureFn.
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


@dataclass
class EvalContext:
    """Loaded models, the store and the held-out split of one evaluation (built once by ``prepare``)."""

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
    # {video_id: file or folder name} of the held-out videos, for people (``cpfs.ingest.video_names.display_names``)
    video_names: dict[str, str] = field(default_factory=dict)
    _random: dict[int, CPFSModel] = field(default_factory=dict)
    _features: dict[tuple[str, int, str], FeatureFn] = field(default_factory=dict)

    @property
    def main(self) -> CheckpointInfo:
        return next(iter(self.checkpoints.values()))

    @property
    def train_seed(self) -> int:
        """The main checkpoint's initialisation seed: random-init network of this seed is its paired baseline."""
        return int(self.main.train_config.get("seed", 0))

    def random_model(self, seed: int) -> CPFSModel:
        """Random-init network ``seed`` of the main checkpoint's architecture, BN recalibrated (cached)."""
        if seed not in self._random:
            model = baselines.random_init_model(self.models["cpfs"].config, seed=seed)
            if self.cfg.bn_batches > 0:
                points = int(self.main.train_config.get("points_per_image", 256))
                baselines.recalibrate_batchnorm(model, self.training_crops(self.main, seed), points, seed)
            self._random[seed] = model
        return self._random[seed]

    def training_crops(self, info: CheckpointInfo, seed: int) -> list[Tensor]:
        """The BatchNorm recalibration crops of seed ``seed`` (training crop size of ``info``)."""
        return baselines.training_crops(self.cfg.store, self.train_ranges, int(info.train_config.get("crop", 112)),
                                        self.cfg.bn_batches, self.cfg.bn_batch_size, seed)

    def sources(self, baseline_fns: Sequence[FeatureFn] = ()) -> list[Source]:
        """The rows of a protocol: every checkpoint, random init (one network per seed), then ``baseline_fns``."""
        out = [Source(name, "trained") for name in self.models]
        out.append(Source(RANDOM, "random-init"))
        return out + [Source(fn.name, "baseline", baseline=fn) for fn in baseline_fns]

    def network(self, source: Source, seed: int) -> CPFSModel | None:
        """The network of a trained or random-init source (random init: network ``seed``); None for a baseline."""
        if source.kind == "trained":
            return self.models[source.name]
        return self.random_model(seed) if source.kind == "random-init" else None

    def features(self, source: Source, seed: int, kind: FeatureKind, memo: bool = False) -> FeatureFn:
        """The ``kind`` features of ``source`` for seed ``seed`` (``cfg.feature_stride``; "hypercolumns": of
        ``cfg.layers``; "propagation": ``cfg.davis_layers``; "embedding": the model's own). With ``memo`` the
        features of each image are computed once for the rest of the protocol run (``memoize_features``;
        ``release_features`` ends it) and later calls for the same source, seed and kind share them: a fixed source
        across seeds, random init of the training seed between its row and the paired comparison. Without ``memo`` nothing is kept (a probe that reads every image once)."""
        key = (source.name, 0 if source.fixed else seed, "baseline" if source.baseline is not None else kind)
        if key in self._features:
            return self._features[key]
        model, stride = self.network(source, seed), self.cfg.feature_stride
        if model is None:
            fn = source.baseline
        elif kind == "embedding":
            fn = model_embedding_features(model, stride=stride, name=source.name)
        elif kind == "propagation":  # DAVIS label propagation's features: cfg.davis_layers, embedding or trunk layers
            fn = network_features(model, self.cfg.davis_layers, stride=stride, name=source.name)
        else:
            fn = hypercolumn_features(model.trunk, self.cfg.layers, stride=stride, name=source.name)
        if memo:
            fn = self._features[key] = memoize_features(fn)
        return fn

    def release_features(self) -> None:
        """Forget the memoized features (the end of a protocol run: the next uses other images or features)."""
        self._features.clear()

    def inputs(self) -> EvalInputs:
        return EvalInputs(tuple(c.sha256 for c in self.checkpoints.values()), self.store_version,
                          tuple(r.video_id for r in self.heldout_ranges))

    def source_meta(self, name: str) -> dict:
        """The provenance fields of a source's row in the results."""
        if name in self.checkpoints:
            c = self.checkpoints[name]
            return {"kind": "checkpoint", "checkpoint": str(c.path), "checkpoint_sha256": c.sha256, "step": c.step}
        if name == RANDOM:
            return {"kind": "random-init", "architecture_of": str(self.main.path),
                    "bn_recalibrated_batches": self.cfg.bn_batches, "seeds": self.cfg.seed_list}
        return {"kind": "baseline"}

    def say(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)


def source_names(cfg: EvalConfig) -> list[str]:
    """The result names of the checkpoints: "cpfs", then each ``compare`` entry by its run folder or file."""
    names = ["cpfs"]
    for i, path in enumerate(cfg.compare):
        p = Path(path)
        base = (p.name if p.is_dir() else f"{p.parent.parent.name}-{p.stem}") or f"compare{i + 1}"
        name = base
        while name in names or name == RANDOM:
            name = f"{base}#{i + 1}"
        names.append(name)
    return names


def prepare(cfg: EvalConfig, progress: Progress | None = None, *, recalibrate: bool = True) -> EvalContext:
    """Load the checkpoints, open the store and recover the held-out split; fail before any protocol runs.

    ``recalibrate`` False skips the checkpoints' batch-norm recalibration (the command line's up-front check
    of the inputs, which throws the context away).

    Raises:
        CheckpointError: a checkpoint is missing, unreadable or of another architecture (naming its path).
        StoreError: the store is missing or has no complete video; ValueError: no held-out video, or a
        configured data folder is missing (naming it).
    """
    for what, path in (("imagefolder", cfg.imagefolder), ("imagefolder_val", cfg.imagefolder_val),
                       ("voc", cfg.voc), ("davis", cfg.davis), ("davis_train", cfg.davis_train)):
        if path is not None and not Path(path).expanduser().is_dir():
            raise FileNotFoundError(f"{path}: {what} folder is missing or not a folder")
    models, infos = {}, {}
    for name, path in zip(source_names(cfg), [cfg.checkpoint, *cfg.compare]):
        models[name], record = load_model(path)
        infos[name] = CheckpointInfo(name, record)
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
    names = display_names({r.video_id: str(store.video_attrs(r.video_id).get("source_path") or "")
                           for r in split.heldout})
    floor = min(cfg.motion_floor, cfg.min_moving_fraction)
    heldout = PairSubset.from_ranges(store, split.heldout, min_moving_fraction=cfg.min_moving_fraction,
                                     pairs_per_video=cfg.pairs_per_video, motion_floor=floor)
    kept = {vid: pairs for vid, pairs in heldout.allowed.items() if pairs is None or len(pairs) >= 2}
    for vid in sorted(set(heldout.allowed) - set(kept)):
        warnings.append(f"held-out video {names[vid]} ({vid}) has fewer than 2 pairs in which at least {floor:g} of "
                        "the pixels move on their own: left out of the held-out protocols")
    if not kept:
        raise ValueError(f"{cfg.store.path}: no held-out video of {main.path} has 2 or more pairs with motion "
                         f"(motion_floor {floor:g}); hold out videos with real motion, "
                         "or lower motion_floor")
    ctx = EvalContext(cfg=cfg, models=models, checkpoints=infos, store=store, store_version=version,
                      train_ranges=split.train, heldout=PairSubset(store, kept), heldout_ranges=split.heldout,
                      warnings=warnings, progress=progress, video_names=names)
    if recalibrate and cfg.recalibrate_checkpoints and cfg.bn_batches > 0:
        # The same crops and pixels as random-init network <training seed>: the paired comparison then differs
        # in the weights only.
        for name, model in models.items():
            seed = int(infos[name].train_config.get("seed", 0))
            points = int(infos[name].train_config.get("points_per_image", 256))
            baselines.recalibrate_batchnorm(model, ctx.training_crops(infos[name], seed), points, seed)
    return ctx
