"""Small typed records passed between steps (never bare dicts or loose paths)."""

from __future__ import annotations

from collections.abc import Iterable
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
class DecodeErrors:
    """Frames ffmpeg decoded with errors, and the stored frames their damage may reach.

    ``corrupt``: numbers of the source frames ffmpeg flagged as decoded with errors (its "corrupt decoded
    frame": the decoder concealed damaged or missing data; the frame's ``decode_error_flags`` or
    ``AV_FRAME_FLAG_CORRUPT``). Source numbers, not stored ones, so two decodes that overlap count a frame
    once; with ``step`` 1 they are the stored frame numbers. ``damaged``: the stored frames ``[a, b)`` that
    may show the damage: a flagged frame, the frames predicted from it up to the next key frame, and the
    B-frames shown just before it (they are decoded after it and may refer to it)."""

    corrupt: tuple[int, ...] = ()  # sorted, distinct
    damaged: tuple[tuple[int, int], ...] = ()  # sorted, disjoint, non-adjacent half-open ranges

    @property
    def count(self) -> int:
        """The number of decode errors: frames ffmpeg flagged."""
        return len(self.corrupt)

    def __bool__(self) -> bool:
        return bool(self.corrupt or self.damaged)

    def union(self, other: DecodeErrors) -> DecodeErrors:
        """Both reports in one: flagged frames counted once, damaged ranges merged."""
        return DecodeErrors.of(set(self.corrupt) | set(other.corrupt), (*self.damaged, *other.damaged))

    @staticmethod
    def of(corrupt: Iterable[int], damaged: Iterable[Iterable[int]]) -> DecodeErrors:
        """Normalised: ``corrupt`` (frame numbers) sorted and distinct, ``damaged`` (``(a, b)`` pairs, as JSON
        reads them back too) merged where they touch or overlap, empty ones dropped."""
        merged: list[list[int]] = []
        for a, b in sorted((int(a), int(b)) for a, b in damaged):
            if b <= a:
                continue
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        return DecodeErrors(tuple(sorted({int(c) for c in corrupt})), tuple((a, b) for a, b in merged))

    def describe(self) -> str:
        """``"116 decode errors in frames ~35-99"`` (empty when there are none); the frames are the damaged
        stored frames, first to last ("~": the damage's reach is estimated, see the class docstring)."""
        if not self:
            return ""
        n = self.count
        text = f"{n} decode error{'s' if n != 1 else ''}"
        if self.damaged:
            a, b = self.damaged[0][0], self.damaged[-1][1] - 1
            text += f" in frame{'s' if b > a else ''} ~{a}" + (f"-{b}" if b > a else "")
        return text


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
