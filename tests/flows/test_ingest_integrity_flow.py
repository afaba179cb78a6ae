"""The ingest flow and command line on stored videos: duplicates in one call, a no-op run's progress, the
stored cut count, other settings rejected up front, ``cpfs verify``, and nothing listening beyond loopback."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import psutil
import pytest

from cpfs.config import IngestConfig
from storage import VideoStore, layout
from tests.cpfs.ingest.test_ingest_integrity import two_shots  # noqa: F401 - fixture: 24 frames, one shot cut

__all__ = ["two_shots"]


def _cfg(tmp_path: Path, inputs: list[Path], **kw) -> IngestConfig:
    return IngestConfig.model_validate({
        "inputs": [str(p) for p in inputs], "store": {"path": str(tmp_path / "store.zarr"), "shard_frames": 4},
        "decode": {"short_side": 48}, "flow": {"backend": "opencv-dis", "dis": {"preset": "ultrafast"}},
        "n_workers": 2, **kw})


def _runs_of(flow_run_id) -> tuple[list, list]:  # noqa: ANN001
    """Task runs and ingest-progress artifacts of a flow run and its subflows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        ids = [flow_run_id, *(c.id for c in children)]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["ingest-progress"]), flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
    return tasks, artifacts


def test_same_content_twice_is_processed_once_and_reported_per_input(prefect_server, tmp_path, two_shots):
    from flows.ingest import ingest

    copy = tmp_path / "a copy under another name.mp4"
    shutil.copyfile(two_shots, copy)
    cfg = _cfg(tmp_path, [two_shots, copy])
    state = ingest(cfg, return_state=True)
    summary = state.result()
    by_source = {r.source: r for r in summary.results}
    assert set(by_source) == {str(two_shots), str(copy)}  # every input has its own line
    first, second = sorted(summary.results, key=lambda r: r.source)  # inputs are processed in path order
    assert first.status == "stored" and first.note is None
    assert second.status == "skipped" and second.note == f"same content as {first.source}"
    assert second.video_id == first.video_id and (second.n_frames, second.n_cuts) == (first.n_frames, first.n_cuts) == (24, 1)
    store = VideoStore.open(cfg.store, create=False)
    assert [e.source_path for e in store.read_index().entries] == [first.source]
    tasks, artifacts = _runs_of(state.state_details.flow_run_id)
    ranges = [t for t in tasks if t.name.startswith("flow ")]
    finals = [t for t in tasks if t.name.startswith("finalize ")]
    per_task = 4 * cfg.shards_per_task  # frames per range task
    assert len(ranges) == -(-24 // per_task) and len(finals) == 1, [t.name for t in tasks]  # one video's ranges
    assert max(t.end_time for t in ranges) <= finals[0].start_time  # no flow task runs after finalize
    assert [a.data for a in artifacts] == [100.0]


def test_a_run_with_nothing_to_do_reads_done_and_reports_stored_cuts(prefect_server, tmp_path, two_shots):
    from flows.ingest import ingest

    cfg = _cfg(tmp_path, [two_shots])
    assert [r.status for r in ingest(cfg).results] == ["stored"]
    state = ingest(cfg, return_state=True)
    (again,) = state.result().results
    assert (again.status, again.n_frames, again.n_cuts) == ("skipped", 24, 1)
    _, artifacts = _runs_of(state.state_details.flow_run_id)
    assert [a.data for a in artifacts] == [100.0]


def _listening() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_an_ingest_listens_on_loopback_only(prefect_server, tmp_path, two_shots, monkeypatch):
    """Every listening socket of this process while a real ingest's local Dask cluster is up: looked at
    from inside the ``ingest-videos`` subflow (when it creates its progress artifact, with the cluster
    running), so the check does not depend on timing."""
    import flows.ingest as ingest_module

    seen: set[tuple[str, int]] = set()
    real = ingest_module.create_progress_artifact

    def look_then_create(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.update(_listening())
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "create_progress_artifact", look_then_create)
    summary = ingest_module.ingest(_cfg(tmp_path, [two_shots]))
    assert [r.status for r in summary.results] == ["stored"]
    assert seen, "no listening socket while the cluster ran: the check cannot have looked"
    assert all(ipaddress.ip_address(ip).is_loopback for ip, _ in seen), sorted(seen)


def test_cli_rejects_other_settings_and_verify_finds_a_missing_shard(prefect_server, tmp_path, two_shots):
    """The commands in this process (typer's runner): the settings check ends `cpfs ingest` with exit 2
    before the flow starts; `cpfs verify` exits 0 on an intact store, 1 listing a damaged video, 2 on no store."""
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.ingest import ingest

    cfg = _cfg(tmp_path, [two_shots])
    (stored,) = ingest(cfg).results
    store = str(tmp_path / "store.zarr")
    runner = CliRunner()
    r = runner.invoke(app, ["ingest", str(two_shots), "--store", store, "--size", "32", "--backend", "opencv-farneback"])
    assert r.exit_code == 2, r.output
    assert "--size: stored 48, requested 32" in r.output and "--backend: stored opencv-dis, requested opencv-farneback" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # a message, no traceback
    ok = runner.invoke(app, ["verify", "--store", store])
    assert ok.exit_code == 0, ok.output
    assert "1 complete video(s) checked" in ok.output and "0 damaged" in ok.output
    (Path(store) / layout.array_path(stored.video_id, "flow") / "c/2/0/0/0").unlink()
    bad = runner.invoke(app, ["verify", "--store", store])
    assert bad.exit_code == 1, bad.output
    assert f"damaged  {stored.video_id}  {two_shots}" in bad.output and "flow pairs [8, 12)" in bad.output
    assert "missing" in bad.output and "1 damaged" in bad.output
    quick = runner.invoke(app, ["verify", "--store", store, "--quick"])
    assert quick.exit_code == 1 and "sizes" in quick.output
    nothing = runner.invoke(app, ["verify", "--store", str(tmp_path / "none.zarr")])
    assert nothing.exit_code == 2 and "--store" in nothing.output
