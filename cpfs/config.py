"""One typed configuration tree for the whole pipeline.

Every stage takes one of these models, built once at the boundary (the CLI, a Prefect flow's parameters)
and validated there; nothing below the boundary receives a raw dict or an argparse namespace. Pydantic
models double as Prefect flow parameters, so the Prefect UI shows and validates the same schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Names accepted by ``--backend``. ``auto`` resolves to a concrete one (see ``cpfs.flow.resolve_backend``)
# and the store records the concrete name, never ``auto``.
FlowBackendName = Literal[
    "auto",
    "opencv-cuda-tvl1",
    "opencv-cuda-farneback",
    "torch-tvl1",
    "opencv-tvl1",
    "opencv-farneback",
    "opencv-dis",
]
FLOW_BACKENDS: tuple[str, ...] = FlowBackendName.__args__  # type: ignore[attr-defined]


class _Model(BaseModel):
    # Unknown keys are errors, not silently ignored: a typo in a parameter must fail loudly.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecodeConfig(_Model):
    """How videos are decoded before optical flow (applied by ffmpeg's filters, not in Python)."""

    # Target size. ``short_side``: scale so the shorter side has this many pixels, keeping the aspect ratio
    # (the other side rounded to an even number). None keeps the source size.
    short_side: int | None = Field(default=256, description="Shorter side after scaling, px (None: keep source size)")
    # Exact output size (width, height); overrides short_side when set.
    size: tuple[int, int] | None = Field(default=None, description="Exact output size (width, height), px")
    # Keep every ``step``-th decoded frame (ffmpeg's select filter). Flow is computed between kept frames.
    step: int = Field(default=1, ge=1, description="Keep every step-th frame")
    # Stop after this many kept frames (None: the whole video).
    max_frames: int | None = Field(default=None, ge=2, description="At most this many frames per video")
    # Seconds without a single frame from ffmpeg before it is declared hung and killed.
    timeout_s: float = Field(default=60.0, gt=0, description="ffmpeg stall timeout, seconds")

    @field_validator("short_side")
    @classmethod
    def _positive_side(cls, v: int | None) -> int | None:
        if v is not None and v < 16:
            raise ValueError(f"short_side must be >= 16 px (got {v})")
        return v

    @field_validator("size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 16 or v[1] < 16):
            raise ValueError(f"size must be at least 16x16 px (got {v[0]}x{v[1]})")
        return v


class TVL1Params(_Model):
    """Parameters of TV-L1 (Zach, Pock, Bischof 2007; Wedel et al. 2009), named as OpenCV's DualTVL1."""

    tau: float = Field(default=0.25, gt=0, description="Time step of the numerical scheme")
    lambda_: float = Field(default=0.15, gt=0, alias="lambda", description="Weight of the data term")
    theta: float = Field(default=0.3, gt=0, description="Coupling between the two variables")
    # 10 rather than OpenCV's 5: with 5 scales TV-L1 misses Urban2's 22 px motion (EPE 3.56 px at full size),
    # with 10 it reaches 0.40 px; other sequences are unchanged and the extra scales are tiny images.
    nscales: int = Field(default=10, ge=1, description="Number of pyramid scales")
    warps: int = Field(default=5, ge=1, description="Warpings per scale")
    epsilon: float = Field(default=0.01, gt=0, description="Stopping threshold")
    inner_iterations: int = Field(default=30, ge=1, description="Inner iterations per warp")
    outer_iterations: int = Field(default=10, ge=1, description="Outer iterations per warp")
    scale_step: float = Field(default=0.8, gt=0, lt=1, description="Pyramid scale factor")
    gamma: float = Field(default=0.0, ge=0, description="Weight of the illumination term (0: off)")
    median_filtering: int = Field(default=5, ge=1, description="Median filter kernel size on the flow")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FarnebackParams(_Model):
    """Parameters of Farneback's polynomial-expansion flow (OpenCV names)."""

    pyr_scale: float = Field(default=0.5, gt=0, lt=1, description="Pyramid scale factor")
    levels: int = Field(default=4, ge=1, description="Pyramid levels")
    winsize: int = Field(default=15, ge=3, description="Averaging window size")
    iterations: int = Field(default=3, ge=1, description="Iterations per level")
    poly_n: int = Field(default=5, ge=3, description="Neighbourhood for the polynomial expansion")
    poly_sigma: float = Field(default=1.1, gt=0, description="Gaussian sigma of the polynomial expansion")


class DISParams(_Model):
    """Parameters of DIS flow (Kroeger et al. 2016)."""

    preset: Literal["ultrafast", "fast", "medium"] = Field(default="medium", description="OpenCV DIS preset")


class FlowConfig(_Model):
    """Which optical-flow algorithm runs and with which parameters."""

    backend: FlowBackendName = Field(default="auto", description="Flow backend; auto picks the best available")
    tvl1: TVL1Params = Field(default_factory=TVL1Params)
    farneback: FarnebackParams = Field(default_factory=FarnebackParams)
    dis: DISParams = Field(default_factory=DISParams)
    # Frame pairs per call for batched backends (torch-tvl1); CPU backends loop over pairs.
    batch_size: int = Field(default=8, ge=1, description="Frame pairs per batch (batched backends)")
    # torch device for torch-tvl1: None picks cuda when available, else cpu.
    device: str | None = Field(default=None, description="torch device for torch-tvl1 (None: auto)")


class CutConfig(_Model):
    """Shot-cut detection: flow across a cut is meaningless and training must not read those pairs."""

    # A pair is a cut when its photometric warp error exceeds ``warp_ratio`` times the video's median...
    warp_ratio: float = Field(default=5.0, gt=1, description="Warp error / median warp error above which a pair is a cut")
    # ...and its colour-histogram distance (Bhattacharyya, 0..1) exceeds this.
    hist_threshold: float = Field(default=0.3, gt=0, le=1, description="Colour-histogram distance above which a pair may be a cut")


class StoreConfig(_Model):
    """Where the Zarr store lives and how its arrays are chunked."""

    # A local folder or an fsspec URL (s3://bucket/prefix when s3fs is installed, memory://...).
    path: str = Field(default="cpfs-data/store.zarr", description="Store location: folder or fsspec URL")
    # Frames per shard: the unit of writing, of parallel work and of dask chunks.
    shard_frames: int = Field(default=32, ge=1, description="Frames per Zarr shard")
    # Fixed-point scale of stored flow: value = round(flow_px * scale) as int16.
    flow_scale: float = Field(default=64.0, gt=0, description="Fixed-point scale of stored flow (units per px)")
    # Clipping bound of stored flow, px; |flow| beyond it is clipped and counted.
    flow_bound: float = Field(default=500.0, gt=0, description="Flow clipping bound, px")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options")

    @field_validator("flow_bound")
    @classmethod
    def _bound_fits_int16(cls, v: float, info) -> float:  # noqa: ANN001
        scale = info.data.get("flow_scale", 64.0)
        if v * scale > 32767:
            raise ValueError(f"flow_bound*flow_scale must fit int16 (<= 32767), got {v}*{scale}")
        return v


class IngestConfig(_Model):
    """The ingest stage: which videos, how to decode them, which flow, where to store."""

    # Video files, frame folders, or folders holding them (walked). Empty: the embedded sample videos.
    inputs: list[str] = Field(default_factory=list, description="Videos, frame folders or folders of them")
    store: StoreConfig = Field(default_factory=StoreConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    cuts: CutConfig = Field(default_factory=CutConfig)
    # Inputs are watched folders (a scheduled ingest): a missing or empty folder means "nothing new", not an error.
    watch: bool = Field(default=False, description="Inputs are watched folders: missing or empty is not an error")
    # Existing Dask scheduler (tcp://host:port); None starts a local cluster.
    dask_address: str | None = Field(default=None, description="Dask scheduler address; None: local cluster")
    # Workers of the local cluster (one process each, one thread each: OpenCV is told to use one thread).
    n_workers: int | None = Field(default=None, ge=1, description="Local Dask workers (None: CPU count)")
    # Ranges of this many shards are the unit of parallel work within one long video.
    shards_per_task: int = Field(default=4, ge=1, description="Shards per parallel task within a video")


# The training stage's own tree lives in ``cpfs.train_config`` (model, loss, optimiser, presets).
from cpfs.train_config import TrainConfig  # noqa: E402


class TrainStageConfig(_Model):
    """The training stage as a pipeline step: which store, which run folder, how to launch."""

    store: StoreConfig = Field(default_factory=StoreConfig)
    run_dir: str = Field(default="runs/demo", description="Run folder: metrics.jsonl and checkpoints/")
    train: TrainConfig = Field(default_factory=TrainConfig)
    # Continue from the run folder's latest checkpoint when there is one (exactly: optimiser, schedule and RNG
    # states included); a run that already reached ``train.steps`` is returned as it is, not redone.
    resume: bool = Field(default=True, description="Continue from the latest checkpoint in run_dir")
    # Processes per node; more than one launches ``torchrun`` (DistributedDataParallel: nccl on GPUs, gloo on CPU).
    nproc_per_node: int = Field(default=1, ge=1, description="Training processes (torchrun when > 1)")
    # One run folder per store index version (<run_dir>/store-<version>): a scheduled retrain then trains
    # only when new data arrived, and finds its finished run otherwise.
    version_runs: bool = Field(default=False, description="Run folder per store index version (scheduled retrains)")
    # Failure rehearsal: while this file exists, training raises on the batch number written in it. Lets
    # tests and users rehearse "a stage fails, remove the cause, retry the run" for real.
    fault_file: str | None = Field(default=None, description="While this file exists, fail on the batch it names")

    def for_store_version(self, version: str) -> "TrainStageConfig":
        """This configuration with the run folder it really uses for a store at index ``version``."""
        if not self.version_runs:
            return self
        return self.model_copy(update={"run_dir": str(Path(self.run_dir) / f"store-{version}"), "version_runs": False})
