"""The ingest stage as plain functions: video -> decoded frames -> optical flow -> Zarr shards.

A video is ingested in three steps, each safe to run again after a crash:

1. ``prepare_video``: probe the source (no ffprobe needed), hash its content (the video id), resolve the
   flow backend, and create (or resume) the video's group in the store. A video already complete in
   the store is skipped: ingesting the same file twice is a no-op.
2. ``process_range``: decode one shard-aligned range of frames, compute the flow of every pair whose
   first frame lies in the range, and write frames and flow shard by shard. Ranges of one video write
   disjoint shards, so they may run in parallel (on a Dask cluster). A range is a pipeline: ffmpeg decodes
   ahead in its own process (a later range seeks to its first frame, exactly: ``cpfs.ingest.video.seek_points``),
   this thread computes each pair's flow as soon as its second frame arrives, and two writer threads
   finish the previous shard block, one compressing and writing its frames, the other computing its
   photometric warp errors and motion statistics and compressing and writing its flow
   (``bench/ingest.py``: that work costs about as much CPU as DIS flow itself, so it must not wait behind
   the flow). Costs outside OpenCV, ffmpeg and the codecs are per shard block, not per frame.
3. ``finalize_video``: detect shot cuts from the stored warp errors and colour histograms, then set the
   completion marker last. Until then no reader treats the video as complete.

``ingest_video`` chains the three in one process (tests, benchmarks); the Prefect flow in
``flows/ingest.py`` runs them as separate tasks. What an ingest records about its settings, and the
checks of those against a video's stored ones, are in ``cpfs.ingest.settings``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace

import cv2
import numpy as np

from cpfs.config import IngestConfig
from cpfs.ingest.discovery import content_id
from cpfs.errors import StoreError, VideoError
from cpfs.flow import make_backend
from cpfs.flow.base import FlowBackend, PairwiseFlowBackend
from cpfs.flow.cuts import detect_cuts, histogram_distance, hs_histogram
from cpfs.flow.metrics import photometric_error
from cpfs.ingest.settings import _conflict_error, _source_size, provenance, requested_settings, settings_conflicts
from cpfs.motion import motion_statistics
from cpfs.ingest.probe import expected_frame_count, output_size, probe
from cpfs.records import DecodeErrors, FrameRange, IngestResult, VideoRecord, VideoSource
from cpfs.ingest.video import DecodeReport, SeekPoint, decode_stream, seek_points
from storage import VideoStore

ProgressFn = Callable[[int], None]  # called with the number of frame pairs just finished


@dataclass(frozen=True)
class IngestPlan:
    """A video ready for its ranges to be processed: what to decode, which backend, which ranges."""

    record: VideoRecord
    ranges: tuple[FrameRange, ...]  # shard-aligned, covering [0, n_frames)
    backend: str  # concrete backend name (never "auto")
    backend_params: dict  # as recorded in the store
    repaired: tuple[str, ...] = ()  # damage found in the complete copy this ingest replaces (empty: none)
    seeks: tuple[SeekPoint, ...] = ()  # where ffmpeg may seek to for ranges after the first (empty: none)


@dataclass(frozen=True)
class RangeStats:
    """What processing one range did."""

    frame_range: FrameRange
    n_pairs: int  # flow pairs computed (0 when the range was already done)
    skipped: bool  # True when a previous run had finished this range
    seconds: float
    decode_errors: DecodeErrors = DecodeErrors()  # what ffmpeg flagged while decoding the range (none: skipped)


def plan_ranges(video_id: str, n_frames: int, shard_frames: int, shards_per_task: int) -> tuple[FrameRange, ...]:
    """Split [0, n_frames) into ranges of ``shards_per_task`` whole shards (the last one may be shorter)."""
    step = shard_frames * shards_per_task
    return tuple(FrameRange(video_id, a, min(a + step, n_frames)) for a in range(0, n_frames, step))


def prepare_video(source: VideoSource, cfg: IngestConfig, video_id: str | None = None) -> IngestPlan | IngestResult:
    """Probe, hash and register one source in the store (``video_id``: its content id when the caller
    has hashed it already). Returns an ``IngestResult`` with status "skipped" when the video is already
    complete and intact, else the plan for its ranges. Raises ``VideoError`` naming the file for a source
    that cannot be ingested, and ``SettingsConflictError`` when the video is complete in the store with
    other settings. A complete video whose stored objects are damaged (``VideoStore.check_video``, every
    digest) is deleted and ingested again: the plan's ``repaired`` says what was wrong."""
    meta = probe(source, timeout_s=cfg.decode.timeout_s)
    video_id = video_id or content_id(source)
    store = VideoStore.open(cfg.store, create=True)
    backend, backend_params, settings = requested_settings(cfg)
    repaired: tuple[str, ...] = ()
    if store.is_complete(video_id):
        attrs = store.video_attrs(video_id)
        conflicts = settings_conflicts(attrs["settings"], settings)
        if conflicts:
            raise _conflict_error(source.path, video_id, cfg.store.path, conflicts)
        damage = store.check_video(video_id, full=True)
        if not damage:
            errors = store.decode_errors(video_id)
            return IngestResult(source=source.path, status="skipped", video_id=video_id,
                                n_frames=int(attrs["n_frames"]), n_cuts=int(attrs.get("n_cuts", 0)),
                                backend=attrs.get("backend"), extra={"decode_errors": errors.count},
                                note=f"stored with {errors.describe()}" if errors else None)
        repaired = tuple(map(str, damage))
        store.delete_video(video_id, force=True)  # its data cannot be trusted: ingest it again, whole
    width, height = output_size(meta, cfg.decode)
    n_frames = expected_frame_count(meta, cfg.decode)
    if n_frames is None:
        raise VideoError(source.path, "unknown frame count", "ffmpeg reported neither a frame count nor a duration")
    if n_frames < 2:
        raise VideoError(source.path, "too short", f"{n_frames} frame(s) after decoding; optical flow needs at least 2")
    size_bytes = _source_size(source)
    record = VideoRecord(video_id=video_id, source=source, meta=meta, width=width, height=height,
                         n_frames=n_frames, size_bytes=size_bytes)
    store.begin_video(record, provenance(record, cfg, backend, backend_params))
    ranges = plan_ranges(video_id, n_frames, cfg.store.shard_frames, cfg.shards_per_task)
    seeks = seek_points(source, cfg.decode, meta, [r.start for r in ranges[1:]]) if len(ranges) > 1 else {}
    return IngestPlan(record=record, ranges=ranges, backend=backend, backend_params=backend_params, repaired=repaired,
                      seeks=tuple(seeks[k] for k in sorted(seeks)))


def _range_frames(plan: IngestPlan, cfg: IngestConfig, start: int, stop: int,
                  report: DecodeReport | None = None) -> Iterator[np.ndarray]:
    """Decoded frames [start, stop) of the plan's video, streamed through ffmpeg's pipe (a range that
    starts later seeks to it: ``cpfs.ingest.video.decode_stream``); ``report`` receives their decode errors."""
    seek = next((p for p in plan.seeks if p.frame == start), None)
    return decode_stream(plan.record.source, cfg.decode, start, stop, plan.record.meta, seek, report)


class _BlockWriter:
    """Compresses and writes the shard blocks of one range on two background threads while the caller
    computes the next block's flow: one thread writes a block's frames, the other computes its warp errors
    and writes its flow (both release the GIL in OpenCV, numpy and the Blosc codecs). At most one block
    is in flight behind the one being computed, which bounds memory to two blocks whatever the range."""

    def __init__(self, store: VideoStore, video_id: str) -> None:
        self.store = store
        self.video_id = video_id
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"zarr-write-{video_id[:8]}")
        self._pending: list[Future] = []

    def _write_flow(self, start: int, frames: np.ndarray, flow: np.ndarray) -> None:
        # frames: the block's frames and the look-ahead frame (n_pairs + 1); the warp errors need nothing later.
        err = np.array([photometric_error(frames[i], frames[i + 1], flow[i]) for i in range(flow.shape[0])],
                       dtype=np.float32)
        self.store.write_flow(self.video_id, start, flow, err)  # also the pairs' motion statistics (cpfs.motion)

    def submit(self, start: int, own: np.ndarray, frames: np.ndarray, flow: np.ndarray | None) -> None:
        """Write ``own`` (the block's frames) at ``start`` and, when given, ``flow`` of the pairs starting
        there (``frames``: their first and second frames, one more than the pairs)."""
        self.wait()
        self._pending.append(self._pool.submit(self.store.write_frames, self.video_id, start, own))
        if flow is not None:
            self._pending.append(self._pool.submit(self._write_flow, start, frames, flow))

    def wait(self) -> None:
        """Block until every submitted write finished; re-raise the first failure."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def close(self, *, raise_errors: bool = True) -> None:
        """Wait for the writes in flight and stop the threads. ``raise_errors=False`` when the range already
        failed: its own error is the one to report, not a write's that followed from it."""
        try:
            self.wait()
        except Exception:
            if raise_errors:
                raise
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _pairwise(backend: FlowBackend) -> PairwiseFlowBackend | None:
    """The backend when it computes one gray pair at a time (the OpenCV CPU backends): ingest then computes
    each pair as soon as its second frame is decoded, so decoding overlaps flow. None for batched
    backends (torch TV-L1): they get whole shard blocks, as ``compute`` batches them."""
    return backend if isinstance(backend, PairwiseFlowBackend) else None


def process_range(plan: IngestPlan, frame_range: FrameRange, cfg: IngestConfig,
                  progress: ProgressFn | None = None) -> RangeStats:
    """Decode frames [start, stop) (+1 for the last pair), compute their flow, write shard by shard.

    Frames land in ``frames[start:stop]``; flow of pair t->t+1 for t in [start, min(stop, T-1)) lands in
    ``flow[start:...]``. Every write covers whole shards, and the range is marked done only after all
    of its writes finished, so a crash leaves it to be redone, never half-counted. Frames ffmpeg decoded
    with errors are stored, and the errors recorded with the range's marker (``VideoStore.mark_done``);
    with ``cfg.strict_decode`` they fail the range (VideoError "decode errors") instead.

    A pipeline on three kinds of worker: ffmpeg decodes ahead in its own process (seeking to the range's
    first frame), this thread computes the flow of each pair as soon as its second frame arrives (OpenCV
    releases the GIL), and two writer threads compress and write the previous shard block
    (``_BlockWriter``). ``progress`` is called once per shard block, not per frame.
    """
    t0 = time.perf_counter()
    rec = plan.record
    vid = rec.video_id
    store = VideoStore.open(cfg.store, create=False)
    if (frame_range.start, frame_range.stop) in set(map(tuple, store.done_ranges(vid, "flow"))):
        return RangeStats(frame_range, 0, True, time.perf_counter() - t0)
    backend = make_backend(cfg.flow.model_copy(update={"backend": plan.backend}))
    pairwise = _pairwise(backend)
    shard = cfg.store.shard_frames
    n_total = rec.n_frames
    shape = (rec.height, rec.width, 3)
    dec_stop = min(frame_range.stop + 1, n_total)  # one frame past the range for its last pair
    n_pairs = 0
    writer = _BlockWriter(store, vid)
    try:
        block_start = frame_range.start
        frames = np.empty((shard + 1, *shape), np.uint8)  # the block's frames + the look-ahead frame
        flow = np.empty((shard, rec.height, rec.width, 2), np.float32) if pairwise is not None else None
        n_in = 0  # frames of the current block decoded so far
        prev_gray = None  # luma of the previous frame (pairwise backends): each frame converted once

        def flush(n_own: int, n_p: int) -> None:
            nonlocal n_pairs, frames, flow
            if n_p > 0:
                if n_in < n_p + 1:
                    raise VideoError(rec.source.path, "truncated",
                                     f"decoding stopped at frame {block_start + n_in} of {n_total}")
                block_flow = flow[:n_p] if flow is not None else backend.compute(frames[: n_p + 1])
            writer.submit(block_start, frames[:n_own], frames, block_flow if n_p > 0 else None)
            n_pairs += n_p
            if progress is not None and n_p > 0:
                progress(n_p)
            # The writers own these arrays now; the next block gets new ones, starting with the look-ahead.
            look_ahead = frames[n_own] if n_in > n_own else None
            frames = np.empty_like(frames)
            if flow is not None:
                flow = np.empty_like(flow)
            if look_ahead is not None:
                frames[0] = look_ahead

        decoded = 0
        report = DecodeReport()
        for frame in _range_frames(plan, cfg, frame_range.start, dec_stop, report):
            if frame.shape != shape:
                raise VideoError(rec.source.path, "frame size changed mid-stream",
                                 f"got {frame.shape}, expected {shape}")
            frames[n_in] = frame
            if pairwise is not None:
                gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)  # as rgb_to_gray
                if prev_gray is not None:
                    flow[n_in - 1] = pairwise.flow_gray(prev_gray, gray)
                prev_gray = gray
            n_in += 1
            decoded += 1
            if n_in == shard + 1:  # a full shard plus the look-ahead frame
                flush(shard, shard)
                block_start += shard
                n_in = 1
        if block_start < frame_range.stop:
            if n_in == 0:
                raise VideoError(rec.source.path, "truncated",
                                 f"no frames decoded from frame {block_start} of {n_total}")
            n_own = min(shard, frame_range.stop - block_start)
            n_p = min(block_start + n_own, n_total - 1) - block_start  # pairs t->t+1, t in the block
            flush(min(n_own, n_in), n_p)
        if decoded < dec_stop - frame_range.start:
            raise VideoError(rec.source.path, "truncated",
                             f"decoded {frame_range.start + decoded} of {n_total} frames")
        if report.errors and cfg.strict_decode:
            raise VideoError(rec.source.path, "decode errors",
                             f"{report.errors.describe()}; strict_decode fails such a video")
    except BaseException:
        writer.close(raise_errors=False)
        raise
    writer.close()  # every write of the range finished (or its error raised) before the range is marked done
    store.mark_done(vid, "frames", frame_range, report.errors)
    store.mark_done(vid, "flow", frame_range)
    return RangeStats(frame_range, n_pairs, False, time.perf_counter() - t0, report.errors)


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
    prev = None  # histogram of the previous frame: each frame's histogram is made once
    for a in range(0, rec.n_frames, shard):
        block = store.read_frames(vid, a, min(a + shard, rec.n_frames))
        for i, frame in enumerate(block):
            h = hs_histogram(frame)
            if prev is not None:
                hist[a + i - 1] = histogram_distance(prev, h)
            prev = h
    cut = detect_cuts(pair_error, hist, cfg.cuts)
    clipped = store.count_clipped(vid)
    store.finalize(vid, cut, clipped, {"n_cuts": int(cut.sum()), "cut_pairs": np.flatnonzero(cut).tolist()})
    errors = store.decode_errors(vid)
    extra: dict = {"clipped_pixels": int(clipped), "decode_errors": errors.count}
    notes = []
    if errors:
        extra["damaged_frames"] = [list(r) for r in errors.damaged]
        notes.append(f"stored with {errors.describe()}")
    if plan.repaired:
        extra["repaired"] = list(plan.repaired)
        more = len(plan.repaired) - 1
        notes.append(f"repaired: {plan.repaired[0]}" + (f" (+{more} more)" if more else ""))
    note = "; ".join(notes) or None
    return IngestResult(source=rec.source.path, status="stored", video_id=vid, n_frames=rec.n_frames,
                        n_cuts=int(cut.sum()), backend=plan.backend, seconds=seconds, extra=extra, note=note)


def ingest_video(source: VideoSource, cfg: IngestConfig, progress: ProgressFn | None = None) -> IngestResult:
    """Ingest one source in this process: prepare, every range in order, finalize, holding the video's writer
    lock (another run writing it is waited for; its result then says "stored by another run"). A bad source
    gives a "failed" result naming the file and the reason instead of raising."""
    t0 = time.perf_counter()
    try:
        video_id = content_id(source)
        lock = VideoStore.open(cfg.store, create=True).writer_lock(video_id)  # another run writing it: wait
        with lock if lock is not None else nullcontext(False) as waited:
            plan = prepare_video(source, cfg, video_id)
            if isinstance(plan, IngestResult):
                return replace(plan, note="; ".join(filter(None, ["stored by another run", plan.note]))) if waited else plan
            for r in plan.ranges:
                process_range(plan, r, cfg, progress)
            return finalize_video(plan, cfg, time.perf_counter() - t0)
    except VideoError as e:
        return IngestResult(source=source.path, status="failed", error=str(e), seconds=time.perf_counter() - t0)


def add_motion_statistics(store: VideoStore, progress: ProgressFn | None = None) -> list[str]:
    """Upgrade a version-1 store: compute the motion statistics (``cpfs.motion``) of every complete video that
    lacks them from its stored flow, shard by shard, then record format version 2. Returns the ids upgraded.
    Safe to rerun: a video that already has its statistics is left alone."""
    done = []
    for vid in store.complete_ids():
        if store.has_motion(vid):
            continue
        n_pairs = int(store.flow(vid).shape[0])
        shard = int(store.video_attrs(vid)["layout"]["shard_frames"])
        parts = []
        for a in range(0, n_pairs, shard):
            parts.append(motion_statistics(store.read_flow(vid, a, min(a + shard, n_pairs))))
            if progress is not None:
                progress(parts[-1].shape[0])
        store.add_motion(vid, np.concatenate(parts))
        done.append(vid)
    store.set_format_version(2)
    return done
