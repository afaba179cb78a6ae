"""Small typed records passed between steps (never bare dicts or loose paths)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class VideoSource:
    """One input video: a file ffmpeg can read, or a folder of numbered image frames."""

    path: str  # absolute path
    kind: Literal["file", "frames"]  # "frames": a folder of numbered images (DAVIS layout)


@dataclass(frozen=True)
class VideoMeta:
    """What ffmpeg reports about a source before decoding (found without ffprobe)."""

    width: int  # source width, px
    height: int  # source height, px
    fps: float  # frames per second (frame folders: 25.0 by convention, as ffmpeg's image2 demuxer)
    n_frames: int | None  # frame count when known exactly (container header or frame folder)
    duration_s: float | None  # duration when the container reports it
    codec: str  # e.g. "h264", or the image codec for frame folders ("mjpeg", "png")
    rotation: int = 0  # display rotation, degrees counter-clockwise (0, 90, 180, 270): ffmpeg autorotates
    sar: tuple[int, int] = (1, 1)  # sample (pixel) aspect ratio num:den; a pixel displays sar[0]/sar[1] wide


@dataclass(frozen=True)
class VideoRecord:
    """A source that is ready to ingest: identity, metadata and decoded geometry."""

    video_id: str  # content hash of the source (file bytes, or sorted frame files' bytes)
    source: VideoSource
    meta: VideoMeta
    width: int  # decoded width, px (after scaling)
    height: int  # decoded height, px
    n_frames: int  # number of decoded frames (after step and max_frames)
    size_bytes: int  # size of the source on disk


@dataclass(frozen=True)
class FrameRange:
    """A half-open range [start, stop) of decoded frame indices of one video, aligned to shards."""

    video_id: str
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"bad frame range [{self.start}, {self.stop}) for video {self.video_id}")


@dataclass(frozen=True)
class IngestResult:
    """Outcome of ingesting one source: stored, already present, or failed (with the reason)."""

    source: str  # the source path as given
    status: Literal["stored", "skipped", "failed"]
    video_id: str | None = None
    n_frames: int = 0
    n_cuts: int = 0
    error: str | None = None  # "path: reason (detail)" when failed
    backend: str | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    note: str | None = None  # what the status line should add: "same content as X", "repaired: ..."


@dataclass(frozen=True)
class IngestSummary:
    """Outcome of one ingest run over many sources."""

    store: str  # store path or URL
    results: tuple[IngestResult, ...]
    index_version: str  # content version of the store index after the run
    backend: str  # concrete flow backend used

    @property
    def failed(self) -> tuple[IngestResult, ...]:
        return tuple(r for r in self.results if r.status == "failed")

    @property
    def stored(self) -> tuple[IngestResult, ...]:
        return tuple(r for r in self.results if r.status == "stored")

    @property
    def skipped(self) -> tuple[IngestResult, ...]:
        return tuple(r for r in self.results if r.status == "skipped")


@dataclass(frozen=True)
class TrainSummary:
    """What a training stage produced: the checkpoint evaluation reads, and how it was made."""

    run_dir: str
    checkpoint: str  # path of the last checkpoint
    checkpoint_sha256: str  # content hash: the cache key of everything downstream
    steps: int
    loss: str
    final_metrics: dict
    seconds: float
    resumed_from: int  # step the run continued from (0: a fresh start)
