"""The store index: the complete videos of a store, stored as the root attribute ``index``.

:class:`IndexEntry` and :class:`StoreIndex` are the records; :func:`scan`, :func:`write` and :func:`read` are
behind :meth:`VideoStore.index`, :meth:`VideoStore.write_index` and :meth:`VideoStore.read_index` and take
the :class:`~storage.store.VideoStore` they work on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import zarr

from . import layout

if TYPE_CHECKING:
    from .store import VideoStore


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


def scan(store: VideoStore) -> StoreIndex:
    """See :meth:`VideoStore.index`."""
    entries = []
    for vid in store.complete_ids():
        a = store._require_attrs(vid)
        entries.append(
            IndexEntry(
                video_id=vid, source_path=a["source_path"], n_frames=a["n_frames"], height=a["height"],
                width=a["width"], backend=a["backend"], n_cuts=a["n_cuts"], completed_at=a["completed_at"],
                settings_hash=settings_hash(a),
            )
        )
    return StoreIndex.from_entries(entries)


def write(store: VideoStore) -> StoreIndex:
    """See :meth:`VideoStore.write_index`."""
    idx = store.index()
    current = (store._read_json("zarr.json") or {}).get("attributes", {}).get(layout.INDEX_ATTR)
    if current is not None and StoreIndex.from_json(current) == idx:
        return idx  # unchanged: leave the root document (and its modification time) alone
    root = zarr.open_group(store._store, mode="r+")
    root.update_attributes({layout.INDEX_ATTR: idx.to_json()})
    return idx


def read(store: VideoStore) -> StoreIndex:
    """See :meth:`VideoStore.read_index`."""
    root = store._read_json("zarr.json") or {}
    doc = root.get("attributes", {}).get(layout.INDEX_ATTR)
    return StoreIndex.from_json(doc) if doc else store.index()
