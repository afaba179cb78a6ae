"""The Prefect flow ``evaluate`` against a real temporary Prefect server: summary, report files, artifacts,
cached protocol tasks on a second run, and the ``cpfs evaluate`` command's early rejection of bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cpfs.config import StoreConfig
from cpfs.config import EvalConfig
from cpfs.training.checkpoint import file_sha256
from cpfs.training.train import train
from cpfs.config import TrainConfig
from storage import VideoStore
from tests.cpfs.evaluation.test_run import write_video


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[StoreConfig, Path]:
    root = tmp_path_factory.mktemp("evalflow")
    store_cfg = StoreConfig(path=str(root / "store.zarr"), shard_frames=8)
    store = VideoStore.open(store_cfg, create=True)
    for i in range(3):
        write_video(store, f"clip{i}", seed=10 + i)
    store.write_index()
    cfg = TrainConfig.from_preset("demo", steps=2, batch_size=4, crop=64, points_per_image=32, width=0.125,
                                  num_workers=0, holdout_fraction=0.34, threads=1, schedule={"warmup_steps": 1})
    before = torch.get_num_threads()
    result = train(cfg, store_cfg, root / "run")
    torch.set_num_threads(before)
    return store_cfg, result.run_dir


def _config(store_cfg: StoreConfig, run_dir: Path, out: Path) -> EvalConfig:
    return EvalConfig.model_validate(dict(
        checkpoint=str(run_dir), out=str(out), store=store_cfg, seeds=2, pairs_per_video=4, points=48,
        pixels_per_image=64, digits_per_class=5, probe_max_iter=15, bn_batches=1, bn_batch_size=4,
        qualitative_frames=1, threads=1))


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


def _artifact_keys(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key for a in arts if a.key}


def test_flow_writes_report_publishes_artifacts_and_caches(prefect_server, trained, tmp_path: Path, monkeypatch) -> None:
    from flows.evaluate import evaluate
    from tests.cpfs.evaluation.test_run import count_checkpoint_loads

    store_cfg, run_dir = trained
    cfg = _config(store_cfg, run_dir, tmp_path / "eval")
    loads = count_checkpoint_loads(monkeypatch)
    state = evaluate(cfg, return_state=True)
    assert state.is_completed(), state.message
    assert len(loads) == 1, loads  # one context for the whole flow run: the checkpoint is read once
    summary = state.result()
    ckpt = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    assert summary.checkpoint_sha256 == file_sha256(ckpt)
    assert summary.protocols == ("flow_alignment", "motion_segmentation", "linear_probe")
    assert set(summary.headline["motion_segmentation/IoU_moving"]) == {"cpfs", "random-init", "position", "colour-lab"}
    for path in (summary.results_json, summary.report_md, summary.report_html):
        assert Path(path).is_file() and Path(path).parent == tmp_path / "eval"
    doc = json.loads(Path(summary.results_json).read_text())
    assert doc["meta"]["store"]["index_version"] == summary.store_version
    assert doc["protocols"]["linear_probe"]["random-init"]["n_seeds"] == 2
    assert np.isfinite(doc["protocols"]["flow_alignment"]["cpfs"]["summary"]["ce"]["mean"])
    assert {"evaluate-results", "evaluate-summary", "evaluate-progress"} <= _artifact_keys(state.state_details.flow_run_id)
    first = _task_states(state.state_details.flow_run_id)
    assert all(s == "Completed" for s in first.values()), first

    # Same config, checkpoint and store: every protocol task is served from the cache; the report is rewritten.
    (tmp_path / "eval" / "report.html").unlink()
    again = evaluate(cfg, return_state=True)
    assert again.is_completed()
    states = _task_states(again.state_details.flow_run_id)
    protocol_states = {k: v for k, v in states.items() if not k.startswith(("check-inputs", "write-report"))}
    assert len(protocol_states) == 3 and set(protocol_states.values()) == {"Cached"}, states
    assert (tmp_path / "eval" / "report.html").is_file()
    assert again.result().headline == summary.headline


def test_command_rejects_a_missing_checkpoint_before_prefect_starts(trained, tmp_path: Path) -> None:
    from flows.cli import app

    store_cfg, _ = trained
    missing = tmp_path / "nowhere.pt"
    r = CliRunner().invoke(app, ["evaluate", "--store", store_cfg.path, "--checkpoint", str(missing),
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and f"{missing}: checkpoint not found" in r.output
    r = CliRunner().invoke(app, ["evaluate", "--store", store_cfg.path, "--checkpoint", str(missing), "--seeds", "0"])
    assert r.exit_code == 2 and "seeds" in r.output
    assert not (tmp_path / "o").exists()
