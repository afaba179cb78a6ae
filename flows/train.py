"""Prefect flow ``train``: CPFS training on any existing store (one process, or torchrun/DDP)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from cpfs.config import TrainStageConfig
from cpfs.pipeline import check_train
from storage import VideoStore
from cpfs.records import TrainSummary
from tasks.train import train_model


@flow(name="train", log_prints=False)
def train(config: TrainStageConfig = TrainStageConfig()) -> TrainSummary:  # noqa: B008 - pydantic default
    """Train the CPFS network on the store's complete videos; resumes from the run folder's latest
    checkpoint, and returns at once when that run already reached its step count."""
    logger = get_run_logger()
    config = check_train(config)  # held-out videos named by file or folder name or glob become ids
    store = VideoStore.open(config.store, create=False)  # a missing store is an error here, named by path
    version = store.read_index().version
    config = config.for_store_version(version)
    logger.info("training on %s (index version %s) into %s", config.store.path, version, config.run_dir)
    summary = train_model(config)
    m = summary.final_metrics
    create_markdown_artifact(
        key="train-summary",
        markdown=(f"# Training `{summary.run_dir}`\n\nLoss `{summary.loss}`, {summary.steps} steps "
                  f"({summary.seconds:.0f} s, resumed from step {summary.resumed_from}).\n\n"
                  f"Last step: loss {m.get('loss', float('nan')):.4f}, images/s {m.get('images_per_s', 0):.1f}.\n\n"
                  f"Checkpoint: `{summary.checkpoint}` (sha256 `{summary.checkpoint_sha256[:16]}`)."))
    return summary
