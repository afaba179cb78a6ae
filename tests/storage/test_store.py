"""The video store: layout read back from Zarr metadata, round trips, alignment, markers, completion, index,
dask, fsspec URLs, resume, and the StoreError cases. Tiny videos (T=10, 16x24, shards of 4 frames)."""

from __future__ import annotations

import json
import pickle
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

import cpfs
from cpfs.config import StoreConfig
from cpfs.errors import StoreError
from cpfs.records import DecodeErrors, FrameRange, VideoMeta, VideoRecord, VideoSource
from storage import VideoStore, decode_flow
from storage.layout import FLOW_COMPRESSOR

T, H, W, S = 10, 16, 24, 4
SETTINGS = {"decode": {"short_side": 16, "step": 1}, "flow": {"preset": "medium"}, "cuts": {"warp_ratio": 4.0}}


def make_record(video_id: str = "vid0", n_frames: int = T, path: str = "/videos/a.mp4") -> VideoRecord:
    meta = VideoMeta(width=48, height=32, fps=25.0, n_frames=n_frames, duration_s=n_frames / 25, codec="h264")
    return VideoRecord(video_id=video_id, source=VideoSource(path=path, kind="file"), meta=meta,
                       width=W, height=H, n_frames=n_frames, size_bytes=1234)


def make_data(seed: int, n_frames: int = T) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n_frames, H, W, 3), dtype=np.uint8)
    flow = rng.normal(0, 5, size=(n_frames - 1, H, W, 2)).astype(np.float32)
    err = rng.random(n_frames - 1).astype(np.float32)
    cut = np.zeros(n_frames - 1, bool)
    cut[seed % (n_frames - 1)] = True
    return frames, flow, err, cut


def blocks(length: int) -> list[tuple[int, int]]:
    return [(a, min(a + S, length)) for a in range(0, length, S)]


def ingest(store: VideoStore, record: VideoRecord, seed: int = 0, finalize: bool = True) -> tuple:
    """The writer life cycle: shard blocks of frames and flow, markers, finalize."""
    frames, flow, err, cut = data = make_data(seed, record.n_frames)
    vid = record.video_id
    assert store.begin_video(record, backend="opencv-dis", settings=SETTINGS) == "created"
    clipped = 0
    for a, b in blocks(record.n_frames):
        store.write_frames(vid, a, frames[a:b])
        store.mark_done(vid, "frames", FrameRange(vid, a, b))
    for a, b in blocks(record.n_frames - 1):
        clipped += store.write_flow(vid, a, flow[a:b], err[a:b])
        store.mark_done(vid, "flow", FrameRange(vid, a, b))
    if finalize:
        store.finalize(vid, cut, clipped, {"seconds": 1.5})
    return data


@pytest.fixture
def cfg(tmp_path: Path) -> StoreConfig:
    return StoreConfig(path=str(tmp_path / "store.zarr"), shard_frames=S, flow_scale=64.0, flow_bound=100.0)


@pytest.fixture
def store(cfg: StoreConfig) -> VideoStore:
    return VideoStore.open(cfg, create=True)


# ---------------------------------------------------------------- layout


def test_layout_read_back_from_zarr_metadata(store: VideoStore, cfg: StoreConfig) -> None:
    assert store.begin_video(make_record(), backend="opencv-dis", settings=SETTINGS) == "created"
    root = zarr.open_group(cfg.path, mode="r")
    assert root.attrs["cpfs_store"] == {"format_version": 2}
    g = root["videos/vid0"]
    expect = {
        "frames": ((T, H, W, 3), np.uint8, (1, H, W, 3), (S, H, W, 3)),
        "flow": ((T - 1, H, W, 2), np.int16, (1, H, W, 2), (S, H, W, 2)),
        "pair_error": ((T - 1,), np.float32, (S,), None),
        "cut": ((T - 1,), np.bool_, (S,), None),
        "motion": ((T - 1, 5), np.float32, (S, 5), None),
    }
    for name, (shape, dtype, chunks, shards) in expect.items():
        arr = g[name]
        assert (arr.shape, arr.dtype, arr.chunks, arr.shards) == (shape, np.dtype(dtype), chunks, shards), name
    flow_meta = g["flow"].metadata.to_dict()
    inner = flow_meta["codecs"][0]["configuration"]["codecs"]
    assert flow_meta["codecs"][0]["name"] == "sharding_indexed"
    assert inner[1]["configuration"]["cname"] == FLOW_COMPRESSOR.cname.value
    assert inner[1]["configuration"]["shuffle"] == FLOW_COMPRESSOR.shuffle.value
    assert dict(g["flow"].attrs) == {"scale": 64.0, "bound": 100.0, "units": "px", "clipped_pixels": None}
    a = dict(g.attrs)
    assert a["status"] == "incomplete"
    assert a["video_id"] == "vid0" and a["source_path"] == "/videos/a.mp4" and a["size_bytes"] == 1234
    assert a["backend"] == "opencv-dis" and a["settings"] == {**SETTINGS, "flow_backend": "opencv-dis"}
    assert a["layout"] == {"format_version": 2, "shard_frames": S, "flow_scale": 64.0, "flow_bound": 100.0}
    assert a["cpfs_version"] == cpfs.__version__ and a["created_at"]
    assert a["source_meta"]["codec"] == "h264"


def test_hierarchy_is_valid_zarr_with_markers(store: VideoStore, cfg: StoreConfig) -> None:
    ingest(store, make_record(), finalize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr warns about keys that are not part of the hierarchy
        names = {k for k, _ in zarr.open_group(cfg.path, mode="r").members(max_depth=None)}
    expected = {"videos/vid0/frames", "videos/vid0/flow", "videos/vid0/done/frames-0-4", "videos/vid0/done/flow-8-9"}
    assert expected <= names


# ---------------------------------------------------------------- writing and reading


def test_write_read_round_trip_one_shard_object_per_block(store: VideoStore, cfg: StoreConfig) -> None:
    frames, flow, err, cut = ingest(store, make_record(), seed=3)
    assert np.array_equal(store.read_frames("vid0", 0, T), frames)
    assert np.array_equal(store.read_frames("vid0", 5, 7), frames[5:7])
    back = store.read_flow("vid0", 0, T - 1)
    assert back.dtype == np.float32 and back.shape == flow.shape
    assert np.abs(back - flow).max() <= 0.5 / cfg.flow_scale + 1e-6
    assert np.array_equal(store.read_pair_error("vid0"), err)
    assert np.array_equal(store.read_cut("vid0"), cut)
    # the raw array holds fixed point
    raw = store.flow("vid0")[:]
    assert raw.dtype == np.int16 and np.array_equal(decode_flow(raw, 64.0), back)
    # sharding: one stored object per shard block, not one per frame
    chunk_dir = Path(cfg.path) / "videos/vid0/frames/c"
    shard_files = sorted(str(p.relative_to(chunk_dir)) for p in chunk_dir.rglob("*") if p.is_file())
    assert shard_files == ["0/0/0/0", "1/0/0/0", "2/0/0/0"]


def test_write_flow_counts_clipped_pixels(store: VideoStore, cfg: StoreConfig) -> None:
    store.begin_video(make_record(), backend="opencv-dis", settings=SETTINGS)
    flow = np.zeros((S, H, W, 2), np.float32)
    flow[0, 0, 0] = (150.0, 0.0)
    flow[1, 2, 3] = (-101.0, 500.0)
    flow[2, 4, 5] = (np.nan, 0.0)
    assert store.write_flow("vid0", 0, flow, np.zeros(S, np.float32)) == 3
    back = store.read_flow("vid0", 0, S)
    assert np.array_equal(back[0, 0, 0], [100.0, 0.0]) and np.array_equal(back[1, 2, 3], [-100.0, 100.0])


@pytest.mark.parametrize(
    "start,n,match",
    [(2, 4, "not a multiple of the shard size"), (0, 3, "does not end"), (8, 4, "outside"), (4, 0, "empty")],
)
def test_unaligned_frame_writes_raise(store: VideoStore, start: int, n: int, match: str) -> None:
    store.begin_video(make_record(), backend="opencv-dis", settings=SETTINGS)
    with pytest.raises(ValueError, match=match):
        store.write_frames("vid0", start, np.zeros((n, H, W, 3), np.uint8))


def test_flow_alignment_ends_at_last_pair(store: VideoStore) -> None:
    store.begin_video(make_record(), backend="opencv-dis", settings=SETTINGS)
    store.write_flow("vid0", 8, np.zeros((1, H, W, 2), np.float32), np.zeros(1, np.float32))  # pairs [8, 9)
    with pytest.raises(ValueError, match="outside"):
        store.write_flow("vid0", 8, np.zeros((2, H, W, 2), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="not a multiple"):
        store.write_flow("vid0", 1, np.zeros((3, H, W, 2), np.float32), np.zeros(3, np.float32))


def test_bad_shapes_and_dtypes_raise(store: VideoStore) -> None:
    store.begin_video(make_record(), backend="opencv-dis", settings=SETTINGS)
    with pytest.raises(ValueError, match="uint8"):
        store.write_frames("vid0", 0, np.zeros((S, H, W, 3), np.float32))
    with pytest.raises(ValueError, match="expected uint8"):
        store.write_frames("vid0", 0, np.zeros((S, H + 1, W, 3), np.uint8))
    with pytest.raises(ValueError, match="pair_error"):
        store.write_flow("vid0", 0, np.zeros((S, H, W, 2), np.float32), np.zeros(S + 1, np.float32))
    with pytest.raises(ValueError, match="flow of video"):
        store.write_flow("vid0", 0, np.zeros((S, H, W, 3), np.float32), np.zeros(S, np.float32))
    with pytest.raises(ValueError, match="out|outside"):
        store.read_frames("vid0", 5, 11)
    with pytest.raises(ValueError, match="at least 2 frames"):
        store.begin_video(make_record("one", n_frames=1), backend="opencv-dis", settings=SETTINGS)
    with pytest.raises(ValueError, match="not a valid store name"):
        store.begin_video(make_record("../evil"), backend="opencv-dis", settings=SETTINGS)
    with pytest.raises(ValueError, match="JSON"):
        store.begin_video(make_record("v2"), backend="opencv-dis", settings={"x": object()})


# ---------------------------------------------------------------- markers, completion


def test_begin_video_with_caller_attrs_as_the_ingest_writes_them(store: VideoStore) -> None:
    rec = make_record()
    attrs = {
        "source": {"path": rec.source.path, "content_hash": rec.video_id},
        "settings": {"decode": {"short_side": 16}, "flow_backend": "opencv-farneback", "flow_params": {"levels": 4}},
        "cpfs_version": "9.9.9",
    }
    assert store.begin_video(rec, attrs) == "created"
    a = store.video_attrs("vid0")
    assert a["backend"] == "opencv-farneback" and a["source"] == attrs["source"] and a["cpfs_version"] == "9.9.9"
    assert store.begin_video(rec, attrs) == "resumed"
    assert store.begin_video(rec, {**attrs, "cpfs_version": "9.9.10"}) == "created"  # any difference restarts
    with pytest.raises(ValueError, match="flow_backend"):
        store.begin_video(rec, {"settings": {"decode": {}}})
    with pytest.raises(ValueError, match=r"store-owned keys \['status'\]"):
        store.begin_video(rec, {**attrs, "status": "complete"})
    with pytest.raises(ValueError, match="not both"):
        store.begin_video(rec, attrs, backend="opencv-dis", settings={})


def test_flow_markers_may_end_at_the_last_frame_or_the_last_pair(store: VideoStore) -> None:
    frames, flow, err, cut = make_data(0)
    store.begin_video(make_record(), backend="opencv-dis", settings=SETTINGS)
    store.write_frames("vid0", 0, frames)
    store.write_flow("vid0", 0, flow, err)
    store.mark_done("vid0", "frames", FrameRange("vid0", 0, 8))
    store.mark_done("vid0", "frames", FrameRange("vid0", 8, T))
    store.mark_done("vid0", "flow", FrameRange("vid0", 0, 8))
    store.mark_done("vid0", "flow", FrameRange("vid0", 8, T))  # frame range: covers pairs [8, 9)
    store.mark_done("vid0", "flow", FrameRange("vid0", 8, T - 1))  # pair range: the same pairs
    with pytest.raises(ValueError, match="does not end"):
        store.mark_done("vid0", "frames", FrameRange("vid0", 8, T - 1))
    with pytest.raises(ValueError, match="outside"):
        store.mark_done("vid0", "flow", FrameRange("vid0", 8, T + 1))
    store.finalize("vid0", cut)
    assert store.is_complete("vid0")


def test_clipped_counts_are_kept_per_shard_and_rewrites_replace_them(store: VideoStore) -> None:
    frames, flow, err, cut = make_data(0)
    store.begin_video(make_record(), backend="opencv-dis", settings=SETTINGS)
    big = flow.copy()
    big[0, 0, 0, 0] = 1e4  # shard 0
    big[5, 1, 1, 1] = -1e4  # shard 1
    big[5, 2, 2] = (1e4, 1e4)  # shard 1, one pixel
    big[8, 3, 3, 0] = np.nan  # last, partial shard
    assert store.write_flow("vid0", 0, big, err) == 4
    assert store.count_clipped("vid0") == 4
    assert store.write_flow("vid0", 4, flow[4:8], err[4:8]) == 0  # shard 1 rewritten without outliers
    assert store.count_clipped("vid0") == 2
    store.write_frames("vid0", 0, frames)
    store.mark_done("vid0", "frames", FrameRange("vid0", 0, T))
    store.mark_done("vid0", "flow", FrameRange("vid0", 0, T))
    store.finalize("vid0", cut, extra_attrs={"n_cuts": 1})  # a store-owned key with the store's value is fine
    a = store.video_attrs("vid0")
    assert a["clipped_pixels"] == 2 and store.flow("vid0").attrs["clipped_pixels"] == 2


def test_finalize_rejects_extra_attrs_that_contradict_the_store(store: VideoStore) -> None:
    ingest(store, make_record(), finalize=False)
    with pytest.raises(ValueError, match="n_cuts=5"):
        store.finalize("vid0", make_data(0)[3], extra_attrs={"n_cuts": 5})
    assert not store.is_complete("vid0")


def test_decode_errors_kept_with_frames_markers_become_the_video_attribute(store: VideoStore) -> None:
    """Each range's decode errors go with its "frames" marker (an overlap counts a flagged frame once); finalize
    records their union as the documented ``decode_errors`` attribute; a clean video records none."""
    ingest(store, make_record(), finalize=False)
    assert store.decode_errors("vid0") == DecodeErrors()
    store.mark_done("vid0", "frames", FrameRange("vid0", 0, 4), DecodeErrors.of([5], [(3, 5)]))  # its look-ahead
    store.mark_done("vid0", "frames", FrameRange("vid0", 4, 8), DecodeErrors.of([5], [(3, 7)]))
    with pytest.raises(ValueError, match="'frames' marker"):
        store.mark_done("vid0", "flow", FrameRange("vid0", 0, 4), DecodeErrors.of([5], [(3, 5)]))
    expected = DecodeErrors(corrupt=(5,), damaged=((3, 7),))
    assert store.decode_errors("vid0") == expected  # of an incomplete video: the markers so far
    store.finalize("vid0", make_data(0)[3])
    assert store.video_attrs("vid0")["decode_errors"] == {"count": 1, "corrupt_source_frames": [5],
                                                           "damaged_frames": [[3, 7]]}
    assert store.decode_errors("vid0") == expected
    assert store.damaged_frames("vid0").tolist() == [False] * 3 + [True] * 4 + [False] * 3
    ingest(store, make_record("vid1"))
    assert store.video_attrs("vid1")["decode_errors"] == {"count": 0, "corrupt_source_frames": [],
                                                           "damaged_frames": []}
    assert not store.damaged_frames("vid1").any()


def test_done_markers_are_separate_keys_and_survive_reopen(store: VideoStore, cfg: StoreConfig) -> None:
    store.begin_video(make_record(), backend="opencv-dis", settings=SETTINGS)
    store.mark_done("vid0", "frames", FrameRange("vid0", 4, 8))
    store.mark_done("vid0", "frames", FrameRange("vid0", 0, 4))
    store.mark_done("vid0", "flow", FrameRange("vid0", 8, 9))
    reopened = VideoStore.open(cfg, create=False)
    assert reopened.done_ranges("vid0", "frames") == [(0, 4), (4, 8)]
    assert reopened.done_ranges("vid0", "flow") == [(8, 9)]
    markers = sorted(p.name for p in (Path(cfg.path) / "videos/vid0/done").iterdir() if p.is_dir())
    assert markers == ["flow-8-9", "frames-0-4", "frames-4-8"]
    # the group document holds no marker state
    assert "done" not in json.dumps(reopened.video_attrs("vid0"))
    with pytest.raises(ValueError, match="shard size"):
        store.mark_done("vid0", "frames", FrameRange("vid0", 1, 4))
    with pytest.raises(ValueError, match="range of video"):
        store.mark_done("vid0", "frames", FrameRange("other", 0, 4))
    with pytest.raises(ValueError, match="marker kind"):
        store.mark_done("vid0", "cut", FrameRange("vid0", 0, 4))  # type: ignore[arg-type]


def test_finalize_sets_completion_last_and_only_when_everything_is_marked(store: VideoStore) -> None:
    rec = make_record()
    frames, flow, err, cut = ingest(store, rec, finalize=False)
    assert not store.is_complete("vid0") and store.complete_ids() == []
    # a second video whose flow was never marked done cannot be finalized
    store.begin_video(make_record("vid1"), backend="opencv-dis", settings=SETTINGS)
    store.mark_done("vid1", "frames", FrameRange("vid1", 0, T))
    store.mark_done("vid1", "flow", FrameRange("vid1", 4, 8))
    with pytest.raises(StoreError, match=r"vid1.*flow of pairs \[\(0, 4\), \(8, 9\)\] not marked done"):
        store.finalize("vid1", cut, 0)
    assert not store.is_complete("vid1")
    with pytest.raises(ValueError, match="cut"):
        store.finalize("vid0", cut.astype(np.uint8), 0)
    with pytest.raises(ValueError, match="store-owned"):
        store.finalize("vid0", cut, 0, {"status": "done"})
    with pytest.raises(StoreError, match="incomplete"):
        store.read_cut("vid0")
    assert not store.is_complete("vid0")
    store.finalize("vid0", cut, 7, {"seconds": 2.0})
    assert store.is_complete("vid0") and store.complete_ids() == ["vid0"]
    a = store.video_attrs("vid0")
    assert a["status"] == "complete" and a["completed_at"] >= a["created_at"]
    assert a["n_cuts"] == 1 and a["clipped_pixels"] == 7 and a["seconds"] == 2.0
    assert store.flow("vid0").attrs["clipped_pixels"] == 7
    assert np.array_equal(store.read_cut("vid0"), cut)
    # a complete video is never written again, and begin_video leaves it alone
    with pytest.raises(StoreError, match="is complete"):
        store.write_frames("vid0", 0, frames[:S])
    with pytest.raises(StoreError, match="is complete"):
        store.finalize("vid0", cut, 0)
    assert store.begin_video(rec, backend="other", settings={}) == "complete"
    assert store.video_attrs("vid0") == a


def test_resume_keeps_work_with_same_settings_and_restarts_otherwise(store: VideoStore) -> None:
    rec = make_record()
    frames, *_ = ingest(store, rec, finalize=False)
    assert store.begin_video(rec, backend="opencv-dis", settings=SETTINGS) == "resumed"
    assert store.done_ranges("vid0", "frames") == [(0, 4), (4, 8), (8, 10)]
    assert np.array_equal(store.read_frames("vid0", 0, T), frames)
    other = {**SETTINGS, "flow": {"preset": "fast"}}
    assert store.begin_video(rec, backend="opencv-dis", settings=other) == "created"
    assert store.done_ranges("vid0", "frames") == []
    assert not store.read_frames("vid0", 0, T).any()
    assert store.video_attrs("vid0")["settings"] == {**other, "flow_backend": "opencv-dis"}


def test_failed_ingest_leaves_video_incomplete_and_complete_ones_untouched(store: VideoStore, cfg: StoreConfig) -> None:
    ingest(store, make_record("done1"), seed=1)
    before = {p: p.read_bytes() for p in Path(cfg.path, "videos/done1").rglob("*") if p.is_file()}
    rec = make_record("broken")
    frames, *_ = make_data(2)
    store.begin_video(rec, backend="opencv-dis", settings=SETTINGS)
    store.write_frames("broken", 0, frames[:S])
    store.mark_done("broken", "frames", FrameRange("broken", 0, S))
    with pytest.raises(ValueError):  # the "decoder" hands over a bad block mid-video
        store.write_frames("broken", S, frames[S : S + 3])
    reopened = VideoStore.open(cfg, create=False)
    assert not reopened.is_complete("broken")
    assert reopened.complete_ids() == ["done1"] and reopened.index().video_ids == ("done1",)
    after = {p: p.read_bytes() for p in Path(cfg.path, "videos/done1").rglob("*") if p.is_file()}
    assert after == before
    reopened.delete_video("broken")
    assert reopened.video_ids() == ["done1"]
    with pytest.raises(StoreError, match="force=True"):
        reopened.delete_video("done1")


def test_concurrent_writers_of_different_ranges(store: VideoStore, cfg: StoreConfig) -> None:
    """Separate store handles (as separate workers hold) write different shard ranges of one video at once."""
    rec = make_record(n_frames=17)
    frames, flow, err, cut = make_data(8, n_frames=17)
    store.begin_video(rec, backend="opencv-dis", settings=SETTINGS)

    def work(block: tuple[int, int]) -> int:
        a, b = block
        handle = VideoStore.open(cfg, create=False)
        handle.write_frames("vid0", a, frames[a:b])
        handle.mark_done("vid0", "frames", FrameRange("vid0", a, b))
        clipped = handle.write_flow("vid0", a, flow[a:min(b, 16)], err[a:min(b, 16)]) if a < 16 else 0
        if a < 16:
            handle.mark_done("vid0", "flow", FrameRange("vid0", a, min(b, 16)))
        return clipped

    with ThreadPoolExecutor(max_workers=3) as pool:
        clipped = sum(pool.map(work, [(0, 8), (8, 16), (16, 17)]))
    store.finalize("vid0", cut, clipped)
    assert store.done_ranges("vid0", "frames") == [(0, 8), (8, 16), (16, 17)]
    assert np.array_equal(store.read_frames("vid0", 0, 17), frames)
    assert np.abs(store.read_flow("vid0", 0, 16) - flow).max() <= 0.5 / cfg.flow_scale + 1e-6
    assert np.array_equal(store.read_pair_error("vid0"), err)


def test_a_failing_write_raises_store_error_and_leaves_video_incomplete(store: VideoStore, cfg: StoreConfig) -> None:
    frames, *_ = make_data(0)
    store.begin_video(make_record(), backend="opencv-dis", settings=SETTINGS)
    store.write_frames("vid0", 0, frames[:S])
    # a plain file where shard 1's folder must go: the write fails like on a full or broken disk
    (Path(cfg.path) / "videos/vid0/frames/c/1").write_text("in the way")
    with pytest.raises(StoreError, match=r"cannot write frames \[4, 8\) of video 'vid0'.*stays incomplete"):
        store.write_frames("vid0", S, frames[S : 2 * S])
    assert not store.is_complete("vid0") and store.video_attrs("vid0")["status"] == "incomplete"
    assert np.array_equal(store.read_frames("vid0", 0, S), frames[:S])


# ---------------------------------------------------------------- index


def test_index_lists_complete_videos_and_its_version_tracks_content(store: VideoStore, cfg: StoreConfig) -> None:
    empty = store.index()
    assert empty.entries == () and empty.version == store.index().version
    ingest(store, make_record("a", path="/v/a.mp4"), seed=1)
    ingest(store, make_record("b", path="/v/b.mp4"), seed=2, finalize=False)
    idx = store.index()
    assert idx.video_ids == ("a",)  # the incomplete one is not listed
    e = idx.entries[0]
    assert (e.source_path, e.n_frames, e.height, e.width, e.backend, e.n_cuts) == ("/v/a.mp4", T, H, W, "opencv-dis", 1)
    assert idx.version != empty.version
    assert store.index() == idx  # stable
    assert store.read_index() == idx  # nothing written yet: falls back to a scan
    written = store.write_index()
    assert written == idx and VideoStore.open(cfg, create=False).read_index() == idx
    assert zarr.open_group(cfg.path, mode="r").attrs["index"]["version"] == idx.version
    store.finalize("b", make_data(2)[3], 0)
    assert store.index().version != idx.version and store.index().video_ids == ("a", "b")
    assert store.read_index() == idx  # the stored index changes only through write_index
    assert store.write_index().video_ids == ("a", "b")
    assert store.read_index().version == store.index().version


def test_index_version_changes_when_a_video_is_redone_with_other_settings(store: VideoStore) -> None:
    ingest(store, make_record("a"), seed=1)
    before = store.index()
    store.delete_video("a", force=True)
    assert store.index().entries == ()
    rec = make_record("a")
    frames, flow, err, cut = make_data(1)
    store.begin_video(rec, backend="opencv-dis", settings={**SETTINGS, "flow": {"preset": "fast"}})
    store.write_frames("a", 0, frames)
    store.mark_done("a", "frames", FrameRange("a", 0, T))
    store.write_flow("a", 0, flow, err)
    store.mark_done("a", "flow", FrameRange("a", 0, T - 1))
    store.finalize("a", cut, 0)
    after = store.index()
    assert after.video_ids == ("a",) and after.entries[0].settings_hash != before.entries[0].settings_hash
    assert after.version != before.version


# ---------------------------------------------------------------- dask, fsspec, pickling


def test_dask_reading_equals_direct_reading_with_shard_chunks(store: VideoStore) -> None:
    ingest(store, make_record(), seed=4)
    for name in ("frames", "flow"):
        d = store.open_dask("vid0", name)
        assert d.chunks[0] == (4, 4, 2 if name == "frames" else 1)
        assert d.chunks[1:] == tuple((n,) for n in d.shape[1:])
        direct = store.frames("vid0")[:] if name == "frames" else store.flow("vid0")[:]
        assert np.array_equal(d.compute(), direct)
    assert np.array_equal(store.open_dask("vid0", "cut").compute(), store.read_cut("vid0"))


def test_memory_fsspec_store_round_trip() -> None:
    cfg = StoreConfig(path=f"memory://cpfs-test-{uuid.uuid4().hex}/store.zarr", shard_frames=S)
    store = VideoStore.open(cfg)
    frames, flow, _, cut = ingest(store, make_record(), seed=5)
    again = VideoStore.open(cfg, create=False)
    assert again.complete_ids() == ["vid0"]
    assert np.array_equal(again.read_frames("vid0", 0, T), frames)
    assert np.abs(again.read_flow("vid0", 0, T - 1) - flow).max() <= 0.5 / cfg.flow_scale + 1e-6
    assert np.array_equal(again.read_cut("vid0"), cut)
    assert again.write_index().video_ids == ("vid0",)


def test_file_url_reads_a_local_store(store: VideoStore, cfg: StoreConfig) -> None:
    frames, *_ = ingest(store, make_record(), seed=6)
    via_url = VideoStore.open(cfg.model_copy(update={"path": "file://" + cfg.path}), create=False)
    assert np.array_equal(via_url.read_frames("vid0", 0, T), frames)


def test_store_pickles_for_workers(store: VideoStore) -> None:
    frames, *_ = ingest(store, make_record(), seed=7)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.path == store.path and np.array_equal(clone.read_frames("vid0", 0, 4), frames[:4])


# ---------------------------------------------------------------- StoreError cases


def test_store_errors_name_the_store_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.zarr")
    with pytest.raises(StoreError, match=f"{missing}: store does not exist"):
        VideoStore.open(StoreConfig(path=missing), create=False)

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(StoreError, match="it is a file"):
        VideoStore.open(StoreConfig(path=str(a_file)))

    with pytest.raises(StoreError, match=f"{a_file}/store.zarr: cannot create or write"):
        VideoStore.open(StoreConfig(path=str(a_file / "store.zarr")))  # a location that cannot hold a folder

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("not zarr")
    with pytest.raises(StoreError, match="not a cpfs store .*not empty"):
        VideoStore.open(StoreConfig(path=str(busy)))

    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w")
    with pytest.raises(StoreError, match=f"{plain}: not a cpfs store"):
        VideoStore.open(StoreConfig(path=str(plain)), create=False)

    future = tmp_path / "future.zarr"
    zarr.open_group(str(future), mode="w", attributes={"cpfs_store": {"format_version": 99}})
    with pytest.raises(StoreError, match="format_version 99"):
        VideoStore.open(StoreConfig(path=str(future)))

    with pytest.raises(StoreError, match="nosuchproto://x: cannot open"):
        VideoStore.open(StoreConfig(path="nosuchproto://x"))

    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(StoreError, match="no zarr.json"):
        VideoStore.open(StoreConfig(path=str(empty_dir)), create=False)
    VideoStore.open(StoreConfig(path=str(empty_dir)))  # an empty folder may become a store


def test_unknown_video_id_raises_store_error(store: VideoStore, cfg: StoreConfig) -> None:
    assert not store.is_complete("nope")
    for call in (
        lambda: store.frames("nope"),
        lambda: store.read_flow("nope", 0, 1),
        lambda: store.video_attrs("nope"),
        lambda: store.done_ranges("nope", "frames"),
        lambda: store.delete_video("nope"),
        lambda: store.write_frames("nope", 0, np.zeros((S, H, W, 3), np.uint8)),
        lambda: store.open_dask("nope", "flow"),
        lambda: store.read_cut("nope"),
    ):
        with pytest.raises(StoreError, match=f"{cfg.path}: unknown video 'nope'"):
            call()
