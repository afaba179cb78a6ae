"""Thin Prefect task of the export: one call to ``cpfs.export.exporter.export_model``, and the model card's verdict as a
Prefect markdown artifact (key ``model-card``) so the UI shows how the exported network scored."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cpfs.export.exporter import ExportSummary, export_model


# Not cached: an export takes seconds and replaces the folder's earlier export; its inputs (the checkpoint, the
# evaluation's results.json) are files whose content a cache key on their paths would not see. No retry: what
# fails here (a bad folder, a damaged checkpoint, an ONNX mismatch) fails the same way again.
@task(name="export-model", cache_policy=NO_CACHE, task_run_name="export {checkpoint} -> {out}")
def export_task(checkpoint: str, out: str, results_json: str | None = None, stride: int = 4) -> ExportSummary:
    """Export ``checkpoint`` (a file or run folder) into ``out``: weights, architecture, ONNX, model card."""
    result = export_model(checkpoint, out, results_json=results_json, stride=stride)
    create_markdown_artifact(key="model-card", markdown=result.verdict_markdown,
                             description=f"Model card verdict of {result.checkpoint.path.name} ({out})")
    get_run_logger().info("exported %s to %s (ONNX max abs difference %.2e)", result.checkpoint.path,
                          result.folder.path, result.onnx_max_abs_diff)
    return result.summary()
