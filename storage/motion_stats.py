"""A video's per-pair motion statistics (array ``motion``, columns ``layout.MOTION_COLUMNS``).

``write_flow`` writes them beside the flow (:mod:`storage.writing`); here: whether a video has them, reading
them, and adding them to a complete video of a store made before they existed (``cpfs upgrade``). The
functions take the :class:`~storage.io.StoreIO` they work on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import zarr

from cpfs.errors import StoreError

from . import layout
from .integrity import open_checked
from .writing import array_attrs, writing

if TYPE_CHECKING:
    from .io import StoreIO


def add_motion(store: StoreIO, video_id: str, stats: np.ndarray) -> None:
    """See :meth:`VideoStore.add_motion`."""
    attrs = store.require_attrs(video_id)
    if attrs.get("status") != "complete":
        raise StoreError(f"{store.path}: video {video_id!r} is incomplete; rerun its ingest instead")
    if has_motion(store, video_id):
        raise StoreError(f"{store.path}: video {video_id!r} already has motion statistics")
    t = int(attrs["n_frames"])
    spec = layout.video_arrays(t, int(attrs["height"]), int(attrs["width"]), int(attrs["layout"]["shard_frames"]))["motion"]
    with writing(store, video_id, "motion statistics"):
        arr = zarr.create_array(
            store.zarr_store, name=layout.array_path(video_id, "motion"), shape=spec.shape, dtype=spec.dtype,
            chunks=spec.chunks, shards=spec.shards, compressors=spec.compressor, fill_value=spec.fill_value,
            dimension_names=spec.dims, attributes=array_attrs(store, "motion"))
        arr[:] = check_motion(video_id, 0, stats, t - 1)


def check_motion(video_id: str, start: int, stats: np.ndarray, n_pairs: int) -> np.ndarray:
    """``stats`` as float32, checked to be (n, len(MOTION_COLUMNS)) rows within the video's ``n_pairs``."""
    stats = np.asarray(stats, dtype=np.float32)
    k = len(layout.MOTION_COLUMNS)
    if stats.ndim != 2 or stats.shape[1] != k or start + stats.shape[0] > n_pairs:
        raise ValueError(f"motion of video {video_id}: expected float (n, {k}) within {n_pairs} pairs, got {stats.shape} at {start}")
    return stats


def has_motion(store: StoreIO, video_id: str) -> bool:
    """See :meth:`VideoStore.has_motion`."""
    return store.read_json(f"{layout.array_path(video_id, 'motion')}/zarr.json") is not None


def read_motion(store: StoreIO, video_id: str) -> np.ndarray:
    """See :meth:`VideoStore.read_motion`."""
    if not has_motion(store, video_id):
        store.require_attrs(video_id)
        raise StoreError(
            f"{store.path}: video {video_id!r} has no motion statistics (the store was written by an older "
            f"version, format {store.format_version}); add them with `cpfs upgrade --store {store.path}`")
    return open_checked(store, video_id, "motion")[:]
