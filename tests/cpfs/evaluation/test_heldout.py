"""Held-out pairs chosen per video by its measured motion (cpfs.evaluation.heldout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpfs.config import StoreConfig
from cpfs.evaluation import baselines
from cpfs.evaluation.flow_alignment import flow_alignment
from cpfs.evaluation.heldout import PairSubset, video_motion_threshold
from cpfs.evaluation.pairs import select_pairs
from cpfs.records import DecodeErrors, FrameRange
from storage.store import VideoStore
from tests.cpfs.training.test_data import add_video

T, H, W = 60, 48, 64
MOVING = range(10, 50)  # pairs in which the small object moves
CUT = 30  # a shot cut inside the moving part


def _fixed_camera_video(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A still textured scene where one 6 x 8 object (1.6 % of the frame) walks right by 1 px per frame during
    the pairs ``MOVING`` and stands still otherwise: the surveillance video the global 10 % threshold missed."""
    rng = np.random.default_rng(seed)
    scene = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    frames = np.repeat(scene[None], T, axis=0)
    flow = np.zeros((T - 1, H, W, 2), np.float32)
    x = 4
    for t in range(T):
        frames[t, 20:26, x:x + 8] = (250, 30, 30)
        if t < T - 1 and t in MOVING:
            flow[t, 20:26, x:x + 8, 0] = 1.0
            x += 1
    return frames, flow


@pytest.fixture(scope="module")
def small_motion_store(tmp_path_factory: pytest.TempPathFactory) -> VideoStore:
    cfg = StoreConfig(path=str(tmp_path_factory.mktemp("hs") / "s.zarr"), shard_frames=32)
    store = VideoStore.open(cfg, create=True)
    frames, flow = _fixed_camera_video()
    cut = np.zeros(T - 1, bool)
    cut[CUT] = True
    add_video(store, "walkers", frames, flow, cut)
    store.write_index()
    return store


def test_threshold_is_lowered_only_as_far_as_needed() -> None:
    moving = np.array([0.5, 0.4, 0.3, 0.05, 0.02, 0.0])
    assert video_motion_threshold(moving, 3, 0.1, 0.01) == 0.1  # three pairs reach 10 %: unchanged
    assert video_motion_threshold(moving, 5, 0.1, 0.01) == 0.02  # the 5th most-moving pair
    assert video_motion_threshold(moving, 6, 0.1, 0.01) == 0.01  # never below the floor
    assert video_motion_threshold(np.zeros(0), 4, 0.1, 0.01) == 0.1
    with pytest.raises(ValueError, match="motion floor 0.2 must be in"):
        video_motion_threshold(moving, 3, 0.1, 0.2)


def test_a_fixed_camera_video_is_measured_on_its_moving_pairs(small_motion_store: VideoStore) -> None:
    ranges = [FrameRange("walkers", 0, T)]
    global_only = PairSubset.from_ranges(small_motion_store, ranges, min_moving_fraction=0.1)
    assert global_only.allowed["walkers"] == frozenset()  # the old rule: nothing to measure
    view = PairSubset.from_ranges(small_motion_store, ranges, min_moving_fraction=0.1, pairs_per_video=32,
                                  motion_floor=0.01)
    chosen = select_pairs(view, "walkers", 32)
    assert len(chosen) == 32
    assert set(chosen) <= set(MOVING) - {CUT}  # moving pairs only, never the pair across the cut
    oracle = flow_alignment(baselines.flow_oracle_features(1), view, ["walkers"], pairs_per_video=32, points=512)
    assert oracle["summary"]["alignment_centered"]["mean"] == pytest.approx(1.0, abs=1e-4)


def test_the_floor_keeps_still_pairs_out(small_motion_store: VideoStore) -> None:
    view = PairSubset.from_ranges(small_motion_store, [FrameRange("walkers", 0, T)], min_moving_fraction=0.1,
                                  pairs_per_video=200, motion_floor=0.01)
    assert view.allowed["walkers"] == frozenset(set(MOVING) - {CUT})


def test_pairs_with_a_frame_damaged_by_decode_errors_are_never_measured(tmp_path: Path) -> None:
    """Issue 21: the held-out pairs skip frames a decode error may have damaged, as training does."""
    store = VideoStore.open(StoreConfig(path=str(tmp_path / "s.zarr"), shard_frames=32), create=True)
    frames, flow = _fixed_camera_video()
    add_video(store, "walkers", frames, flow, errors=DecodeErrors.of([20], [(20, 25)]))
    view = PairSubset.from_ranges(store, [FrameRange("walkers", 0, T)])
    assert view.allowed["walkers"] == frozenset(set(range(T - 1)) - set(range(19, 25)))  # pairs 19..24 touch 20..24
    moving = PairSubset.from_ranges(store, [FrameRange("walkers", 0, T)], min_moving_fraction=0.1, pairs_per_video=200,
                                    motion_floor=0.01)
    assert moving.allowed["walkers"] == frozenset(set(MOVING) - set(range(19, 25)))
