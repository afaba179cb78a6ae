"""Writing one video: begin (create or resume), frames and flow by shard block, done markers, finalize, delete.

The functions behind :class:`~storage.store.VideoStore`'s writer life cycle (described in :mod:`storage.store`);
each takes the store it writes to. Only the group of the video being written is touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.core.sync import sync

import cpfs
from cpfs.errors import StoreError
from cpfs.motion import motion_statistics
from cpfs.records import DecodeErrors, FrameRange, VideoRecord

from . import layout
from .fixed_point import encode_flow
from .integrity import manifest, open_checked
from .records import (
    MANIFEST_DIGEST,
    STORE_ATTRS,
    VOLATILE_ATTRS,
    BeginStatus,
    group_doc,
    json_normalise,
    missing_ranges,
    utc_now,
)

if TYPE_CHECKING:
    from .io import StoreIO


def begin_video(
    store: StoreIO,
    record: VideoRecord,
    attrs: Mapping[str, Any] | None,
    backend: str | None,
    settings: Mapping[str, Any] | None,
) -> BeginStatus:
    """See :meth:`VideoStore.begin_video`."""
    video_id = layout.check_video_id(record.video_id)
    specs = layout.video_arrays(record.n_frames, record.height, record.width, store.cfg.shard_frames)
    given = begin_attrs(video_id, attrs, backend, settings)
    if store.is_complete(video_id):
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
            "shard_frames": store.cfg.shard_frames,
            "flow_scale": store.cfg.flow_scale,
            "flow_bound": store.cfg.flow_bound,
        },
        "created_at": utc_now(),
        "status": "incomplete",
    }
    new = json_normalise(new, f"attributes of video {video_id}")
    old = store.group_attrs(video_id)
    if old is not None:
        same = {k: v for k, v in old.items() if k not in VOLATILE_ATTRS} == {
            k: v for k, v in new.items() if k not in VOLATILE_ATTRS
        }
        if same and arrays_intact(store, video_id, specs):
            return "resumed"
        delete_video(store, video_id, False)
    try:
        zarr.create_group(store.zarr_store, path=layout.video_path(video_id), attributes=new)
        for spec in specs.values():
            zarr.create_array(
                store.zarr_store,
                name=layout.array_path(video_id, spec.name),
                shape=spec.shape,
                dtype=spec.dtype,
                chunks=spec.chunks,
                shards=spec.shards,
                compressors=spec.compressor,
                fill_value=spec.fill_value,
                dimension_names=spec.dims,
                attributes=array_attrs(store, spec.name),
            )
        store.write_json(f"{layout.done_path(video_id)}/zarr.json", group_doc({}))
        store.write_json(f"{layout.clipped_path(video_id)}/zarr.json", group_doc({}))
    except OSError as e:
        raise StoreError(f"{store.path}: cannot create video {video_id!r} ({type(e).__name__}: {e})") from e
    return "created"


def begin_attrs(
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


def array_attrs(store: StoreIO, name: str) -> dict:
    """The attributes an array of a new video is created with."""
    if name == "flow":
        return {"scale": store.cfg.flow_scale, "bound": store.cfg.flow_bound, "units": "px", "clipped_pixels": None}
    if name == "pair_error":
        return {"description": "photometric warp error of frame t+1 warped to frame t"}
    if name == "cut":
        return {"description": "pair (t, t+1) straddles a shot cut"}
    if name == "motion":
        return {"description": "motion statistics of each pair (cpfs.motion)", "columns": list(layout.MOTION_COLUMNS)}
    return {}


def arrays_intact(store: StoreIO, video_id: str, specs: dict[str, layout.ArraySpec]) -> bool:
    """Whether an incomplete video's arrays and marker groups exist with the shapes ``specs`` give."""
    for spec in specs.values():
        try:
            arr = zarr.open_array(store.zarr_store, path=layout.array_path(video_id, spec.name), zarr_format=3)
        except (KeyError, FileNotFoundError, zarr.errors.ArrayNotFoundError):
            return False
        if arr.shape != spec.shape or arr.dtype != np.dtype(spec.dtype) or arr.shards != spec.shards:
            return False
    return all(
        store.read_json(f"{p}/zarr.json") is not None
        for p in (layout.done_path(video_id), layout.clipped_path(video_id))
    )


@contextmanager
def writing(store: StoreIO, video_id: str, what: str) -> Iterator[None]:
    """Turn an OSError of a write (disk full, permission, a blocked path) into a StoreError naming it.
    The video stays incomplete: its completion marker is only ever the last write of finalize."""
    try:
        yield
    except OSError as e:
        raise StoreError(
            f"{store.path}: cannot write {what} of video {video_id!r} ({type(e).__name__}: {e}); "
            "the video stays incomplete"
        ) from e


def shard_len(arr: zarr.Array) -> int:
    """Axis-0 length of one shard of ``arr`` (of one chunk when it is not sharded)."""
    return (arr.shards or arr.chunks)[0]


def write_frames(store: StoreIO, video_id: str, start: int, frames: np.ndarray) -> None:
    """See :meth:`VideoStore.write_frames`."""
    store.require_incomplete(video_id)
    arr = open_checked(store, video_id, "frames")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != arr.shape[1:]:
        raise ValueError(
            f"frames of video {video_id}: expected uint8 (n, {', '.join(map(str, arr.shape[1:]))}), "
            f"got {frames.dtype} {frames.shape}"
        )
    layout.check_aligned(start, frames.shape[0], arr.shape[0], shard_len(arr), f"frames of video {video_id}")
    with writing(store, video_id, f"frames [{start}, {start + frames.shape[0]})"):
        arr[start : start + frames.shape[0]] = frames


def write_flow(store: StoreIO, video_id: str, start: int, flow: np.ndarray, pair_error: np.ndarray) -> int:
    """See :meth:`VideoStore.write_flow`."""
    store.require_incomplete(video_id)
    arr = open_checked(store, video_id, "flow")
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
    n, s = flow.shape[0], shard_len(arr)
    layout.check_aligned(start, n, arr.shape[0], s, f"flow of video {video_id}")
    scale, bound = float(arr.attrs["scale"]), float(arr.attrs["bound"])
    q = np.empty(flow.shape, np.int16)  # (n, H, W, 2)
    counts: dict[tuple[int, int], int] = {}  # (first pair, stop pair) of each shard -> clipped pixels
    for a in range(0, n, s):  # encode shard by shard to count clipped pixels per shard
        b = min(a + s, n)
        q[a:b], counts[(start + a, start + b)] = encode_flow(flow[a:b], scale, bound)
    with writing(store, video_id, f"flow of pairs [{start}, {start + n})"):
        arr[start : start + n] = q  # one write for the whole block
        open_checked(store, video_id, "pair_error")[start : start + n] = pair_error.astype(np.float32)
        open_checked(store, video_id, "motion")[start : start + n] = motion_statistics(flow)
        for (a, b), c in counts.items():  # after the data: a count never describes unwritten flow
            key = f"{layout.clipped_path(video_id)}/{a}-{b}/zarr.json"
            store.write_json(key, group_doc({"clipped_pixels": c}))
    return sum(counts.values())


def count_clipped(store: StoreIO, video_id: str) -> int:
    """See :meth:`VideoStore.count_clipped`."""
    store.require_attrs(video_id)
    total = 0
    for name in store.list_dir(layout.clipped_path(video_id)):
        if layout.parse_range_name(name) is not None:
            doc = store.read_json(f"{layout.clipped_path(video_id)}/{name}/zarr.json") or {}
            total += int(doc.get("attributes", {}).get("clipped_pixels", 0))
    return total


def decode_errors_doc(errors: DecodeErrors) -> dict:
    """The JSON form of ``errors`` (``layout.DECODE_ERRORS_ATTR``)."""
    return {"count": errors.count, "corrupt_source_frames": list(errors.corrupt),
            "damaged_frames": [list(r) for r in errors.damaged]}


def decode_errors_of(doc: Mapping[str, Any] | None) -> DecodeErrors:
    """``decode_errors_doc``'s inverse (None or an empty document: no errors)."""
    doc = doc or {}
    return DecodeErrors.of(doc.get("corrupt_source_frames", ()), doc.get("damaged_frames", ()))


def marked_decode_errors(store: StoreIO, video_id: str) -> DecodeErrors:
    """The union of the decode errors recorded with the video's "frames" markers."""
    out = DecodeErrors()
    for a, b in done_ranges(store, video_id, "frames"):
        doc = store.read_json(f"{layout.done_path(video_id)}/{layout.marker_name('frames', a, b)}/zarr.json") or {}
        out = out.union(decode_errors_of(doc.get("attributes", {}).get(layout.DECODE_ERRORS_ATTR)))
    return out


def decode_errors(store: StoreIO, video_id: str) -> DecodeErrors:
    """See :meth:`VideoStore.decode_errors`."""
    attrs = store.require_attrs(video_id)
    if attrs.get("status") == "complete":
        return decode_errors_of(attrs.get(layout.DECODE_ERRORS_ATTR))
    return marked_decode_errors(store, video_id)


def mark_done(store: StoreIO, video_id: str, kind: layout.MarkerKind, frame_range: FrameRange,
              errors: DecodeErrors | None = None) -> None:
    """See :meth:`VideoStore.mark_done`."""
    if frame_range.video_id != video_id:
        raise ValueError(f"mark_done: range of video {frame_range.video_id!r} given for video {video_id!r}")
    if errors and kind != "frames":
        raise ValueError(f"mark_done: decode errors go with a 'frames' marker, not {kind!r} (video {video_id})")
    name = layout.marker_name(kind, frame_range.start, frame_range.stop)
    store.require_incomplete(video_id)
    arr = open_checked(store, video_id, "frames")
    t, s = arr.shape[0], shard_len(arr)
    start, stop = frame_range.start, frame_range.stop
    end = t - 1 if kind == "flow" and stop == t - 1 else t  # a flow range may end at the last pair
    layout.check_aligned(start, stop - start, end, s, f"{kind} marker of video {video_id}")
    attrs = {"kind": kind, "start": start, "stop": stop, "written_at": utc_now()}
    if errors:
        attrs[layout.DECODE_ERRORS_ATTR] = decode_errors_doc(errors)
    doc = group_doc(attrs)
    with writing(store, video_id, f"marker {name}"):
        store.write_json(f"{layout.done_path(video_id)}/{name}/zarr.json", doc)


def done_ranges(store: StoreIO, video_id: str, kind: layout.MarkerKind) -> list[tuple[int, int]]:
    """See :meth:`VideoStore.done_ranges`."""
    if kind not in layout.MARKER_KINDS:
        raise ValueError(f"unknown marker kind {kind!r} (expected one of {', '.join(layout.MARKER_KINDS)})")
    store.require_attrs(video_id)
    out = []
    for name in store.list_dir(layout.done_path(video_id)):
        parsed = layout.parse_marker_name(name)
        if parsed is not None and parsed[0] == kind:
            out.append((parsed[1], parsed[2]))
    return sorted(out)


def finalize(
    store: StoreIO,
    video_id: str,
    cut: np.ndarray,
    clipped_pixels: int | None,
    extra_attrs: Mapping[str, Any] | None,
) -> None:
    """See :meth:`VideoStore.finalize`."""
    attrs = store.require_incomplete(video_id)
    t = attrs["n_frames"]
    cut = np.asarray(cut)
    if cut.dtype != np.bool_ or cut.shape != (t - 1,):
        raise ValueError(f"cut of video {video_id}: expected bool ({t - 1},), got {cut.dtype} {cut.shape}")
    for kind, length in (("frames", t), ("flow", t - 1)):
        ranges = [(a, min(b, length)) for a, b in done_ranges(store, video_id, kind)]
        gaps = missing_ranges(ranges, length)
        if gaps:
            raise StoreError(
                f"{store.path}: cannot finalize video {video_id!r}: "
                f"{'frames' if kind == 'frames' else 'flow of pairs'} {gaps} not marked done"
            )
    clipped = count_clipped(store, video_id) if clipped_pixels is None else int(clipped_pixels)
    final = {"n_cuts": int(cut.sum()), "clipped_pixels": clipped, "status": "complete", "completed_at": utc_now(),
             layout.DECODE_ERRORS_ATTR: decode_errors_doc(marked_decode_errors(store, video_id))}
    extra = json_normalise(dict(extra_attrs or {}), f"extra attributes of video {video_id}")
    clash = sorted(k for k in STORE_ATTRS & extra.keys() if extra[k] != final.get(k, attrs.get(k)))
    if clash:
        raise ValueError(
            f"extra attributes of video {video_id} may not change store-owned keys "
            + ", ".join(f"{k}={extra[k]!r} (store: {final.get(k, attrs.get(k))!r})" for k in clash)
        )
    with writing(store, video_id, "cut flags and completion"):
        open_checked(store, video_id, "cut")[:] = cut
        open_checked(store, video_id, "flow").update_attributes({"clipped_pixels": clipped})
        # The manifest: what was written, object by object, so a reader can tell a lost shard from zeros.
        objects = manifest(store, video_id, attrs)
        store.write_json(f"{layout.manifest_path(video_id)}/zarr.json",
                          group_doc({"digest": MANIFEST_DIGEST, "objects": objects}))
        final["shard_counts"] = {name: len(objs) for name, objs in objects.items()}
        group = zarr.open_group(store.zarr_store, path=layout.video_path(video_id), mode="r+")
        # One document write: the extra attributes and the completion marker land together, after all data.
        group.update_attributes({**extra, **final})


def delete_video(store: StoreIO, video_id: str, force: bool) -> None:
    """See :meth:`VideoStore.delete_video`."""
    attrs = store.require_attrs(video_id)
    if attrs.get("status") == "complete" and not force:
        raise StoreError(f"{store.path}: video {video_id!r} is complete; pass force=True to delete it")
    sync(store.zarr_store.delete_dir(layout.video_path(video_id)))
