"""The settings of an ingest: what it records about them, and the checks against a video's stored ones.

A store holds one set of decode and flow settings per video. This module holds:

- ``provenance``: the attributes an ingest writes with a video (its source, and under ``settings``
  everything that determines the stored arrays), and ``requested_settings``: the concrete backend, its
  parameters and the ``settings`` an ingest with a given config records.
- ``settings_conflicts``: the settings in which a stored video differs from a requested ingest, each named
  as the user sets it (a flag, or a config field), as ``SettingConflict``s.
- ``check_stored_settings``: the check, before any work, that no input is a video complete in the store
  with other settings; it raises ``SettingsConflictError`` naming every such input and parameter
  (``cpfs.ingest.steps.prepare_video`` makes the same check per video).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cpfs
from cpfs.config import IngestConfig
from cpfs.ingest.discovery import content_id, discover, is_regular_file, sample_videos
from cpfs.errors import CPFSError, StoreError, VideoError
from cpfs.flow import make_backend, resolve_backend
from cpfs.records import VideoRecord, VideoSource
from storage import VideoStore


def _settings(cfg: IngestConfig, backend: str, backend_params: dict) -> dict:
    """Everything that determines a video's stored arrays (``provenance``'s "settings")."""
    return {
        "decode": cfg.decode.model_dump(mode="json", exclude={"timeout_s"}),
        "flow_backend": backend,
        "flow_params": backend_params,
        "shard_frames": cfg.store.shard_frames,
        "flow_scale": cfg.store.flow_scale,
        "flow_bound": cfg.store.flow_bound,
    }


def provenance(record: VideoRecord, cfg: IngestConfig, backend: str, backend_params: dict) -> dict:
    """Attributes that say where a video's arrays came from. Settings that change the arrays'
    contents are under ``settings``: a resumed ingest must have identical settings."""
    return {
        "source": {
            "path": record.source.path,
            "kind": record.source.kind,
            "size_bytes": record.size_bytes,
            "content_hash": record.video_id,
            "width": record.meta.width,
            "height": record.meta.height,
            "fps": record.meta.fps,
            "codec": record.meta.codec,
            "n_frames": record.meta.n_frames,
            "duration_s": record.meta.duration_s,
        },
        "settings": _settings(cfg, backend, backend_params),
        "cpfs_version": cpfs.__version__,
    }


class SettingsConflictError(CPFSError):
    """A video is already complete in the store with other decode or flow settings (a store holds one set
    of settings per video). The message names each parameter, the stored value and the requested one."""

    def __init__(self, message: str, conflicts: Sequence[SettingConflict]) -> None:
        super().__init__(message)
        self.conflicts = tuple(conflicts)


@dataclass(frozen=True)
class SettingConflict:
    """One setting of a stored video that differs from what an ingest asks for."""

    parameter: str  # as the user sets it: "--size", "--backend", or the config field ("store.flow_bound (--config)")
    stored: object
    requested: object

    def __str__(self) -> str:
        return f"{self.parameter}: stored {_show(self.stored)}, requested {_show(self.requested)}"


def _show(value: object) -> str:
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return "none" if value is None else str(value)


# Flow parameters that place the work rather than define the flow (not compared between ingests).
_PLACEMENT_PARAMS = frozenset({"device", "batch_size"})
# Command-line flags of flow parameters, by backend family; other parameters are set with --config.
_FLOW_FLAGS = {
    "tvl1": {"tau": "--tvl1-tau", "lambda": "--tvl1-lambda", "theta": "--tvl1-theta", "nscales": "--tvl1-scales",
             "warps": "--tvl1-warps", "epsilon": "--tvl1-epsilon", "outer_iterations": "--tvl1-iterations"},
    "farneback": {"levels": "--farneback-levels", "winsize": "--farneback-winsize"},
    "dis": {"preset": "--dis-preset"},
}


def _flow_param_name(backend: str, key: str) -> str:
    family = "tvl1" if "tvl1" in backend else "farneback" if "farneback" in backend else "dis"
    return _FLOW_FLAGS[family].get(key) or f"flow.{family}.{key} (--config)"


def settings_conflicts(stored: Mapping, requested: Mapping) -> list[SettingConflict]:
    """The settings (as ``provenance(...)["settings"]`` writes them) in which a stored video differs from a
    requested ingest, named as the user sets them. Flow parameters are compared only when the backend is
    the same; where the work runs (torch device, batch size) is not compared."""
    stored, requested = (json.loads(json.dumps(x)) for x in (stored, requested))  # as JSON reads them back
    out = []
    sd, rd = stored.get("decode", {}), requested.get("decode", {})
    size = lambda d: d.get("size") or d.get("short_side")  # noqa: E731 - what --size sets
    if size(sd) != size(rd):
        out.append(SettingConflict("--size", size(sd), size(rd)))
    for key, flag in (("step", "--step"), ("max_frames", "--max-frames")):
        if sd.get(key) != rd.get(key):
            out.append(SettingConflict(flag, sd.get(key), rd.get(key)))
    for key in sorted((sd.keys() | rd.keys()) - {"size", "short_side", "step", "max_frames"}):
        if sd.get(key) != rd.get(key):
            out.append(SettingConflict(f"decode.{key} (--config)", sd.get(key), rd.get(key)))
    if stored.get("flow_backend") != requested.get("flow_backend"):
        out.append(SettingConflict("--backend", stored.get("flow_backend"), requested.get("flow_backend")))
    else:
        sp, rp = stored.get("flow_params") or {}, requested.get("flow_params") or {}
        for key in sorted((sp.keys() | rp.keys()) - _PLACEMENT_PARAMS):
            if sp.get(key) != rp.get(key):
                out.append(SettingConflict(_flow_param_name(str(requested.get("flow_backend")), key),
                                           sp.get(key), rp.get(key)))
    for key, name in (("shard_frames", "--shard-frames"), ("flow_scale", "store.flow_scale (--config)"),
                      ("flow_bound", "store.flow_bound (--config)")):
        if stored.get(key) != requested.get(key):
            out.append(SettingConflict(name, stored.get(key), requested.get(key)))
    return out


def requested_settings(cfg: IngestConfig) -> tuple[str, dict, dict]:
    """The concrete backend, its parameters, and the ``settings`` an ingest with ``cfg`` records."""
    backend = resolve_backend(cfg.flow)
    params = make_backend(cfg.flow.model_copy(update={"backend": backend})).params()
    return backend, params, _settings(cfg, backend, params)


def _conflict_error(source: str, video_id: str, store_path: str,
                    conflicts: Sequence[SettingConflict]) -> SettingsConflictError:
    return SettingsConflictError(
        f"{source}: this video (id {video_id}) is already in the store {store_path} with other settings: "
        + "; ".join(map(str, conflicts))
        + ". A store holds one set of decode and flow settings per video: ingest into another store "
          "(--store), or ingest with the stored settings", conflicts)


def check_stored_settings(cfg: IngestConfig) -> None:
    """Reject, before any work, an ingest that asks for other settings than those of a video already
    complete in the store (raises SettingsConflictError naming every such input and parameter).

    Only inputs whose size equals a stored video's source size are hashed (the id is a content hash, so
    no other input can be a stored video). A missing store or input is left to the ingest itself."""
    try:
        store = VideoStore.open(cfg.store, create=False)
        stored = {vid: store.video_attrs(vid) for vid in store.complete_ids()}
    except StoreError:
        return
    if not stored:
        return
    sizes = {int(a.get("size_bytes", -1)) for a in stored.values()}
    _, _, requested = requested_settings(cfg)
    sources, _ = discover(cfg.inputs or [str(p) for p in sample_videos()])
    problems = []
    for source in sources:
        try:
            if _source_size(source) not in sizes:
                continue
            vid = content_id(source)
        except (OSError, VideoError):
            continue  # the ingest reports it
        if vid in stored and (conflicts := settings_conflicts(stored[vid]["settings"], requested)):
            problems.append(_conflict_error(source.path, vid, cfg.store.path, conflicts))
    if problems:
        raise SettingsConflictError("\n".join(map(str, problems)), [c for p in problems for c in p.conflicts])


def _source_size(source: VideoSource) -> int:
    if os.path.isdir(source.path):
        return sum(e.stat().st_size for e in os.scandir(source.path) if is_regular_file(e))  # a loop is no file
    return os.stat(source.path).st_size
