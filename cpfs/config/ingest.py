"""Configuration of the ingest stage: which videos, how to decode them, which optical flow, where to store.

The flags of ``cpfs ingest`` are derived from these fields (``flows.model_options``): decode and flow fields
go without their prefix (``--step``, ``--backend``, ``--tvl1-tau``), a ``Cli`` marker names the others that
users know by a shorter name (``--size``, ``--workers``, ``--tvl1-scales``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator

from cpfs.config.base import Cli, ConfigModel
from cpfs.config.store import StoreConfig

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


def parse_size(text: str) -> dict[str, Any]:
    """``--size 256`` sets the shorter side; ``--size 320x240`` sets width x height exactly."""
    t = str(text).strip().lower()
    try:
        if "x" in t:
            w, h = (int(v) for v in t.split("x", 1))
            return {"size": (w, h)}
        return {"short_side": int(t)}
    except ValueError:
        raise ValueError(f"expected N (shorter side) or WxH, got {text!r}") from None


class DecodeConfig(ConfigModel):
    """How videos are decoded before optical flow (applied by ffmpeg's filters, not in Python)."""

    cli_panels: ClassVar[dict[str, tuple[str, ...]]] = {
        "Common": ("size", "max_frames"), "Decode": ("short_side", "step", "timeout_s")}
    # Target size. ``short_side``: scale so the shorter side has this many pixels, keeping the aspect ratio
    # (the other side rounded to an even number). None keeps the source size.
    short_side: int | None = Field(default=256, description="Shorter side after scaling, px (None: keep source size)")
    # Exact output size (width, height); overrides short_side when set.
    size: Annotated[tuple[int, int] | None, Cli(flag="--size", parse=parse_size)] = Field(default=None, description="Decoded size: N scales the shorter side to N px (as --short-side), WxH sets the exact size (None: --short-side decides)")
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


class TVL1Params(ConfigModel):
    """Parameters of TV-L1 (Zach, Pock, Bischof 2007; Wedel et al. 2009), named as OpenCV's DualTVL1."""

    tau: float = Field(default=0.25, gt=0, description="Time step of the numerical scheme")
    lambda_: float = Field(default=0.15, gt=0, alias="lambda", description="Weight of the data term")
    theta: float = Field(default=0.3, gt=0, description="Coupling between the two variables")
    # 10 rather than OpenCV's 5: with 5 scales TV-L1 misses Urban2's 22 px motion (EPE 3.56 px at full size),
    # with 10 it reaches 0.40 px; other sequences are unchanged and the extra scales are tiny images.
    nscales: Annotated[int, Cli(flag="--tvl1-scales")] = Field(default=10, ge=1, description="Number of pyramid scales")
    warps: int = Field(default=5, ge=1, description="Warpings per scale")
    epsilon: float = Field(default=0.01, gt=0, description="Stopping threshold")
    inner_iterations: int = Field(default=30, ge=1, description="Inner iterations per warp")
    outer_iterations: Annotated[int, Cli(flag="--tvl1-iterations")] = Field(default=10, ge=1, description="Outer iterations per warp")
    scale_step: float = Field(default=0.8, gt=0, lt=1, description="Pyramid scale factor")
    gamma: float = Field(default=0.0, ge=0, description="Weight of the illumination term (0: off)")
    median_filtering: int = Field(default=5, ge=1, description="Median filter kernel size on the flow")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FarnebackParams(ConfigModel):
    """Parameters of Farneback's polynomial-expansion flow (OpenCV names)."""

    pyr_scale: float = Field(default=0.5, gt=0, lt=1, description="Pyramid scale factor")
    levels: int = Field(default=4, ge=1, description="Pyramid levels")
    winsize: int = Field(default=15, ge=3, description="Averaging window size")
    iterations: int = Field(default=3, ge=1, description="Iterations per level")
    poly_n: int = Field(default=5, ge=3, description="Neighbourhood for the polynomial expansion")
    poly_sigma: float = Field(default=1.1, gt=0, description="Gaussian sigma of the polynomial expansion")


class DISParams(ConfigModel):
    """Parameters of DIS flow (Kroeger et al. 2016)."""

    preset: Literal["ultrafast", "fast", "medium"] = Field(default="medium", description="OpenCV DIS preset")


class FlowConfig(ConfigModel):
    """Which optical-flow algorithm runs and with which parameters."""

    cli_panels: ClassVar[dict[str, tuple[str, ...]]] = {
        "Common": ("backend",), "Flow backend": ("batch_size", "device"),
        "TV-L1 (--backend *tvl1)": ("tvl1",), "Farneback (--backend *farneback)": ("farneback",),
        "DIS (--backend opencv-dis)": ("dis",)}
    backend: FlowBackendName = Field(default="auto", description="Flow backend; auto picks the best available")
    tvl1: TVL1Params = Field(default_factory=TVL1Params)
    farneback: FarnebackParams = Field(default_factory=FarnebackParams)
    dis: DISParams = Field(default_factory=DISParams)
    # Frame pairs per call for batched backends (torch-tvl1); CPU backends loop over pairs.
    batch_size: Annotated[int, Cli(flag="--flow-batch-size")] = Field(default=8, ge=1, description="Frame pairs per batch (batched backends)")
    # torch device for torch-tvl1: None picks cuda when available, else cpu.
    device: Annotated[str | None, Cli(flag="--flow-device")] = Field(default=None, description="torch device for torch-tvl1 (None: auto)")


class CutConfig(ConfigModel):
    """Shot-cut detection: flow across a cut is meaningless and training must not read those pairs."""

    # A pair is a cut when its photometric warp error exceeds ``warp_ratio`` times the video's median...
    warp_ratio: float = Field(default=5.0, gt=1, description="Warp error / median warp error above which a pair is a cut")
    # ...and its colour-histogram distance (Bhattacharyya, 0..1) exceeds this.
    hist_threshold: float = Field(default=0.3, gt=0, le=1, description="Colour-histogram distance above which a pair may be a cut")


class IngestConfig(ConfigModel):
    """The ingest stage: which videos, how to decode them, which flow, where to store."""

    cli_panels: ClassVar[dict[str, tuple[str, ...]]] = {
        "Decode": ("strict_decode",), "Shot cuts": ("cuts",),
        "Scheduled and parallel work (Dask)": ("watch", "dask_address", "n_workers", "shards_per_task")}
    # Video files, frame folders, or folders holding them (walked). Empty: the embedded sample videos.
    inputs: list[str] = Field(default_factory=list, description="Videos, frame folders or folders of them")
    store: StoreConfig = Field(default_factory=StoreConfig)
    decode: Annotated[DecodeConfig, Cli(prefix="")] = Field(default_factory=DecodeConfig)
    flow: Annotated[FlowConfig, Cli(prefix="")] = Field(default_factory=FlowConfig)
    cuts: CutConfig = Field(default_factory=CutConfig)
    # Inputs are watched folders (a scheduled ingest): a missing or empty folder means "nothing new", not an error.
    watch: bool = Field(default=False, description="Inputs are watched folders: missing or empty is not an error")
    # A video whose decode ffmpeg reports errors in (it concealed damaged data: "corrupt decoded frame") fails
    # instead of being stored. Off: it is stored with its decode errors recorded (the store's "decode_errors"
    # attribute, the ingest summary says which frames) and training skips the affected pairs.
    strict_decode: bool = Field(default=False, description="Fail a video that decodes with errors instead of storing it with them recorded")
    # Existing Dask scheduler (tcp://host:port); None starts a local cluster.
    dask_address: str | None = Field(default=None, description="Dask scheduler address; None: local cluster")
    # Workers of the local cluster (one process each, one thread each: OpenCV is told to use one thread).
    n_workers: Annotated[int | None, Cli(flag="--workers")] = Field(default=None, ge=1, description="Local Dask workers (None: CPU count)")
    # Ranges of this many shards are the unit of parallel work within one long video.
    shards_per_task: int = Field(default=4, ge=1, description="Shards per parallel task within a video")
