"""Frame pairs of held-out videos, read from the store for the video protocols.

A pair ``t`` of a video is frame ``t`` with its stored flow to frame ``t + 1`` (``storage.VideoStore``:
``read_frames``, ``read_flow``, ``read_cut``). Pairs that straddle a shot cut carry meaningless flow and
are never used. ``select_pairs`` picks ``n`` of the remaining pairs evenly spaced over the video
(deterministic, so every feature source is evaluated on the same pixels' frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from cpfs.errors import StoreError


class PairStore(Protocol):
    """What the video protocols read pairs from: a ``storage.VideoStore``, or a view of one that hides some
    pairs (``cpfs.evaluation.heldout.PairSubset``)."""

    path: Any  # shown in error messages

    def read_cut(self, video_id: str) -> np.ndarray: ...  # (T - 1,) bool: pair t unusable

    def read_frames(self, video_id: str, start: int, stop: int) -> np.ndarray: ...  # (n, H, W, 3) uint8

    def read_flow(self, video_id: str, start: int, stop: int) -> np.ndarray: ...  # (n, H, W, 2) float32 px


@dataclass(frozen=True)
class FramePair:
    """One evaluation pair: a frame and its forward flow, as tensors."""

    video_id: str
    index: int  # pair index t: frame t -> t + 1
    image: Tensor  # (1, 3, H, W) float32 in [0, 1]
    flow: Tensor  # (1, 2, H, W) float32, px


def select_pairs(store: PairStore, video_id: str, n: int) -> list[int]:
    """Up to ``n`` pair indices of ``video_id`` that are not shot cuts, evenly spaced; StoreError if none."""
    if n < 1:
        raise ValueError(f"number of pairs must be >= 1, got {n}")
    cut = np.asarray(store.read_cut(video_id), dtype=bool)
    usable = np.flatnonzero(~cut)
    if usable.size == 0:
        raise StoreError(f"{store.path}: video {video_id!r} has no frame pair outside a shot cut")
    if usable.size <= n:
        return usable.tolist()
    pick = np.round(np.linspace(0, usable.size - 1, n)).astype(np.int64)
    return usable[np.unique(pick)].tolist()


def load_pair(store: PairStore, video_id: str, index: int) -> FramePair:
    """Frame ``index`` and the flow of pair ``index`` of ``video_id``."""
    frame = store.read_frames(video_id, index, index + 1)  # (1, H, W, 3) uint8
    flow = store.read_flow(video_id, index, index + 1)  # (1, H, W, 2) float32 px
    image = torch.from_numpy(np.ascontiguousarray(frame)).permute(0, 3, 1, 2).float() / 255.0
    return FramePair(video_id, index, image, torch.from_numpy(np.ascontiguousarray(flow)).permute(0, 3, 1, 2).float())
