"""Prefect flow ``evaluate``: a CPFS checkpoint against a random-init network and baselines, and the report.

``evaluate`` validates its inputs first (checkpoints, store, held-out split: errors name the path), runs
one task per configured protocol (``tasks.evaluate``; cached by config + checkpoint SHA-256 + store index
version), writes ``results.json``, ``report.md`` and ``report.html`` to ``config.out``, and publishes the
results as a Prefect table artifact, the summary as a Markdown artifact and the progress as a progress
artifact, so the Prefect UI shows them. It runs alone on any checkpoint: nothing but the checkpoint file and
the store is needed. ``evaluate_command`` is the ``cpfs evaluate`` command (registered by ``flows.cli``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from pydantic import ValidationError

from cpfs.evaluation.config import EvalConfig
from cpfs.evaluation.report import PROTOCOL_TITLES, results_markdown_table
from cpfs.evaluation.run import EvalSummary
from cpfs.pipeline import check_evaluation_data
from flows.model_options import (given_values, merge, model_options, option_flags, parameter_name, report_validation,
                                 with_options)
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
    inputs = check_inputs(config)
    names = config.protocols()
    logger.info("evaluating %s (sha256 %s) on held-out %s of %s (index %s): %s", config.checkpoint,
                inputs.checkpoint_sha256[0][:12], ", ".join(inputs.heldout_videos), config.store.path,
                inputs.store_version, ", ".join(names))
    progress = create_progress_artifact(0.0, key="evaluate-progress",
                                        description=f"Protocols done of {len(names)}, then the report")
    protocols: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        protocols[name] = PROTOCOL_TASKS[name].with_options(task_run_name=PROTOCOL_TITLES.get(name, name))(
            config, inputs.checkpoint_sha256, inputs.store_version)
        update_progress_artifact(progress, 100.0 * (i + 1) / (len(names) + 1))
    summary = write_report(config, protocols, time.perf_counter() - t0)
    update_progress_artifact(progress, 100.0)
    create_table_artifact(key="evaluate-results", table=results_table(protocols),
                          description=f"CPFS vs random init and baselines: mean and std over {config.seeds} seed(s)")
    create_markdown_artifact(key="evaluate-summary", markdown=summary_markdown(config, summary, protocols))
    logger.info("report written to %s", summary.report_html)
    return summary


# -----------------------------------------------------------------------------------------------------------
# The `cpfs evaluate` command (registered in flows.cli)


# Every EvalConfig field is a `cpfs evaluate` option, derived from the model (a new field appears by itself);
# the store is the one exception: `--store PATH` sets its path (the rest of StoreConfig comes from --config).
EVAL_OPTIONS = model_options(EvalConfig, exclude={"store"})
_STORE_FLAG = {("store", "path"): "--store"}


def build_eval_config(store: str | None, config_file: Path | None, values: dict,
                      flags: dict) -> tuple[EvalConfig, dict]:
    """An ``EvalConfig`` from a JSON file (optional) overridden by the flags that were given (a flag not
    given leaves the file's value, or the model's default). Returns it with ``{loc: flag}`` of the given
    flags, for error messages."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise typer.BadParameter(f"{config_file}: {e}", param_hint="--config") from None
        if not isinstance(data, dict):
            raise typer.BadParameter(f"{config_file}: expected a JSON object (an EvalConfig)", param_hint="--config")
    data = merge(data, values)
    flags = dict(flags)
    if store is not None:
        data = merge(data, {"store": {"path": store}})
        flags.update(_STORE_FLAG)
    try:
        return EvalConfig.model_validate(data), flags
    except ValidationError as e:
        report_validation(e, flags, config_file, known={**option_flags(EVAL_OPTIONS), **_STORE_FLAG})
        raise  # unreachable: report_validation exits


def evaluate_command(
    store: Annotated[Optional[str], typer.Option(help="Zarr store with the held-out video: a folder or an fsspec URL. Default cpfs-data/store.zarr.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with an EvalConfig; the flags given override it.")] = None,
    **fields: Any,
) -> None:
    """Evaluate a checkpoint against a random-init network and baselines; write the report.

    --checkpoint is required, on the command line or in --config."""
    values, flags = given_values(EVAL_OPTIONS, fields)
    cfg, flags = build_eval_config(store, config, values, flags)
    from cpfs.errors import CPFSError
    from cpfs.evaluation.run import prepare
    from cpfs.pipeline import PreflightError, check_evaluation_data, writable_error

    def fail(parameter: tuple[str, ...], reason: str) -> None:
        known = {**option_flags(EVAL_OPTIONS), **_STORE_FLAG}
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
        prepare(cfg)
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
