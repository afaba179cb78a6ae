"""The CPFS video store: write a video's frames and flow shard by shard, resume, finalize, index, read.

Layout (paths, shapes, chunks, shards, codecs) is defined in :mod:`storage.layout`; this module is the only
code that writes it. One writer life cycle per video::

    store = VideoStore.open(cfg)                       # cfg: cpfs.config.StoreConfig
    if store.begin_video(record, {"settings": {..., "flow_backend": "opencv-dis"}, ...}) == "complete":
        ...                                            # already stored: skip
    for each range [start, stop) not in store.done_ranges(vid, "flow"), in any process:
        store.write_frames(vid, a, frames)             # one call per shard block (or several blocks)
        store.write_flow(vid, a, flow, pair_error)     # pairs a -> a+1, ...
        store.mark_done(vid, "frames", FrameRange(vid, start, stop))  # after all the range's writes
        store.mark_done(vid, "flow", FrameRange(vid, start, stop))
    store.finalize(vid, cut)                           # sets status "complete" LAST
    store.write_index()                                # once, after the videos of a run finish

Completeness is the video group's attribute ``status == "complete"``, written in the same document write
that records ``completed_at``, after every array and attribute of the video: an interrupted or failed
ingest leaves ``status == "incomplete"`` and the video is invisible to :meth:`VideoStore.complete_ids`
and the index. Writes touch only the group of the video being written, so nothing already complete is
touched by the ingest of another video. Local writes are atomic per key (Zarr's LocalStore writes a
temporary file and renames it); object stores put whole objects.

Concurrency: after one caller has run ``begin_video``, several processes may write *different* shard
ranges of one video at once. They write different shard keys and different marker keys; no shared
document is read-modified-written. ``begin_video``, ``finalize`` and ``write_index`` are single-writer
steps (the orchestrator calls them once). Two *runs* writing one video take turns: the orchestrator holds
:meth:`VideoStore.writer_lock` from ``begin_video`` to ``finalize``, and the second run waits and then finds the
video complete (or resumes it, when the first died). Only a local store has the lock (``cpfs.locks``).

The class is the one entry point; its I/O primitives are the public :class:`storage.io.StoreIO` it extends,
and the work is split by role into modules it delegates to, each taking a ``StoreIO``:
:mod:`storage.writing` (the writer life cycle above), :mod:`storage.integrity` (manifests and their checks),
:mod:`storage.motion_stats` (motion statistics), :mod:`storage.index` (the index and its records) and
:mod:`storage.records` (the integrity records, constants and shared helpers). Opening, raw key access,
listing and reading stay here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from cpfs import locks
from cpfs.config import StoreConfig
from cpfs.errors import StoreError
from cpfs.records import DecodeErrors, FrameRange, VideoRecord

from . import index as store_index
from . import integrity, layout, motion_stats, writing
from .io import StoreIO
from .fixed_point import decode_flow
from .index import IndexEntry, StoreIndex, VideoListing  # noqa: F401 - importable from here, as before the split
from .records import MANIFEST_DIGEST, STORE_ATTRS, VOLATILE_ATTRS, BeginStatus  # noqa: F401 - the same
from .records import ShardDamage, StoreVerification  # noqa: F401 - the same

if TYPE_CHECKING:
    import dask.array as da


class VideoStore(StoreIO):
    """A CPFS Zarr store at a local folder or an fsspec URL. Build it with :meth:`VideoStore.open`. The I/O
    primitives, the listing of videos and ``format_version`` come from :class:`~storage.io.StoreIO`."""

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, cfg: StoreConfig, *, create: bool = True) -> VideoStore:
        """Open the store at ``cfg.path``; with ``create`` make it when absent.

        Raises StoreError (naming the path) when the path does not exist and ``create`` is False, when it
        holds something other than a CPFS store, or when it cannot be created or written.
        """
        store = cls._zarr_store(cfg, create)
        self = cls(cfg, store)
        try:
            root = self.read_json("zarr.json")
            if root is None:
                if not create:
                    raise StoreError(
                        f"{self.path}: store does not exist or is not a cpfs store "
                        "(no zarr.json; open with create=True to make one)"
                    )
                if self.list_dir(""):
                    raise StoreError(f"{self.path}: not a cpfs store (the location is not empty and has no zarr.json)")
                zarr.create_group(store, attributes={layout.ROOT_ATTR: {"format_version": layout.FORMAT_VERSION}})
                zarr.create_group(store, path=layout.VIDEOS)
                return self
        except OSError as e:
            raise StoreError(f"{self.path}: cannot create or write the store ({type(e).__name__}: {e})") from e
        marker = root.get("attributes", {}).get(layout.ROOT_ATTR) if root.get("node_type") == "group" else None
        if not isinstance(marker, dict):
            raise StoreError(f"{self.path}: not a cpfs store (zarr.json has no {layout.ROOT_ATTR!r} group attribute)")
        if marker.get("format_version") not in layout.READABLE_FORMAT_VERSIONS:
            raise StoreError(
                f"{self.path}: unsupported cpfs store format_version {marker.get('format_version')!r} "
                f"(this code reads {', '.join(map(str, layout.READABLE_FORMAT_VERSIONS))})"
            )
        return self

    @staticmethod
    def _zarr_store(cfg: StoreConfig, create: bool) -> Store:
        if "://" in cfg.path:
            try:
                return FsspecStore.from_url(cfg.path, storage_options=dict(cfg.storage_options) or None)
            except (ImportError, ValueError, TypeError, OSError) as e:
                raise StoreError(f"{cfg.path}: cannot open the store URL ({type(e).__name__}: {e})") from e
        p = Path(cfg.path).expanduser()
        if p.exists() and not p.is_dir():
            raise StoreError(f"{cfg.path}: not a cpfs store (it is a file, not a folder)")
        if not p.exists() and not create:
            raise StoreError(f"{cfg.path}: store does not exist")
        return LocalStore(p)

    def __reduce__(self):  # pickles for Dask workers: reopen the same store from its config
        return (_reopen, (self.cfg,))

    def __repr__(self) -> str:
        return f"VideoStore({self.path!r})"

    # ------------------------------------------------------------------ integrity (storage.integrity)

    def check_video(self, video_id: str, *, full: bool = True) -> list[ShardDamage]:
        """Problems of a complete video's stored objects, against the manifest written by ``finalize``: a
        missing object, another size, and with ``full`` other bytes (blake2b digest). Empty: intact, or
        completed before manifests existed (``unverifiable``). An incomplete video raises StoreError."""
        return integrity.check_video(self, video_id, full)

    def verify(self, *, full: bool = True) -> StoreVerification:
        """Check every complete video against its manifest (see :meth:`check_video`); reads every stored
        object with ``full``. Writes nothing."""
        return integrity.verify(self, full)

    # ------------------------------------------------------------------ writing (storage.writing)

    def writer_lock(self, video_id: str, *, wait: bool = True, on_wait=None):  # noqa: ANN001, ANN201 - cpfs.locks
        """The lock one run holds while it writes ``video_id`` (a ``cpfs.locks.exclusive`` context: it waits for
        another holder, or with ``wait=False`` raises ``cpfs.locks.LockBusy``), or None for a store at a URL:
        object storage has no lock."""
        if "://" in self.cfg.path:
            return None
        path = Path(self.cfg.path).expanduser() / layout.LOCKS / f"{layout.check_video_id(video_id)}.lock"
        return locks.exclusive(path, f"video {video_id} of store {self.path}", wait=wait, on_wait=on_wait)

    def begin_video(
        self,
        record: VideoRecord,
        attrs: Mapping[str, Any] | None = None,
        *,
        backend: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> BeginStatus:
        """Prepare the group and arrays of ``record``'s video; say whether the caller has work to do.

        Args:
            record: the video; its id, geometry (T = n_frames, H, W) and source are recorded by the store.
            attrs: the caller's provenance, JSON: ``attrs["settings"]`` holds everything that determines the
                stored data (decode settings, flow parameters, ...) including ``"flow_backend"``, the
                concrete backend name; other keys (source details, package version) are kept as given.
            backend, settings: shorthand for ``attrs = {"settings": {**settings, "flow_backend": backend}}``.

        Returns ``"complete"`` when the video is already complete (nothing is touched: skip it),
        ``"resumed"`` when an incomplete group with equal attributes (all but ``VOLATILE_ATTRS``) and intact
        arrays exists (shards and markers already written stay), ``"created"`` otherwise (an incomplete
        group with other attributes is deleted first).
        """
        return writing.begin_video(self, record, attrs, backend, settings)

    def write_frames(self, video_id: str, start: int, frames: np.ndarray) -> None:
        """Write decoded frames [start, start+n) of an incomplete video in one call.

        Args:
            frames: uint8 (n, H, W, 3); ``start`` and ``n`` shard-aligned (``start % S == 0`` and ``n % S == 0``
                unless the block ends at frame T).
        """
        writing.write_frames(self, video_id, start, frames)

    def write_flow(self, video_id: str, start: int, flow: np.ndarray, pair_error: np.ndarray) -> int:
        """Write the flow and warp error of pairs [start, start+n) of an incomplete video in one call, and
        the pairs' motion statistics (``cpfs.motion.motion_statistics`` of the flow, array ``motion``).

        Pair t is the flow from frame t to frame t+1. Flow is stored as fixed point with the array's
        ``scale`` and ``bound`` attributes (see :func:`storage.fixed_point.encode_flow`); the clipped-pixel
        count of each shard is stored beside it (summed by :meth:`count_clipped`; a rewrite replaces it).

        Args:
            flow: float32 (n, H, W, 2), px; shard-aligned like :meth:`write_frames` (end: pair T-1).
            pair_error: float (n,), the photometric warp error of each pair.

        Returns:
            The number of clipped pixels in this block.
        """
        return writing.write_flow(self, video_id, start, flow, pair_error)

    # ------------------------------------------------------------------ motion statistics (storage.motion_stats)

    def add_motion(self, video_id: str, stats: np.ndarray) -> None:
        """Give a complete video of a version-1 store (made before motion statistics existed) its ``motion``
        array, all pairs at once: the only write allowed on a complete video, since it adds derived data
        and changes nothing stored. A video that already has one raises StoreError."""
        motion_stats.add_motion(self, video_id, stats)

    def has_motion(self, video_id: str) -> bool:
        """Whether the video has its ``motion`` array (always, unless the store predates format version 2)."""
        return motion_stats.has_motion(self, video_id)

    def read_motion(self, video_id: str) -> np.ndarray:
        """Motion statistics of every pair, float32 (T-1, len(MOTION_COLUMNS)) (columns: ``layout.MOTION_COLUMNS``).

        A video stored before motion statistics existed raises StoreError saying how to add them."""
        return motion_stats.read_motion(self, video_id)

    def set_format_version(self, version: int) -> None:
        """Record the store's format version (``cpfs upgrade`` sets it once every video has what it needs)."""
        if version not in layout.READABLE_FORMAT_VERSIONS:
            raise ValueError(f"unknown format version {version}")
        root = zarr.open_group(self.zarr_store, mode="r+")
        root.update_attributes({layout.ROOT_ATTR: {"format_version": int(version)}})

    # ------------------------------------------------------------------ markers and completion (storage.writing)

    def count_clipped(self, video_id: str) -> int:
        """Clipped flow pixels of the video so far: the sum of the stored per-shard counts."""
        return writing.count_clipped(self, video_id)

    def mark_done(self, video_id: str, kind: layout.MarkerKind, frame_range: FrameRange,
                  decode_errors: DecodeErrors | None = None) -> None:
        """Record that ``kind`` of ``frame_range`` is written: "frames": frames [start, stop); "flow": flow and
        pair_error of the pairs t -> t+1 with t in [start, min(stop, T-1)).

        The range is shard-aligned and may end at T (or T-1 for "flow"). Each marker is its own key,
        ``videos/<id>/done/<kind>-<start>-<stop>/zarr.json``. ``decode_errors`` (a "frames" marker only): what
        ffmpeg flagged while decoding the range's frames, kept with the marker; ``finalize`` records the union
        of every range's as the video's ``decode_errors`` attribute (``layout.DECODE_ERRORS_ATTR``).
        """
        writing.mark_done(self, video_id, kind, frame_range, decode_errors)

    def decode_errors(self, video_id: str) -> DecodeErrors:
        """What ffmpeg flagged while decoding the video (``cpfs.records.DecodeErrors``): of a complete video its
        ``decode_errors`` attribute (empty for a video stored before that attribute existed), of an incomplete
        one the union over the ranges marked done so far."""
        return writing.decode_errors(self, video_id)

    def damaged_frames(self, video_id: str) -> np.ndarray:
        """bool (T,): the stored frames that may show a decode error's damage (``decode_errors().damaged``)."""
        out = np.zeros(int(self.require_attrs(video_id)["n_frames"]), dtype=bool)
        for a, b in self.decode_errors(video_id).damaged:
            out[a:b] = True
        return out

    def done_ranges(self, video_id: str, kind: layout.MarkerKind) -> list[tuple[int, int]]:
        """The ``(start, stop)`` frame ranges marked done for ``kind``, sorted (as marked, not merged)."""
        return writing.done_ranges(self, video_id, kind)

    def finalize(
        self,
        video_id: str,
        cut: np.ndarray,
        clipped_pixels: int | None = None,
        extra_attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the cut flags and the last attributes, then mark the video complete (last write).

        Requires done markers covering every frame and every pair; raises StoreError naming the gaps. Records
        the decode errors kept with the "frames" markers as the ``decode_errors`` attribute (see ``mark_done``).

        Args:
            cut: bool (T-1,), pair t straddles a shot cut.
            clipped_pixels: total clipped flow pixels; None: :meth:`count_clipped`.
            extra_attrs: more JSON attributes for the video group (e.g. timings). Store-owned keys
                (``STORE_ATTRS``) may appear only with the value the store writes.
        """
        writing.finalize(self, video_id, cut, clipped_pixels, extra_attrs)

    def delete_video(self, video_id: str, *, force: bool = False) -> None:
        """Delete a video's group and everything under it. A complete video needs ``force=True``."""
        writing.delete_video(self, video_id, force)

    # ------------------------------------------------------------------ index (storage.index)

    def index(self) -> StoreIndex:
        """Scan the complete videos and build the index (does not write it)."""
        return store_index.scan(self)

    def write_index(self) -> StoreIndex:
        """Scan, then store the index as the root attribute ``index``. Single writer: call it after videos finish."""
        return store_index.write(self)

    def read_index(self) -> StoreIndex:
        """The index stored by :meth:`write_index`; a fresh scan when none was written."""
        return store_index.read(self)

    def list_videos(self, *, check: bool = True) -> list[VideoListing]:
        """Every video group, complete or not, as ``cpfs ls`` shows it (``storage.index.VideoListing``): geometry,
        backend, cuts, median moving fraction, decode errors and, with ``check``, the quick integrity check of
        each complete video (every object present with its size, no reading). Writes nothing."""
        return store_index.list_videos(self, check)

    # ------------------------------------------------------------------ reading

    def video_attrs(self, video_id: str) -> dict:
        """The video group's attributes (provenance, settings, status, ...)."""
        return self.require_attrs(video_id)

    def frames(self, video_id: str) -> zarr.Array:
        """The ``frames`` array (T, H, W, 3) uint8."""
        return integrity.open_checked(self, video_id, "frames")

    def flow(self, video_id: str) -> zarr.Array:
        """The ``flow`` array (T-1, H, W, 2) int16 fixed point; decode with its ``scale`` attribute."""
        return integrity.open_checked(self, video_id, "flow")

    @staticmethod
    def _check_range(arr: zarr.Array, start: int, stop: int, what: str) -> None:
        if not 0 <= start < stop <= arr.shape[0]:
            raise ValueError(f"{what}: range [{start}, {stop}) is outside [0, {arr.shape[0]}) or empty")

    def read_frames(self, video_id: str, start: int, stop: int) -> np.ndarray:
        """Frames [start, stop) as uint8 (stop-start, H, W, 3)."""
        arr = self.frames(video_id)
        self._check_range(arr, start, stop, f"frames of video {video_id}")
        return arr[start:stop]

    def read_flow(self, video_id: str, start: int, stop: int) -> np.ndarray:
        """Flow of pairs [start, stop) decoded to float32 px (stop-start, H, W, 2)."""
        arr = self.flow(video_id)
        self._check_range(arr, start, stop, f"flow of video {video_id}")
        return decode_flow(arr[start:stop], float(arr.attrs["scale"]))

    def read_pair_error(self, video_id: str) -> np.ndarray:
        """Photometric warp error of every pair, float32 (T-1,)."""
        return integrity.open_checked(self, video_id, "pair_error")[:]

    def read_cut(self, video_id: str) -> np.ndarray:
        """Shot-cut flags of every pair, bool (T-1,). Written by finalize: an incomplete video raises."""
        if not self.is_complete(video_id):
            self.require_attrs(video_id)
            raise StoreError(f"{self.path}: video {video_id!r} is incomplete; its cut flags are not written yet")
        return integrity.open_checked(self, video_id, "cut")[:]

    def open_dask(self, video_id: str, name: layout.ArrayName) -> da.Array:
        """A stored array as a dask array with one chunk per shard, (S, H, W, C) (or (S,) for 1-D arrays).

        Values are as stored: ``flow`` is int16 fixed point (decode blocks with ``decode_flow``).
        """
        import dask.array as da  # here, not at the top: dask takes seconds to import and most readers never need it

        arr = integrity.open_checked(self, video_id, name)
        return da.from_zarr(arr, chunks=(writing.shard_len(arr), *arr.shape[1:]))


def _reopen(cfg: StoreConfig) -> VideoStore:
    return VideoStore.open(cfg, create=False)
