"""Thin Prefect tasks of the training stage: run ``cpfs.training.train.train`` in this process, or launch it under
``torchrun`` for several processes (``cpfs.training.launch``), and report progress to the Prefect UI."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from cpfs.config import TrainStageConfig
from cpfs.training.launch import run_summary, run_torchrun, start_step, torchrun_command
from cpfs.progress import progress_bar
from cpfs.records import TrainSummary
from cpfs.training.run_folder import RunFolder
from cpfs.training.train import train


@task(name="train-cpfs", cache_policy=NO_CACHE, task_run_name="train {stage.train.loss} -> {stage.run_dir}")
def train_model(stage: TrainStageConfig) -> TrainSummary:
    """Train (or resume, or find finished) the run in ``stage.run_dir``. Progress goes to a Prefect progress
    artifact and a terminal progress bar; per-step metrics to ``metrics.jsonl`` in the run folder."""
    logger = get_run_logger()
    # One training per run folder at a time: a second one waits here, then resumes or finds the run finished.
    with RunFolder(stage.run_dir).lock(on_wait=logger.info):
        return _train_locked(stage, logger)


def _train_locked(stage: TrainStageConfig, logger) -> TrainSummary:  # noqa: ANN001
    t0 = time.perf_counter()
    start = start_step(stage)
    if start >= stage.train.steps:
        logger.info("run %s already finished (%d steps); not retrained", stage.run_dir, start)
        return run_summary(stage, 0.0, start)
    if start:
        logger.info("resuming %s from step %d", stage.run_dir, start)
    if stage.nproc_per_node > 1:
        logger.info("launching: %s", " ".join(torchrun_command(stage)))
        logger.info(run_torchrun(stage))
        return run_summary(stage, time.perf_counter() - t0, start)

    artifact = create_progress_artifact(100.0 * start / stage.train.steps, key="train-progress",
                                        description=f"Training steps done ({stage.train.loss}, {stage.run_dir})")
    last = [0.0]

    def progress(step: int, total: int, metrics: dict) -> None:
        # a bar with step, rate and ETA on a terminal, a line every 30 s in logs (cpfs.progress)
        bar.update(step - bar.n, loss=float(metrics.get("loss", float("nan"))),
                   **{"images/s": float(metrics.get("images_per_s", float("nan")))})
        now = time.perf_counter()
        if now - last[0] > 2.0 or step == total:
            update_progress_artifact(artifact, 100.0 * step / total)
            last[0] = now

    with progress_bar(stage.train.steps, f"train {stage.train.loss}", unit="step", initial=start) as bar:
        train(stage.train, stage.store, Path(stage.run_dir), resume=stage.resume, progress=progress)
    summary = run_summary(stage, time.perf_counter() - t0, start)
    rows = RunFolder(stage.run_dir).read_metrics()
    every = max(1, len(rows) // 20)
    create_table_artifact(
        key="train-metrics",
        table=[{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows[::every]],
        description=f"Training metrics every {every} step(s) of {stage.run_dir}")
    return summary
