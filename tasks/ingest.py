"""Thin Prefect tasks of the ingest stage: each calls one library function of ``cpfs.ingest.steps``.

Tasks are per video or per shard range, never per frame (each task run costs the Prefect server tens of
milliseconds). A ``VideoError`` (a bad source) and a ``SettingsConflictError`` (a stored video asked for with
other settings) are permanent and not retried; anything else (an I/O hiccup, a lost Dask worker) is retried.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from cpfs.ingest import steps as lib
from cpfs.config import IngestConfig
from cpfs.ingest.discovery import content_id
from cpfs.errors import VideoError
from cpfs.ingest.settings import SettingsConflictError
from cpfs.records import FrameRange, IngestResult, VideoSource
from storage import VideoStore


def _transient(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's retry_condition_fn signature)
    """Retry unless the failure is a bad video: those fail the same way every time."""
    try:
        state.result()
    except (VideoError, SettingsConflictError):
        return False
    except Exception:  # noqa: BLE001
        return True
    return False


# The store itself makes ingest idempotent (complete videos are skipped, finished ranges are not
# redone), so Prefect's result cache is not used for these side-effecting tasks.
_common = dict(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)


@task(name="identify-video", task_run_name="identify {source.path}", **_common)
def identify_video(source: VideoSource) -> str:
    """The content id of a source (a hash of its bytes): equal content is ingested once."""
    return content_id(source)


@task(name="prepare-video", task_run_name="prepare {source.path}", **_common)
def prepare_video(source: VideoSource, config: IngestConfig, video_id: str | None = None) -> lib.IngestPlan | IngestResult:
    return lib.prepare_video(source, config, video_id)


@task(name="process-range",
      task_run_name="flow {frame_range.video_id}[{frame_range.start}:{frame_range.stop}]", **_common)
def process_range(plan: lib.IngestPlan, frame_range: FrameRange, config: IngestConfig) -> lib.RangeStats:
    return lib.process_range(plan, frame_range, config)


@task(name="finalize-video", task_run_name="finalize {plan.record.source.path}", **_common)
def finalize_video(plan: lib.IngestPlan, config: IngestConfig, seconds: float = 0.0) -> IngestResult:
    return lib.finalize_video(plan, config, seconds)


@task(name="write-index", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def write_index(config: IngestConfig) -> str:
    """Rewrite the store-level index of complete videos; returns its content version."""
    store = VideoStore.open(config.store, create=True)
    return store.write_index().version
