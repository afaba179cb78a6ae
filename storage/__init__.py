"""The CPFS Zarr store: the one place that knows paths, shapes, chunks, shards, dtypes and attributes.

Everyone else asks this package for a video's arrays: :class:`VideoStore` (write, resume, finalize, index,
read), :func:`encode_flow` / :func:`decode_flow` (int16 fixed-point flow), and :mod:`storage.layout`.
It never imports Prefect.
"""

from .fixed_point import decode_flow, encode_flow
from .layout import ARRAY_NAMES, FORMAT_VERSION, MARKER_KINDS, ArraySpec, video_arrays
from .index import IndexEntry, StoreIndex, VideoListing
from .records import BeginStatus
from .store import VideoStore

__all__ = [
    "ARRAY_NAMES",
    "FORMAT_VERSION",
    "MARKER_KINDS",
    "ArraySpec",
    "BeginStatus",
    "IndexEntry",
    "StoreIndex",
    "VideoListing",
    "VideoStore",
    "decode_flow",
    "encode_flow",
    "video_arrays",
]
