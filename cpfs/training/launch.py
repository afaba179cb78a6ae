"""Running a training stage outside the training loop: where a run folder stands, the ``torchrun`` launcher
for several processes, and the summary of a finished run (no Prefect here; ``tasks.train`` calls these)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cpfs.training.checkpoint import file_sha256, read_checkpoint
from cpfs.config import TrainStageConfig
from cpfs.records import TrainSummary
from cpfs.training.run_folder import RunFolder


def start_step(stage: TrainStageConfig) -> int:
    """The step training starts from: the latest checkpoint's when resuming, else 0."""
    ckpt = RunFolder(stage.run_dir).latest_checkpoint()
    return int(read_checkpoint(ckpt)["step"]) if ckpt is not None and stage.resume else 0


def run_summary(stage: TrainStageConfig, seconds: float, resumed_from: int) -> TrainSummary:
    """The summary of the run in ``stage.run_dir``: its latest checkpoint (and hash) and last metrics."""
    run = RunFolder(stage.run_dir)
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise FileNotFoundError(f"{stage.run_dir}: training finished but wrote no checkpoint")
    payload = read_checkpoint(ckpt)
    metrics = run.read_metrics()
    return TrainSummary(run_dir=str(stage.run_dir), checkpoint=str(ckpt), checkpoint_sha256=file_sha256(ckpt),
                        steps=int(payload["step"]), loss=stage.train.loss,
                        final_metrics=metrics[-1] if metrics else {}, seconds=seconds, resumed_from=resumed_from)


def torchrun_command(stage: TrainStageConfig) -> list[str]:
    """The ``torchrun`` command line that trains ``stage`` with DistributedDataParallel on this node."""
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [exe, "--standalone", f"--nproc_per_node={stage.nproc_per_node}", "-m", "cpfs.training.distributed_train",
           "--config", json.dumps(stage.train.model_dump(mode="json")),
           "--store", stage.store.path,
           "--store-config", json.dumps(stage.store.model_dump(mode="json", exclude={"path"})),
           "--run-dir", str(stage.run_dir)]
    if stage.resume:
        cmd.append("--resume")
    return cmd


def run_torchrun(stage: TrainStageConfig) -> str:
    """Train ``stage`` under ``torchrun`` (one thread per process); returns the tail of its output. Raises
    RuntimeError with the tail of its error output when it fails."""
    proc = subprocess.run(torchrun_command(stage), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with status {proc.returncode}: {proc.stderr[-4000:]}")
    return proc.stdout[-4000:]
