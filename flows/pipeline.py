"""Prefect flow ``pipeline``: ingest -> train -> evaluate, as subflows, with one validated parameter set; with
``config.export``, then the export of the trained network with its model card into ``<run_dir>/export``.

Every parameter is checked before any work starts (``cpfs.pipeline.preflight``). Each stage runs its flow as
a subflow inside a task cached on a content key (``cpfs.pipeline`` fingerprints: inputs, configuration, code,
store index version, checkpoint hash), never on the flow-run id: re-running the pipeline, or retrying a
failed run (``prefect flow-run retry ID``), recomputes only the stages whose inputs changed, the failed one
and those after it; ``force`` recomputes the named stages anyway (``refresh_cache``). Training resumes from
its last checkpoint. The cache policy is orchestration, so it lives here, in ``flows/``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings
from prefect.states import Failed

from cpfs.training.checkpoint import file_sha256
from cpfs.config import EvalConfig, IngestConfig, PipelineConfig, Stage, TrainStageConfig
from cpfs.evaluation.run import EvalSummary
from cpfs.export.exporter import export_target_error
from cpfs.pipeline import evaluate_fingerprint, ingest_fingerprint, preflight, train_fingerprint
from cpfs.records import IngestSummary, TrainSummary
from cpfs.training.run_folder import EvalFolder, RunFolder
from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.recovery import crash_orphaned_children
from flows.train import train
from tasks.export import export_task
from storage import VideoStore


@dataclass(frozen=True)
class PipelineSummary:
    ingest: IngestSummary
    checkpoint: str
    report_html: str
    headline: dict
    export: str | None = None  # the export folder (``config.export``), None when not exported


def _key(prefix: str):  # noqa: ANN202
    def key(_ctx, params: dict) -> str:  # noqa: ANN001
        return f"cpfs-{prefix}-{params['fingerprint']}"

    return key


@task(name="ingest-stage", cache_key_fn=_key("ingest"), persist_result=True)
def ingest_stage(config: IngestConfig, fingerprint: str) -> IngestSummary:
    """The ``ingest`` flow as a subflow. Its summary (bad videos included) is the cached result."""
    state = ingest(config, return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, IngestSummary):  # the flow itself broke, not just some videos
        raise RuntimeError(f"ingest failed: {state.message}")
    return summary


@task(name="train-stage", cache_key_fn=_key("train"), persist_result=True)
def train_stage(config: TrainStageConfig, fingerprint: str) -> TrainSummary:
    return train(config)


@task(name="evaluate-stage", cache_key_fn=_key("evaluate"), persist_result=True)
def evaluate_stage(config: EvalConfig, fingerprint: str) -> EvalSummary:
    return evaluate(config)


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
    logger = get_run_logger()
    checked = preflight(config)  # also fills in the default inputs and resolves the flow backend, once
    config, ingest_cfg = checked.config, checked.config.ingest
    key = ingest_fingerprint(ingest_cfg, ingest_cfg.inputs)
    with _forced("ingest", force):
        # A cached ingest is trusted only while the store holds complete videos, intact: a damaged video (a
        # lost shard) makes the ingest run again, to repair it.
        refresh = "ingest" in force or not checked.store_ready
        ingest_sum = ingest_stage.with_options(refresh_cache=refresh)(ingest_cfg, key)
    store = VideoStore.open(ingest_cfg.store, create=False)  # the one opening after the ingest wrote it
    good = store.complete_ids()
    if not good:
        raise RuntimeError(f"the store {ingest_cfg.store.path} holds no complete video after ingest: "
                           + ("; ".join(r.error or r.source for r in ingest_sum.failed) or "no input"))
    if ingest_sum.failed:
        logger.warning("%d video(s) failed to ingest; training goes on with the %d in the store",
                       len(ingest_sum.failed), len(good))

    store_version = store.read_index().version
    config = config.for_store_version(store_version)  # train.version_runs: the run folder of this version
    export_dir = str(RunFolder(config.train.run_dir).export.path)
    if config.export and (reason := export_target_error(export_dir)):  # before training, not after
        raise ValueError(f"parameter export: {reason}")
    tkey = train_fingerprint(config.train, store_version)
    if "train" in force:
        _archive_run(config.train.run_dir)
    have_ckpt = RunFolder(config.train.run_dir).latest_checkpoint() is not None
    with _forced("train", force):
        train_sum = train_stage.with_options(refresh_cache="train" in force or not have_ckpt)(config.train, tkey)

    assert config.evaluate is not None
    ekey = evaluate_fingerprint(config.evaluate, file_sha256(train_sum.checkpoint), store_version)
    have_report = EvalFolder(config.evaluate.out).results_json.exists()
    with _forced("evaluate", force):
        eval_sum = evaluate_stage.with_options(refresh_cache="evaluate" in force or not have_report)(
            config.evaluate, ekey)

    # Export after a successful training and evaluation (the card reports this evaluation's verdicts).
    exported = export_task(train_sum.checkpoint, export_dir, eval_sum.results_json) if config.export else None
    summary = PipelineSummary(ingest=ingest_sum, checkpoint=train_sum.checkpoint,
                              report_html=eval_sum.report_html, headline=eval_sum.headline,
                              export=exported.folder if exported is not None else None)
    create_markdown_artifact(key="pipeline-summary", markdown=(
        f"# CPFS pipeline\n\nStore `{config.ingest.store.path}` (index `{store_version}`): "
        f"{len(good)} video(s), {len(ingest_sum.failed)} failed.\n\nCheckpoint `{train_sum.checkpoint}`.\n\n"
        f"Report: `{eval_sum.report_html}`." + (f"\n\nExport: `{exported.folder}`." if exported else "")))
    logger.info("report: %s", eval_sum.report_html)
    if ingest_sum.failed:
        return Failed(message=f"{len(ingest_sum.failed)} video(s) failed to ingest: "
                              + "; ".join(r.error or r.source for r in ingest_sum.failed), data=summary)
    return summary
