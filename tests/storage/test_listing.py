"""``VideoStore.list_videos`` (``cpfs ls``): a complete, an incomplete, a damaged and a badly decoded video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpfs.config import StoreConfig
from cpfs.motion import MOTION_COLUMNS
from cpfs.records import DecodeErrors, FrameRange
from storage import VideoStore

from .test_store import S, make_record
from .test_store import ingest as write_video


@pytest.fixture
def store(tmp_path: Path) -> VideoStore:
    vs = VideoStore.open(StoreConfig(path=str(tmp_path / "s.zarr"), shard_frames=S), create=True)
    write_video(vs, make_record("good", path="/v/good.mp4"), seed=0)
    write_video(vs, make_record("half", path="/v/half.mp4"), seed=1, finalize=False)
    write_video(vs, make_record("lost", path="/v/lost.mp4"), seed=2)
    for shard in (Path(vs.path) / "videos" / "lost" / "flow").rglob("c/*/*/*/*"):
        shard.unlink()  # one stored object gone: damage the manifest check finds
        break
    return vs


def test_every_video_is_listed_with_its_status_and_damage(store: VideoStore) -> None:
    rows = {r.video_id: r for r in store.list_videos()}
    assert list(rows) == ["good", "half", "lost"]
    good, half, lost = rows["good"], rows["half"], rows["lost"]
    assert (good.status, good.n_frames, good.width, good.height, good.backend, good.n_cuts) == \
        ("complete", 10, 24, 16, "opencv-dis", 1)
    motion = store.read_motion("good")[:, MOTION_COLUMNS.index("moving_fraction")]
    assert good.moving_fraction == pytest.approx(float(np.median(motion)))
    assert good.ok and good.problems == () and good.source_path == "/v/good.mp4"
    assert half.status == "incomplete" and half.n_cuts is None and half.moving_fraction is None and not half.ok
    assert lost.status == "complete" and not lost.ok and lost.moving_fraction is None
    assert len(lost.problems) == 1 and "missing" in lost.problems[0] and lost.problems[0].startswith("flow pairs")
    assert store.list_videos(check=False)[2].problems == ()  # no check asked: nothing found


def test_decode_errors_are_listed(tmp_path: Path) -> None:
    vs = VideoStore.open(StoreConfig(path=str(tmp_path / "s.zarr"), shard_frames=S), create=True)
    write_video(vs, make_record("v", path="/v/v.mp4"), finalize=False)
    vs.mark_done("v", "frames", FrameRange("v", 0, 4), DecodeErrors.of([2], [(2, 4)]))
    vs.finalize("v", np.zeros(9, bool))
    (row,) = vs.list_videos()
    assert (row.status, row.decode_errors, row.damaged_frames, row.ok) == ("complete", 1, 2, False)
