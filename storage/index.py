"""The store index: the complete videos of a store, stored as the root attribute ``index``; and the listing of
every video, complete or not (``cpfs ls``).

:class:`IndexEntry` and :class:`StoreIndex` are the records; :func:`scan`, :func:`write` and :func:`read` are
behind :meth:`VideoStore.index`, :meth:`VideoStore.write_index` and :meth:`VideoStore.read_index` and take
the :class:`~storage.io.StoreIO` they work on. :class:`VideoListing` and :func:`list_videos` are behind
:meth:`VideoStore.list_videos`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from cpfs.errors import StoreError

from . import integrity, layout, motion_stats, writing

if TYPE_CHECKING:
    from .io import StoreIO


@dataclass(frozen=True)
class IndexEntry:
    """One complete video as listed in the store index."""

    video_id: str
    source_path: str
    n_frames: int
    height: int
    width: int
    backend: str  # the concrete flow backend that computed the stored flow
    n_cuts: int  # pairs flagged as shot cuts
    completed_at: str  # ISO 8601, UTC
    settings_hash: str  # hash of the video's backend, settings and layout: changes when they do


@dataclass(frozen=True)
class StoreIndex:
    """The complete videos of a store. ``version`` is a content hash of the entries: it changes when a
    video completes, is re-ingested or removed, and is stable otherwise (a cache key for later stages)."""

    entries: tuple[IndexEntry, ...]  # sorted by video_id
    version: str

    @classmethod
    def from_entries(cls, entries: list[IndexEntry] | tuple[IndexEntry, ...]) -> StoreIndex:
        ordered = tuple(sorted(entries, key=lambda e: e.video_id))
        doc = json.dumps([asdict(e) for e in ordered], sort_keys=True, separators=(",", ":"))
        return cls(entries=ordered, version=hashlib.sha256(doc.encode()).hexdigest()[:16])

    @property
    def video_ids(self) -> tuple[str, ...]:
        return tuple(e.video_id for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "entries": [asdict(e) for e in self.entries]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> StoreIndex:
        return cls(entries=tuple(IndexEntry(**e) for e in doc["entries"]), version=str(doc["version"]))


def settings_hash(attrs: Mapping[str, Any]) -> str:
    """Hash of what determines a video's stored data: its settings, backend, geometry and layout."""
    keys = ("settings", "backend", "n_frames", "height", "width", "layout")
    doc = json.dumps({k: attrs.get(k) for k in keys}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def scan(store: StoreIO) -> StoreIndex:
    """See :meth:`VideoStore.index`."""
    entries = []
    for vid in store.complete_ids():
        a = store.require_attrs(vid)
        entries.append(
            IndexEntry(
                video_id=vid, source_path=a["source_path"], n_frames=a["n_frames"], height=a["height"],
                width=a["width"], backend=a["backend"], n_cuts=a["n_cuts"], completed_at=a["completed_at"],
                settings_hash=settings_hash(a),
            )
        )
    return StoreIndex.from_entries(entries)


def write(store: StoreIO) -> StoreIndex:
    """See :meth:`VideoStore.write_index`."""
    idx = scan(store)
    current = (store.read_json("zarr.json") or {}).get("attributes", {}).get(layout.INDEX_ATTR)
    if current is not None and StoreIndex.from_json(current) == idx:
        return idx  # unchanged: leave the root document (and its modification time) alone
    root = zarr.open_group(store.zarr_store, mode="r+")
    root.update_attributes({layout.INDEX_ATTR: idx.to_json()})
    return idx


def read(store: StoreIO) -> StoreIndex:
    """See :meth:`VideoStore.read_index`."""
    root = store.read_json("zarr.json") or {}
    doc = root.get("attributes", {}).get(layout.INDEX_ATTR)
    return StoreIndex.from_json(doc) if doc else scan(store)


@dataclass(frozen=True)
class VideoListing:
    """One video group of a store, complete or not, with what the store records about it (``cpfs ls``)."""

    video_id: str
    source_path: str
    status: str  # "complete", or "incomplete" (an unfinished ingest: invisible to readers)
    n_frames: int
    height: int
    width: int
    size_bytes: int | None  # the source's size on disk
    backend: str | None  # the concrete flow backend
    n_cuts: int | None  # pairs flagged as shot cuts; None until the video is complete
    # Median over the pairs of the motion statistic "moving_fraction" (cpfs.motion: the fraction of pixels
    # moving on their own); None: incomplete, stored before motion statistics, or unreadable.
    moving_fraction: float | None
    decode_errors: int  # frames ffmpeg flagged as decoded with errors (0: none, or not recorded)
    damaged_frames: int  # stored frames that may show a decode error's damage
    problems: tuple[str, ...]  # integrity problems against the manifest (quick check); () when not checked

    @property
    def ok(self) -> bool:
        """Complete, intact and decoded without errors."""
        return self.status == "complete" and not self.problems and not self.decode_errors and not self.damaged_frames


def list_videos(store: StoreIO, check: bool) -> list[VideoListing]:
    """See :meth:`VideoStore.list_videos`."""
    out = []
    for vid in store.video_ids():
        attrs = store.group_attrs(vid) or {}
        complete = attrs.get("status") == "complete"
        problems: tuple[str, ...] = ()
        if complete and check:
            problems = tuple(str(p) for p in integrity.check_arrays(store, vid, attrs, None, full=False)[0])
        moving = None
        if complete and not problems and motion_stats.has_motion(store, vid):
            try:
                column = motion_stats.read_motion(store, vid)[:, layout.MOTION_COLUMNS.index("moving_fraction")]
                moving = float(np.median(column)) if column.size else None
            except StoreError:
                moving = None  # damaged: the quick check was skipped, or missed it
        errors = writing.decode_errors(store, vid)
        out.append(VideoListing(
            video_id=vid, source_path=str(attrs.get("source_path", "?")),
            status="complete" if complete else "incomplete", n_frames=int(attrs.get("n_frames", 0)),
            height=int(attrs.get("height", 0)), width=int(attrs.get("width", 0)), size_bytes=attrs.get("size_bytes"),
            backend=attrs.get("backend"), n_cuts=attrs.get("n_cuts") if complete else None, moving_fraction=moving,
            decode_errors=errors.count, damaged_frames=sum(stop - start for start, stop in errors.damaged),
            problems=problems))
    return out
