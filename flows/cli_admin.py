"""The commands of ``cpfs`` that look after a store and a Prefect server rather than run a stage: ``cpfs server``,
``verify``, ``upgrade``, ``recover`` and ``ls``. Registered on ``flows.cli.app`` (which imports this module);
like the stage commands, each imports what it runs only when it runs."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cpfs.config import StoreConfig
from flows.cli import _DEFAULT_STORE, app
from flows.model_options import fail


@app.command()
def server(
    host: Annotated[str, typer.Option(help="Address to listen on: 127.0.0.1 (this machine) or 0.0.0.0 (your network; set PREFECT_SERVER_API_AUTH_STRING).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API and UI (1-65535).")] = 4200,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Serve the dashboard.")] = True,
) -> None:
    """Run a Prefect server (API + UI; SQLite, or PREFECT_SERVER_DATABASE_CONNECTION_URL) in the foreground."""
    if not 1 <= port <= 65535:  # 0 would let the system pick one, which the printed address could not name
        fail("--port", f"must be a port number from 1 to 65535 (got {port})")
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
    from cpfs.ingest.steps import add_motion_statistics
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


@app.command("ls")
def list_store(
    store: Annotated[str, typer.Option(help="Zarr store to list: a folder or an fsspec URL.")] = _DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per video, for scripts.")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Check that every stored object of each "
                                        "complete video is there with its size (no reading).")] = True,
) -> None:
    """List the videos of a store: name, id, frames, size, shot cuts, flow backend, median moving fraction
    (the share of pixels that move on their own), status and damage. Videos may be named by these names or
    ids wherever a command takes videos (--heldout-videos)."""
    import dataclasses
    import json

    from cpfs.errors import StoreError
    from cpfs.ingest.video_names import video_name
    from storage import VideoStore

    try:
        rows = VideoStore.open(StoreConfig(path=store), create=False).list_videos(check=check)
    except StoreError as e:
        fail("--store", str(e))
    if as_json:
        for r in rows:
            typer.echo(json.dumps({"name": video_name(r.source_path), **dataclasses.asdict(r), "ok": r.ok}))
        return
    table = [("NAME", "ID", "FRAMES", "SIZE", "CUTS", "BACKEND", "MOVING", "STATUS", "DAMAGE")]
    for r in rows:
        damage = []
        if r.decode_errors or r.damaged_frames:
            damage.append(f"{r.decode_errors} decode error(s), {r.damaged_frames} frame(s) affected")
        if r.problems:
            damage.append(r.problems[0] + (f" (and {len(r.problems) - 1} more)" if len(r.problems) > 1 else ""))
        table.append((video_name(r.source_path), r.video_id, str(r.n_frames), f"{r.width}x{r.height}",
                      "-" if r.n_cuts is None else str(r.n_cuts), r.backend or "-",
                      "-" if r.moving_fraction is None else f"{r.moving_fraction:.2f}", r.status,
                      "; ".join(damage) or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        typer.echo("  ".join(c.rjust(w) if i in (2, 4, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                   + "  " + row[-1])
    complete = sum(r.status == "complete" for r in rows)
    damaged = sum(bool(r.problems or r.decode_errors or r.damaged_frames) for r in rows)
    typer.echo(f"store: {store}  {len(rows)} video(s): {complete} complete, {len(rows) - complete} incomplete, "
               f"{damaged} with damage" + ("" if check else " (objects not checked: --no-check)"))
