"""The held-out pairs of an evaluation: a read-only view of the store that hides every other pair.

``cpfs.evaluation.pairs`` finds usable pairs through ``read_cut``; ``PairSubset`` makes a pair outside its
``allowed`` set read as a cut, so the held-out protocols never see a training frame. It satisfies the same
``PairStore`` protocol as ``storage.VideoStore``, so the protocols take either.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np

from cpfs.errors import StoreError
from cpfs.evaluation.pairs import select_pairs
from cpfs.motion import MOTION_COLUMNS
from cpfs.records import FrameRange
from storage import VideoStore


# Bytes of decoded single frames and flows a PairSubset keeps. The protocols read every held-out pair once per
# source and seed (flow alignment: 7 sources x 3 seeds at 96 pairs of ~1 MB at 256 x 340): reading each once
# instead took ~15 s of zarr decompression off the demo evaluation (bench/eval_profile.py). 96 pairs fit.
CACHE_BYTES = 256 * 2**20


class PairSubset:
    """A read-only view of a ``VideoStore`` in which only the ``allowed`` pairs of each video are usable
    (``None``: every pair of that video). Frames and flow are read from the store as is; single frames and
    flows (what ``load_pair`` reads) are kept, least recently used first out, up to ``cache_bytes``, and
    returned as copies."""

    def __init__(self, store: VideoStore, allowed: Mapping[str, Sequence[int] | None],
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.store = store
        self.path: Any = store.path
        self.allowed = {vid: None if pairs is None else frozenset(int(t) for t in pairs) for vid, pairs in allowed.items()}
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, str, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0

    def _read(self, kind: str, video_id: str, start: int, stop: int) -> np.ndarray:
        read = self.store.read_frames if kind == "frames" else self.store.read_flow
        if stop - start != 1 or self.cache_bytes <= 0:
            return read(video_id, start, stop)
        key = (kind, video_id, start)
        hit = self._cache.get(key)
        if hit is None:
            hit = read(video_id, start, stop)
            self._cache[key] = hit
            self._cached_bytes += hit.nbytes
            while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
        else:
            self._cache.move_to_end(key)
        return hit.copy()

    @classmethod
    def from_ranges(cls, store: VideoStore, ranges: Sequence[FrameRange], min_moving_fraction: float = 0.0,
                    pairs_per_video: int | None = None, motion_floor: float | None = None) -> "PairSubset":
        """Pairs t with both frames in a range: ``start <= t`` and ``t + 1 < stop``; with ``min_moving_fraction``
        > 0 only pairs in which at least that fraction of the pixels moves on its own (``cpfs.motion``
        ``moving_fraction``): on the others the flow kernel is estimation noise and the protocol would
        measure noise.

        With ``pairs_per_video`` the threshold is per video (``video_motion_threshold``): a video with fewer
        than that many pairs above ``min_moving_fraction`` (a fixed camera with small moving people) has its
        threshold lowered to its own ``pairs_per_video``-th most-moving pair, never below ``motion_floor``.
        Shot-cut pairs never count, nor pairs with a frame that may show a decode error's damage
        (``VideoStore.damaged_frames``)."""
        allowed: dict[str, set[int]] = {}
        by_video: dict[str, set[int]] = {}
        for r in ranges:
            by_video.setdefault(r.video_id, set()).update(range(r.start, r.stop - 1))
        for vid, pairs in by_video.items():
            # A frame that may show a decode error's concealment is never measured (as training skips it).
            damaged = store.damaged_frames(vid)
            pairs = {t for t in pairs if t + 1 < damaged.size and not (damaged[t] or damaged[t + 1])}
            if min_moving_fraction > 0:
                moving = store.read_motion(vid)[:, MOTION_COLUMNS.index("moving_fraction")]
                cut = np.asarray(store.read_cut(vid), dtype=bool)
                pairs = {t for t in pairs if t < moving.size and not (t < cut.size and cut[t])}
                threshold = min_moving_fraction
                if pairs_per_video is not None:
                    threshold = video_motion_threshold(moving[sorted(pairs)], pairs_per_video, min_moving_fraction,
                                                       motion_floor if motion_floor is not None else min_moving_fraction)
                pairs = {t for t in pairs if moving[t] >= threshold}
            allowed[vid] = pairs
        return cls(store, allowed)

    @property
    def video_ids(self) -> list[str]:
        return list(self.allowed)

    def read_cut(self, video_id: str) -> np.ndarray:
        if video_id not in self.allowed:
            raise StoreError(f"{self.path}: video {video_id!r} is not part of this evaluation's held-out set")
        cut = np.asarray(self.store.read_cut(video_id), dtype=bool).copy()
        pairs = self.allowed[video_id]
        if pairs is not None:
            keep = np.zeros_like(cut)
            keep[[t for t in pairs if t < cut.size]] = True
            cut |= ~keep
        return cut

    def read_frames(self, video_id: str, start: int, stop: int) -> np.ndarray:
        return self._read("frames", video_id, start, stop)

    def read_flow(self, video_id: str, start: int, stop: int) -> np.ndarray:
        return self._read("flow", video_id, start, stop)


def video_motion_threshold(moving: np.ndarray, n: int, preferred: float, floor: float) -> float:
    """The least moving fraction a pair of one video needs to be evaluated: ``preferred`` when at least ``n``
    of the video's pairs reach it; otherwise its ``n``-th most-moving pair's fraction (so ``n`` pairs qualify),
    but never below ``floor``, the fraction under which a pair's motion is flow noise.

    Measured on this project's 17 training and sample videos at 160 px (DIS flow): a still shot gives exactly 0
    (box.mp4, tree.avi and bigbuckbunny.mp4 have 0 at their 10th percentile), while one small moving object
    covers 1-5 % of the frame; ``EvalConfig.motion_floor`` = 0.01 sits between the two."""
    if n < 1:
        raise ValueError(f"pairs per video must be >= 1, got {n}")
    if not 0 <= floor <= preferred:
        raise ValueError(f"motion floor {floor} must be in [0, preferred threshold {preferred}]")
    values = np.sort(np.asarray(moving, dtype=np.float64))[::-1]
    if values.size >= n and values[n - 1] >= preferred:
        return float(preferred)
    nth = float(values[min(n, values.size) - 1]) if values.size else preferred
    return float(min(preferred, max(floor, nth)))


def motion_probe_halves(heldout: PairSubset, pairs_per_video: int) -> tuple[PairSubset, PairSubset]:
    """The pairs the motion probe trains on and tests on, as ``motion_segmentation_probe`` splits a video
    listed in both lists: the first half of ``select_pairs`` trains, the second half tests."""
    train, test = {}, {}
    for vid in heldout.video_ids:
        idx = select_pairs(heldout, vid, pairs_per_video)
        half = len(idx) // 2
        train[vid], test[vid] = idx[:half], idx[half:]
    return PairSubset(heldout.store, train), PairSubset(heldout.store, test)
