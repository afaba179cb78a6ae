"""Prefect flow ``pipeline``: ingest -> train -> evaluate, as subflows, with one validated parameter set.

Every parameter is checked before any work starts (``cpfs.pipeline.preflight``). Each stage is a task whose
cache key is the content of its inputs (see ``tasks/pipeline.py``), so re-running the pipeline, or retrying a
failed run (``prefect flow-run retry ID``), recomputes only the stages whose inputs changed, the failed one
and those after it; ``force`` recomputes the named stages anyway. Training resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings
from prefect.states import Failed

from cpfs.pipeline import PipelineConfig, Stage, evaluate_fingerprint, ingest_fingerprint, preflight, train_fingerprint
from cpfs.records import IngestSummary
from cpfs.train import file_sha256, latest_checkpoint
from flows.recovery import crash_orphaned_children
from storage import VideoStore
from tasks.pipeline import evaluate_stage, ingest_stage, train_stage


@dataclass(frozen=True)
class PipelineSummary:
    ingest: IngestSummary
    checkpoint: str
    report_html: str
    headline: dict


def _store_has_videos(config: PipelineConfig) -> bool:
    try:  # ... and holds it intact: a damaged video (a lost shard) makes the ingest run again, to repair it
        store = VideoStore.open(config.ingest.store, create=False)
        return bool(store.complete_ids()) and store.verify(full=False).ok
    except Exception:  # noqa: BLE001 - no store: nothing is held
        return False


def _forced(stage: str, force: list[str]):  # noqa: ANN202
    """Inside a forced stage every task recomputes, the stage's own cached tasks included."""
    if stage in force:
        return temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True})
    return contextlib.nullcontext()


def _archive_run(run_dir: str) -> None:
    """A forced retraining starts a fresh run; the old run folder is kept beside it, renamed."""
    p = Path(run_dir)
    if p.exists():
        p.rename(p.with_name(f"{p.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))


# On (re)start, subflow and task runs an earlier attempt's dead process left Running become Crashed.
@flow(name="pipeline", log_prints=False, on_running=[crash_orphaned_children])
def pipeline(config: PipelineConfig = PipelineConfig(), force: list[Stage] = []) -> PipelineSummary:  # noqa: B006,B008
    """ingest -> train -> evaluate on one store; prints (and returns) where the report is."""
    from flows.ingest import resolve_inputs

    logger = get_run_logger()
    preflight(config)
    ingest_cfg = resolve_inputs(config.ingest)
    key = ingest_fingerprint(ingest_cfg, ingest_cfg.inputs)
    # A cached ingest is trusted only while the store still holds what it stored.
    with _forced("ingest", force):
        ingest_sum = ingest_stage.with_options(refresh_cache="ingest" in force or not _store_has_videos(config))(
            ingest_cfg, key)
    good = VideoStore.open(config.ingest.store, create=True).complete_ids()
    if not good:
        raise RuntimeError(f"the store {config.ingest.store.path} holds no complete video after ingest: "
                           + ("; ".join(r.error or r.source for r in ingest_sum.failed) or "no input"))
    if ingest_sum.failed:
        logger.warning("%d video(s) failed to ingest; training goes on with the %d in the store",
                       len(ingest_sum.failed), len(good))

    store_version = VideoStore.open(config.ingest.store, create=False).read_index().version
    if config.train.version_runs:  # train into the run folder of this store version, evaluate that run
        train_cfg = config.train.for_store_version(store_version)
        assert config.evaluate is not None
        ev = config.evaluate
        if ev.checkpoint == config.train.run_dir:
            ev = ev.model_copy(update={"checkpoint": train_cfg.run_dir, "out": str(Path(train_cfg.run_dir) / "eval")})
        config = config.model_copy(update={"train": train_cfg, "evaluate": ev})
    tkey = train_fingerprint(config.train, store_version)
    if "train" in force:
        _archive_run(config.train.run_dir)
    have_ckpt = latest_checkpoint(config.train.run_dir) is not None
    with _forced("train", force):
        train_sum = train_stage.with_options(refresh_cache="train" in force or not have_ckpt)(config.train, tkey)

    assert config.evaluate is not None
    ekey = evaluate_fingerprint(config.evaluate, file_sha256(train_sum.checkpoint), store_version)
    have_report = Path(config.evaluate.out, "results.json").exists()
    with _forced("evaluate", force):
        eval_sum = evaluate_stage.with_options(refresh_cache="evaluate" in force or not have_report)(
            config.evaluate, ekey)

    summary = PipelineSummary(ingest=ingest_sum, checkpoint=train_sum.checkpoint,
                              report_html=eval_sum.report_html, headline=eval_sum.headline)
    create_markdown_artifact(key="pipeline-summary", markdown=(
        f"# CPFS pipeline\n\nStore `{config.ingest.store.path}` (index `{store_version}`): "
        f"{len(good)} video(s), {len(ingest_sum.failed)} failed.\n\nCheckpoint `{train_sum.checkpoint}`.\n\n"
        f"Report: `{eval_sum.report_html}`."))
    logger.info("report: %s", eval_sum.report_html)
    if ingest_sum.failed:
        return Failed(message=f"{len(ingest_sum.failed)} video(s) failed to ingest: "
                              + "; ".join(r.error or r.source for r in ingest_sum.failed), data=summary)
    return summary
