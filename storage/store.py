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
steps (the orchestrator calls them once).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

import cpfs
from cpfs.config import StoreConfig
from cpfs.motion import motion_statistics
from cpfs.errors import StoreError
from cpfs.records import FrameRange, VideoRecord

from . import layout
from .fixed_point import decode_flow, encode_flow

BeginStatus = Literal["created", "resumed", "complete"]

# Group attributes of an incomplete video that are NOT compared when deciding whether it can be resumed;
# every other attribute (the caller's provenance and settings, the record's geometry, the layout) must be
# equal, so the shards already written were produced the same way.
VOLATILE_ATTRS = frozenset({"created_at", "status"})
# Attributes the store writes itself. begin_video's attrs may not set them; finalize's extra_attrs may
# repeat them only with the value the store writes (e.g. the same n_cuts).
STORE_ATTRS = frozenset(
    {
        "video_id", "source_path", "source_kind", "source_meta", "size_bytes", "n_frames", "height", "width",
        "backend", "layout", "created_at", "status", "completed_at", "n_cuts", "clipped_pixels", "shard_counts",
    }
)
MANIFEST_DIGEST = "blake2b-128"  # digest of each storage object in a video's manifest (hashlib.blake2b, 16 bytes)


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


@dataclass(frozen=True)
class ShardDamage:
    """One problem found in a complete video's stored objects (see :meth:`VideoStore.check_video`)."""

    video_id: str
    array: str  # "frames", "flow", ...; "manifest" when the manifest itself is missing or wrong
    key: str  # the object's key relative to the array ("c/1/0/0/0"); "" for the manifest
    start: int  # axis-0 range the object holds: frames for "frames", pairs for the per-pair arrays
    stop: int
    problem: str  # "missing", "size ... (manifest: ...)", "digest differs", ...

    def __str__(self) -> str:
        if self.array == "manifest":
            return f"manifest: {self.problem}"
        unit = "frames" if self.array == "frames" else "pairs"
        return f"{self.array} {unit} [{self.start}, {self.stop}) (object {self.array}/{self.key}): {self.problem}"


@dataclass(frozen=True)
class StoreVerification:
    """What :meth:`VideoStore.verify` found: damaged complete videos, and what was checked."""

    store: str
    checked: tuple[str, ...]  # complete videos checked against their manifests
    damaged: dict[str, tuple[ShardDamage, ...]]  # video id -> its problems (only videos with problems)
    unverifiable: tuple[str, ...]  # complete videos stored before manifests existed: nothing to check against
    incomplete: tuple[str, ...]  # videos whose ingest has not finished (invisible to readers; not damage)
    n_objects: int  # storage objects checked
    n_bytes: int  # bytes checked
    full: bool  # digests compared (True) or only presence and sizes (False)

    @property
    def ok(self) -> bool:
        return not self.damaged


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _json_normalise(value: Any, what: str) -> Any:
    """``value`` as it reads back from a JSON attribute document (tuples become lists, keys sorted)."""
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable ({e})") from e


def _settings_hash(attrs: Mapping[str, Any]) -> str:
    """Hash of what determines a video's stored data: its settings, backend, geometry and layout."""
    keys = ("settings", "backend", "n_frames", "height", "width", "layout")
    doc = json.dumps({k: attrs.get(k) for k in keys}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _group_doc(attributes: dict) -> dict:
    """A Zarr v3 group metadata document: markers are written as tiny groups, one key each, in one put."""
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes}


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _missing(ranges: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Sub-ranges of [0, length) not covered by ``ranges``."""
    gaps, pos = [], 0
    for a, b in _merge(ranges):
        if a > pos:
            gaps.append((pos, min(a, length)))
        pos = max(pos, b)
    if pos < length:
        gaps.append((pos, length))
    return [g for g in gaps if g[0] < g[1]]


class VideoStore:
    """A CPFS Zarr store at a local folder or an fsspec URL. Build it with :meth:`VideoStore.open`."""

    def __init__(self, cfg: StoreConfig, store: Store) -> None:
        self.cfg = cfg
        self.path = cfg.path  # as given: used in every error message
        self._store = store
        self._checked: set[tuple[str, str]] = set()  # (video, array) of complete videos found intact here

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
            root = self._read_json("zarr.json")
            if root is None:
                if not create:
                    raise StoreError(
                        f"{self.path}: store does not exist or is not a cpfs store "
                        "(no zarr.json; open with create=True to make one)"
                    )
                if self._list_dir(""):
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

    @property
    def format_version(self) -> int:
        """The store's format version (``storage.layout.FORMAT_VERSION`` for a store made by this code)."""
        root = self._read_json("zarr.json") or {}
        return int(root.get("attributes", {}).get(layout.ROOT_ATTR, {}).get("format_version", 0))

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

    # ------------------------------------------------------------------ raw key access

    def _read_json(self, key: str) -> dict | None:
        buf = sync(self._store.get(key, prototype=default_buffer_prototype()))
        if buf is None:
            return None
        try:
            return json.loads(buf.to_bytes())
        except ValueError as e:
            raise StoreError(f"{self.path}: corrupt metadata document {key} ({e})") from e

    def _write_json(self, key: str, doc: dict) -> None:
        data = json.dumps(doc, indent=2, sort_keys=True).encode()
        sync(self._store.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def _list_dir(self, prefix: str) -> list[str]:
        async def collect() -> list[str]:
            return [k async for k in self._store.list_dir(prefix)]

        return sync(collect())

    def _group_attrs(self, video_id: str) -> dict | None:
        doc = self._read_json(f"{layout.video_path(video_id)}/zarr.json")
        return None if doc is None else doc.get("attributes", {})

    def _require_attrs(self, video_id: str) -> dict:
        attrs = self._group_attrs(video_id)
        if attrs is None:
            raise StoreError(f"{self.path}: unknown video {video_id!r}")
        return attrs

    def _require_incomplete(self, video_id: str) -> dict:
        attrs = self._require_attrs(video_id)
        if attrs.get("status") == "complete":
            raise StoreError(f"{self.path}: video {video_id!r} is complete; delete it before writing it again")
        return attrs

    def _array(self, video_id: str, name: str) -> zarr.Array:
        """Open one array of a video. Writes store every object, even one of fill values only, so a complete
        video holds exactly the objects its manifest lists. The first time an array of a complete video is
        opened here, its objects are checked against the manifest (present, same size; see ``check_video``):
        a missing or cut-short shard raises StoreError naming the video and the range instead of reading
        as fill values."""
        key = layout.array_path(video_id, name)
        try:
            arr = zarr.open_array(self._store, path=key, zarr_format=3).with_config({"write_empty_chunks": True})
        except (KeyError, FileNotFoundError, zarr.errors.ArrayNotFoundError) as e:
            if self._group_attrs(video_id) is None:
                raise StoreError(f"{self.path}: unknown video {video_id!r}") from e
            raise StoreError(f"{self.path}: video {video_id!r} has no {name!r} array (an interrupted create?)") from e
        if (video_id, name) not in self._checked:
            attrs = self._group_attrs(video_id) or {}
            if attrs.get("status") == "complete":
                damage = self._check_arrays(video_id, attrs, [name], full=False)[0]
                if damage:
                    raise self._damaged_error(video_id, attrs, damage)
                self._checked.add((video_id, name))
        return arr

    # ------------------------------------------------------------------ integrity

    def _specs(self, attrs: Mapping[str, Any]) -> dict[str, layout.ArraySpec]:
        return layout.video_arrays(int(attrs["n_frames"]), int(attrs["height"]), int(attrs["width"]),
                                   int(attrs["layout"]["shard_frames"]))

    def _manifest(self, video_id: str, attrs: Mapping[str, Any]) -> dict[str, list[list]] | None:
        """Every object of every array the layout defines, ``{array: [[key, size, digest], ...]}``, read
        from the store now. Raises StoreError naming the first object that is missing."""
        out: dict[str, list[list]] = {}
        for name, spec in self._specs(attrs).items():
            entries = []
            for obj in layout.storage_objects(spec):
                data = sync(self._store.get(f"{layout.array_path(video_id, name)}/{obj.key}",
                                            prototype=default_buffer_prototype()))
                if data is None:
                    raise StoreError(
                        f"{self.path}: cannot finalize video {video_id!r}: "
                        f"{ShardDamage(video_id, name, obj.key, obj.start, obj.stop, 'missing')}")
                raw = data.to_bytes()
                entries.append([obj.key, len(raw), hashlib.blake2b(raw, digest_size=16).hexdigest()])
            out[name] = entries
        return out

    def _check_arrays(self, video_id: str, attrs: Mapping[str, Any], names: list[str] | None,
                      full: bool) -> tuple[list[ShardDamage], int, int]:
        """Compare the stored objects of a complete video's arrays (``names``; None: all the layout defines)
        with its manifest: presence and size, and with ``full`` the digest of the bytes. Returns the
        problems, the objects checked and their bytes. A video completed before manifests existed (no
        ``shard_counts`` in its completion record) has nothing to compare with: no problems."""
        counts = attrs.get("shard_counts")
        if counts is None:
            return [], 0, 0
        doc = self._read_json(f"{layout.manifest_path(video_id)}/zarr.json")
        manifest = (doc or {}).get("attributes", {}).get("objects")
        if not isinstance(manifest, dict):
            return [ShardDamage(video_id, "manifest", "", 0, 0,
                                f"missing ({layout.manifest_path(video_id)}/zarr.json)")], 0, 0
        specs = self._specs(attrs)
        problems: list[ShardDamage] = []
        n_objects = n_bytes = 0
        for name in names if names is not None else list(specs):
            objects = layout.storage_objects(specs[name])
            listed = manifest.get(name)
            if not isinstance(listed, list) or len(listed) != len(objects) or counts.get(name) != len(objects):
                problems.append(ShardDamage(video_id, "manifest", "", 0, 0,
                                            f"does not list the {len(objects)} objects of array {name!r}"))
                continue
            for obj, (key, size, digest) in zip(objects, listed):
                full_key = f"{layout.array_path(video_id, name)}/{obj.key}"
                bad = None
                if key != obj.key:
                    bad = f"manifest lists {key!r} here"
                elif full:
                    data = sync(self._store.get(full_key, prototype=default_buffer_prototype()))
                    if data is None:
                        bad = "missing"
                    else:
                        raw = data.to_bytes()
                        n_bytes += len(raw)
                        if len(raw) != size:
                            bad = f"{len(raw)} bytes (manifest: {size})"
                        elif hashlib.blake2b(raw, digest_size=16).hexdigest() != digest:
                            bad = "contents differ from the manifest's digest"
                else:
                    try:
                        got = sync(self._store.getsize(full_key))
                    except (FileNotFoundError, KeyError):
                        got = None
                    if got is None:
                        bad = "missing"
                    else:
                        n_bytes += got
                        if got != size:
                            bad = f"{got} bytes (manifest: {size})"
                n_objects += 1
                if bad is not None:
                    problems.append(ShardDamage(video_id, name, obj.key, obj.start, obj.stop, bad))
        return problems, n_objects, n_bytes

    def _damaged_error(self, video_id: str, attrs: Mapping[str, Any], damage: list[ShardDamage]) -> StoreError:
        more = f" (and {len(damage) - 1} more)" if len(damage) > 1 else ""
        return StoreError(
            f"{self.path}: video {video_id!r} ({attrs.get('source_path', '?')}) is damaged: {damage[0]}{more}. "
            f"Its stored data cannot be trusted; `cpfs verify --store {self.path}` lists every damaged video, "
            "and ingesting the video's source again repairs it")

    def check_video(self, video_id: str, *, full: bool = True) -> list[ShardDamage]:
        """Problems of a complete video's stored objects, against the manifest written by ``finalize``: a
        missing object, another size, and with ``full`` other bytes (blake2b digest). Empty: intact, or
        completed before manifests existed (``unverifiable``). An incomplete video raises StoreError."""
        attrs = self._require_attrs(video_id)
        if attrs.get("status") != "complete":
            raise StoreError(f"{self.path}: video {video_id!r} is incomplete: nothing to check yet")
        return self._check_arrays(video_id, attrs, None, full)[0]

    def verify(self, *, full: bool = True) -> StoreVerification:
        """Check every complete video against its manifest (see :meth:`check_video`); reads every stored
        object with ``full``. Writes nothing."""
        checked, unverifiable, incomplete = [], [], []
        damaged: dict[str, tuple[ShardDamage, ...]] = {}
        n_objects = n_bytes = 0
        for vid in self.video_ids():
            attrs = self._group_attrs(vid) or {}
            if attrs.get("status") != "complete":
                incomplete.append(vid)
                continue
            if attrs.get("shard_counts") is None:
                unverifiable.append(vid)
                continue
            problems, n, b = self._check_arrays(vid, attrs, None, full)
            checked.append(vid)
            n_objects, n_bytes = n_objects + n, n_bytes + b
            if problems:
                damaged[vid] = tuple(problems)
        return StoreVerification(store=self.path, checked=tuple(checked), damaged=damaged,
                                 unverifiable=tuple(unverifiable), incomplete=tuple(incomplete),
                                 n_objects=n_objects, n_bytes=n_bytes, full=full)

    # ------------------------------------------------------------------ listing

    def video_ids(self) -> list[str]:
        """Ids of every video group, complete or not, sorted."""
        return sorted(n for n in self._list_dir(layout.VIDEOS) if n != "zarr.json")

    def is_complete(self, video_id: str) -> bool:
        """Whether the video is stored completely (its group's ``status`` attribute is ``"complete"``)."""
        attrs = self._group_attrs(video_id)
        return attrs is not None and attrs.get("status") == "complete"

    def complete_ids(self) -> list[str]:
        """Ids of the complete videos, sorted."""
        return [v for v in self.video_ids() if self.is_complete(v)]

    # ------------------------------------------------------------------ writing

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
        video_id = layout.check_video_id(record.video_id)
        specs = layout.video_arrays(record.n_frames, record.height, record.width, self.cfg.shard_frames)
        given = self._begin_attrs(video_id, attrs, backend, settings)
        if self.is_complete(video_id):
            return "complete"
        new = {
            "cpfs_version": cpfs.__version__,
            **given,
            "video_id": video_id,
            "source_path": record.source.path,
            "source_kind": record.source.kind,
            "source_meta": asdict(record.meta),
            "size_bytes": record.size_bytes,
            "n_frames": record.n_frames,
            "height": record.height,
            "width": record.width,
            "backend": given["settings"]["flow_backend"],
            "layout": {
                "format_version": layout.FORMAT_VERSION,
                "shard_frames": self.cfg.shard_frames,
                "flow_scale": self.cfg.flow_scale,
                "flow_bound": self.cfg.flow_bound,
            },
            "created_at": _now(),
            "status": "incomplete",
        }
        new = _json_normalise(new, f"attributes of video {video_id}")
        old = self._group_attrs(video_id)
        if old is not None:
            same = {k: v for k, v in old.items() if k not in VOLATILE_ATTRS} == {
                k: v for k, v in new.items() if k not in VOLATILE_ATTRS
            }
            if same and self._arrays_intact(video_id, specs):
                return "resumed"
            self.delete_video(video_id)
        try:
            zarr.create_group(self._store, path=layout.video_path(video_id), attributes=new)
            for spec in specs.values():
                zarr.create_array(
                    self._store,
                    name=layout.array_path(video_id, spec.name),
                    shape=spec.shape,
                    dtype=spec.dtype,
                    chunks=spec.chunks,
                    shards=spec.shards,
                    compressors=spec.compressor,
                    fill_value=spec.fill_value,
                    dimension_names=spec.dims,
                    attributes=self._array_attrs(spec.name),
                )
            self._write_json(f"{layout.done_path(video_id)}/zarr.json", _group_doc({}))
            self._write_json(f"{layout.clipped_path(video_id)}/zarr.json", _group_doc({}))
        except OSError as e:
            raise StoreError(f"{self.path}: cannot create video {video_id!r} ({type(e).__name__}: {e})") from e
        return "created"

    @staticmethod
    def _begin_attrs(
        video_id: str, attrs: Mapping[str, Any] | None, backend: str | None, settings: Mapping[str, Any] | None
    ) -> dict:
        """Validate begin_video's attributes; apply the backend/settings shorthand."""
        given = dict(attrs or {})
        if backend is not None or settings is not None:
            if "settings" in given:
                raise ValueError(f"video {video_id}: give settings in attrs or as keywords, not both")
            if backend is None:
                raise ValueError(f"video {video_id}: settings given without backend")
            given["settings"] = {**(settings or {}), "flow_backend": backend}
        clash = sorted(STORE_ATTRS & given.keys())
        if clash:
            raise ValueError(f"attributes of video {video_id} may not set store-owned keys {clash}")
        st = given.get("settings")
        if not isinstance(st, Mapping) or not isinstance(st.get("flow_backend"), str) or not st["flow_backend"]:
            raise ValueError(
                f"attributes of video {video_id} need attrs['settings']['flow_backend'] naming the concrete "
                f"flow backend (got settings={st!r})"
            )
        return given

    def _array_attrs(self, name: str) -> dict:
        if name == "flow":
            return {"scale": self.cfg.flow_scale, "bound": self.cfg.flow_bound, "units": "px", "clipped_pixels": None}
        if name == "pair_error":
            return {"description": "photometric warp error of frame t+1 warped to frame t"}
        if name == "cut":
            return {"description": "pair (t, t+1) straddles a shot cut"}
        if name == "motion":
            return {"description": "motion statistics of each pair (cpfs.motion)", "columns": list(layout.MOTION_COLUMNS)}
        return {}

    def _arrays_intact(self, video_id: str, specs: dict[str, layout.ArraySpec]) -> bool:
        for spec in specs.values():
            try:
                arr = zarr.open_array(self._store, path=layout.array_path(video_id, spec.name), zarr_format=3)
            except (KeyError, FileNotFoundError, zarr.errors.ArrayNotFoundError):
                return False
            if arr.shape != spec.shape or arr.dtype != np.dtype(spec.dtype) or arr.shards != spec.shards:
                return False
        return all(
            self._read_json(f"{p}/zarr.json") is not None
            for p in (layout.done_path(video_id), layout.clipped_path(video_id))
        )

    @contextmanager
    def _writing(self, video_id: str, what: str) -> Iterator[None]:
        """Turn an OSError of a write (disk full, permission, a blocked path) into a StoreError naming it.
        The video stays incomplete: its completion marker is only ever the last write of finalize."""
        try:
            yield
        except OSError as e:
            raise StoreError(
                f"{self.path}: cannot write {what} of video {video_id!r} ({type(e).__name__}: {e}); "
                "the video stays incomplete"
            ) from e

    @staticmethod
    def _shard_len(arr: zarr.Array) -> int:
        return (arr.shards or arr.chunks)[0]

    def write_frames(self, video_id: str, start: int, frames: np.ndarray) -> None:
        """Write decoded frames [start, start+n) of an incomplete video in one call.

        Args:
            frames: uint8 (n, H, W, 3); ``start`` and ``n`` shard-aligned (``start % S == 0`` and ``n % S == 0``
                unless the block ends at frame T).
        """
        self._require_incomplete(video_id)
        arr = self._array(video_id, "frames")
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != arr.shape[1:]:
            raise ValueError(
                f"frames of video {video_id}: expected uint8 (n, {', '.join(map(str, arr.shape[1:]))}), "
                f"got {frames.dtype} {frames.shape}"
            )
        layout.check_aligned(start, frames.shape[0], arr.shape[0], self._shard_len(arr), f"frames of video {video_id}")
        with self._writing(video_id, f"frames [{start}, {start + frames.shape[0]})"):
            arr[start : start + frames.shape[0]] = frames

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
        self._require_incomplete(video_id)
        arr = self._array(video_id, "flow")
        flow = np.asarray(flow)
        if flow.ndim != 4 or flow.shape[1:] != arr.shape[1:]:
            raise ValueError(
                f"flow of video {video_id}: expected (n, {', '.join(map(str, arr.shape[1:]))}), got {flow.shape}"
            )
        pair_error = np.asarray(pair_error)
        if pair_error.shape != (flow.shape[0],) or not np.issubdtype(pair_error.dtype, np.floating):
            raise ValueError(
                f"pair_error of video {video_id}: expected float ({flow.shape[0]},), "
                f"got {pair_error.dtype} {pair_error.shape}"
            )
        n, s = flow.shape[0], self._shard_len(arr)
        layout.check_aligned(start, n, arr.shape[0], s, f"flow of video {video_id}")
        scale, bound = float(arr.attrs["scale"]), float(arr.attrs["bound"])
        q = np.empty(flow.shape, np.int16)  # (n, H, W, 2)
        counts: dict[tuple[int, int], int] = {}  # (first pair, stop pair) of each shard -> clipped pixels
        for a in range(0, n, s):  # encode shard by shard to count clipped pixels per shard
            b = min(a + s, n)
            q[a:b], counts[(start + a, start + b)] = encode_flow(flow[a:b], scale, bound)
        with self._writing(video_id, f"flow of pairs [{start}, {start + n})"):
            arr[start : start + n] = q  # one write for the whole block
            self._array(video_id, "pair_error")[start : start + n] = pair_error.astype(np.float32)
            self._array(video_id, "motion")[start : start + n] = motion_statistics(flow)
            for (a, b), c in counts.items():  # after the data: a count never describes unwritten flow
                key = f"{layout.clipped_path(video_id)}/{a}-{b}/zarr.json"
                self._write_json(key, _group_doc({"clipped_pixels": c}))
        return sum(counts.values())

    def add_motion(self, video_id: str, stats: np.ndarray) -> None:
        """Give a complete video of a version-1 store (made before motion statistics existed) its ``motion``
        array, all pairs at once: the only write allowed on a complete video, since it adds derived data
        and changes nothing stored. A video that already has one raises StoreError."""
        attrs = self._require_attrs(video_id)
        if attrs.get("status") != "complete":
            raise StoreError(f"{self.path}: video {video_id!r} is incomplete; rerun its ingest instead")
        if self.has_motion(video_id):
            raise StoreError(f"{self.path}: video {video_id!r} already has motion statistics")
        t = int(attrs["n_frames"])
        spec = layout.video_arrays(t, int(attrs["height"]), int(attrs["width"]), int(attrs["layout"]["shard_frames"]))["motion"]
        with self._writing(video_id, "motion statistics"):
            arr = zarr.create_array(
                self._store, name=layout.array_path(video_id, "motion"), shape=spec.shape, dtype=spec.dtype,
                chunks=spec.chunks, shards=spec.shards, compressors=spec.compressor, fill_value=spec.fill_value,
                dimension_names=spec.dims, attributes=self._array_attrs("motion"))
            arr[:] = self._check_motion(video_id, 0, stats, t - 1)

    def _check_motion(self, video_id: str, start: int, stats: np.ndarray, n_pairs: int) -> np.ndarray:
        stats = np.asarray(stats, dtype=np.float32)
        k = len(layout.MOTION_COLUMNS)
        if stats.ndim != 2 or stats.shape[1] != k or start + stats.shape[0] > n_pairs:
            raise ValueError(f"motion of video {video_id}: expected float (n, {k}) within {n_pairs} pairs, got {stats.shape} at {start}")
        return stats

    def has_motion(self, video_id: str) -> bool:
        """Whether the video has its ``motion`` array (always, unless the store predates format version 2)."""
        return self._read_json(f"{layout.array_path(video_id, 'motion')}/zarr.json") is not None

    def read_motion(self, video_id: str) -> np.ndarray:
        """Motion statistics of every pair, float32 (T-1, len(MOTION_COLUMNS)) (columns: ``layout.MOTION_COLUMNS``).

        A video stored before motion statistics existed raises StoreError saying how to add them."""
        if not self.has_motion(video_id):
            self._require_attrs(video_id)
            raise StoreError(
                f"{self.path}: video {video_id!r} has no motion statistics (the store was written by an older "
                f"version, format {self.format_version}); add them with `cpfs upgrade --store {self.path}`")
        return self._array(video_id, "motion")[:]

    def set_format_version(self, version: int) -> None:
        """Record the store's format version (``cpfs upgrade`` sets it once every video has what it needs)."""
        if version not in layout.READABLE_FORMAT_VERSIONS:
            raise ValueError(f"unknown format version {version}")
        root = zarr.open_group(self._store, mode="r+")
        root.update_attributes({layout.ROOT_ATTR: {"format_version": int(version)}})

    def count_clipped(self, video_id: str) -> int:
        """Clipped flow pixels of the video so far: the sum of the stored per-shard counts."""
        self._require_attrs(video_id)
        total = 0
        for name in self._list_dir(layout.clipped_path(video_id)):
            if layout.parse_range_name(name) is not None:
                doc = self._read_json(f"{layout.clipped_path(video_id)}/{name}/zarr.json") or {}
                total += int(doc.get("attributes", {}).get("clipped_pixels", 0))
        return total

    def mark_done(self, video_id: str, kind: layout.MarkerKind, frame_range: FrameRange) -> None:
        """Record that ``kind`` of ``frame_range`` is written: "frames": frames [start, stop); "flow": flow and
        pair_error of the pairs t -> t+1 with t in [start, min(stop, T-1)).

        The range is shard-aligned and may end at T (or T-1 for "flow"). Each marker is its own key,
        ``videos/<id>/done/<kind>-<start>-<stop>/zarr.json``.
        """
        if frame_range.video_id != video_id:
            raise ValueError(f"mark_done: range of video {frame_range.video_id!r} given for video {video_id!r}")
        name = layout.marker_name(kind, frame_range.start, frame_range.stop)
        self._require_incomplete(video_id)
        arr = self._array(video_id, "frames")
        t, s = arr.shape[0], self._shard_len(arr)
        start, stop = frame_range.start, frame_range.stop
        end = t - 1 if kind == "flow" and stop == t - 1 else t  # a flow range may end at the last pair
        layout.check_aligned(start, stop - start, end, s, f"{kind} marker of video {video_id}")
        doc = _group_doc({"kind": kind, "start": start, "stop": stop, "written_at": _now()})
        with self._writing(video_id, f"marker {name}"):
            self._write_json(f"{layout.done_path(video_id)}/{name}/zarr.json", doc)

    def done_ranges(self, video_id: str, kind: layout.MarkerKind) -> list[tuple[int, int]]:
        """The ``(start, stop)`` frame ranges marked done for ``kind``, sorted (as marked, not merged)."""
        if kind not in layout.MARKER_KINDS:
            raise ValueError(f"unknown marker kind {kind!r} (expected one of {', '.join(layout.MARKER_KINDS)})")
        self._require_attrs(video_id)
        out = []
        for name in self._list_dir(layout.done_path(video_id)):
            parsed = layout.parse_marker_name(name)
            if parsed is not None and parsed[0] == kind:
                out.append((parsed[1], parsed[2]))
        return sorted(out)

    def finalize(
        self,
        video_id: str,
        cut: np.ndarray,
        clipped_pixels: int | None = None,
        extra_attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the cut flags and the last attributes, then mark the video complete (last write).

        Requires done markers covering every frame and every pair; raises StoreError naming the gaps.

        Args:
            cut: bool (T-1,), pair t straddles a shot cut.
            clipped_pixels: total clipped flow pixels; None: :meth:`count_clipped`.
            extra_attrs: more JSON attributes for the video group (e.g. timings). Store-owned keys
                (``STORE_ATTRS``) may appear only with the value the store writes.
        """
        attrs = self._require_incomplete(video_id)
        t = attrs["n_frames"]
        cut = np.asarray(cut)
        if cut.dtype != np.bool_ or cut.shape != (t - 1,):
            raise ValueError(f"cut of video {video_id}: expected bool ({t - 1},), got {cut.dtype} {cut.shape}")
        for kind, length in (("frames", t), ("flow", t - 1)):
            ranges = [(a, min(b, length)) for a, b in self.done_ranges(video_id, kind)]
            gaps = _missing(ranges, length)
            if gaps:
                raise StoreError(
                    f"{self.path}: cannot finalize video {video_id!r}: "
                    f"{'frames' if kind == 'frames' else 'flow of pairs'} {gaps} not marked done"
                )
        clipped = self.count_clipped(video_id) if clipped_pixels is None else int(clipped_pixels)
        final = {"n_cuts": int(cut.sum()), "clipped_pixels": clipped, "status": "complete", "completed_at": _now()}
        extra = _json_normalise(dict(extra_attrs or {}), f"extra attributes of video {video_id}")
        clash = sorted(k for k in STORE_ATTRS & extra.keys() if extra[k] != final.get(k, attrs.get(k)))
        if clash:
            raise ValueError(
                f"extra attributes of video {video_id} may not change store-owned keys "
                + ", ".join(f"{k}={extra[k]!r} (store: {final.get(k, attrs.get(k))!r})" for k in clash)
            )
        with self._writing(video_id, "cut flags and completion"):
            self._array(video_id, "cut")[:] = cut
            self._array(video_id, "flow").update_attributes({"clipped_pixels": clipped})
            # The manifest: what was written, object by object, so a reader can tell a lost shard from zeros.
            manifest = self._manifest(video_id, attrs)
            self._write_json(f"{layout.manifest_path(video_id)}/zarr.json",
                             _group_doc({"digest": MANIFEST_DIGEST, "objects": manifest}))
            final["shard_counts"] = {name: len(objs) for name, objs in manifest.items()}
            group = zarr.open_group(self._store, path=layout.video_path(video_id), mode="r+")
            # One document write: the extra attributes and the completion marker land together, after all data.
            group.update_attributes({**extra, **final})

    def delete_video(self, video_id: str, *, force: bool = False) -> None:
        """Delete a video's group and everything under it. A complete video needs ``force=True``."""
        attrs = self._require_attrs(video_id)
        if attrs.get("status") == "complete" and not force:
            raise StoreError(f"{self.path}: video {video_id!r} is complete; pass force=True to delete it")
        sync(self._store.delete_dir(layout.video_path(video_id)))

    # ------------------------------------------------------------------ index

    def index(self) -> StoreIndex:
        """Scan the complete videos and build the index (does not write it)."""
        entries = []
        for vid in self.complete_ids():
            a = self._require_attrs(vid)
            entries.append(
                IndexEntry(
                    video_id=vid, source_path=a["source_path"], n_frames=a["n_frames"], height=a["height"],
                    width=a["width"], backend=a["backend"], n_cuts=a["n_cuts"], completed_at=a["completed_at"],
                    settings_hash=_settings_hash(a),
                )
            )
        return StoreIndex.from_entries(entries)

    def write_index(self) -> StoreIndex:
        """Scan, then store the index as the root attribute ``index``. Single writer: call it after videos finish."""
        idx = self.index()
        current = (self._read_json("zarr.json") or {}).get("attributes", {}).get(layout.INDEX_ATTR)
        if current is not None and StoreIndex.from_json(current) == idx:
            return idx  # unchanged: leave the root document (and its modification time) alone
        root = zarr.open_group(self._store, mode="r+")
        root.update_attributes({layout.INDEX_ATTR: idx.to_json()})
        return idx

    def read_index(self) -> StoreIndex:
        """The index stored by :meth:`write_index`; a fresh scan when none was written."""
        root = self._read_json("zarr.json") or {}
        doc = root.get("attributes", {}).get(layout.INDEX_ATTR)
        return StoreIndex.from_json(doc) if doc else self.index()

    # ------------------------------------------------------------------ reading

    def video_attrs(self, video_id: str) -> dict:
        """The video group's attributes (provenance, settings, status, ...)."""
        return self._require_attrs(video_id)

    def frames(self, video_id: str) -> zarr.Array:
        """The ``frames`` array (T, H, W, 3) uint8."""
        return self._array(video_id, "frames")

    def flow(self, video_id: str) -> zarr.Array:
        """The ``flow`` array (T-1, H, W, 2) int16 fixed point; decode with its ``scale`` attribute."""
        return self._array(video_id, "flow")

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
        return self._array(video_id, "pair_error")[:]

    def read_cut(self, video_id: str) -> np.ndarray:
        """Shot-cut flags of every pair, bool (T-1,). Written by finalize: an incomplete video raises."""
        if not self.is_complete(video_id):
            self._require_attrs(video_id)
            raise StoreError(f"{self.path}: video {video_id!r} is incomplete; its cut flags are not written yet")
        return self._array(video_id, "cut")[:]

    def open_dask(self, video_id: str, name: layout.ArrayName) -> da.Array:
        """A stored array as a dask array with one chunk per shard, (S, H, W, C) (or (S,) for 1-D arrays).

        Values are as stored: ``flow`` is int16 fixed point (decode blocks with ``decode_flow``).
        """
        arr = self._array(video_id, name)
        return da.from_zarr(arr, chunks=(self._shard_len(arr), *arr.shape[1:]))


def _reopen(cfg: StoreConfig) -> VideoStore:
    return VideoStore.open(cfg, create=False)
