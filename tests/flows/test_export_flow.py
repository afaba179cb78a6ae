"""Export from Prefect and from the command line: the ``export`` flow writes ``<run>/export`` and publishes the
card's verdict as a markdown artifact; a bad target fails before the task runs; ``cpfs export`` exits 0 with the
ONNX difference, or 2 with one line naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cpfs.training.run_folder import ExportFolder, RunFolder
from flows.cli import app
from tests.cpfs.export.tiny_run import write_results, write_run


def _artifact(flow_run_id, key: str) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return next((a.data for a in arts if a.key == key), None)


def test_flow_exports_into_the_run_and_publishes_the_verdict(prefect_server, tmp_path):
    from flows.export import export

    ckpt = write_run(tmp_path / "run")
    results = write_results(ckpt)
    state = export(checkpoint=str(tmp_path / "run"), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    folder = RunFolder(tmp_path / "run").export
    assert summary.folder == str(folder.path) and summary.results_json == str(results)
    assert all(f.is_file() for f in folder.files()) and summary.onnx_max_abs_diff <= 1e-4
    task_runs = _task_runs(state.state_details.flow_run_id)
    card = _artifact(state.state_details.flow_run_id, "model-card")
    assert card is not None and "The trained network beats random init (seed 3) on held-out flow alignment" in card
    assert task_runs == ["Completed"]

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    bad = export(checkpoint=str(ckpt), out=str(tmp_path / "other"), return_state=True)
    assert bad.is_failed() and "parameter out" in bad.message and "keep.txt" in bad.message
    assert _task_runs(bad.state_details.flow_run_id) == []  # refused before the task ran


def _task_runs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r.state.name for r in runs]


@pytest.mark.parametrize("case", ["ok", "busy", "missing"])
def test_cpfs_export_command(tmp_path, case):
    ckpt = write_run(tmp_path / "run")
    out = tmp_path / "out"
    if case == "busy":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    checkpoint = tmp_path / "nowhere" if case == "missing" else ckpt
    r = CliRunner().invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(out)])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    if case == "ok":
        assert r.exit_code == 0, r.output
        assert "onnx: max abs difference" in r.output and "evaluation: none found" in r.output
        assert ExportFolder(out).card.is_file()
        return
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --out: " if case == "busy" else "error: --checkpoint: ")
    assert not (out.exists() and any(p.name != "keep.txt" for p in out.iterdir()))
