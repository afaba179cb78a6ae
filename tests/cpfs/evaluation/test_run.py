"""The evaluation stage end to end on a tiny synthetic store and a checkpoint trained for two steps by the real
training code: every protocol for CPFS and random init with mean/std over seeds, the report files, the
held-out split respected, the random baseline's BatchNorm recalibration, and checkpoint errors naming the path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cpfs.config import StoreConfig
from cpfs.config import EvalConfig
from cpfs.training.checkpoint import CheckpointError, file_sha256, load_model, save_checkpoint
from cpfs.evaluation.baselines import random_init_model, recalibrate_batchnorm
from cpfs.evaluation.context import prepare
from cpfs.evaluation.heldout import PairSubset
from cpfs.evaluation.paired import combine_seeds
from cpfs.evaluation.run import evaluate, protocol_figures, run_protocol, summarize
from cpfs.training.model import AlexNetConfig, CPFSModelConfig
from cpfs.records import FrameRange, VideoMeta, VideoRecord, VideoSource
from cpfs.training.run_folder import EvalFolder
from cpfs.training.train import train
from cpfs.config import TrainConfig
from storage import VideoStore

T, H, W, SIDE = 8, 64, 80, 26  # the square covers 13 % of the frame: above the default min_moving_fraction 0.1


def moving_square_video(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A coloured square moving at a constant, seeded velocity over a static textured background, exact flow."""
    rng = np.random.default_rng(seed)
    background = np.clip(rng.normal(120, 25, (H, W, 3)), 0, 255)
    dx, dy = int(rng.integers(2, 4)), int(rng.integers(-1, 2))
    y0, x0 = int(rng.integers(12, H - SIDE - 12)), int(rng.integers(2, 10))
    colour = rng.integers(150, 256, 3)
    frames = np.empty((T, H, W, 3), np.uint8)
    flow = np.zeros((T - 1, H, W, 2), np.float32)
    for t in range(T):
        img = background.copy()
        y, x = y0 + dy * t, x0 + dx * t
        img[y : y + SIDE, x : x + SIDE] = colour
        frames[t] = img.astype(np.uint8)
        if t < T - 1:
            flow[t, y : y + SIDE, x : x + SIDE] = (dx, dy)
    return frames, flow


def write_video(store: VideoStore, video_id: str, seed: int) -> None:
    frames, flow = moving_square_video(seed)
    meta = VideoMeta(width=W, height=H, fps=25.0, n_frames=T, duration_s=T / 25, codec="png")
    # The source's folder name differs from the id: the report shows the name.
    store.begin_video(VideoRecord(video_id, VideoSource(f"/synthetic/{video_id}-frames", "frames"), meta, W, H, T, 1),
                      backend="synthetic", settings={"seed": seed})
    store.write_frames(video_id, 0, frames)
    store.mark_done(video_id, "frames", FrameRange(video_id, 0, T))
    clipped = store.write_flow(video_id, 0, flow, np.zeros(T - 1, np.float32))
    store.mark_done(video_id, "flow", FrameRange(video_id, 0, T - 1))
    store.finalize(video_id, np.zeros(T - 1, bool), clipped)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[StoreConfig, Path]:
    """A 3-video store and a checkpoint of 2 real training steps (holdout 1/3: one video held out)."""
    root = tmp_path_factory.mktemp("eval")
    store_cfg = StoreConfig(path=str(root / "store.zarr"), shard_frames=8)
    store = VideoStore.open(store_cfg, create=True)
    for i in range(3):
        write_video(store, f"video{i}", seed=i)
    store.write_index()
    cfg = TrainConfig.from_preset("demo", steps=2, batch_size=4, crop=64, points_per_image=32, width=0.125,
                                  num_workers=0, holdout_fraction=0.34, threads=1, checkpoint_every=1,
                                  schedule={"warmup_steps": 1})
    before = torch.get_num_threads()
    result = train(cfg, store_cfg, root / "run")
    torch.set_num_threads(before)
    assert result.checkpoint is not None and result.checkpoint.is_file()
    return store_cfg, result.checkpoint


def tiny_config(store_cfg: StoreConfig, checkpoint: Path, out: Path, **over) -> EvalConfig:
    values = dict(checkpoint=str(checkpoint), out=str(out), store=store_cfg, seeds=2, pairs_per_video=4, points=48,
                  pixels_per_image=64, digits_per_class=5, probe_max_iter=15, bn_batches=1, bn_batch_size=4,
                  qualitative_frames=1, threads=1)
    values.update(over)
    return EvalConfig.model_validate(values)


def test_evaluate_writes_every_protocol_for_cpfs_and_random(trained, tmp_path: Path) -> None:
    store_cfg, ckpt = trained
    calls = []
    result = evaluate(tiny_config(store_cfg, ckpt, tmp_path / "out"), progress=lambda what, d, n: calls.append((what, d, n)))
    doc = json.loads(result.results_json.read_text())
    meta = doc["meta"]
    assert meta["checkpoint_sha256"] == file_sha256(ckpt)
    assert meta["store"]["index_version"] == VideoStore.open(store_cfg, create=False).read_index().version
    assert meta["store"]["matches_checkpoint"] is True
    assert meta["config"]["seeds"] == 2 and meta["seconds"] > 0
    assert meta["smoke_scale"] is True and any("SMOKE SCALE" in n for n in meta["notes"])
    assert [h["video_id"] for h in meta["heldout"]] == [r.video_id for r in prepare(tiny_config(store_cfg, ckpt, tmp_path)).heldout_ranges]

    protocols = doc["protocols"]
    assert set(protocols) == {"flow_alignment", "motion_segmentation", "linear_probe"}
    expected_sources = {
        "flow_alignment": {"cpfs", "random-init", "position", "colour-lab", "flow-oracle"},
        "motion_segmentation": {"cpfs", "random-init", "position", "colour-lab"},
        "linear_probe": {"cpfs", "random-init", "chance"},
    }
    for proto, sources in expected_sources.items():
        assert set(protocols[proto]) == sources, proto
        for name in ("cpfs", "random-init"):
            res = protocols[proto][name]
            assert res["n_seeds"] == 2
            for v in res["summary"].values():
                assert np.isfinite(v["mean"]) and np.isfinite(v["std"]) and v["std"] >= 0, (proto, name)
        # Random-init network s runs with seed s; its row is the mean and std of the per-seed scores.
        rnd = protocols[proto]["random-init"]
        assert len(rnd["per_seed"]) == 2
        for metric, v in rnd["summary"].items():
            seed_means = [r["summary"][metric]["mean"] for r in rnd["per_seed"]]
            assert v["mean"] == pytest.approx(np.mean(seed_means)) and v["std"] == pytest.approx(np.std(seed_means))
    assert protocols["flow_alignment"]["cpfs"]["checkpoint_sha256"] == meta["checkpoint_sha256"]
    # The oracle's kernel is the flow kernel itself: perfect centered alignment, at least as good as any network.
    fa = protocols["flow_alignment"]
    assert fa["flow-oracle"]["summary"]["alignment_centered"]["mean"] > 0.99
    assert fa["flow-oracle"]["summary"]["ce_excess"]["mean"] <= fa["cpfs"]["summary"]["ce_excess"]["mean"] + 1e-6
    # Two random networks differ, so the random row has a spread; the linear probe reports the 5 conv layers.
    assert protocols["flow_alignment"]["random-init"]["summary"]["alignment"]["std"] > 0
    assert set(protocols["linear_probe"]["cpfs"]["summary"]) == {"conv1", "conv2", "conv3", "conv4", "conv5"}
    assert protocols["linear_probe"]["chance"]["summary"]["conv1"]["mean"] == pytest.approx(0.1)

    # The headline: trained - random init of the training seed (0), paired over the same pairs and pixel seeds.
    paired = fa["cpfs"]["paired"]
    assert paired["against"] == "random-init seed 0" and paired["n_seeds"] == 2
    # Network seed 0 under pixel seed 0 is exactly the random-init row's first seed.
    seed0 = fa["random-init"]["per_seed"][0]["summary"]["alignment_centered"]["mean"]
    assert paired["random_same_seed_per_seed"][0] == pytest.approx(seed0, abs=1e-6)
    assert paired["mean"] == pytest.approx(paired["trained_mean"] - paired["random_same_seed_mean"])
    assert paired["ci_low"] <= paired["mean"] <= paired["ci_high"]
    assert set(paired["per_video"]) == set(meta["heldout"][i]["video_id"] for i in range(len(meta["heldout"])))
    assert "held-out centered flow alignment" in paired["verdict"]
    motion = protocols["motion_segmentation"]["cpfs"]["paired"]  # and the motion probe's, per test pair
    assert motion["metric"] == "IoU_moving" and motion["n_seeds"] == 2
    assert 0.0 <= motion["trained_mean"] <= 1.0 and motion["ci_low"] <= motion["mean"] <= motion["ci_high"]
    # ... and against pixel position alone, on the same pairs and pixels
    position = fa["cpfs"]["paired_position"]
    pos_mean = fa["position"]["summary"]["alignment_centered"]["mean"]
    assert position["against"] == "pixel position alone" and "pixel position alone" in position["verdict"]
    assert position["random_same_seed_mean"] == pytest.approx(pos_mean, abs=1e-6)
    assert meta["verdicts"] == [paired["verdict"], position["verdict"], motion["verdict"]]
    assert meta["outlook"] and meta["outlook"][0].split()[0] in {"Training", "This"}

    md = result.report_md.read_text()
    assert "smoke scale" in md and "random-init" in md and "Flow-kernel alignment" in md
    # The report says the result in words before any table.
    assert md.index("## The result in words") < md.index("## Results")
    assert paired["verdict"][1:] in md
    html = result.report_html.read_text()
    # One file per figure, each embedded: trained and random init of the same held-out frame in one strip.
    figures = {"headline", "loss_curve", "linear_probe", "heldout_0"}
    assert {p.stem for p in (result.out_dir / "figures").iterdir()} == figures
    for fig in figures:
        assert f'id="fig-{fig}"' in html, fig
    # Held-out videos by the name of what was ingested (the folder /synthetic/<id>-frames), the id in small print.
    assert [h["name"] for h in meta["heldout"]] == [f"{h['video_id']}-frames" for h in meta["heldout"]]
    vid = meta["heldout"][0]["video_id"]
    assert f'title="content id {vid}">{vid}-frames</span>' in html and f"{vid}-frames <sub>" in md
    assert calls and all(d <= n for _, d, n in calls)

    summary = summarize(result)
    assert summary.checkpoint_sha256 == meta["checkpoint_sha256"]
    assert set(summary.headline["flow_alignment/alignment_centered"]) >= {"cpfs", "random-init", "flow-oracle"}


def count_checkpoint_loads(monkeypatch) -> list:
    """Record every ``torch.load`` (each is one read of a whole checkpoint) while the test runs."""
    calls: list = []
    real = torch.load

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("f"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return calls


def test_one_evaluation_reads_each_checkpoint_once(trained, tmp_path: Path, monkeypatch) -> None:
    """The context is built once per evaluation and each checkpoint is loaded and hashed from one read (two
    checkpoints here: the main one and a ``compare`` copy)."""
    store_cfg, ckpt = trained
    other = tmp_path / "other-run" / "checkpoints" / "step-00000002.pt"
    other.parent.mkdir(parents=True)
    other.write_bytes(ckpt.read_bytes())
    loads = count_checkpoint_loads(monkeypatch)
    hashes = []
    monkeypatch.setattr("hashlib.sha256", lambda *a, _real=__import__("hashlib").sha256: hashes.append(a) or _real(*a))
    result = evaluate(tiny_config(store_cfg, ckpt, tmp_path / "out", seeds=1, compare=[str(tmp_path / "other-run")]))
    assert len(loads) == 2, loads
    assert len(hashes) == 2  # the SHA-256 of each checkpoint comes from the bytes already read
    assert [c["sha256"] for c in result.results["meta"]["checkpoints"]] == [file_sha256(ckpt)] * 2


def test_shared_features_are_computed_once_per_image(trained, tmp_path: Path, monkeypatch) -> None:
    """Random init of the training seed: its features for its own row and for the paired comparison are one
    computation per image (flow alignment embeddings, motion-probe hypercolumns)."""
    from cpfs.training.model import CPFSModel

    store_cfg, ckpt = trained
    ctx = prepare(tiny_config(store_cfg, ckpt, tmp_path, seeds=2))
    same = ctx.random_model(ctx.train_seed)
    calls = {"embedding": 0, "trunk": 0}
    real_dense, real_trunk = CPFSModel.dense_embedding, type(same.trunk).features

    def dense(self, *a, **k):
        calls["embedding"] += self is same
        return real_dense(self, *a, **k)

    def trunk(self, *a, **k):
        calls["trunk"] += self is same.trunk
        return real_trunk(self, *a, **k)

    monkeypatch.setattr(CPFSModel, "dense_embedding", dense)
    monkeypatch.setattr(type(same.trunk), "features", trunk)
    flow = run_protocol("flow_alignment", ctx)
    n_pairs = flow["random-init"]["per_seed"][0]["n_pairs"]
    assert calls["embedding"] == n_pairs  # one per held-out pair, not one more per pixel seed or for the pairing
    after_flow = calls["trunk"]
    motion = run_protocol("motion_segmentation", ctx)
    n_motion = motion["cpfs"]["n_train_pairs"] + motion["cpfs"]["n_test_pairs"]
    assert calls["trunk"] - after_flow == n_motion  # its row (seed 0) and the paired run (every seed) share them
    # Pixel seed 0 of the paired baseline is the random-init row's seed 0 exactly.
    assert flow["cpfs"]["paired"]["random_same_seed_per_seed"][0] == pytest.approx(
        flow["random-init"]["per_seed"][0]["summary"]["alignment_centered"]["mean"], abs=1e-12)


def test_heldout_protocols_never_read_training_pairs(trained, tmp_path: Path) -> None:
    store_cfg, ckpt = trained
    ctx = prepare(tiny_config(store_cfg, ckpt, tmp_path))
    train_ids = {r.video_id for r in ctx.train_ranges}
    held_ids = set(ctx.heldout.video_ids)
    assert held_ids and train_ids and not held_ids & train_ids and train_ids | held_ids == {"video0", "video1", "video2"}
    with pytest.raises(Exception, match="not part of this evaluation's held-out set"):
        ctx.heldout.read_cut(sorted(train_ids)[0])


def test_pair_subset_hides_pairs_outside_a_frame_range(trained) -> None:
    store_cfg, _ = trained
    store = VideoStore.open(store_cfg, create=False)
    view = PairSubset.from_ranges(store, [FrameRange("video1", 5, 8)])  # frames 5, 6, 7: pairs 5 and 6
    assert np.flatnonzero(~view.read_cut("video1")).tolist() == [5, 6]
    assert np.array_equal(view.read_frames("video1", 5, 6), store.read_frames("video1", 5, 6))



def test_pair_subset_reads_each_single_pair_from_the_store_once_and_hands_out_copies(trained, monkeypatch) -> None:
    store_cfg, _ = trained
    store = VideoStore.open(store_cfg, create=False)
    reads: list[tuple] = []
    for name in ("read_frames", "read_flow"):
        real = getattr(store, name)
        monkeypatch.setattr(store, name, lambda vid, a, b, real=real, name=name: reads.append((name, vid, a, b)) or real(vid, a, b))
    frame_bytes = H * W * 3
    view = PairSubset(store, {"video1": None}, cache_bytes=2 * frame_bytes + H * W * 2 * 4)  # 2 frames + 1 flow
    first = view.read_frames("video1", 3, 4)
    first[:] = 0  # a caller writing into what it got changes nothing kept
    again = view.read_frames("video1", 3, 4)
    assert np.array_equal(again, store.read_frames("video1", 3, 4)) and again.any()
    assert np.array_equal(view.read_flow("video1", 3, 4), store.read_flow("video1", 3, 4))
    assert reads.count(("read_frames", "video1", 3, 4)) == 2 and reads.count(("read_flow", "video1", 3, 4)) == 2
    view.read_frames("video1", 4, 5)  # still fits: frames 3 and 4, flow 3
    view.read_frames("video1", 5, 6)  # over the budget: the least recently used (frames 3) goes
    n = len(reads)
    view.read_frames("video1", 4, 5)
    assert len(reads) == n  # kept
    view.read_frames("video1", 3, 4)
    assert reads[-1] == ("read_frames", "video1", 3, 4)  # read again
    view.read_frames("video1", 2, 5)  # ranges are read from the store, never kept
    assert reads[-1] == ("read_frames", "video1", 2, 5)
    assert view._cached_bytes <= view.cache_bytes

def test_batchnorm_recalibration_matches_the_batch_statistics() -> None:
    model = random_init_model(CPFSModelConfig(trunk=AlexNetConfig(width=0.125)), seed=3)
    conv_weight = model.trunk.conv1.conv.weight.clone()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(3, 3, 64, 64, generator=gen) for _ in range(2)]
    recalibrate_batchnorm(model, batches, points_per_image=16)
    # Naive reference: conv1's pre-BN outputs over all images; momentum None averages the per-batch means.
    with torch.no_grad():
        pre = [model.trunk.conv1.conv(model.trunk._standardise(b)) for b in batches]
    mean = torch.stack([p.mean(dim=(0, 2, 3)) for p in pre]).mean(0)
    var = torch.stack([p.var(dim=(0, 2, 3), unbiased=True) for p in pre]).mean(0)
    bn = model.trunk.conv1.bn
    assert torch.allclose(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    assert torch.allclose(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training
    assert torch.equal(model.trunk.conv1.conv.weight, conv_weight)  # weights untouched
    assert not torch.allclose(model.head.bn.running_var, torch.ones_like(model.head.bn.running_var))
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(model, [])


def test_combine_seeds_is_mean_and_std_of_seed_means() -> None:
    rows = [{"summary": {"a": {"mean": m, "std": 9.0}}} for m in (0.2, 0.4, 0.9)]
    out = combine_seeds(rows, {"kind": "x"})
    assert out["summary"]["a"] == {"mean": pytest.approx(0.5), "std": pytest.approx(np.std([0.2, 0.4, 0.9]))}
    assert out["kind"] == "x" and out["n_seeds"] == 3


def test_protocols_run_alone_and_davis_runs_when_configured(trained, tmp_path: Path, davis_root: Path) -> None:
    store_cfg, ckpt = trained
    cfg = tiny_config(store_cfg, ckpt, tmp_path, davis=str(davis_root), davis_max_frames=2, davis_size=64, seeds=1,
                      davis_sequences=[sorted(p.name for p in (davis_root / "JPEGImages" / "480p").iterdir())[0]])
    assert cfg.protocols()[-1] == "davis"
    out = run_protocol("davis", prepare(cfg))
    assert cfg.davis_layers == ["embedding", "conv1"] and cfg.davis_baseline_layers == ["conv1", "conv2"]
    assert set(out) == {"cpfs", "random-init", "random-init (conv1+conv2)", "position", "colour-lab"}
    for res in out.values():
        assert 0.0 <= res["summary"]["J"]["mean"] <= 1.0 and 0.0 <= res["summary"]["F"]["mean"] <= 1.0
        assert all("figures" not in row for row in res.get("per_seed", []))  # arrays never reach results.json
    # The second headline: J&F paired against random init of the training seed, per frame, with its CI.
    paired = out["cpfs"]["paired"]
    trained_jf = out["cpfs"]["per_seed"][0]["JF_mean"]
    assert paired["trained_mean"] == pytest.approx(trained_jf) and paired["against"] == "random-init seed 0"
    assert paired["random_same_seed_mean"] == pytest.approx(out["random-init"]["per_seed"][0]["JF_mean"])
    assert paired["ci_low"] <= paired["mean"] <= paired["ci_high"] and "DAVIS J&F" in paired["verdict"]
    (figure,) = out["cpfs"]["figure_files"].values()  # propagated masks against ground truth, one sequence
    assert Path(figure).is_file() and Path(figure).stat().st_size > 1000
    assert Path(figure).parent == EvalFolder(cfg.out_path()).figures and Path(figure).stem == f"davis_{cfg.davis_sequences[0]}"
    (shown,) = protocol_figures({"davis": out})  # the report embeds that file as it is: written once
    assert shown.path == Path(figure) and shown.section == "davis"
    assert {"J_recall", "J_decay", "F_recall", "F_decay"} <= set(out["cpfs"]["summary"])
    # The stricter baseline: random init of the training seed read at its own best layers, paired the same way.
    strict = out["cpfs"]["paired_random_layers"]
    assert strict["against"] == "random-init seed 0 (conv1+conv2)" and "random init (seed 0) at its own best layers (conv1+conv2) on DAVIS J&F" in strict["verdict"]
    assert strict["trained_mean"] == pytest.approx(trained_jf)
    assert strict["random_same_seed_mean"] == pytest.approx(out["random-init (conv1+conv2)"]["per_seed"][0]["JF_mean"])
    assert strict["random_same_seed_mean"] != pytest.approx(paired["random_same_seed_mean"])  # other features, other score
    assert out["random-init (conv1+conv2)"]["layers"] == ["conv1", "conv2"]
    assert strict["random_layers"] == ["conv1", "conv2"]  # what the report's outlook names
    # Off, or the same layers as the trained network's: no second row.
    for layers in (None, ["embedding", "conv1"]):
        off = run_protocol("davis", prepare(cfg.model_copy(update={"davis_baseline_layers": layers})))
        assert "random-init (conv1+conv2)" not in off and "paired_random_layers" not in off["cpfs"]


def test_foreground_probe_fits_on_davis_train_and_pairs_against_random_init(trained, tmp_path: Path, square_davis) -> None:
    from cpfs.config import PROTOCOL_NAMES
    from cpfs.evaluation.tables import paired_markdown_table, results_markdown_table
    from cpfs.evaluation.run import PROTOCOLS

    store_cfg, ckpt = trained
    fit_root, test_root, _ = square_davis
    cfg = tiny_config(store_cfg, ckpt, tmp_path, davis=str(test_root), davis_train=str(fit_root), foreground_size=64,
                      foreground_frame_step=1)
    assert cfg.protocols()[-1] == "foreground" and set(PROTOCOLS) == set(PROTOCOL_NAMES)
    out = run_protocol("foreground", prepare(cfg))
    assert set(out) == {"cpfs", "random-init", "position", "colour-lab"}
    layers = [f"mIoU_{l}" for l in cfg.layers]
    for name, res in out.items():
        assert 0.0 <= res["summary"][PROTOCOLS["foreground"].HEADLINE]["mean"] <= 1.0
        assert set(layers) <= set(res["summary"]) if name in ("cpfs", "random-init") else not set(layers) & set(res["summary"])
    # Red square on blue: colour finds it up to the stride-4 grid's blur at its edges (measured 0.88); position,
    # with the square anywhere, cannot.
    assert out["colour-lab"]["summary"]["mIoU"]["mean"] > 0.8 > out["position"]["summary"]["mIoU"]["mean"]
    assert out["cpfs"]["n_fit_frames"] == 8 and out["cpfs"]["n_test_frames"] == 5 and out["cpfs"]["n_seeds"] == 2
    # Paired against random init of the training seed: the CI keys, per test sequence, and the sentence.
    paired = out["cpfs"]["paired"]
    assert paired["against"] == "random-init seed 0" and paired["n_pairs"] == 5 and paired["n_seeds"] == 2
    assert paired["trained_mean"] == pytest.approx(out["cpfs"]["summary"]["mIoU"]["mean"])
    assert paired["ci_low"] <= paired["mean"] <= paired["ci_high"] and set(paired["per_video"]) == {"c", "d"}
    assert paired["mean"] == pytest.approx(paired["trained_mean"] - paired["random_same_seed_mean"])
    assert "foreground/background probe" in paired["verdict"]
    table = results_markdown_table({"protocols": {"foreground": out}})
    assert "DAVIS foreground/background probe" in table and "mIoU_conv1" in table
    assert "| DAVIS foreground probe | cpfs − random-init seed 0 | c |" in paired_markdown_table({"foreground": out})
    with pytest.raises(ValueError, match="davis_train"):
        EvalConfig(checkpoint=str(ckpt), davis_train=str(fit_root))


def test_missing_checkpoint_is_named(trained, tmp_path: Path) -> None:
    store_cfg, _ = trained
    missing = tmp_path / "no such run" / "step-1.pt"
    with pytest.raises(CheckpointError, match=str(missing).replace("(", r"\(")):
        evaluate(tiny_config(store_cfg, missing, tmp_path / "out"))
    empty_run = tmp_path / "empty-run"
    empty_run.mkdir()
    with pytest.raises(CheckpointError, match=f"{empty_run}: training run folder holds no checkpoint"):
        load_model(empty_run)


def test_checkpoint_of_another_architecture_is_named(trained, tmp_path: Path) -> None:
    store_cfg, ckpt = trained
    payload = torch.load(ckpt, weights_only=True)
    # Weights of a width-0.125 network under an architecture record that says width 0.25.
    payload["architecture"] = {**payload["architecture"], "width": 0.25}
    wrong = save_checkpoint(tmp_path / "wrong-width.pt", payload)
    with pytest.raises(CheckpointError, match=f"{wrong}.*shape mismatches"):
        evaluate(tiny_config(store_cfg, wrong, tmp_path / "out"))
    # A plain state dict of some other network is not a CPFS training checkpoint at all.
    other = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    with pytest.raises(CheckpointError, match=f"{other}: not a CPFS training checkpoint"):
        load_model(other)
    assert not (tmp_path / "out").exists()  # nothing written before the inputs were validated


def test_config_rejects_bad_values(trained) -> None:
    store_cfg, ckpt = trained
    with pytest.raises(ValueError, match="layers"):
        EvalConfig(checkpoint=str(ckpt), layers=["conv9"])
    with pytest.raises(ValueError, match="imagefolder_val"):
        EvalConfig(checkpoint=str(ckpt), imagefolder_val="/x")
    with pytest.raises(ValueError, match="extra"):
        EvalConfig.model_validate({"checkpoint": str(ckpt), "seedz": 3})
    with pytest.raises(FileNotFoundError, match="/no/voc: voc folder is missing"):
        prepare(EvalConfig(checkpoint=str(ckpt), store=store_cfg, voc="/no/voc"))
