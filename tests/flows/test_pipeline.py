"""The ``pipeline`` flow end to end: a real failure injected into training, retried with
``prefect flow-run retry``, compared with an uninterrupted run; stage skipping; parameter validation."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import cut_clip

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FAULT_INJECTION = REPO / "tests" / "fault_injection"


def _config(tmp: Path, name: str, clip: Path) -> Path:
    run_dir = tmp / name / "run"
    cfg = {
        "ingest": {"inputs": [str(clip)], "store": {"path": str(tmp / name / "store.zarr"), "shard_frames": 8},
                   "decode": {"short_side": 80}, "flow": {"backend": "opencv-dis"}},
        "train": {"run_dir": str(run_dir),
                  "train": {"steps": 6, "checkpoint_every": 2, "batch_size": 4, "crop": 64, "points_per_image": 32,
                            "width": 0.25, "num_workers": 0, "holdout_fraction": 0.2,
                            # 16-frame clips at 80 px barely move: this test is about retries, so every pair is used.
                            "min_moving_fraction": 0.0}},
        "evaluate": {"checkpoint": str(run_dir), "out": str(run_dir / "eval"), "seeds": 1, "digits_per_class": 6,
                     "probe_size": 64, "probe_max_iter": 10, "layers": ["conv1", "conv2"], "pairs_per_video": 2,
                     "points": 64, "pixels_per_image": 64, "bn_batches": 1, "bn_batch_size": 4,
                     "qualitative_frames": 1, "min_moving_fraction": 0.0},
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _env(home: Path, fault: Path | None = None, api: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api:  # the session's server: no temporary server to start per command (tens of seconds each here)
        env["PREFECT_API_URL"] = api
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PREFECT_LOGGING_LEVEL="INFO")
    if fault is not None:  # the failure rehearsal (tests/fault_injection): training fails while `fault` exists
        env.update(CPFS_TEST_FAULT_FILE=str(fault), PYTHONPATH=os.pathsep.join(
            filter(None, [str(FAULT_INJECTION), env.get("PYTHONPATH")])))
    return env


def _run(args: list[str], home: Path, cwd: Path, fault: Path | None = None, api: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(home, fault, api), capture_output=True, text=True, timeout=900)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _protocol_numbers(results_json: Path) -> dict:
    doc = json.loads(results_json.read_text())
    return {p: {s: r["summary"] for s, r in srcs.items()} for p, srcs in doc["protocols"].items()}


@pytest.mark.slow
def test_failed_training_retried_equals_uninterrupted_run(tmp_path, sample_videos, real_prefect_server):
    # Every command is a client of the session's Prefect server (a user's `cpfs server`); each stage's cached
    # results stay in the command's own PREFECT_HOME, so runs a and b share nothing but the server.
    api = real_prefect_server.url
    carphone = next(p for p in sample_videos if p.name == "carphone_pristine.mp4")
    bikes = next(p for p in sample_videos if p.name == "bikes.mp4")
    clips = tmp_path / "clips"
    cut_clip(carphone, clips / "carphone.mp4", 16, width=120)
    cut_clip(bikes, clips / "bikes.mp4", 16, width=160)
    fault = tmp_path / "fault"
    fault.write_text("3")  # training raises on its 3rd batch while this file exists
    cfg_a = _config(tmp_path, "a", clips)
    home_a = tmp_path / "prefect-a"

    first = _run([str(BIN / "cpfs"), "run", "--config", str(cfg_a)], home_a, tmp_path, fault, api=api)
    assert first.returncode == 1, first.stdout + first.stderr
    out = first.stdout + first.stderr
    assert "injected failure at batch 3" in out
    flow_run_id = re.search(r"flow run: ([0-9a-f-]{36})", out).group(1)
    logs = _run([str(BIN / "prefect"), "flow-run", "logs", flow_run_id], home_a, tmp_path, api=api)
    assert "injected failure" in logs.stdout + logs.stderr  # the reason is in the run's logs
    store_a = tmp_path / "a" / "store.zarr"
    stored_before = _mtimes(store_a)
    assert stored_before and (tmp_path / "a" / "run" / "checkpoints").is_dir()

    fault.unlink()  # remove the cause, then retry the same flow run
    retry = _run([str(BIN / "prefect"), "flow-run", "retry", flow_run_id,
                  "--entrypoint", f"{REPO / 'flows' / 'pipeline.py'}:pipeline"], home_a, tmp_path, fault, api=api)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert _mtimes(store_a) == stored_before  # ingest was not run again
    logs = _run([str(BIN / "prefect"), "flow-run", "logs", flow_run_id], home_a, tmp_path, api=api).stdout
    assert "Finished in state Cached" in logs, logs[-3000:]  # the ingest stage came from the cache
    assert len(re.findall(r"Beginning subflow run '[\w-]+' for flow 'ingest'", logs)) == 1, logs[-3000:]
    assert len(re.findall(r"Beginning subflow run '[\w-]+' for flow 'train'", logs)) == 2, logs[-3000:]

    cfg_b = _config(tmp_path, "b", clips)
    clean = _run([str(BIN / "cpfs"), "run", "--config", str(cfg_b)], tmp_path / "prefect-b", tmp_path, api=api)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    ck_a = torch.load(tmp_path / "a/run/checkpoints/step-00000006.pt", map_location="cpu", weights_only=False)
    ck_b = torch.load(tmp_path / "b/run/checkpoints/step-00000006.pt", map_location="cpu", weights_only=False)
    assert ck_a["step"] == ck_b["step"] == 6
    for k, v in ck_b["model"].items():
        torch.testing.assert_close(ck_a["model"][k], v, rtol=1e-5, atol=1e-6, msg=f"parameter {k}")
    a = _protocol_numbers(tmp_path / "a/run/eval/results.json")
    b = _protocol_numbers(tmp_path / "b/run/eval/results.json")
    assert a.keys() == b.keys()
    for proto in a:
        for src in a[proto]:
            for metric, v in a[proto][src].items():
                assert v["mean"] == pytest.approx(b[proto][src][metric]["mean"], abs=1e-4), (proto, src, metric)

    # A second run of the same pipeline recomputes nothing: every stage comes from the cache.
    again = _run([str(BIN / "cpfs"), "run", "--config", str(cfg_b)], tmp_path / "prefect-b", tmp_path, api=api)
    assert again.returncode == 0, again.stdout + again.stderr
    log = again.stdout + again.stderr
    for stage in ("ingest-stage", "train-stage", "evaluate-stage"):
        assert re.search(stage + r"-\w+' - Finished in state Cached", log), (stage, log[-3000:])


@pytest.mark.parametrize("flag, value, needle", [
    ("--backend", "opencv-cuda-tvl1", "error: --backend: "),
    ("--force", "everything", "--force"),
])
def test_cpfs_run_rejects_bad_parameters_before_any_work(tmp_path, flag, value, needle):
    r = _run([str(BIN / "cpfs"), "run", "--store", str(tmp_path / "s.zarr"), flag, value], tmp_path / "ph", tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stdout + r.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_cpfs_run_rejects_missing_input(tmp_path):
    r = _run([str(BIN / "cpfs"), "run", str(tmp_path / "nope"), "--store", str(tmp_path / "s.zarr")],
             tmp_path / "ph", tmp_path)
    assert r.returncode == 2 and f"error: INPUTS: {tmp_path / 'nope'} does not exist" in r.stderr
