"""Prefect flow ``evaluate``: a CPFS checkpoint against a random-init network and baselines, and the report.

``evaluate`` validates its inputs first and builds the evaluation's one context (checkpoints, each read once;
store; held-out split: errors name the path), runs one task per configured protocol on it
(``tasks.evaluate``; cached by config + checkpoint SHA-256 + store index version), writes ``results.json``,
``report.md`` and ``report.html`` to ``config.out``, and publishes the results as a Prefect table artifact,
the summary as a Markdown artifact and the progress as a progress artifact, so the Prefect UI shows them (and
a terminal, the protocol and source running: ``cpfs.progress``). It runs alone on any checkpoint: nothing
but the checkpoint file and the store is needed. The ``cpfs evaluate`` command is in ``flows.cli``.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact

from cpfs.config import EvalConfig
from cpfs.evaluation.tables import PROTOCOL_TITLES, results_markdown_table
from cpfs.evaluation.run import EvalSummary
from cpfs.pipeline import check_evaluation_data, resolve_heldout
from cpfs.progress import progress_bar
from cpfs.training.run_folder import EvalFolder
from tasks.evaluate import PROTOCOL_TASKS, check_inputs, write_report


def results_table(protocols: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (protocol, source, metric): the Prefect table artifact."""
    rows = []
    for proto, sources in protocols.items():
        for source, res in sources.items():
            for metric, v in res["summary"].items():
                rows.append({"protocol": proto, "source": source, "metric": metric,
                             "mean": round(float(v["mean"]), 4), "std": round(float(v["std"]), 4)})
    return rows


def summary_markdown(config: EvalConfig, summary: EvalSummary, protocols: dict[str, dict[str, Any]]) -> str:
    lines = [f"# Evaluation of `{config.checkpoint}`", "",
             f"Checkpoint sha256 `{summary.checkpoint_sha256[:16]}…`, store `{config.store.path}` index version "
             f"`{summary.store_version}`; {config.seeds} seed(s); {summary.seconds:.0f} s. "
             f"Report: `{summary.report_html}`.", ""]
    if config.smoke_scale and "linear_probe" in protocols:
        lines += ["**Linear probe at smoke scale** (scikit-learn digits, not ImageNet).", ""]
    lines.append(results_markdown_table({"protocols": protocols}))
    return "\n".join(lines)


@flow(name="evaluate", log_prints=False)
def evaluate(config: EvalConfig) -> EvalSummary:
    """Every configured protocol on the checkpoint(s), random init and baselines; report and artifacts."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    check_evaluation_data(config)  # data set layouts and image headers first: a bad folder fails in seconds
    # held-out videos named by file or folder name or glob become ids (the protocol tasks' cache keys see ids)
    config = config.model_copy(update={"heldout_videos": resolve_heldout(config.heldout_videos, config.store,
                                                                          "heldout_videos")})
    # One evaluation writes a folder at a time: a second one (another `cpfs run` of the same run) waits here.
    with EvalFolder(config.out).lock(on_wait=logger.info):
        ctx = check_inputs(config)  # the one context of this evaluation: every protocol task runs on it
        inputs = ctx.inputs()
        names = config.protocols()
        logger.info("evaluating %s (sha256 %s) on held-out %s of %s (index %s): %s", config.checkpoint,
                    inputs.checkpoint_sha256[0][:12], ", ".join(ctx.video_names.get(v, v) for v in inputs.heldout_videos), config.store.path,
                    inputs.store_version, ", ".join(names))
        progress = create_progress_artifact(0.0, key="evaluate-progress",
                                            description=f"Protocols done of {len(names)}, then the report")
        protocols: dict[str, dict[str, Any]] = {}
        with progress_bar(len(names) + 1, "evaluate", unit="step") as bar:
            ctx.progress = lambda what, done, total: bar.set_description(f"evaluate: {what}")  # protocol and source
            for i, name in enumerate(names):
                title = PROTOCOL_TITLES.get(name, name)
                bar.set_description(f"evaluate: {title}")
                protocols[name] = PROTOCOL_TASKS[name].with_options(task_run_name=title)(
                    config, inputs.checkpoint_sha256, inputs.store_version, ctx)
                bar.set_description(f"evaluate: {title}: done")
                bar.update(protocol=name)
                update_progress_artifact(progress, 100.0 * (i + 1) / (len(names) + 1))
            bar.set_description("evaluate: report")
            summary = write_report(ctx, protocols, time.perf_counter() - t0)
            bar.update()
    update_progress_artifact(progress, 100.0)
    create_table_artifact(key="evaluate-results", table=results_table(protocols),
                          description=f"CPFS vs random init and baselines: mean and std over {config.seeds} seed(s)")
    create_markdown_artifact(key="evaluate-summary", markdown=summary_markdown(config, summary, protocols))
    logger.info("report written to %s", summary.report_html)
    return summary
