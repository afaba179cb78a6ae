"""The store's I/O primitives, the public ground the role modules stand on.

:class:`StoreIO` is a CPFS store opened on a Zarr store (a local folder or an fsspec URL): its settings, the raw
Zarr store, JSON documents by key, folder listings, a video's group attributes and arrays, and which videos it
holds. :class:`~storage.store.VideoStore` is a ``StoreIO`` with the whole API; :mod:`storage.writing`,
:mod:`storage.integrity`, :mod:`storage.motion_stats` and :mod:`storage.index` take a ``StoreIO`` and use only
what is public here, so each reads (and is tested) on its own, and none imports ``storage.store``::

    io  <-  integrity  <-  writing  <-  motion_stats  <-  index  <-  store
"""

from __future__ import annotations

import json

import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from cpfs.config import StoreConfig
from cpfs.errors import StoreError

from . import layout


class StoreIO:
    """A CPFS store's settings and raw access. Built by ``VideoStore.open``, which checks the store first."""

    def __init__(self, cfg: StoreConfig, store: Store) -> None:
        self.cfg = cfg
        self.path = cfg.path  # as given: used in every error message
        self.zarr_store = store
        # (video, array) of complete videos whose objects were found intact here (``integrity.open_checked``)
        self.checked: set[tuple[str, str]] = set()

    # --- documents and folders -------------------------------------------------------------------------

    def read_json(self, key: str) -> dict | None:
        """The JSON document at ``key`` (None when absent); a document that does not parse is a StoreError."""
        buf = sync(self.zarr_store.get(key, prototype=default_buffer_prototype()))
        if buf is None:
            return None
        try:
            return json.loads(buf.to_bytes())
        except ValueError as e:
            raise StoreError(f"{self.path}: corrupt metadata document {key} ({e})") from e

    def write_json(self, key: str, doc: dict) -> None:
        """Write ``doc`` at ``key`` in one put (local stores write a temporary file and rename it)."""
        data = json.dumps(doc, indent=2, sort_keys=True).encode()
        sync(self.zarr_store.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def list_dir(self, prefix: str) -> list[str]:
        """The names directly under ``prefix``."""
        async def collect() -> list[str]:
            return [k async for k in self.zarr_store.list_dir(prefix)]

        return sync(collect())

    # --- videos ----------------------------------------------------------------------------------------

    def group_attrs(self, video_id: str) -> dict | None:
        """The attributes of a video's group; None for a video the store does not hold."""
        doc = self.read_json(f"{layout.video_path(video_id)}/zarr.json")
        return None if doc is None else doc.get("attributes", {})

    def require_attrs(self, video_id: str) -> dict:
        """``group_attrs``, or StoreError for an unknown video."""
        attrs = self.group_attrs(video_id)
        if attrs is None:
            raise StoreError(f"{self.path}: unknown video {video_id!r}")
        return attrs

    def require_incomplete(self, video_id: str) -> dict:
        """``require_attrs`` of a video that may still be written (StoreError for a complete one)."""
        attrs = self.require_attrs(video_id)
        if attrs.get("status") == "complete":
            raise StoreError(f"{self.path}: video {video_id!r} is complete; delete it before writing it again")
        return attrs

    def open_array(self, video_id: str, name: str) -> zarr.Array:
        """One array of a video as stored, unchecked (``integrity.open_checked`` checks a complete video's
        objects first). Writes store every object, even one of fill values only. StoreError naming the video
        when the video or the array is missing."""
        try:
            return zarr.open_array(self.zarr_store, path=layout.array_path(video_id, name),
                                   zarr_format=3).with_config({"write_empty_chunks": True})
        except (KeyError, FileNotFoundError, zarr.errors.ArrayNotFoundError) as e:
            if self.group_attrs(video_id) is None:
                raise StoreError(f"{self.path}: unknown video {video_id!r}") from e
            raise StoreError(f"{self.path}: video {video_id!r} has no {name!r} array (an interrupted create?)") from e

    def video_ids(self) -> list[str]:
        """Ids of every video group, complete or not, sorted."""
        return sorted(n for n in self.list_dir(layout.VIDEOS) if n != "zarr.json")

    def is_complete(self, video_id: str) -> bool:
        """Whether the video is stored completely (its group's ``status`` attribute is ``"complete"``)."""
        attrs = self.group_attrs(video_id)
        return attrs is not None and attrs.get("status") == "complete"

    def complete_ids(self) -> list[str]:
        """Ids of the complete videos, sorted."""
        return [v for v in self.video_ids() if self.is_complete(v)]

    @property
    def format_version(self) -> int:
        """The store's format version (``storage.layout.FORMAT_VERSION`` for a store made by this code)."""
        root = self.read_json("zarr.json") or {}
        return int(root.get("attributes", {}).get(layout.ROOT_ATTR, {}).get("format_version", 0))
