"""Prefect flow ``evaluate``: a CPFS checkpoint against a random-init network and baselines, and the report.

``evaluate`` validates its inputs first and builds the evaluation's one context (checkpoints, each read once;
store; held-out split: errors name the path), runs one task per configured protocol on it
(``tasks.evaluate``; cached by config + checkpoint SHA-256 + store index version), writes ``results.json``,
``report.md`` and ``report.html`` to ``config.out``, and publishes the results as a Prefect table artifact,
the summary as a Markdown artifact and the progress as a progress artifact, so the Prefect UI shows them (and
a terminal, the protocol and source running: ``cpfs.progress``). It runs alone on any checkpoint: nothing
but the checkpoint file and the store is needed. ``evaluate_command`` is the ``cpfs evaluate`` command (registered by ``flows.cli``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact

from cpfs.config import EvalConfig
from cpfs.evaluation.report import PROTOCOL_TITLES, results_markdown_table
from cpfs.evaluation.run import EvalSummary
from cpfs.pipeline import check_evaluation_data
from cpfs.progress import progress_bar
from flows.model_options import build_config, model_options, parameter_name, with_options
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
    ctx = check_inputs(config)  # the one context of this evaluation: every protocol task runs on it
    inputs = ctx.inputs()
    names = config.protocols()
    logger.info("evaluating %s (sha256 %s) on held-out %s of %s (index %s): %s", config.checkpoint,
                inputs.checkpoint_sha256[0][:12], ", ".join(inputs.heldout_videos), config.store.path,
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


# -----------------------------------------------------------------------------------------------------------
# The `cpfs evaluate` command (registered in flows.cli)


# Every EvalConfig field is a `cpfs evaluate` option, derived from the model (a new field appears by itself;
# the store's path is `--store`).
EVAL_OPTIONS = model_options(EvalConfig)


def build_eval_config(config_file: Path | None, fields: dict) -> tuple[EvalConfig, dict, dict]:
    """An ``EvalConfig`` from a JSON file (optional) overridden by the options given (``fields``: the
    command's keyword arguments; one not given leaves the file's value, or the model's default). Returns it
    with ``{loc: flag}`` of the given options and of every option, for error messages."""
    return build_config(EvalConfig, EVAL_OPTIONS, fields, config_file)


def evaluate_command(
    config: Annotated[Optional[Path], typer.Option(help="JSON file with an EvalConfig; the flags given override it.")] = None,
    **fields: Any,
) -> None:
    """Evaluate a checkpoint against a random-init network and baselines; write the report.

    --checkpoint is required, on the command line or in --config."""
    cfg, flags, known = build_eval_config(config, fields)
    from cpfs.errors import CPFSError
    from cpfs.evaluation.context import prepare
    from cpfs.pipeline import PreflightError, check_evaluation_data, writable_error

    def fail(parameter: tuple[str, ...], reason: str) -> None:
        typer.secho(f"error: {parameter_name(parameter, flags, config, known)}: {reason}", fg="red", err=True)
        raise typer.Exit(2)

    reason = writable_error(cfg.out)
    if reason:
        fail(("out",), reason)
    try:  # the data sets: layout, class count, each file's header (seconds, not minutes into the run)
        check_evaluation_data(cfg)
    except PreflightError as e:
        fail((e.parameter or "",), e.reason)
    try:  # reject bad inputs before Prefect starts: no server, no run, a clear message
        prepare(cfg, recalibrate=False)  # one extra checkpoint read; the flow builds its own context once
    except (CPFSError, FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    state = evaluate(cfg, return_state=True)
    if not state.is_completed():
        typer.secho(f"evaluate {state.type.value.lower()}: {state.message}", fg="red", err=True)
        raise typer.Exit(1)
    summary = state.result()
    typer.echo(f"report: {summary.report_html}\nresults: {summary.results_json}\ntook {summary.seconds:.0f} s")
    for key, values in summary.headline.items():
        typer.echo(f"  {key}: " + ", ".join(f"{s}={v:.3f}" for s, v in values.items()))


evaluate_command = with_options(evaluate_command, EVAL_OPTIONS)
