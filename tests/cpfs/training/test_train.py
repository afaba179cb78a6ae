"""Tests of cpfs.training.train: exact resume, crash-safe checkpoints, clear errors, and that the loss goes down.

Everything runs on CPU on a tiny store (3 synthetic videos of 12 frames, 64x80) with a quarter-width AlexNet,
64 px crops and 32 pixels per image.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydantic
import pytest
import torch

from cpfs.config import StoreConfig
from cpfs.errors import StoreError
from cpfs.training.checkpoint import CHECKPOINT_DELAY_ENV, CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from cpfs.training.run_folder import RunFolder
from cpfs.training.train import CPFSObjective, build_model, lr_factor, train
from cpfs.config import TrainConfig
from storage.store import VideoStore
from tests.cpfs.training.test_data import add_video, make_store, synthetic_video

REPO = Path(__file__).resolve().parents[3]


def tiny_config(**overrides) -> TrainConfig:
    base = dict(steps=6, batch_size=4, crop=64, points_per_image=32, width=0.25, num_workers=0, threads=1,
                checkpoint_every=3, device="cpu", schedule={"warmup_steps": 2}, optimizer={"lr": 3e-3})
    base.update(overrides)
    return TrainConfig.from_preset("demo", **base)


@pytest.fixture(scope="module")
def store3(tmp_path_factory: pytest.TempPathFactory) -> StoreConfig:
    return make_store(tmp_path_factory.mktemp("store") / "s.zarr", n_videos=3, cuts={0: [4]})


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_presets_and_overrides() -> None:
    demo, paper = TrainConfig.from_preset("demo"), TrainConfig.from_preset("paper")
    assert TrainConfig() == demo  # the field defaults are the demo preset
    assert (demo.width, demo.batch_size, demo.points_per_image, demo.device) == (0.5, 16, 256, "cpu")
    assert (paper.width, paper.crop, paper.embed_dim, paper.amp) == (1.0, 224, 16, True)
    cfg = TrainConfig.from_preset("paper", optimizer={"lr": 5e-4}, steps=10)
    assert cfg.optimizer.lr == 5e-4 and cfg.optimizer.weight_decay == 0.05 and cfg.steps == 10
    dumped = json.loads(cfg.model_dump_json())  # the JSON the CLI and checkpoints carry round-trips
    assert TrainConfig.from_preset(dumped.pop("preset"), **dumped) == cfg
    with pytest.raises(ValueError, match="valid names: cpu-hour, demo, paper"):
        TrainConfig.from_preset("huge")
    with pytest.raises(pydantic.ValidationError, match="'kta', 'kta-centered', 'ce' or 'ce-rev'"):
        TrainConfig.from_preset("demo", loss="mse")
    with pytest.raises(pydantic.ValidationError):
        TrainConfig.from_preset("demo", learning_rate=1.0)  # unknown key: a typo must fail


def test_schedule_warms_up_then_decays() -> None:
    cfg = tiny_config(steps=100, schedule={"warmup_steps": 10, "min_lr_ratio": 0.1})
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_equals_uninterrupted(store3: StoreConfig, tmp_path: Path, workers: int) -> None:
    cfg = tiny_config(num_workers=workers, sigma="learned", steps=4, checkpoint_every=2)
    full = train(cfg, store3, tmp_path / "full")
    half = train(cfg, store3, tmp_path / "split", stop_after=2)
    assert half.steps == 2 and latest_checkpoint(tmp_path / "split").name == "step-00000002.pt"
    rest = train(cfg, store3, tmp_path / "split", resume=True)
    assert rest.steps == full.steps == 4
    a, b = _params(full.model), _params(rest.model)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    la = [m["loss"] for m in RunFolder(tmp_path / "full").read_metrics()]
    lb = [m["loss"] for m in RunFolder(tmp_path / "split").read_metrics()]
    assert [m["step"] for m in RunFolder(tmp_path / "split").read_metrics()] == list(range(1, 5))
    assert lb == pytest.approx(la, abs=1e-6)
    # the learned sigma parameter is restored too
    ca = torch.load(latest_checkpoint(tmp_path / "full"), weights_only=True)
    cb = torch.load(latest_checkpoint(tmp_path / "split"), weights_only=True)
    torch.testing.assert_close(cb["sigma"]["theta"], ca["sigma"]["theta"], rtol=0, atol=1e-7)


def test_checkpoint_contents_and_pruning(store3: StoreConfig, tmp_path: Path) -> None:
    cfg = tiny_config(steps=4, checkpoint_every=1, keep_checkpoints=2)
    result = train(cfg, store3, tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000003.pt", "step-00000004.pt"]
    assert result.checkpoint == latest_checkpoint(tmp_path / "run")
    payload = load_checkpoint(result.checkpoint, build_model(cfg))
    assert payload["step"] == 4 and payload["sampler"]["start"] == 16
    assert payload["store_version"] == VideoStore.open(store3, create=False).read_index().version
    assert payload["config"] == cfg.model_dump(mode="json")
    assert payload["architecture"]["width"] == 0.25 and set(payload["rng"]) >= {"python", "numpy", "torch"}
    assert {"optimizer", "scheduler"} <= set(payload)
    # the split is recorded: 3 videos, 20% held out -> one whole video held out, two trained on
    held = payload["split"]["heldout"]
    assert len(held) == 1 and len(payload["split"]["train"]) == 2 and held[0][1:] == [0, 12]
    assert [r.video_id for r in result.heldout] == [held[0][0]]
    # what the model card needs (cpfs.export.model_card): each video's name and flow backend, the machine, the time
    prov = payload["provenance"]
    assert set(prov["videos"]) == {r[0] for r in payload["split"]["train"] + held}
    assert all(v["name"] and v["backend"] for v in prov["videos"].values())
    assert prov["hardware"]["device"] == "cpu" and prov["train_seconds"] > 0


def test_loss_falls(store3: StoreConfig, tmp_path: Path) -> None:
    cfg = tiny_config(loss="kta-centered", steps=30, checkpoint_every=30, schedule={"warmup_steps": 3})
    seen = []
    train(cfg, store3, tmp_path / "run", progress=lambda step, total, m: seen.append((step, total)))
    assert seen[0] == (1, 30) and seen[-1] == (30, 30)
    losses = [m["loss"] for m in RunFolder(tmp_path / "run").read_metrics()]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1, (first, last)
    m = RunFolder(tmp_path / "run").read_metrics()[-1]
    assert {"lr", "sigma", "cos_offdiag", "dim_std_mean", "dim_std_min", "alignment", "images_per_s"} <= set(m)


def test_kill_during_checkpoint_leaves_previous_loadable(store3: StoreConfig, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(steps=8, checkpoint_every=2)
    env = {**os.environ, CHECKPOINT_DELAY_ENV: "1.0", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpfs.training.distributed_train", "--config", cfg.model_dump_json(), "--store", store3.path,
         "--run-dir", str(run)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    ckpts = run / "checkpoints"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            # kill once step 2 is in place and the step-4 checkpoint is written but not yet renamed
            if (ckpts / "step-00000002.pt").exists() and list(ckpts.glob(".step-00000004.pt.tmp-*")):
                break
            if proc.poll() is not None:
                pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("never saw the second checkpoint being written")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close(), proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert list(ckpts.glob(".step-00000004.pt.tmp-*")), "the half-written checkpoint should still be there"
    latest = latest_checkpoint(run)
    assert latest is not None and latest.name == "step-00000002.pt"
    payload = load_checkpoint(latest, build_model(cfg))
    assert payload["step"] == 2
    # and the run resumes from it (cleaning the stray temporary file)
    result = train(cfg, store3, run, resume=True, stop_after=1)
    assert result.steps == 3 and not list(ckpts.glob(".step-*.tmp-*"))


def test_save_checkpoint_is_atomic_on_error(tmp_path: Path) -> None:
    target = tmp_path / "c" / "step-00000001.pt"
    save_checkpoint(target, {"format": "x", "value": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(target, {"format": "x", "value": Unpicklable()})
    assert torch.load(target, weights_only=True)["value"] == 1  # the old file is untouched
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left


def test_bad_inputs(store3: StoreConfig, tmp_path: Path) -> None:
    cfg = tiny_config()
    # unknown loss (bypassing the config's validation): the message lists the names
    with pytest.raises(ValueError, match="unknown loss 'mse'; valid names: ce, ce-rev, kta, kta-centered"):
        train(cfg.model_copy(update={"loss": "mse"}), store3, tmp_path / "r0")
    with pytest.raises(ValueError, match="valid names"):
        CPFSObjective(build_model(cfg), "mse", "median")

    empty = StoreConfig(path=str(tmp_path / "empty.zarr"))
    VideoStore.open(empty, create=True)
    with pytest.raises(StoreError, match="empty"):
        train(cfg, empty, tmp_path / "r1")

    partial = StoreConfig(path=str(tmp_path / "partial.zarr"))
    frames, flow = synthetic_video(0, 6)
    add_video(VideoStore.open(partial, create=True), "half", frames, flow, finalize=False)
    with pytest.raises(StoreError, match="no complete video"):
        train(cfg, partial, tmp_path / "r2")

    # a checkpoint from another architecture: the error names the file and the mismatched keys
    done = train(cfg.model_copy(update={"steps": 1}), store3, tmp_path / "r3")
    other = build_model(cfg.model_copy(update={"width": 0.5}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(done.checkpoint, other)
    msg = str(info.value)
    assert str(done.checkpoint) in msg and "shape mismatches" in msg and "trunk.conv1.conv.weight" in msg
    with pytest.raises(CheckpointError, match="missing keys|unexpected keys|shape"):
        load_checkpoint(done.checkpoint, build_model(cfg.model_copy(update={"embed_dim": 8})))

    # resuming with settings that change what is computed
    with pytest.raises(CheckpointError, match="different loss"):
        train(cfg.model_copy(update={"loss": "kta"}), store3, tmp_path / "r3", resume=True)
    # a fresh run into a folder holding checkpoints, a damaged checkpoint
    with pytest.raises(CheckpointError, match="resume=True"):
        train(cfg, store3, tmp_path / "r3")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(bad, build_model(cfg))


def test_config_temperature_and_bandwidth_reach_the_loss() -> None:
    from cpfs.training.kernels import embedding_kernel, flow_kernel, median_pairwise_distance
    from cpfs.training.losses import cross_entropy
    from cpfs.training.model import read_at_points, sample_points
    from cpfs.training.train import build_objective

    torch.manual_seed(0)
    images, flow = torch.rand(2, 3, 64, 64), 3 * torch.randn(2, 2, 64, 64)
    points = sample_points(2, 64, 64, 32, generator=torch.Generator().manual_seed(0))
    for t in (1.0, 0.1):
        cfg = tiny_config(loss="ce", temperature=t, sigma_scale=0.7)
        objective = build_objective(build_model(cfg), cfg).eval()
        loss, emb, k_phi, k_f, sigma = objective(images, flow, points)
        f = read_at_points(flow, points)
        torch.testing.assert_close(sigma, 0.7 * median_pairwise_distance(f))
        torch.testing.assert_close(k_f, flow_kernel(f, sigma))
        torch.testing.assert_close(loss, cross_entropy(embedding_kernel(emb), k_f, temperature=t))
    assert tiny_config(loss="kta").bandwidth_scale() == 0.5 and tiny_config().bandwidth_scale() == 1.0


def test_random_init_of_the_training_seed_is_the_network_training_starts_from(store3: StoreConfig, tmp_path: Path) -> None:
    # The evaluation's paired baseline (random init, same seed) must be exactly the weights step 0 started from.
    from cpfs.evaluation.baselines import random_init_model

    cfg = tiny_config(steps=1, seed=5, optimizer={"lr": 1e-12, "weight_decay": 0.0}, checkpoint_every=1)
    result = train(cfg, store3, tmp_path / "run")
    start = random_init_model(result.model.config, seed=5).state_dict()
    trained = result.model.state_dict()
    for k, v in start.items():
        if "running" in k or "num_batches" in k:
            continue  # BatchNorm statistics move in train mode whatever the learning rate
        torch.testing.assert_close(trained[k], v, atol=1e-6, rtol=0, msg=k)
    first = next(iter(start))  # and another seed gives other weights
    assert not torch.equal(random_init_model(result.model.config, seed=6).state_dict()[first], start[first])


def test_progress_sees_a_throughput_on_every_step_not_only_logged_ones(store3: StoreConfig, tmp_path: Path) -> None:
    seen = []
    train(tiny_config(steps=4, log_every=3, checkpoint_every=4), store3, tmp_path / "r",
          progress=lambda step, total, m: seen.append(m.get("images_per_s")))
    assert len(seen) == 4 and all(v is not None and v > 0 for v in seen)  # the cpu-hour preset logs every 5th step
