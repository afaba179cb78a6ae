"""The interface every optical-flow backend implements, and the input checks they share.

Convention (OpenCV's, and Middlebury's): the flow ``f`` from frame ``t`` to frame ``t+1`` satisfies

    frame_t(p) ≈ frame_{t+1}(p + f(p)),   f = (u, v): u the x (column) displacement, v the y (row) one, in px.

Frames are RGB uint8, shape (N, H, W, 3); flow is float32, shape (N-1, H, W, 2), one field per consecutive
pair. Backends that work pair by pair (every OpenCV one) share ``PairwiseFlowBackend``; batched backends
(``cpfs.flow.torch_tvl1``) only need to satisfy the ``FlowBackend`` protocol.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np


@runtime_checkable
class FlowBackend(Protocol):
    """Dense optical flow between consecutive RGB frames.

    ``name`` is the concrete backend name recorded in the store (one of ``cpfs.config.FLOW_BACKENDS``,
    never "auto"); ``params()`` the JSON-able parameters recorded beside the flow.
    """

    name: str

    def params(self) -> dict[str, Any]:
        """JSON-able parameters that, with ``name``, identify how the flow was computed."""
        ...

    def compute(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB consecutive frames -> (N-1, H, W, 2) float32 flow t -> t+1, px."""
        ...

    def compute_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 first frames and (N, H, W, 3) second frames -> (N, H, W, 2) float32 flow a -> b."""
        ...


def check_frames(frames: np.ndarray, who: str, min_frames: int = 2) -> np.ndarray:
    """Validate a frame stack: (N, H, W, 3) uint8 with N >= min_frames. Returns it as a C-contiguous array."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{who}: frames must have shape (N, H, W, 3) (RGB), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{who}: frames must be uint8, got {frames.dtype}")
    if frames.shape[0] < min_frames:
        raise ValueError(f"{who}: need at least {min_frames} frames, got {frames.shape[0]}")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ValueError(f"{who}: frames must be at least 2x2 px, got {frames.shape[2]}x{frames.shape[1]}")
    return np.ascontiguousarray(frames)


def check_pairs(a: np.ndarray, b: np.ndarray, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate two frame stacks of pairs: both (N, H, W, 3) uint8 with the same shape, N >= 1."""
    a = check_frames(a, who, min_frames=1)
    b = check_frames(b, who, min_frames=1)
    if a.shape != b.shape:
        raise ValueError(f"{who}: the two frame stacks must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def rgb_to_gray(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, H, W) uint8 luma (ITU-R BT.601, as cv2.COLOR_RGB2GRAY)."""
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


class PairwiseFlowBackend(ABC):
    """A backend that computes flow one grayscale pair at a time (the OpenCV algorithms).

    Subclasses set ``name`` and implement ``params`` and ``_flow_gray``. The OpenCV algorithm object is made
    lazily and dropped when pickled, so a backend can be shipped to a Dask worker process.
    """

    name: str

    def __init__(self) -> None:
        self._algo: Any = None

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able parameters recorded in the store."""

    @abstractmethod
    def _make_algo(self) -> Any:
        """Build the OpenCV algorithm object (None for function-style APIs such as Farneback)."""

    @abstractmethod
    def _flow_gray(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(H, W) uint8 gray frame t and t+1 -> (H, W, 2) float32 flow t -> t+1."""

    def _ensure_algo(self) -> Any:
        if self._algo is None:
            self._algo = self._make_algo()
        return self._algo

    def compute(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N-1, H, W, 2) float32 flow from each frame to the next, px."""
        frames = check_frames(frames, self.name)
        gray = rgb_to_gray(frames)  # (N, H, W): each frame converted once, used in two pairs
        return np.stack([self._flow_gray(gray[t], gray[t + 1]) for t in range(len(gray) - 1)])

    def flow_gray(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(H, W) uint8 gray frames t and t+1 (``rgb_to_gray``) -> (H, W, 2) float32 flow t -> t+1, px.
        One pair, unchecked: what ingest calls as each frame is decoded (``compute`` gives the same flow)."""
        return self._flow_gray(a, b)

    def compute_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames a and b -> (N, H, W, 2) float32 flow a[i] -> b[i], px."""
        a, b = check_pairs(a, b, self.name)
        ga, gb = rgb_to_gray(a), rgb_to_gray(b)
        return np.stack([self._flow_gray(x, y) for x, y in zip(ga, gb)])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_algo"] = None  # cv2 algorithm objects do not pickle; rebuilt on first use
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, params={self.params()!r})"
