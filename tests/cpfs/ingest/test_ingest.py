"""The ingest library end to end on real video: decode -> flow -> Zarr, ranges, resume, bad inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cpfs.config import IngestConfig
from cpfs.errors import StoreError
from cpfs.flow import make_backend
from cpfs.ingest.steps import ingest_video, plan_ranges, prepare_video
from cpfs.records import VideoSource
from cpfs.ingest.video import DecodeReport, decode
from storage import VideoStore
from tests.helpers import cut_clip, h264_with_damage, truncated_copy


def _cfg(store: Path, **kw) -> IngestConfig:
    base = {"store": {"path": str(store), "shard_frames": 4}, "decode": {"short_side": 64},
            "flow": {"backend": "opencv-dis", "dis": {"preset": "ultrafast"}}, "shards_per_task": 2}
    base.update(kw)
    return IngestConfig.model_validate(base)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, sample_videos) -> Path:
    bikes = next(p for p in sample_videos if p.name == "bikes.mp4")
    return cut_clip(bikes, tmp_path_factory.mktemp("clips") / "bikes 19 frames ü.mp4", 19)


def test_plan_ranges_cover_video_in_shard_multiples():
    r = plan_ranges("v", 19, 4, 2)
    assert [(x.start, x.stop) for x in r] == [(0, 8), (8, 16), (16, 19)]


def test_ingest_stores_frames_and_flow_equal_to_direct_computation(tmp_path, clip):
    cfg = _cfg(tmp_path / "s.zarr")
    res = ingest_video(VideoSource(str(clip), "file"), cfg)
    assert res.status == "stored", res.error
    store = VideoStore.open(cfg.store, create=False)
    vid = res.video_id
    assert store.is_complete(vid)
    frames = np.stack(list(decode(VideoSource(str(clip), "file"), cfg.decode)))
    assert frames.shape[0] == 19
    np.testing.assert_array_equal(store.read_frames(vid, 0, 19), frames)
    # The flow written range by range equals the flow of the whole decoded sequence (pairs that straddle
    # range boundaries included), up to fixed-point rounding.
    direct = make_backend(cfg.flow).compute(frames)
    stored = store.read_flow(vid, 0, 18)
    assert stored.shape == direct.shape == (18, 64, frames.shape[2], 2)
    assert np.abs(stored - direct).max() <= 0.5 / cfg.store.flow_scale + 1e-6
    attrs = store.video_attrs(vid)
    assert attrs["settings"]["flow_backend"] == "opencv-dis"
    assert attrs["settings"]["flow_params"]["preset"] == "ultrafast"
    assert attrs["source"]["path"] == str(clip)


def test_later_ranges_seek_and_store_what_one_pass_computes(tmp_path, sample_videos):
    """Ranges after the first seek (a 4 s clip, 8-frame ranges: the later ones start past the 1 s margin)
    and run as pipelines; the store equals one pass over the whole decoded video, and the warp errors and
    motion statistics equal those of the stored flow's source computed directly."""
    from cpfs.flow.metrics import photometric_error
    from cpfs.motion import motion_statistics

    bikes = next(p for p in sample_videos if p.name == "bikes.mp4")
    long_clip = cut_clip(bikes, tmp_path / "bikes100.mp4", 100)
    cfg = _cfg(tmp_path / "s.zarr", shards_per_task=2)
    src = VideoSource(str(long_clip), "file")
    plan = prepare_video(src, cfg)
    assert len(plan.ranges) == 13 and sum(p.seek_s is not None for p in plan.seeks) >= 8
    res = ingest_video(src, cfg)
    assert res.status == "stored", res.error
    store = VideoStore.open(cfg.store, create=False)
    frames = np.stack(list(decode(src, cfg.decode)))
    np.testing.assert_array_equal(store.read_frames(res.video_id, 0, 100), frames)
    direct = make_backend(cfg.flow).compute(frames)
    assert np.abs(store.read_flow(res.video_id, 0, 99) - direct).max() <= 0.5 / cfg.store.flow_scale + 1e-6
    err = np.array([photometric_error(frames[i], frames[i + 1], direct[i]) for i in range(99)], np.float32)
    np.testing.assert_array_equal(store.read_pair_error(res.video_id), err)
    np.testing.assert_array_equal(store.read_motion(res.video_id), motion_statistics(direct))


def test_reingest_is_a_noop(tmp_path, clip):
    cfg = _cfg(tmp_path / "s.zarr")
    first = ingest_video(VideoSource(str(clip), "file"), cfg)
    store = VideoStore.open(cfg.store, create=False)
    stamp = store.video_attrs(first.video_id)["completed_at"]
    again = ingest_video(VideoSource(str(clip), "file"), cfg)
    assert again.status == "skipped" and again.video_id == first.video_id
    assert store.video_attrs(first.video_id)["completed_at"] == stamp
    assert prepare_video(VideoSource(str(clip), "file"), cfg).status == "skipped"


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "missing"])
def test_bad_video_fails_with_reason_and_stores_nothing(tmp_path, clip, kind):
    p = tmp_path / f"bad {kind}.mp4"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not a video\n" * 50)
    elif kind == "truncated":
        truncated_copy(clip, p, 0.5)
    cfg = _cfg(tmp_path / "s.zarr")
    res = ingest_video(VideoSource(str(p), "file"), cfg)
    assert res.status == "failed"
    assert str(p) in res.error
    store = VideoStore.open(cfg.store, create=True)
    assert store.complete_ids() == []


@pytest.fixture(scope="module")
def damaged_video(tmp_path_factory) -> Path:
    """A real H.264 mp4 with 300 random bytes (seed 1) past the middle of its media data (``clean.mp4`` beside
    it is the intact original): ffmpeg conceals the damage and flags one frame."""
    d = tmp_path_factory.mktemp("damaged")
    return h264_with_damage(d / "clean.mp4", d / "damaged.mp4", seed=1)[1]


def test_a_damaged_stream_is_stored_with_its_decode_errors_and_training_skips_them(tmp_path, damaged_video):
    """Issue 21: stored, never as clean. The errors of every range (later ranges seek) are recorded with the
    video, the result says which frames, a second ingest says it again, and training skips the pairs."""
    from cpfs.training.data import FlowPairDataset

    src = VideoSource(str(damaged_video), "file")
    cfg = _cfg(tmp_path / "s.zarr")  # ranges of 8 frames: the damage spans ranges
    one_pass = DecodeReport()
    list(decode(src, cfg.decode, report=one_pass))
    assert one_pass.errors.count == 1
    res = ingest_video(src, cfg)
    assert res.status == "stored", res.error
    assert res.note == f"stored with {one_pass.errors.describe()}" and res.extra["decode_errors"] == 1
    store = VideoStore.open(cfg.store, create=False)
    vid = res.video_id
    assert store.decode_errors(vid) == one_pass.errors
    assert store.video_attrs(vid)["decode_errors"]["damaged_frames"] == [list(r) for r in one_pass.errors.damaged]
    damaged = store.damaged_frames(vid)
    ((a, b),) = one_pass.errors.damaged
    assert damaged.sum() == b - a and damaged[a:b].all()

    cut = store.read_cut(vid)
    kept = FlowPairDataset(cfg.store, [vid], crop=32)
    assert [kept.pair(i)[1] for i in range(len(kept))] == [
        t for t in range(59) if not cut[t] and not damaged[t] and not damaged[t + 1]]
    assert len(FlowPairDataset(cfg.store, [vid], crop=32, skip_damaged=False)) == 59 - cut.sum()

    again = ingest_video(src, cfg)
    assert again.status == "skipped" and again.note == res.note


def test_strict_decode_fails_a_damaged_video_and_stores_a_clean_one(tmp_path, damaged_video):
    cfg = _cfg(tmp_path / "s.zarr", strict_decode=True)
    res = ingest_video(VideoSource(str(damaged_video), "file"), cfg)
    assert res.status == "failed"
    assert res.error.startswith(f"{damaged_video}: decode errors (1 decode error in frames ~"), res.error
    store = VideoStore.open(cfg.store, create=False)
    assert store.complete_ids() == []
    clean = ingest_video(VideoSource(str(damaged_video.parent / "clean.mp4"), "file"), cfg)
    assert clean.status == "stored" and clean.note is None and clean.extra["decode_errors"] == 0


_KILL_SCRIPT = r"""
import sys
from cpfs.config import IngestConfig
from cpfs.errors import StoreError
from cpfs.ingest.steps import ingest_video
from cpfs.records import VideoSource
cfg = IngestConfig.model_validate_json(sys.argv[2])
print(ingest_video(VideoSource(sys.argv[1], "file"), cfg), flush=True)
"""


def _store_arrays(cfg: IngestConfig) -> dict:
    store = VideoStore.open(cfg.store, create=False)
    out = {}
    for vid in store.complete_ids():
        t = store.frames(vid).shape[0]
        out[vid] = (store.read_frames(vid, 0, t), store.flow(vid)[:], store.read_cut(vid),
                    store.video_attrs(vid)["settings"])
    return out


def test_sigkill_mid_video_then_rerun_equals_uninterrupted(tmp_path, sample_videos):
    bikes = next(p for p in sample_videos if p.name == "bikes.mp4")
    clip = cut_clip(bikes, tmp_path / "long.mp4", 120, width=160)
    # Farneback at this size takes long enough per range that the kill lands mid-video.
    kw = {"flow": {"backend": "opencv-farneback"}, "decode": {"short_side": 96}}
    cfg_a = _cfg(tmp_path / "a.zarr", **kw)
    cfg_b = _cfg(tmp_path / "b.zarr", **kw)
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(clip), cfg_a.model_dump_json(by_alias=True)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        try:  # the ingest is creating the store and the video's group while we look
            s = VideoStore.open(cfg_a.store, create=False)
            done = any(s.done_ranges(v, "flow") for v in s.video_ids())
        except StoreError:
            done = False
        if done:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed, f"ingest finished before it could be killed: {proc.stdout.read()!r} {proc.stderr.read()!r}"
    assert VideoStore.open(cfg_a.store, create=False).complete_ids() == []  # nothing looks complete
    rerun = ingest_video(VideoSource(str(clip), "file"), cfg_a)
    assert rerun.status == "stored", rerun.error
    clean = ingest_video(VideoSource(str(clip), "file"), cfg_b)
    a, b = _store_arrays(cfg_a), _store_arrays(cfg_b)
    assert a.keys() == b.keys() == {clean.video_id}
    for x, y in zip(a[clean.video_id], b[clean.video_id]):
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y


_AT_ONCE_SCRIPT = r"""
import os, sys, time
from cpfs.config import IngestConfig
from cpfs.ingest.steps import ingest_video
from cpfs.records import VideoSource
cfg = IngestConfig.model_validate_json(sys.argv[2])
while not os.path.exists(sys.argv[3]):  # both processes start the ingest at the same moment
    time.sleep(0.005)
r = ingest_video(VideoSource(sys.argv[1], "file"), cfg)
print(r.status, r.note, r.error, flush=True)
"""


def test_two_processes_ingesting_one_video_at_once_store_it_once(tmp_path, clip):
    """Issue 21: the second of two concurrent ingests waits for the first and reports the video stored by it,
    with exit 0 and nothing computed twice."""
    cfg = _cfg(tmp_path / "s.zarr")
    VideoStore.open(cfg.store, create=True)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _AT_ONCE_SCRIPT, str(clip), cfg.model_dump_json(by_alias=True),
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o.strip() for o, _ in outs) == ["skipped stored by another run None", "stored None None"], outs
    store = VideoStore.open(cfg.store, create=False)
    assert len(store.complete_ids()) == 1 and store.check_video(store.complete_ids()[0]) == []
