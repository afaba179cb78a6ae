"""Training data: (frame t, flow t->t+1) pairs read from the Zarr store, split and augmented.

Reading order:
1. ``split_videos`` / ``plan_split``: which videos (or, with one video, which frames) train and which are held out.
2. ``augment_pair`` (``cpfs.training.augment``): one random-scale crop, horizontal flip and colour jitter applied
   consistently to an image and its flow (pure numpy, unit-testable without a store).
3. ``FlowPairDataset``: a map-style PyTorch dataset over the usable pairs of complete videos; it reads only
   frame t and flow t from Zarr per item (one chunk each: the store's chunk is one frame) and opens the store
   lazily in every process that uses it, so an open Zarr handle is never pickled into a DataLoader worker.
4. ``InfiniteSampler``: a seeded, resumable, rank-aware sampler (the DistributedSampler equivalent): its whole
   state is one integer, the number of draws already consumed, which makes resuming a run exact.

Images come out in [0, 1] RGB, ``(3, h, w)`` float32. ImageNet mean/std standardisation happens inside the
network (``cpfs.training.model.AlexNetTrunk`` standardises its input with ``IMAGENET_MEAN``/``IMAGENET_STD``), so that
training and evaluation cannot disagree on it; the dataset therefore does not standardise a second time.
Flow comes out in pixels of the returned crop, ``(2, h, w)`` float32, channel 0 = x (u), channel 1 = y (v).

Longer-range pairs (``pair_gap`` g > 1): frame t with the flow t->t+g, composed from the stored consecutive
flows by ``compose_flows`` (no new flow is estimated), so small motions add up over g frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cpfs.config import StoreConfig
from cpfs.errors import StoreError
from cpfs.motion import MOTION_COLUMNS
from cpfs.records import FrameRange
from cpfs.config import AugmentConfig
from cpfs.training.augment import augment_pair, draw_crop
from storage.fixed_point import decode_flow

# With a single video, the last fifth of its frames is held out (see ``plan_split``).
SINGLE_VIDEO_HOLDOUT = 0.2

# -----------------------------------------------------------------------------------------------------------
# 1. Train / held-out split


def split_videos(video_ids: Sequence[str], holdout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split video ids into (train, held-out), deterministically from ``seed``.

    The ids are sorted (so the input order does not matter), shuffled with ``numpy.random.default_rng(seed)``,
    and the first ``k = round(holdout_fraction * n)`` are held out, with ``1 <= k <= n - 1`` whenever
    ``n >= 2`` and ``holdout_fraction > 0`` (each side gets at least one video). ``holdout_fraction == 0``
    holds nothing out. With a single video both lists hold it: the split is then by frames, see ``plan_split``.
    Both returned lists are sorted.
    """
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    ids = sorted(set(video_ids))
    if not ids:
        raise ValueError("split_videos needs at least one video id, got none")
    if holdout_fraction == 0:
        return ids, []
    if len(ids) == 1:
        return ids, ids
    order = np.random.default_rng(seed).permutation(len(ids))
    k = min(max(int(round(holdout_fraction * len(ids))), 1), len(ids) - 1)
    held = sorted(ids[i] for i in order[:k])
    train = sorted(ids[i] for i in order[k:])
    return train, held


@dataclass(frozen=True)
class DataSplit:
    """Frame ranges used for training and held out (a pair t is used when frames t and t+1 are both in a range)."""

    train: tuple[FrameRange, ...]
    heldout: tuple[FrameRange, ...]


def plan_split(
    n_frames: Mapping[str, int],
    holdout_fraction: float,
    seed: int,
    heldout_videos: Sequence[str] | None = None,
) -> DataSplit:
    """Frame ranges of the train and held-out parts of the complete videos ``{video_id: n_frames}``.

    Two or more videos: whole videos are split by ``split_videos`` (or ``heldout_videos``, when given, are the
    held-out ones; they must be known ids and leave at least one video to train on). One video of T frames
    (and ``holdout_fraction > 0``): split by frames, frames ``[0, T - m)`` train and ``[T - m, T)`` are held
    out with ``m = max(2, round(T / 5))`` (the last fifth, at least one pair); the pair straddling the
    boundary is used by neither side, so no flow of the held-out frames is seen in training.
    """
    if not n_frames:
        raise ValueError("plan_split needs at least one video")
    if heldout_videos is not None:
        unknown = sorted(set(heldout_videos) - set(n_frames))
        if unknown:
            raise ValueError(f"heldout_videos {unknown} are not complete videos of the store (known: {sorted(n_frames)})")
        held = sorted(set(heldout_videos))
        train = sorted(set(n_frames) - set(held))
        if not train:
            raise ValueError("heldout_videos holds out every video; nothing is left to train on")
    else:
        train, held = split_videos(list(n_frames), holdout_fraction, seed)
    if len(n_frames) == 1 and held == train:
        (vid,) = train
        t = n_frames[vid]
        m = max(2, int(round(t * SINGLE_VIDEO_HOLDOUT)))
        if t - m < 2:
            raise ValueError(f"video {vid} has {t} frames: too few to hold out the last fifth and still train")
        return DataSplit(train=(FrameRange(vid, 0, t - m),), heldout=(FrameRange(vid, t - m, t),))
    return DataSplit(
        train=tuple(FrameRange(v, 0, n_frames[v]) for v in train),
        heldout=tuple(FrameRange(v, 0, n_frames[v]) for v in held),
    )


# -----------------------------------------------------------------------------------------------------------
# 3. The dataset


def compose_flows(flows: np.ndarray) -> np.ndarray:
    """The flow from frame 0 to frame g of g consecutive flows ``(g, H, W, 2)`` (px; flow k maps frame k to k+1).

    ``f(x) = f_0(x) + f_1(x + f_0(x)) + f_2(x + f_0(x) + f_1(...)) + ...``: each later flow is read, bilinearly,
    where the pixel has arrived so far. A pixel that leaves the frame reads the nearest border pixel's flow
    (OpenCV ``BORDER_REPLICATE``); occlusions are not detected, as in a single estimated flow.
    """
    flows = np.asarray(flows, dtype=np.float32)
    if flows.ndim != 4 or flows.shape[-1] != 2 or flows.shape[0] < 1:
        raise ValueError(f"compose_flows needs flows of shape (g >= 1, H, W, 2), got {flows.shape}")
    total = flows[0].copy()
    h, w = total.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    for f in flows[1:]:
        total += cv2.remap(np.ascontiguousarray(f), gx + total[..., 0], gy + total[..., 1],
                           interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return total


def _open_store(store_cfg: StoreConfig, create: bool = False):  # noqa: ANN202 - storage's VideoStore
    from storage.store import VideoStore  # imported here: storage is a sibling package of cpfs

    return VideoStore.open(store_cfg, create=create)


def store_version(store_cfg: StoreConfig) -> str:
    """The content hash of the store's index of complete videos (``StoreIndex.version``)."""
    return _open_store(store_cfg).read_index().version


def video_sources(store_cfg: StoreConfig, video_ids: Sequence[str]) -> list[str]:
    """The source path (file or frame folder) each video was ingested from, in the order of ``video_ids``
    (an empty string where the store does not record it)."""
    store = _open_store(store_cfg)
    return [str(store.video_attrs(v).get("source_path") or "") for v in video_ids]


def video_provenance(store_cfg: StoreConfig, video_ids: Sequence[str]) -> dict[str, dict[str, str | None]]:
    """``{video_id: {"name": ..., "backend": ...}}``: the file or frame-folder name each video was ingested from
    (the name only: a checkpoint travels, its machine's folders do not) and the flow backend that computed its
    stored flow (None where the store does not record it). A checkpoint keeps this for its model card."""
    store = _open_store(store_cfg)
    out = {}
    for v in video_ids:
        attrs = store.video_attrs(v)
        out[v] = {"name": os.path.basename(str(attrs.get("source_path") or "").rstrip("/")) or None,
                  "backend": attrs.get("backend")}
    return out


def complete_videos(store_cfg: StoreConfig) -> dict[str, int]:
    """``{video_id: n_frames}`` of the store's complete videos; StoreError when there is none.

    The message distinguishes an empty store from one whose videos are all incomplete (ingest interrupted).
    """
    store = _open_store(store_cfg)
    ids = store.complete_ids()
    if not ids:
        n_any = len(store.video_ids())
        if n_any == 0:
            raise StoreError(f"{store_cfg.path}: store is empty (no video was ingested); run the ingest stage first")
        raise StoreError(
            f"{store_cfg.path}: no complete video ({n_any} incomplete: ingest was interrupted); rerun the ingest stage"
        )
    return {vid: int(store.frames(vid).shape[0]) for vid in ids}


class FlowPairDataset(Dataset):
    """(frame t, flow t->t+g) pairs of complete videos (g = ``pair_gap``, 1 by default), excluding pairs that straddle a shot cut and, with
    ``min_moving_fraction > 0``, pairs with a smaller fraction of independently moving pixels (``cpfs.motion``,
    stored at ingest): on them
    the flow kernel is estimation noise (project issue 10). With ``skip_damaged`` (the default), pairs with a
    frame that may show a decode error's damage (``VideoStore.damaged_frames``) are excluded too.

    ``videos`` are video ids (all their frames) or ``FrameRange``s (frames ``[start, stop)``; pair t is used
    when ``start <= t`` and ``t + g < stop``). Item ``i`` is read as ``frames[t]`` and ``flow[t]`` (one Zarr
    chunk each), the flow decoded from fixed point with the array's own ``scale`` attribute, then augmented
    by ``augment_pair``. With ``pair_gap`` g > 1 it reads ``flow[t:t+g]`` and composes them
    (``compose_flows``); the pair is used when none of its g consecutive pairs straddles a cut, none of its
    frames t..t+g may be damaged, and the mean moving fraction of its g consecutive pairs reaches
    ``min_moving_fraction`` (the stored motion statistics are per consecutive pair). Randomness: item ``(i, draw)`` (as yielded by ``InfiniteSampler``) uses
    ``numpy.random.default_rng([seed, draw])``, so an item's augmentation depends only on the seed and the draw
    number, not on the worker process or the order in which workers run; a plain integer index ``i`` uses
    ``draw = i``.

    Returns:
        ``(image (3, crop, crop) float32 in [0, 1], flow (2, crop, crop) float32 px)``.
    """

    def __init__(
        self,
        store_cfg: StoreConfig,
        videos: Sequence[str | FrameRange],
        *,
        crop: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        min_moving_fraction: float = 0.0,
        skip_damaged: bool = True,
        pair_gap: int = 1,
    ) -> None:
        if pair_gap < 1:
            raise ValueError(f"pair_gap must be >= 1 frame, got {pair_gap}")
        self.pair_gap = g = int(pair_gap)
        if crop < 1:
            raise ValueError(f"crop must be >= 1 px, got {crop}")
        if not 0 <= min_moving_fraction < 1:
            raise ValueError(f"min_moving_fraction must be in [0, 1), got {min_moving_fraction}")
        self.min_moving_fraction = float(min_moving_fraction)
        self.store_cfg = store_cfg
        self.crop = int(crop)
        self.augment = augment
        self.seed = int(seed)
        store = _open_store(store_cfg)
        complete = set(store.complete_ids())
        if not complete:
            complete_videos(store_cfg)  # raises the StoreError that says why
        ranges = [v if isinstance(v, FrameRange) else None for v in videos]
        ids = [v.video_id if isinstance(v, FrameRange) else v for v in videos]
        missing = sorted(set(ids) - complete)
        if missing:
            raise StoreError(f"{store_cfg.path}: video(s) {missing} are not complete videos of the store")
        self.video_ids: list[str] = []
        vid_index: list[np.ndarray] = []
        pair_t: list[np.ndarray] = []
        for vid, rng in zip(ids, ranges):
            cut = np.asarray(store.read_cut(vid), dtype=bool)  # (T-1,)
            n_pairs = cut.shape[0]
            start, stop = (0, n_pairs + 1) if rng is None else (rng.start, min(rng.stop, n_pairs + 1))
            t = np.arange(start, max(stop - g, start), dtype=np.int64)  # pairs whose both frames are in range
            steps = np.arange(g)  # pair t spans the consecutive pairs t .. t+g-1 and the frames t .. t+g
            t = t[~cut[t[:, None] + steps].any(axis=1)]
            if skip_damaged:
                damaged = store.damaged_frames(vid)  # (T,)
                t = t[~damaged[t[:, None] + np.arange(g + 1)].any(axis=1)]
            if self.min_moving_fraction > 0:
                moving = store.read_motion(vid)[:, MOTION_COLUMNS.index("moving_fraction")]  # (T-1,); StoreError if absent
                t = t[moving[t[:, None] + steps].mean(axis=1) >= self.min_moving_fraction]
            self.video_ids.append(vid)
            vid_index.append(np.full(t.shape, len(self.video_ids) - 1, dtype=np.int64))
            pair_t.append(t)
        self._vid = np.concatenate(vid_index) if vid_index else np.zeros(0, np.int64)
        self._t = np.concatenate(pair_t) if pair_t else np.zeros(0, np.int64)
        if len(self._t) < 2:
            motion = (f" and pairs with fewer than min_moving_fraction={self.min_moving_fraction:g} of the pixels "
                      "moving on their own" if self.min_moving_fraction > 0 else "")
            raise StoreError(
                f"{store_cfg.path}: only {len(self._t)} usable frame pair(s) in videos {sorted(set(ids))} "
                f"(pairs across shot cuts{motion}{' and pairs with decode errors' if skip_damaged else ''} are "
                "excluded); training needs at least 2"
            )
        self._store = None  # VideoStore, opened lazily, per process
        self._handles: dict[str, tuple] | None = None  # {video_id: (frames, flow, scale)} of this process
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(len(self._t))

    def pair(self, index: int) -> tuple[str, int]:
        """``(video_id, t)`` of item ``index``: frame t and the flow from t to t+g (``pair_gap``)."""
        return self.video_ids[int(self._vid[index])], int(self._t[index])

    def __getstate__(self) -> dict:
        # Never pickle open Zarr handles into a worker: each process opens the store itself.
        state = dict(self.__dict__)
        state["_store"], state["_handles"], state["_pid"] = None, None, None
        return state

    def _arrays(self, vid: str) -> tuple:
        """``(frames, flow, scale)`` of ``vid``, opened once per process (a forked worker reopens)."""
        if self._handles is None or self._pid != os.getpid():
            self._store = _open_store(self.store_cfg)
            self._handles, self._pid = {}, os.getpid()
        if vid not in self._handles:
            flow = self._store.flow(vid)
            self._handles[vid] = (self._store.frames(vid), flow, float(flow.attrs["scale"]))
        return self._handles[vid]

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame t ``(H, W, 3)`` uint8 and decoded flow t->t+g ``(H, W, 2)`` float32 px of item ``index``, uncropped."""
        vid, t = self.pair(index)
        frames, flow, scale = self._arrays(vid)
        return np.asarray(frames[t]), compose_flows(decode_flow(np.asarray(flow[t : t + self.pair_gap]), scale))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, draw = (key, key) if not isinstance(key, tuple) else key
        index, draw = int(index), int(draw)
        if not 0 <= index < len(self):
            raise IndexError(f"pair index {index} out of range for {len(self)} pairs")
        image, flow = self.read_raw(index)
        rng = np.random.default_rng([self.seed, draw])
        params = draw_crop(rng, image.shape[0], image.shape[1], self.crop, self.augment)
        img, flo = augment_pair(image, flow, params, self.crop)
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(flo).permute(2, 0, 1).contiguous()


def worker_init(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (the workers are the parallelism). OpenCV is
    deliberately not touched in a forked worker (see ``_resize``)."""
    torch.set_num_threads(1)


# -----------------------------------------------------------------------------------------------------------
# 4. Sampling


class InfiniteSampler(Sampler):
    """An endless, seeded, resumable stream of ``(index, draw)`` keys, split across ranks.

    The global stream enumerates draws ``k = 0, 1, 2, ...``; draw k is item ``perm_e[k mod n]`` where
    ``e = k // n`` is the epoch and ``perm_e = default_rng([seed, e]).permutation(n)`` (every item once per
    epoch, a new order each epoch). Rank r of ``world_size`` yields the draws ``k = start + r + world_size*i``,
    i = 0, 1, ..., so the ranks see disjoint items and together consume the global stream in order, like
    ``torch.utils.data.DistributedSampler``. The sampler's whole state is ``start``: a run resumed after
    ``s`` steps of global batch ``B`` uses ``start = s * B`` and sees exactly the items it would have seen.
    """

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise ValueError(f"InfiniteSampler needs n >= 1 items, got {n}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.n, self.seed, self.start, self.rank, self.world_size = int(n), int(seed), int(start), int(rank), int(world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        k = self.start + self.rank
        epoch, perm = -1, np.zeros(0, np.int64)
        while True:
            e = k // self.n
            if e != epoch:
                epoch, perm = e, np.random.default_rng([self.seed, e]).permutation(self.n)
            yield int(perm[k % self.n]), int(k)
            k += self.world_size

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "start": self.start}
