"""A complete video's manifest and the checks against it (:meth:`VideoStore.check_video`, :meth:`VideoStore.verify`).

``finalize`` writes the manifest: every storage object of every array the layout defines, with its size and
blake2b digest, so a reader can tell a lost or cut-short shard from fill values. The functions here take the
:class:`~storage.store.VideoStore` they work on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from cpfs.errors import StoreError

from . import layout
from .records import ShardDamage, StoreVerification

if TYPE_CHECKING:
    from .io import StoreIO


def array_specs(attrs: Mapping[str, Any]) -> dict[str, layout.ArraySpec]:
    """The array specs of a video, from its group attributes (geometry and layout)."""
    return layout.video_arrays(int(attrs["n_frames"]), int(attrs["height"]), int(attrs["width"]),
                               int(attrs["layout"]["shard_frames"]))


def manifest(store: StoreIO, video_id: str, attrs: Mapping[str, Any]) -> dict[str, list[list]] | None:
    """Every object of every array the layout defines, ``{array: [[key, size, digest], ...]}``, read
    from the store now. Raises StoreError naming the first object that is missing."""
    out: dict[str, list[list]] = {}
    for name, spec in array_specs(attrs).items():
        entries = []
        for obj in layout.storage_objects(spec):
            data = sync(store.zarr_store.get(f"{layout.array_path(video_id, name)}/{obj.key}",
                                         prototype=default_buffer_prototype()))
            if data is None:
                raise StoreError(
                    f"{store.path}: cannot finalize video {video_id!r}: "
                    f"{ShardDamage(video_id, name, obj.key, obj.start, obj.stop, 'missing')}")
            raw = data.to_bytes()
            entries.append([obj.key, len(raw), hashlib.blake2b(raw, digest_size=16).hexdigest()])
        out[name] = entries
    return out


def check_arrays(store: StoreIO, video_id: str, attrs: Mapping[str, Any], names: list[str] | None,
                 full: bool) -> tuple[list[ShardDamage], int, int]:
    """Compare the stored objects of a complete video's arrays (``names``; None: all the layout defines)
    with its manifest: presence and size, and with ``full`` the digest of the bytes. Returns the
    problems, the objects checked and their bytes. A video completed before manifests existed (no
    ``shard_counts`` in its completion record) has nothing to compare with: no problems."""
    counts = attrs.get("shard_counts")
    if counts is None:
        return [], 0, 0
    doc = store.read_json(f"{layout.manifest_path(video_id)}/zarr.json")
    listing = (doc or {}).get("attributes", {}).get("objects")
    if not isinstance(listing, dict):
        return [ShardDamage(video_id, "manifest", "", 0, 0,
                            f"missing ({layout.manifest_path(video_id)}/zarr.json)")], 0, 0
    specs = array_specs(attrs)
    problems: list[ShardDamage] = []
    n_objects = n_bytes = 0
    for name in names if names is not None else list(specs):
        objects = layout.storage_objects(specs[name])
        listed = listing.get(name)
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
                data = sync(store.zarr_store.get(full_key, prototype=default_buffer_prototype()))
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
                    got = sync(store.zarr_store.getsize(full_key))
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


def damaged_error(store: StoreIO, video_id: str, attrs: Mapping[str, Any], damage: list[ShardDamage]) -> StoreError:
    """The StoreError a reader raises for a damaged complete video: its first problem, and how to repair it."""
    more = f" (and {len(damage) - 1} more)" if len(damage) > 1 else ""
    return StoreError(
        f"{store.path}: video {video_id!r} ({attrs.get('source_path', '?')}) is damaged: {damage[0]}{more}. "
        f"Its stored data cannot be trusted; `cpfs verify --store {store.path}` lists every damaged video, "
        "and ingesting the video's source again repairs it")


def open_checked(store: StoreIO, video_id: str, name: str) -> zarr.Array:
    """One array of a video (``StoreIO.open_array``). The first time an array of a complete video is opened
    through a store, its objects are checked against the manifest (present, same size; see ``check_video``):
    a missing or cut-short shard raises StoreError naming the video and the range instead of reading as fill
    values. Writes store every object, even one of fill values only, so a complete video holds exactly the
    objects its manifest lists."""
    arr = store.open_array(video_id, name)
    if (video_id, name) not in store.checked:
        attrs = store.group_attrs(video_id) or {}
        if attrs.get("status") == "complete":
            damage = check_arrays(store, video_id, attrs, [name], full=False)[0]
            if damage:
                raise damaged_error(store, video_id, attrs, damage)
            store.checked.add((video_id, name))
    return arr


def check_video(store: StoreIO, video_id: str, full: bool) -> list[ShardDamage]:
    """See :meth:`VideoStore.check_video`."""
    attrs = store.require_attrs(video_id)
    if attrs.get("status") != "complete":
        raise StoreError(f"{store.path}: video {video_id!r} is incomplete: nothing to check yet")
    return check_arrays(store, video_id, attrs, None, full)[0]


def verify(store: StoreIO, full: bool) -> StoreVerification:
    """See :meth:`VideoStore.verify`."""
    checked, unverifiable, incomplete = [], [], []
    damaged: dict[str, tuple[ShardDamage, ...]] = {}
    n_objects = n_bytes = 0
    for vid in store.video_ids():
        attrs = store.group_attrs(vid) or {}
        if attrs.get("status") != "complete":
            incomplete.append(vid)
            continue
        if attrs.get("shard_counts") is None:
            unverifiable.append(vid)
            continue
        problems, n, b = check_arrays(store, vid, attrs, None, full)
        checked.append(vid)
        n_objects, n_bytes = n_objects + n, n_bytes + b
        if problems:
            damaged[vid] = tuple(problems)
    return StoreVerification(store=store.path, checked=tuple(checked), damaged=damaged,
                             unverifiable=tuple(unverifiable), incomplete=tuple(incomplete),
                             n_objects=n_objects, n_bytes=n_bytes, full=full)
