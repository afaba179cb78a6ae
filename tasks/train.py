"""Thin Prefect tasks of the training stage: run ``cpfs.train.train`` in this process, or launch it under
``torchrun`` for several processes, and report progress to the Prefect UI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from cpfs.config import TrainStageConfig
from cpfs.train import file_sha256, latest_checkpoint, read_checkpoint, read_metrics, train


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


class InjectedFailure(RuntimeError):
    """Raised on purpose by the ``fault_file`` rehearsal to rehearse failure handling."""


def _summary(stage: TrainStageConfig, seconds: float, resumed_from: int) -> TrainSummary:
    ckpt = latest_checkpoint(stage.run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{stage.run_dir}: training finished but wrote no checkpoint")
    payload = read_checkpoint(ckpt)
    metrics = read_metrics(stage.run_dir)
    return TrainSummary(run_dir=str(stage.run_dir), checkpoint=str(ckpt), checkpoint_sha256=file_sha256(ckpt),
                        steps=int(payload["step"]), loss=stage.train.loss,
                        final_metrics=metrics[-1] if metrics else {}, seconds=seconds, resumed_from=resumed_from)


def _fault_batch(stage: TrainStageConfig) -> int | None:
    """The batch on which the failure rehearsal fires (None: the fault file is absent)."""
    if stage.fault_file is None or not Path(stage.fault_file).exists():
        return None
    text = Path(stage.fault_file).read_text().strip()
    return int(text) if text else 1


def _start_step(stage: TrainStageConfig) -> int:
    ckpt = latest_checkpoint(stage.run_dir)
    return int(read_checkpoint(ckpt)["step"]) if ckpt is not None and stage.resume else 0


@task(name="train-cpfs", cache_policy=NO_CACHE, task_run_name="train {stage.train.loss} -> {stage.run_dir}")
def train_model(stage: TrainStageConfig) -> TrainSummary:
    """Train (or resume, or find finished) the run in ``stage.run_dir``. Progress goes to a Prefect progress
    artifact and a terminal progress bar; per-step metrics to ``metrics.jsonl`` in the run folder."""
    from tqdm.auto import tqdm

    logger = get_run_logger()
    t0 = time.perf_counter()
    start = _start_step(stage)
    if start >= stage.train.steps:
        logger.info("run %s already finished (%d steps); not retrained", stage.run_dir, start)
        return _summary(stage, 0.0, start)
    if start:
        logger.info("resuming %s from step %d", stage.run_dir, start)
    if stage.nproc_per_node > 1:
        _torchrun(stage, logger)
        return _summary(stage, time.perf_counter() - t0, start)

    artifact = create_progress_artifact(100.0 * start / stage.train.steps, key="train-progress",
                                        description=f"Training steps done ({stage.train.loss}, {stage.run_dir})")
    last = [0.0]
    fail_at = _fault_batch(stage)
    bar = tqdm(total=stage.train.steps, initial=start, unit="step", desc="train", disable=None)

    def progress(step: int, total: int, metrics: dict) -> None:
        if fail_at is not None and step >= fail_at:
            raise InjectedFailure(f"injected failure at batch {step} ({stage.fault_file} exists)")
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", refresh=False)
        now = time.perf_counter()
        if now - last[0] > 2.0 or step == total:
            update_progress_artifact(artifact, 100.0 * step / total)
            last[0] = now

    try:
        train(stage.train, stage.store, Path(stage.run_dir), resume=stage.resume, progress=progress)
    finally:
        bar.close()
    summary = _summary(stage, time.perf_counter() - t0, start)
    rows = read_metrics(stage.run_dir)
    every = max(1, len(rows) // 20)
    create_table_artifact(
        key="train-metrics",
        table=[{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows[::every]],
        description=f"Training metrics every {every} step(s) of {stage.run_dir}")
    return summary


def torchrun_command(stage: TrainStageConfig) -> list[str]:
    """The ``torchrun`` command line that trains ``stage`` with DistributedDataParallel on this node."""
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [exe, "--standalone", f"--nproc_per_node={stage.nproc_per_node}", "-m", "cpfs.distributed_train",
           "--config", json.dumps(stage.train.model_dump(mode="json")),
           "--store", stage.store.path,
           "--store-config", json.dumps(stage.store.model_dump(mode="json", exclude={"path"})),
           "--run-dir", str(stage.run_dir)]
    if stage.resume:
        cmd.append("--resume")
    return cmd


def _torchrun(stage: TrainStageConfig, logger) -> None:  # noqa: ANN001
    cmd = torchrun_command(stage)
    logger.info("launching: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.stdout:
        logger.info(proc.stdout[-4000:])
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with status {proc.returncode}: {proc.stderr[-4000:]}")
