"""Prefect flow ``ingest``: videos -> optical flow -> Zarr frame and flow shards.

``ingest`` validates its configuration, finds the inputs (the embedded sample videos when none are
given) and runs the per-video and per-range tasks on a Dask cluster through prefect-dask: a local
threaded cluster by default (OpenCV, zarr's codecs and ffmpeg's pipe all release the GIL, and threads
share the Prefect client of the flow), or an existing cluster at ``config.dask_address``. Because the
task runner depends on a parameter, the graph runs in the subflow ``ingest-videos``.

A bad video fails alone: its error names the file and the reason, every other video completes, and the
run ends Failed with a message listing the failed videos. So does an entry of a folder that cannot be read (a
symbolic link loop, a dangling link, a sub-folder without permission or one that vanishes while it is walked:
``cpfs.ingest.discovery.discover``), in a watched folder too: its run stores every readable video and ends Failed,
naming the entry, until the entry is removed or repaired. A video that decodes with errors ffmpeg conceals is
stored with them recorded, and its summary line says which frames (``IngestConfig.strict_decode`` fails it).
Nothing stored earlier is overwritten, except a complete video found damaged (a lost or altered shard), which
is ingested again. Inputs with the same content (a file and its copy) are one video: it is processed once,
and every input gets its own result.

The local Dask cluster listens on loopback only, and serves no dashboard (see ``task_runner_for``). No Dask
worker of an ingest runs the statistical profiler on a Python where it can deadlock (``flows.dask_workers``).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack
from dataclasses import replace

import dask
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.states import Failed
from prefect_dask import DaskTaskRunner

from cpfs.config import IngestConfig
from cpfs.errors import CPFSError
from cpfs.locks import LockBusy
from cpfs.ingest.steps import IngestPlan
from cpfs.progress import progress_bar
from cpfs.pipeline import with_concrete_backend, with_default_inputs
from cpfs.records import IngestResult, IngestSummary, VideoSource
from cpfs.ingest.discovery import discover
from flows.dask_workers import guard_cluster, without_worker_profiler
from storage import VideoStore
from tasks.ingest import finalize_video, identify_video, prepare_video, process_range, write_index


# Dask's scheduler and workers log every start and stop at INFO; the run's own log is what users read.
logging.getLogger("distributed").setLevel(logging.WARNING)


class _LocalDaskTaskRunner(DaskTaskRunner):
    """The local cluster's task runner. Its scheduler's HTTP server serves no dashboard pages, yet distributed
    still formats a link to it from the machine's address, which prefect-dask logs ("The Dask dashboard is
    available at http://<host ip>:<port>/status"): nothing answers there. No link is formatted for it."""

    @property
    def client(self):  # noqa: ANN201 - prefect-dask's PrefectDaskClient
        with dask.config.set({"distributed.dashboard.link": ""}):
            return super().client


def task_runner_for(config: IngestConfig) -> DaskTaskRunner:
    """An existing Dask cluster when an address is given, else a local threaded one.

    The local cluster's scheduler and worker talk in-process (``inproc://``). Each still starts an HTTP
    server (health and metrics routes; ``dashboard_address=None`` does not stop it and means all
    interfaces): both are bound to 127.0.0.1 on a free port, and the scheduler serves no dashboard pages.
    Nothing of an ingest listens beyond loopback."""
    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    n = config.n_workers or os.cpu_count() or 1
    return _LocalDaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": n, "processes": False,
                                          "dashboard_address": "127.0.0.1:0", "worker_dashboard_address": "127.0.0.1:0",
                                          "scheduler_kwargs": {"dashboard": False}})


def _failure(source: str, exc: BaseException) -> IngestResult:
    return IngestResult(source=source, status="failed", error=str(exc) or type(exc).__name__)


def _succeeded(submitted: list, results: list[IngestResult], logger) -> list:  # noqa: ANN001
    """``(source, value)`` of each ``(source, future)`` whose task succeeded; a failed one is logged and
    appended to ``results`` as that source's failure (a bad video fails alone)."""
    ok = []
    for source, fut in submitted:
        try:
            ok.append((source, fut.result()))
        except Exception as e:  # noqa: BLE001 - a bad video fails alone
            logger.error("video failed: %s", e)
            results.append(_failure(source.path, e))
    return ok


@flow(name="ingest-videos", log_prints=False)
def ingest_videos(sources: list[VideoSource], config: IngestConfig) -> list[IngestResult]:
    """Prepare every video, process all of their shard ranges in parallel, finalize each video as soon
    as its ranges are done. Returns one result per source, failures included."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    results: list[IngestResult] = []
    # Same content under several names is one video: the first source (in path order) is processed,
    # the others get its outcome with a note. Nothing of a duplicate is submitted.
    first_of: dict[str, VideoSource] = {}
    duplicates: list[tuple[VideoSource, VideoSource]] = []
    unique: list[tuple[VideoSource, str]] = []
    for source, vid in _succeeded([(s, identify_video.submit(s)) for s in sources], results, logger):
        if vid in first_of:
            duplicates.append((source, first_of[vid]))
        else:
            first_of[vid] = source
            unique.append((source, vid))
    # One run writes a video at a time (``VideoStore.writer_lock``, held from prepare to finalize): the videos no
    # other run is writing go first; their locks are given back before this run waits for the busy ones (held
    # while waiting, two runs with crossed videos would wait for each other forever), which it then takes one
    # by one in id order (the same order in every run: no cycle). Each is found stored by the other run
    # ("skipped", noted) or, when that run died or failed, resumed.
    store = VideoStore.open(config.store, create=True)
    busy: list[tuple[VideoSource, str]] = []
    with ExitStack() as held:
        free, lock = [], None
        for source, vid in unique:
            lock = store.writer_lock(vid, wait=False)
            try:
                if lock is not None:  # None: object storage, no lock
                    held.enter_context(lock)
                free.append((source, vid))
            except LockBusy:
                busy.append((source, vid))
        if unique and lock is None:
            logger.warning("%s is object storage: nothing keeps another run from writing the same videos at once",
                           config.store.path)
        _store_videos(free, config, results, logger, t0)
    if busy:
        with ExitStack() as held:
            for source, vid in sorted(busy, key=lambda sv: sv[1]):
                held.enter_context(store.writer_lock(vid, on_wait=logger.info))
            _store_videos(busy, config, results, logger, t0, another_run=True)
    by_source = {r.source: r for r in results}
    for source, first in duplicates:
        results.append(duplicate_result(source, first, by_source.get(first.path)))
    order = {s.path: i for i, s in enumerate(sources)}
    return sorted(results, key=lambda r: order.get(r.source, -1))


def _store_videos(unique: list[tuple[VideoSource, str]], config: IngestConfig, results: list[IngestResult], logger,
                  t0: float, another_run: bool = False) -> None:  # noqa: ANN001
    """Prepare each video, process all of their shard ranges in parallel, finalize each video as soon as its
    ranges are done; append one result per video to ``results``. ``another_run``: the videos waited for another
    run's lock, so one found complete was stored by that run (its result says so)."""
    plans: list[IngestPlan] = []
    for source, out in _succeeded([(s, prepare_video.submit(s, config, vid)) for s, vid in unique], results, logger):
        if isinstance(out, IngestResult):
            if another_run:
                out = replace(out, note="; ".join(filter(None, ["stored by another run", out.note])))
            logger.info("already complete, skipped: %s (%s)%s", out.source, out.video_id,
                        f" ({out.note})" if out.note else "")
            results.append(out)
        else:
            if out.repaired:
                logger.warning("stored copy of %s (%s) is damaged, ingesting it again: %s", source.path,
                               out.record.video_id, "; ".join(out.repaired))
            plans.append(out)

    total = sum(p.record.n_frames - 1 for p in plans)
    # A run with nothing to compute is done: its progress reads 100 %, not 0 %.
    artifact = create_progress_artifact(100.0 if total == 0 else 0.0, key="ingest-progress",
                                        description=f"Frame pairs of {len(plans)} video(s) with optical flow done")
    range_futs = {}
    for plan in plans:
        for r in plan.ranges:
            range_futs[process_range.submit(plan, r, config)] = plan
    remaining = {p.record.video_id: len(p.ranges) for p in plans}
    failed: dict[str, str] = {}
    finals = []
    done_pairs, last_update = 0, 0.0
    video_done = {p.record.video_id: 0 for p in plans}  # frame pairs finished, per video
    with progress_bar(total, f"ingest {len(plans)} video(s)", unit="pair") as bar:
        for fut in as_completed(list(range_futs)):
            plan = range_futs[fut]
            vid = plan.record.video_id
            try:
                stats = fut.result()
            except Exception as e:  # noqa: BLE001
                failed.setdefault(vid, str(e) or type(e).__name__)
                logger.error("video failed: %s", e)
                continue
            r = stats.frame_range
            n = min(r.stop, plan.record.n_frames - 1) - r.start
            done_pairs += n
            video_done[vid] += n
            bar.update(n, video=os.path.basename(plan.record.source.path),
                       video_pairs=f"{video_done[vid]}/{plan.record.n_frames - 1}")
            remaining[vid] -= 1
            if remaining[vid] == 0 and vid not in failed:
                finals.append((plan, finalize_video.submit(plan, config, time.perf_counter() - t0)))
            now = time.perf_counter()
            if total and (now - last_update > 2.0 or done_pairs == total):
                update_progress_artifact(artifact, 100.0 * done_pairs / total)
                last_update = now
    for plan in plans:
        if plan.record.video_id in failed:
            results.append(IngestResult(source=plan.record.source.path, status="failed",
                                        video_id=plan.record.video_id, error=failed[plan.record.video_id]))
    for plan, fut in finals:
        try:
            res = fut.result()
            logger.log(logging.WARNING if res.extra.get("decode_errors") else logging.INFO,
                       "stored %s: %d frames, %d cut(s)%s", res.source, res.n_frames, res.n_cuts,
                       f" ({res.note})" if res.note else "")
            results.append(res)
        except Exception as e:  # noqa: BLE001
            logger.error("video failed: %s", e)
            results.append(IngestResult(source=plan.record.source.path, status="failed",
                                        video_id=plan.record.video_id, error=str(e)))


def duplicate_result(source: VideoSource, first: VideoSource, outcome: IngestResult | None) -> IngestResult:
    """The result of an input whose content equals an earlier input's: that input's outcome, noted."""
    note = f"same content as {first.path}"
    if outcome is None or outcome.status == "failed":
        return IngestResult(source=source.path, status="failed", video_id=outcome.video_id if outcome else None,
                            error=f"{note}, which failed: {outcome.error if outcome else 'no result'}", note=note)
    return IngestResult(source=source.path, status="skipped", video_id=outcome.video_id, n_frames=outcome.n_frames,
                        n_cuts=outcome.n_cuts, backend=outcome.backend, note=note)


def summary_markdown(summary: IngestSummary) -> str:
    lines = [f"# Ingest into `{summary.store}`", "",
             f"Backend: `{summary.backend}`; stored {len(summary.stored)}, skipped {len(summary.skipped)}, "
             f"failed {len(summary.failed)}; index version `{summary.index_version}`.", "",
             "| source | status | video id | frames | cuts | note | error |", "|---|---|---|---|---|---|---|"]
    for r in summary.results:
        lines.append(f"| {r.source} | {r.status} | {r.video_id or ''} | {r.n_frames} | {r.n_cuts} | {r.note or ''} "
                     f"| {r.error or ''} |")
    return "\n".join(lines)


@flow(name="ingest", log_prints=False)
def ingest(config: IngestConfig = IngestConfig()) -> IngestSummary:  # noqa: B008 - pydantic default
    """Ingest videos into the Zarr store. Fails (after storing every good video) if any video failed."""
    logger = get_run_logger()
    # The default inputs filled in, an unavailable backend rejected before any work, "auto" made the backend
    # that runs (a config that passed the command line's or the pipeline's pre-flight already has both).
    config = with_concrete_backend(with_default_inputs(config))
    backend = config.flow.backend
    VideoStore.open(config.store, create=True)  # an unwritable store is rejected before any work
    sources, errors = discover(config.inputs)
    if config.watch:  # a watched folder that is missing or empty has simply nothing new
        errors = [e for e in errors if e.reason not in ("missing", "no videos found")]
    if not sources and errors:
        raise CPFSError("no usable input: " + "; ".join(str(e) for e in errors))
    logger.info("ingesting %d source(s) into %s with %s", len(sources), config.store.path, backend)
    results = [IngestResult(source=e.path, status="failed", error=str(e)) for e in errors]
    if sources:
        if config.dask_address:  # an existing cluster: its workers on an affected Python stop their profiler
            guard_cluster(config.dask_address)
        with without_worker_profiler():  # the local cluster, created when the subflow starts
            results += ingest_videos.with_options(task_runner=task_runner_for(config))(sources, config)
    version = write_index(config)
    summary = IngestSummary(store=config.store.path, results=tuple(results), index_version=version, backend=backend)
    create_table_artifact(
        key="ingest-results",
        table=[{"source": r.source, "status": r.status, "video_id": r.video_id or "", "frames": r.n_frames,
                "cuts": r.n_cuts, "note": r.note or "", "error": r.error or ""} for r in results],
        description="Per-video outcome of the ingest")
    create_markdown_artifact(key="ingest-summary", markdown=summary_markdown(summary))
    if summary.failed:
        names = "; ".join(r.error or r.source for r in summary.failed)
        return Failed(message=f"{len(summary.failed)} of {len(results)} video(s) failed: {names}",
                      data=summary)
    return summary
