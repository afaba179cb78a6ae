"""The store's records and the small helpers its modules share.

The records: :class:`ShardDamage` and :class:`StoreVerification` (what an integrity check found; the index
records are in :mod:`storage.index`). The constants: which attributes the store owns (``STORE_ATTRS``),
which are not compared on resume (``VOLATILE_ATTRS``), the manifest's digest. The helpers: timestamps, JSON
normalisation, marker documents and range arithmetic. No Zarr I/O here: :mod:`storage.store` and the
modules it delegates to do that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

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
        "decode_errors",
    }
)
MANIFEST_DIGEST = "blake2b-128"  # digest of each storage object in a video's manifest (hashlib.blake2b, 16 bytes)


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


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def json_normalise(value: Any, what: str) -> Any:
    """``value`` as it reads back from a JSON attribute document (tuples become lists, keys sorted)."""
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable ({e})") from e


def group_doc(attributes: dict) -> dict:
    """A Zarr v3 group metadata document: markers are written as tiny groups, one key each, in one put."""
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes}


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def missing_ranges(ranges: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Sub-ranges of [0, length) not covered by ``ranges``."""
    gaps, pos = [], 0
    for a, b in merge_ranges(ranges):
        if a > pos:
            gaps.append((pos, min(a, length)))
        pos = max(pos, b)
    if pos < length:
        gaps.append((pos, length))
    return [g for g in gaps if g[0] < g[1]]
