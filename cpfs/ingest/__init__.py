"""The ingest stage: videos in, frames and optical flow out, into the Zarr store (``storage``).

Modules, in the order a video goes through them:

- ``discovery``: find the inputs (files, folders of frames, the embedded sample videos), content ids;
- ``probe``: what ffmpeg says a source is (size, rotation, frame count) and the decoded size;
- ``video``: decoding through ffmpeg's pipe and seeking to a range; ``decode_log``: ffmpeg's log read for
  the frames its decoder flagged and those their damage may reach;
- ``video_names``: short names of stored videos for people (``cpfs ls``, reports);
- ``settings``: what determines the stored data (provenance) and conflicts with what is stored;
- ``steps``: prepare, process a range of shards, finalize; ``ingest_video`` does all three in this process.

Optical flow itself is ``cpfs.flow`` and motion statistics ``cpfs.motion``: both are used beyond ingest.
The names below are the stage's public face (``from cpfs.ingest import ingest_video``); each module is
imported on first use.
"""

from __future__ import annotations

_PUBLIC = {
    "ingest_video": "steps", "prepare_video": "steps", "process_range": "steps", "finalize_video": "steps",
    "IngestPlan": "steps", "RangeStats": "steps", "plan_ranges": "steps", "add_motion_statistics": "steps",
    "discover": "discovery", "sample_videos": "discovery", "content_id": "discovery",
    "output_size": "probe", "expected_frame_count": "probe",
    "decode": "video", "decode_range": "video", "decode_stream": "video", "seek_points": "video",
    "DecodeReport": "decode_log", "SeekPoint": "video",
    "video_name": "video_names",
    "SettingsConflictError": "settings", "check_stored_settings": "settings", "requested_settings": "settings",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: the public face, each module imported on first use
    if name in _PUBLIC:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
