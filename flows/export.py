"""Prefect flow ``export``: a trained network's weights (safetensors), architecture, ONNX graph and model card
(``cpfs.export.exporter``), from a checkpoint or a run folder, on its own or after a pipeline run (``PipelineConfig.export``
does the same inside ``flows/pipeline.py``). The card's verdict is published as a markdown artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from cpfs.config.train import DEFAULT_RUN_DIR
from cpfs.training.checkpoint import resolve_checkpoint
from cpfs.export.exporter import ExportSummary, export_target_error
from cpfs.training.run_folder import RunFolder
from tasks.export import export_task


@flow(name="export", log_prints=False)
def export(checkpoint: str = DEFAULT_RUN_DIR, out: str | None = None, results_json: str | None = None,
           stride: int = 4) -> ExportSummary:
    """Export ``checkpoint`` (a step-*.pt file, or a run folder: its latest) into ``out`` (default: the run
    folder's ``export/``); the card reports ``results_json`` (default: the run's ``eval/results.json``)."""
    if stride < 1:
        raise ValueError(f"parameter stride: must be >= 1, got {stride}")
    ckpt = resolve_checkpoint(checkpoint)  # a missing checkpoint is named before anything else
    target = out or str(RunFolder.of_checkpoint(ckpt).export.path)
    if reason := export_target_error(target):
        raise ValueError(f"parameter out: {reason}")
    return export_task(str(Path(checkpoint)), target, results_json, stride)
