"""Tests of cpfs.training.data: split, augmentation consistency between image and flow, store reading, sampler.

``make_store`` builds tiny real Zarr stores through the storage API (also used by test_train and
test_distributed): synthetic videos of a textured background moving one way and a differently textured
square moving another way, with the exact flow written as the stored flow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cpfs.config import StoreConfig
from cpfs.training.augment import augment_pair, draw_crop
from cpfs.training.data import (
    FlowPairDataset,
    compose_flows,
    InfiniteSampler,
    complete_videos,
    plan_split,
    split_videos,
    worker_init,
)
from cpfs.errors import StoreError
from cpfs.records import DecodeErrors, FrameRange, VideoMeta, VideoRecord, VideoSource
from cpfs.config import AugmentConfig
from storage.store import VideoStore

H, W, T = 64, 80, 12
BG_V = (1.0, 0.0)  # background motion, px per frame (x, y)
OBJ_V = (-2.0, 1.0)  # square's motion


def _texture(rng: np.random.Generator, h: int, w: int, tint: tuple[float, float, float]) -> np.ndarray:
    """Smooth random RGB texture (h, w, 3) float in [0, 1]: noise blurred by a 3x3 box twice, tinted."""
    x = rng.random((h, w, 3))
    for _ in range(2):
        x = sum(np.roll(np.roll(x, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    x = (x - x.min()) / (x.max() - x.min())
    return np.clip(0.5 * x + 0.5 * np.array(tint), 0, 1)


def synthetic_video(seed: int, n_frames: int = T, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, h, w, 3) uint8 and exact forward flow (T-1, h, w, 2) float32 of a moving square on a
    moving background (integer motions, so frames are exact shifts and the flow is exact)."""
    rng = np.random.default_rng(seed)
    bg = _texture(rng, h, w, (0.2, 0.3, 0.6))
    obj = _texture(rng, 24, 24, (0.8, 0.5, 0.1))
    frames = np.zeros((n_frames, h, w, 3), np.uint8)
    flow = np.zeros((n_frames - 1, h, w, 2), np.float32)
    y0, x0 = 16 + seed % 5, 30 + 3 * (seed % 4)
    for t in range(n_frames):
        img = np.roll(bg, (int(BG_V[1] * t), int(BG_V[0] * t)), axis=(0, 1)).copy()
        oy, ox = y0 + int(OBJ_V[1] * t), x0 + int(OBJ_V[0] * t)
        img[oy : oy + 24, ox : ox + 24] = obj
        frames[t] = np.round(img * 255).astype(np.uint8)
        if t < n_frames - 1:
            flow[t, ..., 0], flow[t, ..., 1] = BG_V
            flow[t, oy : oy + 24, ox : ox + 24] = OBJ_V
    return frames, flow


def add_video(store: VideoStore, video_id: str, frames: np.ndarray, flow: np.ndarray, cut: np.ndarray | None = None,
              finalize: bool = True, source_path: str | None = None, errors: DecodeErrors | None = None) -> None:
    """Write one video through the storage API (one shard block each), optionally leaving it incomplete;
    ``source_path``: what the store records as its source (default ``/synthetic/<id>``); ``errors``: the decode
    errors its frames were stored with."""
    t, h, w, _ = frames.shape
    record = VideoRecord(
        video_id=video_id, source=VideoSource(path=source_path or f"/synthetic/{video_id}", kind="frames"),
        meta=VideoMeta(width=w, height=h, fps=25.0, n_frames=t, duration_s=None, codec="png"),
        width=w, height=h, n_frames=t, size_bytes=0,
    )
    store.begin_video(record, backend="opencv-dis", settings={"synthetic": True})
    store.write_frames(video_id, 0, frames)
    store.mark_done(video_id, "frames", FrameRange(video_id, 0, t), errors)
    clipped = store.write_flow(video_id, 0, flow, np.zeros(t - 1, np.float32))
    store.mark_done(video_id, "flow", FrameRange(video_id, 0, t - 1))
    if finalize:
        store.finalize(video_id, np.zeros(t - 1, bool) if cut is None else cut, clipped)


def make_store(path: Path, n_videos: int = 2, cuts: dict[int, list[int]] | None = None, n_frames: int = T) -> StoreConfig:
    """A store of ``n_videos`` synthetic videos ``vid0, vid1, ...``; ``cuts[i]`` lists cut pairs of video i."""
    cfg = StoreConfig(path=str(path), shard_frames=32)
    store = VideoStore.open(cfg, create=True)
    for i in range(n_videos):
        frames, flow = synthetic_video(i, n_frames)
        cut = np.zeros(n_frames - 1, bool)
        cut[(cuts or {}).get(i, [])] = True
        add_video(store, f"vid{i}", frames, flow, cut)
    store.write_index()
    return cfg


@pytest.fixture(scope="module")
def store2(tmp_path_factory: pytest.TempPathFactory) -> StoreConfig:
    return make_store(tmp_path_factory.mktemp("store") / "s.zarr", n_videos=2, cuts={0: [4]})


NO_AUG = AugmentConfig(enabled=False)


# ----------------------------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_order_free() -> None:
    ids = [f"v{i}" for i in range(10)]
    a = split_videos(ids, 0.3, seed=7)
    assert a == split_videos(list(reversed(ids)), 0.3, seed=7)
    train, held = a
    assert len(held) == 3 and len(train) == 7 and not set(train) & set(held)
    assert sorted(train + held) == sorted(ids)
    # another seed holds out other videos (for 10 ids, C(10,3) = 120 choices)
    assert any(split_videos(ids, 0.3, seed=s)[1] != held for s in range(1, 5))


def test_split_keeps_one_video_each_side() -> None:
    assert split_videos(["a", "b"], 0.01, 0) [0] and split_videos(["a", "b"], 0.01, 0)[1]
    train, held = split_videos(["a", "b", "c"], 0.99, 0)
    assert len(train) == 1 and len(held) == 2
    assert split_videos(["a", "b"], 0.0, 0) == (["a", "b"], [])
    with pytest.raises(ValueError, match="holdout_fraction"):
        split_videos(["a"], 1.0, 0)
    with pytest.raises(ValueError, match="at least one"):
        split_videos([], 0.2, 0)


def test_single_video_is_split_by_frames() -> None:
    split = plan_split({"only": 50}, 0.2, seed=0)
    assert split.train == (FrameRange("only", 0, 40),)
    assert split.heldout == (FrameRange("only", 40, 50),)
    two = plan_split({"a": 10, "b": 12}, 0.5, seed=0, heldout_videos=["b"])
    assert two.heldout == (FrameRange("b", 0, 12),) and two.train == (FrameRange("a", 0, 10),)
    with pytest.raises(ValueError, match="not complete videos"):
        plan_split({"a": 10}, 0.2, 0, heldout_videos=["zz"])


# ----------------------------------------------------------------------------------------------- augmentation


def _ramp_pair(h: int = 40, w: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    flow = rng.normal(0, 3, (h, w, 2)).astype(np.float32)
    return image, flow


def test_flip_mirrors_image_and_negates_flow_x() -> None:
    image, flow = _ramp_pair()
    base = AugmentConfig(scale_min=1.0, scale_max=1.0, hflip=0.0, color_jitter=0.0)
    flipped = base.model_copy(update={"hflip": 1.0})
    p0 = draw_crop(np.random.default_rng(3), 40, 50, 32, base)
    p1 = draw_crop(np.random.default_rng(3), 40, 50, 32, flipped)
    assert (p0.y0, p0.x0, p0.side) == (p1.y0, p1.x0, p1.side) and not p0.flip and p1.flip
    i0, f0 = augment_pair(image, flow, p0, 32)
    i1, f1 = augment_pair(image, flow, p1, 32)
    np.testing.assert_array_equal(i1, i0[:, ::-1])
    np.testing.assert_array_equal(f1[..., 0], -f0[:, ::-1, 0])
    np.testing.assert_array_equal(f1[..., 1], f0[:, ::-1, 1])
    # and the unflipped crop is exactly the source window (scale 1: no resampling)
    np.testing.assert_array_equal(f0, flow[p0.y0 : p0.y0 + 32, p0.x0 : p0.x0 + 32])


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_random_scale_crop_scales_flow_values(scale: float) -> None:
    image, _ = _ramp_pair(64, 64)
    flow = np.empty((64, 64, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -1.5  # uniform motion: resizing keeps it uniform, scaled by the factor
    cfg = AugmentConfig(scale_min=scale, scale_max=scale, hflip=0.0, color_jitter=0.0)
    p = draw_crop(np.random.default_rng(0), 64, 64, 32, cfg)
    assert p.side == round(32 / scale)
    img, flo = augment_pair(image, flow, p, 32)
    assert img.shape == (32, 32, 3) and flo.shape == (32, 32, 2)
    np.testing.assert_allclose(flo[..., 0], 3.0 * scale, rtol=1e-5)
    np.testing.assert_allclose(flo[..., 1], -1.5 * scale, rtol=1e-5)


def test_colour_jitter_changes_image_only() -> None:
    image, flow = _ramp_pair()
    plain = AugmentConfig(scale_min=1.0, scale_max=1.0, hflip=0.0, color_jitter=0.0)
    jit = plain.model_copy(update={"color_jitter": 0.2})
    pj = draw_crop(np.random.default_rng(5), 40, 50, 32, jit)
    assert all(0.8 <= v <= 1.2 for v in (pj.brightness, pj.contrast, pj.saturation))
    i0, f0 = augment_pair(image, flow, draw_crop(np.random.default_rng(5), 40, 50, 32, plain), 32)
    i1, f1 = augment_pair(image, flow, pj, 32)
    np.testing.assert_array_equal(f0, f1)
    assert not np.allclose(i0, i1) and i1.min() >= 0 and i1.max() <= 1


def test_grayscale_gives_the_luma_in_every_channel_and_leaves_the_flow() -> None:
    image, flow = _ramp_pair()
    plain = AugmentConfig(scale_min=1.0, scale_max=1.0, hflip=0.0, color_jitter=0.0)
    gray = plain.model_copy(update={"grayscale": 1.0})
    p0 = draw_crop(np.random.default_rng(5), 40, 50, 32, plain)
    p1 = draw_crop(np.random.default_rng(5), 40, 50, 32, gray)
    assert (p0.y0, p0.x0, p0.side, p0.flip) == (p1.y0, p1.x0, p1.side, p1.flip) and not p0.gray and p1.gray
    i0, f0 = augment_pair(image, flow, p0, 32)
    i1, f1 = augment_pair(image, flow, p1, 32)
    np.testing.assert_array_equal(f0, f1)
    luma = i0 @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    for c in range(3):
        np.testing.assert_allclose(i1[..., c], luma, atol=1e-6)
    # the probability is honoured: about half of many draws at 0.5
    half = plain.model_copy(update={"grayscale": 0.5})
    rng = np.random.default_rng(0)
    share = np.mean([draw_crop(rng, 40, 50, 32, half).gray for _ in range(2000)])
    assert 0.45 < share < 0.55


# ----------------------------------------------------------------------------------------------- dataset


def test_dataset_reads_pairs_like_the_store(store2: StoreConfig) -> None:
    ds = FlowPairDataset(store2, ["vid0", "vid1"], crop=48, augment=NO_AUG)
    store = VideoStore.open(store2, create=False)
    for i in (0, 7, len(ds) - 1):
        vid, t = ds.pair(i)
        image, flow = ds[i]
        assert image.shape == (3, 48, 48) and flow.shape == (2, 48, 48)
        assert image.dtype == torch.float32 and flow.dtype == torch.float32
        y0, x0 = (H - 48) // 2, (W - 48) // 2  # centred crop at scale 1
        ref_flow = store.read_flow(vid, t, t + 1)[0, y0 : y0 + 48, x0 : x0 + 48]  # decoded by storage
        np.testing.assert_array_equal(flow.permute(1, 2, 0).numpy(), ref_flow)
        ref_img = store.read_frames(vid, t, t + 1)[0, y0 : y0 + 48, x0 : x0 + 48] / np.float32(255)
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), ref_img, atol=1e-6)


def test_cut_pairs_are_never_returned(store2: StoreConfig) -> None:
    ds = FlowPairDataset(store2, ["vid0", "vid1"], crop=32, augment=None)
    pairs = [ds.pair(i) for i in range(len(ds))]
    assert ("vid0", 4) not in pairs  # the cut
    assert len(pairs) == 2 * (T - 1) - 1 and len(set(pairs)) == len(pairs)
    # frame ranges: pair t needs frames t and t+1 inside [start, stop)
    part = FlowPairDataset(store2, [FrameRange("vid1", 3, 8)], crop=32)
    assert [part.pair(i) for i in range(len(part))] == [("vid1", t) for t in (3, 4, 5, 6)]


def test_composed_flow_follows_each_pixel_through_the_frames() -> None:
    h, w = 20, 30
    shift = np.zeros((h, w, 2), np.float32)
    shift[..., 0], shift[..., 1] = 2.0, -1.0
    ramp = np.zeros((h, w, 2), np.float32)
    ramp[..., 0] = 0.1 * np.arange(w, dtype=np.float32)  # flow 1 depends on where the pixel is
    one = compose_flows(shift[None])
    np.testing.assert_array_equal(one, shift)
    two = compose_flows(np.stack([shift, ramp]))
    x = np.arange(w, dtype=np.float32)
    inside = x + 2 <= w - 1  # the pixel is still in the frame after the first flow
    np.testing.assert_allclose(two[5, inside, 0], 2.0 + 0.1 * (x[inside] + 2), atol=1e-4)
    np.testing.assert_allclose(two[5, ~inside, 0], 2.0 + 0.1 * (w - 1), atol=1e-4)  # read at the border
    np.testing.assert_allclose(two[1:, :, 1], -1.0, atol=1e-5)
    three = compose_flows(np.stack([shift, shift, shift]))  # constant translations add up
    np.testing.assert_allclose(three[..., 0], 6.0)
    np.testing.assert_allclose(three[..., 1], -3.0)
    with pytest.raises(ValueError, match=r"\(g >= 1, H, W, 2\)"):
        compose_flows(np.zeros((0, h, w, 2)))


def test_longer_range_pairs_compose_the_stored_flows_and_never_cross_a_cut(store2: StoreConfig) -> None:
    ds = FlowPairDataset(store2, ["vid0", "vid1"], crop=48, augment=NO_AUG, pair_gap=3)
    pairs = [ds.pair(i) for i in range(len(ds))]
    # vid0 has a cut at pair 4: a gap-3 pair t spans pairs t..t+2, so t = 2, 3, 4 are out; t + 3 <= T - 1.
    assert [t for v, t in pairs if v == "vid0"] == [0, 1, 5, 6, 7, 8]
    assert [t for v, t in pairs if v == "vid1"] == list(range(T - 3))
    store = VideoStore.open(store2, create=False)
    y0, x0 = (H - 48) // 2, (W - 48) // 2
    for i in (0, len(ds) - 1):
        vid, t = ds.pair(i)
        image, flow = ds[i]
        ref = compose_flows(store.read_flow(vid, t, t + 3))[y0 : y0 + 48, x0 : x0 + 48]
        np.testing.assert_allclose(flow.permute(1, 2, 0).numpy(), ref, atol=1e-5)
        ref_img = store.read_frames(vid, t, t + 1)[0, y0 : y0 + 48, x0 : x0 + 48] / np.float32(255)
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), ref_img, atol=1e-6)
    # The background pans 1 px a frame: over 3 frames its flow is 3 px (exact where it stays background).
    _, t = ds.pair(0)
    full = compose_flows(store.read_flow("vid0", t, t + 3))
    assert np.isclose(full[..., 0], 3 * BG_V[0]).mean() > 0.8
    part = FlowPairDataset(store2, [FrameRange("vid1", 3, 8)], crop=32, pair_gap=2)
    assert [part.pair(i) for i in range(len(part))] == [("vid1", t) for t in (3, 4, 5)]  # frames t, t+2 in [3, 8)
    with pytest.raises(ValueError, match="pair_gap must be >= 1"):
        FlowPairDataset(store2, ["vid0"], crop=32, pair_gap=0)


def test_static_pairs_are_dropped_and_cuts_stay_dropped(tmp_path: Path) -> None:
    # Pairs 2-5 of a video carry no motion differences (the whole frame pans 1 px: nothing moves on its own),
    # pair 8 is a shot cut. With min_moving_fraction the loader never returns any of them.
    cfg = StoreConfig(path=str(tmp_path / "s.zarr"), shard_frames=32)
    store = VideoStore.open(cfg, create=True)
    frames, flow = synthetic_video(0)
    flow[2:6] = BG_V
    cut = np.zeros(T - 1, bool)
    cut[8] = True
    add_video(store, "vid0", frames, flow, cut)
    moving = store.read_motion("vid0")[:, 1]
    assert (moving[2:6] == 0).all() and (moving[[0, 1, 6, 7, 9, 10]] > 0.1).all()  # the square: 11 % of the frame
    everything = FlowPairDataset(cfg, ["vid0"], crop=32)
    kept = FlowPairDataset(cfg, ["vid0"], crop=32, min_moving_fraction=0.1)
    assert [everything.pair(i)[1] for i in range(len(everything))] == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10]
    assert [kept.pair(i)[1] for i in range(len(kept))] == [0, 1, 6, 7, 9, 10]
    # Gap 2: the mean moving fraction of pairs t and t+1 decides (pair 1: (0.11 + 0) / 2 is under 0.1).
    gap2 = FlowPairDataset(cfg, ["vid0"], crop=32, min_moving_fraction=0.1, pair_gap=2)
    assert [gap2.pair(i)[1] for i in range(len(gap2))] == [0, 6, 9]
    with pytest.raises(StoreError, match="min_moving_fraction=0.5"):
        FlowPairDataset(cfg, ["vid0"], crop=32, min_moving_fraction=0.5)
    with pytest.raises(ValueError, match="min_moving_fraction must be in"):
        FlowPairDataset(cfg, ["vid0"], crop=32, min_moving_fraction=1.5)


def test_store_without_motion_statistics_says_how_to_upgrade(tmp_path: Path) -> None:
    # A version-1 store (written before motion statistics existed): the loader names the fix instead of crashing,
    # and cpfs.ingest.steps.add_motion_statistics (``cpfs upgrade``) adds exactly what a new ingest stores.
    import shutil

    from cpfs.ingest.steps import add_motion_statistics

    cfg = make_store(tmp_path / "s.zarr", n_videos=1)
    store = VideoStore.open(cfg, create=False)
    expected = store.read_motion("vid0")
    shutil.rmtree(Path(cfg.path) / "videos" / "vid0" / "motion")
    store.set_format_version(1)
    with pytest.raises(StoreError, match=r"no motion statistics .*format 1.*cpfs upgrade --store"):
        FlowPairDataset(cfg, ["vid0"], crop=32, min_moving_fraction=0.1)
    assert len(FlowPairDataset(cfg, ["vid0"], crop=32)) == T - 1  # without the filter an old store still trains
    assert add_motion_statistics(store) == ["vid0"]
    assert store.format_version == 2
    np.testing.assert_allclose(store.read_motion("vid0"), expected, atol=1e-3)  # from the int16 flow: 1/64 px steps
    assert add_motion_statistics(store) == []  # a rerun does nothing


def test_augmented_items_are_reproducible_and_flow_matches_image_motion(store2: StoreConfig) -> None:
    ds = FlowPairDataset(store2, ["vid1"], crop=40, augment=AugmentConfig(), seed=3)
    a_img, a_flow = ds[(2, 17)]
    b_img, b_flow = ds[(2, 17)]
    assert torch.equal(a_img, b_img) and torch.equal(a_flow, b_flow)
    c_img, _ = ds[(2, 18)]
    assert not torch.equal(a_img, c_img)
    # the motions in the crop are the stored ones scaled by the same factor for x and y (flip negates x)
    vals = {tuple(np.round(v, 3)) for v in a_flow.reshape(2, -1).T.numpy()}
    assert len(vals) >= 2


def test_dataset_is_picklable_without_open_handles(store2: StoreConfig) -> None:
    import pickle

    ds = FlowPairDataset(store2, ["vid0"], crop=32)
    ds[0]  # opens the store in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handles is None
    assert torch.equal(clone[1][1], ds[1][1])


def test_dataloader_with_workers_matches_main_process(store2: StoreConfig) -> None:
    ds = FlowPairDataset(store2, ["vid0", "vid1"], crop=32, augment=AugmentConfig(), seed=1)
    keys = list(zip(range(6), range(100, 106)))
    direct = torch.stack([ds[k][1] for k in keys])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=keys, num_workers=2)
    got = torch.cat([flow for _, flow in loader])
    assert torch.equal(direct, got)


def test_workers_forked_after_opencv_used_threads(store2: StoreConfig) -> None:
    """The ingest stage runs OpenCV in the same process before training forks its DataLoader workers; OpenCV's
    thread pool is not fork-safe (a worker calling cv2.setNumThreads hung in pthread_cond_destroy), so the
    workers must not depend on it. The loader's timeout turns a hang into a failure."""
    import cv2

    cv2.setNumThreads(2)
    big = np.random.default_rng(0).random((512, 512, 3)).astype(np.float32)
    for _ in range(3):
        cv2.GaussianBlur(cv2.resize(big, (700, 700)), (0, 0), 3)
    ds = FlowPairDataset(store2, ["vid0", "vid1"], crop=40, augment=AugmentConfig(scale_min=0.6, scale_max=1.4), seed=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=list(zip(range(8), range(8))), num_workers=1,
                                         timeout=60, worker_init_fn=worker_init)
    images = torch.cat([im for im, _ in loader])
    assert images.shape == (8, 3, 40, 40)
    assert torch.equal(images[5], ds[(5, 5)][0])


def test_store_errors(tmp_path: Path) -> None:
    empty = StoreConfig(path=str(tmp_path / "empty.zarr"))
    VideoStore.open(empty, create=True)
    with pytest.raises(StoreError, match="empty"):
        complete_videos(empty)
    with pytest.raises(StoreError, match="empty"):
        FlowPairDataset(empty, ["x"], crop=32)

    partial = StoreConfig(path=str(tmp_path / "partial.zarr"))
    frames, flow = synthetic_video(0, 6)
    add_video(VideoStore.open(partial, create=True), "half", frames, flow, finalize=False)
    with pytest.raises(StoreError, match="no complete video"):
        complete_videos(partial)

    with pytest.raises(StoreError, match="does not exist"):
        complete_videos(StoreConfig(path=str(tmp_path / "missing.zarr")))

    short = StoreConfig(path=str(tmp_path / "short.zarr"))
    frames, flow = synthetic_video(0, 3)
    add_video(VideoStore.open(short, create=True), "tiny", frames, flow, cut=np.array([False, True]))
    with pytest.raises(StoreError, match="only 1 usable frame pair"):
        FlowPairDataset(short, ["tiny"], crop=32)
    with pytest.raises(StoreError, match="not complete videos"):
        FlowPairDataset(short, ["nope"], crop=32)


# ----------------------------------------------------------------------------------------------- sampler


def _take(it, n: int) -> list:
    return [next(it) for _ in range(n)]


def test_sampler_epochs_resume_and_ranks() -> None:
    s = InfiniteSampler(5, seed=2)
    draws = _take(iter(s), 15)
    assert [d for _, d in draws] == list(range(15))
    for e in range(3):  # every item once per epoch
        assert sorted(i for i, _ in draws[5 * e : 5 * e + 5]) == list(range(5))
    assert [i for i, _ in draws[:5]] != [i for i, _ in draws[5:10]] or [i for i, _ in draws[5:10]] != [i for i, _ in draws[10:15]]
    # resuming at draw 7 continues the same stream
    assert _take(iter(InfiniteSampler(5, seed=2, start=7)), 8) == draws[7:15]
    # two ranks split the stream: rank r takes draws r, r+2, ...
    r0 = _take(iter(InfiniteSampler(5, seed=2, rank=0, world_size=2)), 7)
    r1 = _take(iter(InfiniteSampler(5, seed=2, rank=1, world_size=2)), 7)
    assert sorted(r0 + r1, key=lambda x: x[1]) == draws[:14]
    with pytest.raises(ValueError, match="rank"):
        InfiniteSampler(5, 0, rank=2, world_size=2)
