"""Tests of cpfs.training.distributed: two CPU processes (gloo) train together through ``cpfs.training.train.train``.

Each process is started with ``torch.multiprocessing`` (spawn) and given torchrun's environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so ``init_from_env`` runs exactly as under torchrun.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cpfs.training.distributed import DistContext, init_from_env, make_sampler, mean_across_ranks, parameters_in_sync, shutdown
from cpfs.training.checkpoint import latest_checkpoint
from cpfs.training.run_folder import RunFolder

# Spawns process groups and tears them down: one xdist worker runs every such test, one after the other.
pytestmark = pytest.mark.xdist_group("process-groups")
from cpfs.training.train import train
from cpfs.config import TrainConfig
from tests.cpfs.training.test_data import make_store

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, store_path: str, tmp: str, cfg_json: str) -> None:
    """One rank: join the group from torchrun-style env vars, train, save what the parent compares."""
    from cpfs.config import StoreConfig

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = init_from_env("cpu", timeout_s=60)
    assert ctx.backend == "gloo" and ctx.world_size == WORLD and ctx.rank == rank
    cfg = TrainConfig.model_validate_json(cfg_json)
    # Each rank gets its own run_dir here (under torchrun they share one), so the test can see who wrote what.
    result = train(cfg, StoreConfig(path=store_path), Path(tmp) / f"run{rank}", dist=ctx)
    torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, Path(tmp) / f"params{rank}.pt")
    synced = parameters_in_sync(result.model, ctx)
    with torch.no_grad():  # a diverged replica must be detected
        if rank == 1:
            next(result.model.parameters()).add_(1e-3)
    diverged = not parameters_in_sync(result.model, ctx)
    mean = mean_across_ranks({"x": float(rank)}, ctx)["x"]
    torch.save({"synced": synced, "diverged_detected": diverged, "mean": mean, "steps": result.steps,
                "checkpoint": result.checkpoint}, Path(tmp) / f"result{rank}.pt")
    shutdown(ctx)


def test_two_gloo_ranks_stay_identical_and_only_rank0_writes(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", n_videos=3)
    cfg = TrainConfig.from_preset("demo", steps=3, batch_size=4, crop=64, points_per_image=32, width=0.25,
                                  num_workers=0, threads=1, checkpoint_every=2, device="cpu")
    mp.start_processes(_rank_main, args=(_free_port(), store.path, str(tmp_path), cfg.model_dump_json()),
                       nprocs=WORLD, join=True, start_method="spawn")
    p0 = torch.load(tmp_path / "params0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params1.pt", weights_only=True)
    assert p0.keys() == p1.keys()
    for k in p0:  # parameters and BatchNorm buffers (DDP broadcasts rank 0's buffers)
        assert torch.equal(p0[k], p1[k]), k
    r0 = torch.load(tmp_path / "result0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "result1.pt", weights_only=False)
    assert r0["synced"] and r1["synced"] and r0["diverged_detected"] and r1["diverged_detected"]
    assert r0["mean"] == r1["mean"] == pytest.approx(0.5)
    assert r0["steps"] == r1["steps"] == 3
    # rank 0 wrote checkpoints (steps 2 and 3) and the metrics; rank 1 wrote nothing at all
    assert latest_checkpoint(tmp_path / "run0").name == "step-00000003.pt" and r0["checkpoint"] is not None
    assert [m["step"] for m in RunFolder(tmp_path / "run0").read_metrics()] == [1, 2, 3]
    assert not (tmp_path / "run1").exists() and r1["checkpoint"] is None
    # the checkpoint holds rank 0's (= every rank's) parameters
    ck = torch.load(latest_checkpoint(tmp_path / "run0"), weights_only=True)
    assert ck["world_size"] == 2 and all(torch.equal(ck["model"][k], p0[k]) for k in p0)


def _teardown_main(rank: int, port: int, tmp: str) -> None:
    """One rank of the teardown test: rank 1 is slow inside destroy_process_group."""
    import time

    import torch.distributed as torch_dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = init_from_env("cpu", timeout_s=60)
    if rank == 1:
        real = torch_dist.destroy_process_group

        def slow_destroy(*args, **kwargs):  # noqa: ANN002, ANN003
            time.sleep(1.5)
            real(*args, **kwargs)
            Path(tmp, "rank1-destroyed").write_text(repr(time.time()))

        torch_dist.destroy_process_group = slow_destroy
    shutdown(ctx)
    Path(tmp, f"rank{rank}-returned").write_text(repr(time.time()))


def test_rank0_outlives_every_other_ranks_teardown(tmp_path: Path) -> None:
    """Rank 0 hosts the rendezvous store: it must not return (and exit) before every other rank has left
    the process group, or a rank still tearing down loses the store and gloo aborts it."""
    mp.start_processes(_teardown_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="spawn")
    destroyed = float((tmp_path / "rank1-destroyed").read_text())
    assert float((tmp_path / "rank0-returned").read_text()) >= destroyed


def test_single_process_context_and_rank_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = init_from_env("cpu")
    assert ctx == DistContext(device="cpu") and ctx.is_main and not ctx.distributed
    s0 = make_sampler(10, seed=1, start=4, ctx=DistContext(rank=0, world_size=2))
    s1 = make_sampler(10, seed=1, start=4, ctx=DistContext(rank=1, world_size=2))
    d0, d1 = iter(s0), iter(s1)
    assert [next(d0)[1] for _ in range(3)] == [4, 6, 8] and [next(d1)[1] for _ in range(3)] == [5, 7, 9]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_from_env("cpu")


@pytest.mark.slow
def test_torchrun_launches_the_entry_point(tmp_path: Path) -> None:
    """The real launcher: ``torchrun --standalone --nproc_per_node=2 -m cpfs.training.distributed_train``."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    store = make_store(tmp_path / "s.zarr", n_videos=2)
    cfg = {"preset": "demo", "steps": 2, "batch_size": 4, "crop": 64, "points_per_image": 32, "width": 0.25,
           "num_workers": 0, "threads": 1, "checkpoint_every": 1, "device": "cpu"}
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "cpfs.training.distributed_train", "--config", json.dumps(cfg), "--store", store.path, "--run-dir", str(tmp_path / "run")],
        cwd=repo, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only rank 0 reports
    assert lines[0]["world_size"] == 2 and lines[0]["steps"] == 2
    assert latest_checkpoint(tmp_path / "run").name == "step-00000002.pt"
    assert [m["step"] for m in RunFolder(tmp_path / "run").read_metrics()] == [1, 2]
