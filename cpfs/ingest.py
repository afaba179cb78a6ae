"""The ingest stage as plain functions: video -> decoded frames -> optical flow -> Zarr shards.

A video is ingested in three steps, each safe to run again after a crash:

1. ``prepare_video``: probe the source (no ffprobe needed), hash its content (the video id), resolve the
   flow backend, and create (or resume) the video's group in the store. A video already complete in
   the store is skipped: ingesting the same file twice is a no-op.
2. ``process_range``: decode one shard-aligned range of frames, compute the flow of every pair whose
   first frame lies in the range, and write frames and flow shard by shard. Ranges of one video write
   disjoint shards, so they may run in parallel (on a Dask cluster). Decoding, flow and writing
   overlap: ffmpeg decodes ahead in its own process, and while the next block's flow is computed two
   background threads finish the previous block, one compressing and writing its frames, the other
   computing its photometric warp errors and compressing and writing its flow (``bench/ingest.py``:
   compression costs about as much CPU as DIS flow itself, so it must not wait behind the flow).
3. ``finalize_video``: detect shot cuts from the stored warp errors and colour histograms, then set the
   completion marker last. Until then no reader treats the video as complete.

``ingest_video`` chains the three in one process (tests, benchmarks); the Prefect flow in
``flows/ingest.py`` runs them as separate tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

import cpfs
from cpfs.config import IngestConfig
from cpfs.errors import StoreError, VideoError
from cpfs.flow import make_backend, resolve_backend
from cpfs.flow.cuts import detect_cuts, pair_histogram_distance
from cpfs.flow.metrics import photometric_error
from cpfs.records import FrameRange, IngestResult, VideoRecord, VideoSource
from cpfs.video import content_id, decode, decode_range, expected_frame_count, output_size, probe
from storage import VideoStore

ProgressFn = Callable[[int], None]  # called with the number of frame pairs just finished


@dataclass(frozen=True)
class IngestPlan:
    """A video ready for its ranges to be processed: what to decode, which backend, which ranges."""

    record: VideoRecord
    ranges: tuple[FrameRange, ...]  # shard-aligned, covering [0, n_frames)
    backend: str  # concrete backend name (never "auto")
    backend_params: dict  # as recorded in the store


@dataclass(frozen=True)
class RangeStats:
    """What processing one range did."""

    frame_range: FrameRange
    n_pairs: int  # flow pairs computed (0 when the range was already done)
    skipped: bool  # True when a previous run had finished this range
    seconds: float


def plan_ranges(video_id: str, n_frames: int, shard_frames: int, shards_per_task: int) -> tuple[FrameRange, ...]:
    """Split [0, n_frames) into ranges of ``shards_per_task`` whole shards (the last one may be shorter)."""
    step = shard_frames * shards_per_task
    return tuple(FrameRange(video_id, a, min(a + step, n_frames)) for a in range(0, n_frames, step))


def provenance(record: VideoRecord, cfg: IngestConfig, backend: str, backend_params: dict) -> dict:
    """Attributes that say where a video's arrays came from. Settings that change the arrays'
    contents are under ``settings``: a resumed ingest must have identical settings."""
    return {
        "source": {
            "path": record.source.path,
            "kind": record.source.kind,
            "size_bytes": record.size_bytes,
            "content_hash": record.video_id,
            "width": record.meta.width,
            "height": record.meta.height,
            "fps": record.meta.fps,
            "codec": record.meta.codec,
            "n_frames": record.meta.n_frames,
            "duration_s": record.meta.duration_s,
        },
        "settings": {
            "decode": cfg.decode.model_dump(mode="json", exclude={"timeout_s"}),
            "flow_backend": backend,
            "flow_params": backend_params,
            "shard_frames": cfg.store.shard_frames,
            "flow_scale": cfg.store.flow_scale,
            "flow_bound": cfg.store.flow_bound,
        },
        "cpfs_version": cpfs.__version__,
    }


def prepare_video(source: VideoSource, cfg: IngestConfig) -> IngestPlan | IngestResult:
    """Probe, hash and register one source in the store. Returns an ``IngestResult`` with status
    "skipped" when the video is already complete, else the plan for its ranges. Raises ``VideoError``
    naming the file for a source that cannot be ingested."""
    meta = probe(source, timeout_s=cfg.decode.timeout_s)
    video_id = content_id(source)
    store = VideoStore.open(cfg.store, create=True)
    if store.is_complete(video_id):
        return IngestResult(source=source.path, status="skipped", video_id=video_id,
                            n_frames=int(store.frames(video_id).shape[0]))
    width, height = output_size(meta, cfg.decode)
    n_frames = expected_frame_count(meta, cfg.decode)
    if n_frames is None:
        raise VideoError(source.path, "unknown frame count", "ffmpeg reported neither a frame count nor a duration")
    if n_frames < 2:
        raise VideoError(source.path, "too short", f"{n_frames} frame(s) after decoding; optical flow needs at least 2")
    backend = resolve_backend(cfg.flow)
    backend_params = make_backend(cfg.flow.model_copy(update={"backend": backend})).params()
    size_bytes = _source_size(source)
    record = VideoRecord(video_id=video_id, source=source, meta=meta, width=width, height=height,
                         n_frames=n_frames, size_bytes=size_bytes)
    store.begin_video(record, provenance(record, cfg, backend, backend_params))
    ranges = plan_ranges(video_id, n_frames, cfg.store.shard_frames, cfg.shards_per_task)
    return IngestPlan(record=record, ranges=ranges, backend=backend, backend_params=backend_params)


def _source_size(source: VideoSource) -> int:
    from pathlib import Path

    p = Path(source.path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file())
    return p.stat().st_size


def _range_frames(plan: IngestPlan, cfg: IngestConfig, start: int, stop: int) -> Iterator[np.ndarray]:
    """Decoded frames [start, stop) of the plan's video, streamed where possible."""
    src = plan.record.source
    if start == 0:
        # From the beginning, ffmpeg streams through the pipe while flow is being computed.
        capped = cfg.decode.model_copy(update={"max_frames": stop})
        yield from decode(src, capped, plan.record.meta)
    else:
        yield from decode_range(src, cfg.decode, start, stop, plan.record.meta)


def process_range(plan: IngestPlan, frame_range: FrameRange, cfg: IngestConfig,
                  progress: ProgressFn | None = None) -> RangeStats:
    """Decode frames [start, stop) (+1 for the last pair), compute their flow, write shard by shard.

    Frames land in ``frames[start:stop]``; flow of pair t->t+1 for t in [start, min(stop, T-1)) lands in
    ``flow[start:...]``. Every write covers whole shards, and the range is marked done only after all
    of its writes finished, so a crash leaves it to be redone, never half-counted.
    """
    t0 = time.perf_counter()
    rec = plan.record
    vid = rec.video_id
    store = VideoStore.open(cfg.store, create=False)
    if (frame_range.start, frame_range.stop) in set(map(tuple, store.done_ranges(vid, "flow"))):
        return RangeStats(frame_range, 0, True, time.perf_counter() - t0)
    backend = make_backend(cfg.flow.model_copy(update={"backend": plan.backend}))
    shard = cfg.store.shard_frames
    n_total = rec.n_frames
    dec_stop = min(frame_range.stop + 1, n_total)  # one frame past the range for its last pair

    n_pairs = 0
    buf: list[np.ndarray] = []  # frames [block_start, ...] of the current shard block (+1 look-ahead)
    block_start = frame_range.start
    pending: list[Future] = []
    decoded = 0
    def write_flow(start: int, block: np.ndarray, flow: np.ndarray) -> None:
        # Runs on a writer thread: the warp errors need the block's frames and flow, nothing later.
        err = np.array([photometric_error(block[i], block[i + 1], flow[i]) for i in range(flow.shape[0])],
                       dtype=np.float32)
        store.write_flow(vid, start, flow, err)

    # Two writers: a block's frames and its flow are compressed and written concurrently (both release the GIL).
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"zarr-write-{vid[:8]}") as writer:

        def flush(block: np.ndarray, start: int, is_last: bool) -> None:
            nonlocal n_pairs
            # block holds frames [start, start+len); its frames belong to this range up to the range end.
            n_own = min(shard, frame_range.stop - start)
            own = block[:n_own]
            pairs_end = min(start + n_own, n_total - 1)  # pairs t->t+1 with t in [start, pairs_end)
            n_p = pairs_end - start
            if n_p > 0:
                if block.shape[0] < n_p + 1:
                    raise VideoError(rec.source.path, "truncated",
                                     f"decoding stopped at frame {start + block.shape[0]} of {n_total}")
                flow = backend.compute(block[: n_p + 1])  # (n_p, H, W, 2) float32
            # Waiting on earlier writes bounds memory to two shard blocks in flight.
            for f in pending:
                f.result()
            pending.clear()
            pending.append(writer.submit(store.write_frames, vid, start, np.ascontiguousarray(own)))
            if n_p > 0:
                pending.append(writer.submit(write_flow, start, block, flow))
            n_pairs += n_p
            if progress is not None and n_p > 0:
                progress(n_p)

        for frame in _range_frames(plan, cfg, frame_range.start, dec_stop):
            if frame.shape != (rec.height, rec.width, 3):
                raise VideoError(rec.source.path, "frame size changed mid-stream",
                                 f"got {frame.shape}, expected {(rec.height, rec.width, 3)}")
            buf.append(frame)
            decoded += 1
            if len(buf) == shard + 1:  # a full shard plus the look-ahead frame
                flush(np.stack(buf), block_start, False)
                buf = buf[shard:]  # keep the look-ahead frame: it starts the next block
                block_start += shard
        if block_start < frame_range.stop:
            if not buf:
                raise VideoError(rec.source.path, "truncated",
                                 f"no frames decoded from frame {block_start} of {n_total}")
            flush(np.stack(buf), block_start, True)
        if decoded < dec_stop - frame_range.start:
            raise VideoError(rec.source.path, "truncated",
                             f"decoded {frame_range.start + decoded} of {n_total} frames")
        for f in pending:
            f.result()
    store.mark_done(vid, "frames", frame_range)
    store.mark_done(vid, "flow", frame_range)
    return RangeStats(frame_range, n_pairs, False, time.perf_counter() - t0)


def finalize_video(plan: IngestPlan, cfg: IngestConfig, seconds: float = 0.0) -> IngestResult:
    """Detect shot cuts from the stored warp errors and colour histograms, then mark the video complete
    (the marker is written last). Raises ``StoreError`` if any range is not done."""
    rec = plan.record
    vid = rec.video_id
    store = VideoStore.open(cfg.store, create=False)
    done = set(map(tuple, store.done_ranges(vid, "flow")))
    missing = [r for r in plan.ranges if (r.start, r.stop) not in done]
    if missing:
        raise StoreError(f"{cfg.store.path}: video {vid} ({rec.source.path}) has unfinished ranges "
                         f"{[(r.start, r.stop) for r in missing]}; rerun the ingest to finish them")
    pair_error = store.read_pair_error(vid)
    hist = np.empty(rec.n_frames - 1, dtype=np.float32)
    shard = cfg.store.shard_frames
    prev = None
    for a in range(0, rec.n_frames, shard):
        block = store.read_frames(vid, a, min(a + shard, rec.n_frames))
        if prev is not None:
            hist[a - 1] = pair_histogram_distance(prev, block[0])
        for i in range(block.shape[0] - 1):
            hist[a + i] = pair_histogram_distance(block[i], block[i + 1])
        prev = block[-1]
    cut = detect_cuts(pair_error, hist, cfg.cuts)
    clipped = store.count_clipped(vid)
    store.finalize(vid, cut, clipped, {"n_cuts": int(cut.sum()), "cut_pairs": np.flatnonzero(cut).tolist()})
    return IngestResult(source=rec.source.path, status="stored", video_id=vid, n_frames=rec.n_frames,
                        n_cuts=int(cut.sum()), backend=plan.backend, seconds=seconds,
                        extra={"clipped_pixels": int(clipped)})


def ingest_video(source: VideoSource, cfg: IngestConfig, progress: ProgressFn | None = None) -> IngestResult:
    """Ingest one source in this process: prepare, every range in order, finalize. A bad source gives a
    "failed" result naming the file and the reason instead of raising."""
    t0 = time.perf_counter()
    try:
        plan = prepare_video(source, cfg)
        if isinstance(plan, IngestResult):
            return plan
        for r in plan.ranges:
            process_range(plan, r, cfg, progress)
        return finalize_video(plan, cfg, time.perf_counter() - t0)
    except VideoError as e:
        return IngestResult(source=source.path, status="failed", error=str(e), seconds=time.perf_counter() - t0)
