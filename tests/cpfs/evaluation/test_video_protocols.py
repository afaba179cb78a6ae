"""Flow-kernel alignment and the motion-segmentation probe on a tiny synthetic store written with the storage
API: a red square sliding right over a static textured grey background, with its exact flow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cpfs.config import StoreConfig
from cpfs.errors import StoreError
from cpfs.evaluation.baselines import colour_features, flow_oracle_features, position_features, random_init_model
from cpfs.evaluation.features import model_embedding_features
from cpfs.evaluation.flow_alignment import flow_alignment, gaussian_feature_kernel
from cpfs.evaluation.motion_segmentation import motion_labels, motion_segmentation_probe
from cpfs.evaluation.pairs import load_pair, select_pairs
from cpfs.records import FrameRange, VideoMeta, VideoRecord, VideoSource
from storage import VideoStore

T, H, W, SIDE, SPEED = 7, 64, 80, 24, 3


def sliding_square(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    background = np.clip(rng.normal(128, 20, (H, W, 1)).repeat(3, axis=2), 0, 255)
    y0, x0 = int(rng.integers(4, H - SIDE - 4)), int(rng.integers(2, 12))
    frames = np.empty((T, H, W, 3), np.uint8)
    flow = np.zeros((T - 1, H, W, 2), np.float32)
    for t in range(T):
        img = background.copy()
        x = x0 + SPEED * t
        img[y0 : y0 + SIDE, x : x + SIDE] = (210, 40, 40)
        frames[t] = img.astype(np.uint8)
        if t < T - 1:
            flow[t, y0 : y0 + SIDE, x : x + SIDE, 0] = SPEED  # the square's pixels of frame t move right
    return frames, flow


def ingest(store: VideoStore, video_id: str, seed: int, cut_at: int | None = None) -> None:
    frames, flow = sliding_square(seed)
    meta = VideoMeta(width=W, height=H, fps=25.0, n_frames=T, duration_s=T / 25, codec="png")
    record = VideoRecord(video_id, VideoSource(f"/synthetic/{video_id}", "frames"), meta, W, H, T, 1)
    store.begin_video(record, backend="synthetic", settings={"seed": seed})
    store.write_frames(video_id, 0, frames)
    store.mark_done(video_id, "frames", FrameRange(video_id, 0, T))
    clipped = store.write_flow(video_id, 0, flow, np.zeros(T - 1, np.float32))
    store.mark_done(video_id, "flow", FrameRange(video_id, 0, T - 1))
    cut = np.zeros(T - 1, bool)
    if cut_at is not None:
        cut[cut_at] = True
    store.finalize(video_id, cut, clipped)


@pytest.fixture
def store(tmp_path: Path) -> VideoStore:
    s = VideoStore.open(StoreConfig(path=str(tmp_path / "store.zarr"), shard_frames=8), create=True)
    ingest(s, "train0", seed=0)
    ingest(s, "test0", seed=1, cut_at=2)
    return s


def test_pairs_skip_cuts_and_read_frame_and_flow(store: VideoStore) -> None:
    assert select_pairs(store, "test0", 10) == [0, 1, 3, 4, 5]
    assert select_pairs(store, "train0", 3) == [0, 2, 5]  # evenly spaced: round(linspace(0, 5, 3))
    pair = load_pair(store, "test0", 1)
    frames, flow = sliding_square(1)
    assert pair.image.shape == (1, 3, H, W) and pair.flow.shape == (1, 2, H, W)
    assert torch.allclose(pair.image[0].permute(1, 2, 0), torch.from_numpy(frames[1]).float() / 255)
    assert torch.allclose(pair.flow[0].permute(1, 2, 0), torch.from_numpy(flow[1]))


def test_motion_labels_against_dominant_motion() -> None:
    flow = np.zeros((4, 5, 2))
    flow[..., 0] = 2.0  # camera pan: everything moves right by 2 px...
    flow[1:3, 1:3] = (2.0, -3.0)  # ...except an object moving up as well
    flow[0, 4] = (2.5, 0.0)  # 0.5 px off the dominant motion: below the 1 px threshold
    labels = motion_labels(flow, threshold=1.0)
    expected = np.zeros((4, 5), np.int64)
    expected[1:3, 1:3] = 1
    assert np.array_equal(labels, expected)
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        motion_labels(np.zeros((4, 5)))


def test_flow_alignment_orders_oracle_colour_position(store: VideoStore) -> None:
    scores = {
        fn.name: flow_alignment(fn, store, ["test0"], pairs_per_video=3, points=256)["summary"]
        for fn in (flow_oracle_features(), colour_features("rgb"), position_features())
    }
    oracle, colour, position = scores["flow-oracle"], scores["colour-rgb"], scores["position"]
    assert oracle["alignment_centered"]["mean"] > 0.99 and abs(oracle["ce_excess"]["mean"]) < 1e-3
    # The square's colour marks exactly its motion; position says nothing about which pixels move together.
    # Measured: centered alignment oracle 1.0, colour 0.63 (the textured background's colour noise), position 0.10.
    assert colour["alignment_centered"]["mean"] > 0.5 and position["alignment_centered"]["mean"] < 0.3
    assert position["ce_excess"]["mean"] > colour["ce_excess"]["mean"] >= -1e-6
    for s in scores.values():
        assert -1 <= s["alignment"]["mean"] <= 1 and s["ce"]["mean"] > 0


def test_flow_alignment_runs_on_a_network_and_is_seeded(store: VideoStore) -> None:
    fn = model_embedding_features(random_init_model(width=0.25, seed=0), stride=8)
    a = flow_alignment(fn, store, ["train0", "test0"], pairs_per_video=2, points=128, seed=5)
    b = flow_alignment(fn, store, ["train0", "test0"], pairs_per_video=2, points=128, seed=5)
    assert a["summary"] == b["summary"] and a["n_pairs"] == 4 and set(a["per_video"]) == {"train0", "test0"}
    assert -1 <= a["summary"]["alignment_centered"]["mean"] <= 1


def test_gaussian_feature_kernel_of_identical_vectors_is_one() -> None:
    x = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]]])
    k = gaussian_feature_kernel(x)
    assert torch.allclose(torch.diagonal(k[0]), torch.ones(3)) and k[0, 0, 1] == 1.0 and k[0, 0, 2] < 1.0


def test_motion_probe_oracle_and_colour_find_the_square_position_does_not(store: VideoStore) -> None:
    kw = dict(pairs_per_video=3, pixels_per_image=200)
    oracle = motion_segmentation_probe(flow_oracle_features(stride=2), store, ["train0"], ["test0"], **kw)
    colour = motion_segmentation_probe(colour_features("rgb", stride=2), store, ["train0"], ["test0"], **kw)
    position = motion_segmentation_probe(position_features(stride=2), store, ["train0"], ["test0"], **kw)
    assert oracle["moving_fraction"] == pytest.approx(SIDE * SIDE / (H * W))
    assert oracle["summary"]["IoU_moving"]["mean"] > 0.9
    assert colour["summary"]["IoU_moving"]["mean"] > 0.8
    assert position["summary"]["IoU_moving"]["mean"] < 0.5
    assert oracle["n_train_pairs"] == 3 and oracle["n_test_pairs"] == 3


def test_motion_probe_splits_a_shared_video_in_time_and_checks_input(store: VideoStore) -> None:
    res = motion_segmentation_probe(colour_features("rgb", stride=2), store, ["test0"], ["test0"], pairs_per_video=4, pixels_per_image=100)
    assert res["n_train_pairs"] == 2 and res["n_test_pairs"] == 2
    with pytest.raises(ValueError, match="at least one training and one test video"):
        motion_segmentation_probe(colour_features(), store, [], ["test0"])
    with pytest.raises(StoreError, match="nope"):
        motion_segmentation_probe(colour_features(), store, ["nope"], ["test0"])


def test_fitted_motion_classifier_predicts_the_square_for_a_figure(store: VideoStore) -> None:
    from cpfs.evaluation.motion_segmentation import fit_motion_classifier, predict_motion_mask

    fn = colour_features("rgb", stride=2)
    clf = fit_motion_classifier(fn, store, ["train0"], pairs_per_video=3, pixels_per_image=200)
    pair = load_pair(store, "test0", 0)
    pred = predict_motion_mask(fn, clf, pair.image)
    truth = motion_labels(pair.flow[0].permute(1, 2, 0).numpy())
    assert pred.shape == (H, W) and (pred == truth).mean() > 0.95
