"""Configuration of the evaluation stage.

``EvalConfig`` is the one object ``cpfs.evaluation.run.evaluate`` and the Prefect flow ``evaluate`` take,
built at the boundary (CLI, flow parameters) and validated there.

The embedded default (no ``imagefolder``, ``voc`` or ``davis`` given) runs, on the CPFS checkpoint, on a
random-init network of the same architecture (one per seed, batch-norm statistics recalibrated on training
crops) and on the trivial baselines:

- protocol 3, flow-kernel alignment, and protocol 4, the motion-segmentation probe, on the store's held-out
  video (the split the checkpoint's training used: ``cpfs.training.data.plan_split`` with its seed and fraction);
- protocol 1, the layer-wise linear probes, on scikit-learn's bundled handwritten digits written as an
  ImageFolder: a real labelled set that needs no network, reported as *smoke scale*.

Protocol 2 (Pascal VOC segmentation) runs when ``voc`` is set, protocol 5 (DAVIS label propagation) when
``davis`` is set, and the DAVIS foreground/background probe when ``davis`` and ``davis_train`` (the sequences
whose masks fit it, never ``davis``'s) are both set; ``imagefolder`` replaces the digits by a real ImageFolder
(ImageNet's layout).
"""

from __future__ import annotations

from pathlib import Path

from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from cpfs.config.base import PROPAGATION_LAYERS, ConfigModel, feature_layers
from cpfs.config.finetune import FinetuneConfig
from cpfs.config.store import StoreConfig
from cpfs.training.run_folder import RunFolder

PROTOCOL_NAMES: tuple[str, ...] = ("flow_alignment", "motion_segmentation", "linear_probe", "segmentation", "davis",
                                   "foreground", "finetune")


class EvalConfig(ConfigModel):
    """The evaluation stage: which checkpoints, which data, which protocols and at what size."""

    cli_panels: ClassVar[dict[str, tuple[str, ...]]] = {
        "Common": ("checkpoint", "out", "seeds", "heldout_videos"),
        "Held-out flow alignment and motion probe": ("pairs_per_video", "min_moving_fraction", "motion_floor", "points",
                                                     "motion_threshold", "qualitative_frames"),
        "Linear probe": ("imagefolder", "imagefolder_val", "max_per_class", "digits_per_class", "probe_size",
                         "probe_max_iter"),
        "VOC segmentation": ("voc", "voc_classes", "voc_size"),
        "DAVIS propagation": ("davis", "davis_sequences", "davis_max_frames", "davis_figure_frames", "davis_size",
                              "davis_layers", "davis_baseline_layers"),
        "DAVIS foreground probe": ("davis_train", "foreground_frame_step", "foreground_size"),
        "Fine-tuning": ("finetune",),
        "Features, baselines, statistics": ("compare", "layers", "feature_stride", "pixels_per_image",
                                            "recalibrate_checkpoints", "bn_batches", "bn_batch_size", "ci_level",
                                            "threads")}
    # A checkpoint file (``run/checkpoints/step-*.pt``) or a training run folder (its latest checkpoint).
    checkpoint: str = Field(description="The CPFS checkpoint to evaluate: a .pt file or a training run folder")
    # More checkpoints evaluated with identical settings (another run, another loss); each gets its own rows.
    compare: list[str] = Field(default_factory=list, description="Extra checkpoints (files or run folders) to compare")
    # Not given: the evaluation folder of the checkpoint's run (<run>/eval), where `cpfs run` writes it too.
    out: str | None = Field(default=None, description="Output folder: results.json, report.md, report.html, figures/ (None: <run>/eval of the checkpoint)")
    store: StoreConfig = Field(default_factory=StoreConfig, description="The Zarr store holding the held-out video")
    # Seeds 0..seeds-1: probe splits and samples, sampled pixels, and one random-init network per seed.
    seeds: int = Field(default=3, ge=1, description="Number of seeds; every score is a mean and std over them")
    # None: the held-out videos of the checkpoint's own training split; a list overrides it (ids of the store, or
    # file or folder names and globs, made ids before the evaluation starts: cpfs.pipeline.resolve_heldout).
    heldout_videos: list[str] | None = Field(default=None, description="Held-out videos: ids, file or folder names, or globs (None: the checkpoint's split)")
    imagefolder: str | None = Field(default=None, description="ImageFolder for the linear probe (None: digits, smoke scale)")
    # With it, imagefolder is the training set and this the test set (ImageNet: train/ and val/).
    imagefolder_val: str | None = Field(default=None, description="Held-out ImageFolder for the linear probe (None: split)")
    max_per_class: int | None = Field(default=None, ge=2, description="Keep at most this many images per class (None: all)")
    digits_per_class: int = Field(default=40, ge=4, le=170, description="Digits per class in the smoke-scale default")
    voc: str | None = Field(default=None, description="Pascal VOC root (JPEGImages/, SegmentationClass/, ImageSets/)")
    voc_classes: int = Field(default=21, ge=2, description="Classes of the VOC segmentation labels (VOC: 21)")
    davis: str | None = Field(default=None, description="DAVIS root (JPEGImages/480p/<seq>/, Annotations/480p/<seq>/)")
    davis_sequences: list[str] | None = Field(default=None, description="DAVIS sequences to run (None: every one)")
    davis_max_frames: int | None = Field(default=None, ge=2, description="First frames per DAVIS sequence (None: all)")
    davis_figure_frames: int = Field(default=3, ge=0, description="DAVIS frames per sequence drawn as figures (propagated mask against ground truth)")
    # The features label propagation compares: trunk layers' hypercolumns and "embedding", the model's unit
    # embedding (cpfs.evaluation.features.network_features). The default, the embedding beside conv1, was chosen on
    # held-out davis-train sequences, never on davis/ (cpfs.config.base.PROPAGATION_LAYERS says where).
    davis_layers: list[str] = Field(default_factory=lambda: list(PROPAGATION_LAYERS),
                                    description="DAVIS: features compared, trunk layers and/or 'embedding' (the model's own)")
    # Random init's own best layers on held-out davis-train (bench/davis_layers.py; docs/benchmarks.md, "Which
    # features for DAVIS label propagation"): conv1+conv2 on all three seeds (0.629 / 0.626 / 0.617, against
    # 0.460 / 0.474 / 0.453 for conv1..conv5; 0.454 for the embedding beside conv1, seed 0). A second random-init
    # row read at them, and the trained network's paired difference against it; None or the same as
    # davis_layers: no such row.
    davis_baseline_layers: list[str] | None = Field(default_factory=lambda: ["conv1", "conv2"],
                                                    description="DAVIS: random init also read at these layers, its own best (None: off)")
    # The foreground probe is fitted on these masks and scored on ``davis``'s: other sequences, never the same.
    davis_train: str | None = Field(default=None, description="DAVIS-layout root whose masks fit the foreground probe (scored on --davis)")
    # Every 15th frame: 48 fitted frames of davis-train's ten sequences, 15 scored of davis's four. The fits
    # (hypercolumns and each layer, every seed) cost in proportion: 82 s of CPU per network at 3 seeds, about 40 s
    # on 2 cores; every 10th frame costs ~1.4 times that (docs/benchmarks.md, bench/foreground.py).
    foreground_frame_step: int = Field(default=15, ge=1, description="Foreground probe: every k-th frame of each sequence, fitted and scored")
    foreground_size: int = Field(default=128, ge=63, description="Foreground probe: frames resized to this short side, px")
    # Trunk layers read by the probes and as hypercolumns by the dense protocols (2, 4, 5).
    layers: list[str] = Field(default_factory=lambda: ["conv1", "conv2", "conv3", "conv4", "conv5"],
                              description="Trunk layers probed / concatenated into hypercolumns")
    probe_size: int = Field(default=64, ge=63, description="Linear probe: images resized to this square side, px")
    probe_max_iter: int = Field(default=50, ge=1, description="L-BFGS iterations of every linear classifier")
    voc_size: int = Field(default=128, ge=63, description="VOC probe: images resized to this square side, px")
    davis_size: int = Field(default=240, ge=63, description="DAVIS: frames resized to this short side, px")
    feature_stride: int = Field(default=4, ge=1, description="Pixels between feature-grid cells of dense protocols")
    # 32 pairs per video: with 3 videos x 3 pixel seeds the paired CI of the headline is about +-0.02 wide
    # (bench/learning.py), narrower than the differences it has to resolve.
    pairs_per_video: int = Field(default=32, ge=2, description="Frame pairs per held-out video (protocols 3 and 4)")
    # Only pairs in which at least this fraction of the pixels moves on its own (cpfs.motion moving_fraction):
    # on the others the flow kernel is estimation noise (the flow oracle scored 0.39-0.47 on such a video).
    min_moving_fraction: float = Field(default=0.1, ge=0, lt=1, description="Held-out pairs: least fraction of independently moving pixels (0: all pairs)")
    # A video with fewer than pairs_per_video pairs above min_moving_fraction (a fixed camera, small moving people)
    # gets its own, lower threshold: its pairs_per_video-th most-moving pair, never below this floor, under which
    # the motion is flow noise (cpfs.evaluation.heldout.video_motion_threshold, where the value was measured).
    # A floor above min_moving_fraction is min_moving_fraction (0 there keeps every pair).
    motion_floor: float = Field(default=0.01, ge=0, lt=1, description="Held-out pairs: the per-video threshold is never lowered below this fraction")
    # Recalibrate the checkpoint's BatchNorm statistics on the same training crops as the random-init
    # network of its seed, so the paired comparison differs in the weights only.
    recalibrate_checkpoints: bool = Field(default=True, description="Recalibrate the checkpoints' BN statistics like random init's")
    ci_level: float = Field(default=0.95, gt=0, lt=1, description="Level of the paired bootstrap confidence intervals")
    points: int = Field(default=512, ge=2, description="Pixels per frame of the flow-alignment kernels")
    pixels_per_image: int = Field(default=512, ge=1, description="Training pixels per image of the dense probes")
    motion_threshold: float = Field(default=1.0, gt=0, description="Motion probe: px off the dominant motion = moving")
    # Random-init baseline: BatchNorm statistics re-estimated on training crops (weights untouched).
    bn_batches: int = Field(default=4, ge=0, description="Batches of training crops to recalibrate random-init BN (0: off)")
    bn_batch_size: int = Field(default=16, ge=2, description="Crops per recalibration batch")
    qualitative_frames: int = Field(default=3, ge=0, description="Held-out frames shown as figures")
    # The fine-tuning protocol (cpfs.evaluation.finetune): off unless finetune.enabled; VOC 2007 or digits.
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    # torch intra-op threads; None: one per core (os.cpu_count()). On a shared machine fewer can be faster.
    threads: int | None = Field(default=None, ge=1, description="torch threads (None: os.cpu_count())")

    @field_validator("davis_layers")
    @classmethod
    def _known_davis_layers(cls, v: list[str]) -> list[str]:
        return feature_layers(v, "davis_layers")

    @field_validator("davis_baseline_layers")
    @classmethod
    def _known_davis_baseline_layers(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else feature_layers(v, "davis_baseline_layers")

    @field_validator("layers")
    @classmethod
    def _known_layers(cls, v: list[str]) -> list[str]:
        from cpfs.training.model import LAYER_NAMES  # here, not at the top: importing the configuration needs no torch

        unknown = [name for name in v if name not in LAYER_NAMES]
        if unknown or not v:
            raise ValueError(f"layers must be a non-empty subset of {list(LAYER_NAMES)}, got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _out_beside_the_run(cls, data):  # noqa: ANN001, ANN206 - pydantic's raw input
        """``out`` not given (or None): ``<run>/eval`` of the checkpoint (a run folder, or a checkpoint file's)."""
        if isinstance(data, dict) and data.get("out") is None and isinstance(data.get("checkpoint"), str):
            ckpt = Path(data["checkpoint"]).expanduser()
            run = RunFolder.of_checkpoint(ckpt) if ckpt.suffix == ".pt" else RunFolder(ckpt)
            data = {**data, "out": str(run.eval.path)}
        return data

    @model_validator(mode="after")
    def _val_needs_train(self) -> "EvalConfig":
        if self.imagefolder_val is not None and self.imagefolder is None:
            raise ValueError("imagefolder_val is set but imagefolder (the probe's training set) is not")
        return self

    @model_validator(mode="after")
    def _fit_needs_davis(self) -> "EvalConfig":
        if self.davis_train is not None and self.davis is None:
            raise ValueError("davis_train (the foreground probe's fit sequences) is set but davis (the sequences it "
                             "is scored on) is not")
        return self

    def protocols(self) -> list[str]:
        """The protocols this configuration runs, in order."""
        out = ["flow_alignment", "motion_segmentation", "linear_probe"]
        if self.voc is not None:
            out.append("segmentation")
        if self.davis is not None:
            out.append("davis")
        if self.davis is not None and self.davis_train is not None:
            out.append("foreground")
        if self.finetune.enabled:
            out.append("finetune")
        return out

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    @property
    def smoke_scale(self) -> bool:
        """True when the linear probe runs on the embedded digits rather than a configured ImageFolder."""
        return self.imagefolder is None

    def out_path(self) -> Path:
        assert self.out is not None  # set from the checkpoint by _out_beside_the_run when not given
        return Path(self.out).expanduser()


def eval_dir(run_dir: str) -> str:
    """Where the evaluation of a training run folder goes when no ``out`` is given (``RunFolder.eval``)."""
    return str(RunFolder(run_dir).eval.path)
