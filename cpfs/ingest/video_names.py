"""Videos named on the command line or in a configuration: by content id, by file or folder name, or by a glob.

A store keys its videos by content id (``cpfs.ingest.discovery.content_id``: ``f5d41eb5f1e1b22571c0``), which no
person remembers; the file or folder a video was ingested from (``carphone_pristine.mp4``, ``soapbox``) is
what they know. ``resolve_videos`` turns each value given into the ids it names:

- an id of a known video names it;
- a value with a glob character (``*?[``) names every video whose file or folder name, or whole source
  path, matches it (``fnmatch``, case-sensitive); matching nothing is an error;
- any other value names the video whose source path is it or ends with it (``carphone_pristine.mp4``,
  ``480p/soapbox``, ``/data/a/clip.mp4``); two different videos named so are an error (two ``clip.mp4``
  from different folders): give more of the path, or the id.

The videos known are those of the store (id and source path) and, for ``cpfs run``, the inputs of this run
that are not stored yet: their id is computed (``identify``: a content hash, reading the file) only when a
value names them. Pure functions, no store access: ``cpfs.pipeline`` gathers the videos and calls them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath

from cpfs.errors import CPFSError

GLOB_CHARS = frozenset("*?[")
LISTED = 8  # videos a "names no video" error lists before "and N more"


class VideoNameError(CPFSError, ValueError):
    """A value names no video, or two; ``value`` is what was given and ``reason`` what is wrong."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"{value!r} {reason}")
        self.value = value
        self.reason = reason


def video_name(source_path: str) -> str:
    """The file or folder name of a video's source: ``/data/davis/480p/soapbox`` -> ``soapbox``."""
    return PurePath(source_path.rstrip("/")).name or source_path


def display_names(stored: Mapping[str, str]) -> dict[str, str]:
    """``{video_id: name}`` to show people (reports, warnings): the file or folder name of each video's source
    (``video_name``), with the id's first 8 characters added where two videos share a name, and the id itself
    where the source is not recorded (an empty path)."""
    names = {vid: video_name(p) if p else vid for vid, p in stored.items()}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {vid: f"{name} ({vid[:8]})" if counts[name] > 1 and name != vid else name for vid, name in names.items()}


def is_glob(value: str) -> bool:
    return any(c in GLOB_CHARS for c in value)


def _matches(value: str, source_path: str) -> bool:
    path = source_path.rstrip("/")
    if is_glob(value):
        return fnmatch.fnmatchcase(video_name(path), value) or fnmatch.fnmatchcase(path, value)
    want = value.rstrip("/")
    return bool(want) and (path == want or path.endswith("/" + want.lstrip("/")))


def describe_known(stored: Mapping[str, str], inputs: Sequence[str] = ()) -> str:
    """``name (id), ...`` of the stored videos and the inputs not stored (at most ``LISTED``), for an error."""
    items = [f"{video_name(p)} ({vid})" for vid, p in sorted(stored.items(), key=lambda kv: (video_name(kv[1]), kv[0]))]
    items += [f"{video_name(p)} (an input, not stored yet)" for p in inputs if p not in stored.values()]
    if not items:
        return "no videos"
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def resolve_videos(values: Sequence[str], stored: Mapping[str, str], *, inputs: Sequence[str] = (),
                   identify: Callable[[str], str] | None = None, known_as: str = "known") -> list[str]:
    """The video ids ``values`` name, in order of first mention, each once.

    Args:
        values: ids, file or folder names, path endings or globs (see the module docstring).
        stored: ``{video_id: source_path}`` of the store's complete videos.
        inputs: source paths of this run's inputs (``cpfs run``), some perhaps not stored yet.
        identify: ``source_path -> video_id`` of an input (``cpfs.ingest.discovery.content_id``); called only for
            inputs a value names, or for every input when a value is no stored id, name or glob (it may be
            the id of an input not stored yet). Required when ``inputs`` is not empty.
        known_as: how an error introduces the list of known videos ("the store s.zarr holds").

    Raises:
        VideoNameError: a value names no video (the message lists those known), a glob matches nothing, or a
            name (not a glob) picks out two different videos (the message lists both with their ids).
    """
    if inputs and identify is None:
        raise ValueError("resolve_videos: inputs given without identify")
    ids_of: dict[str, str] = {}  # input path -> id, computed once

    def input_id(path: str) -> str:
        if path not in ids_of:
            ids_of[path] = identify(path)  # type: ignore[misc]  (checked above)
        return ids_of[path]

    out: list[str] = []
    for value in values:
        value = str(value)
        if value in stored:
            found = {value: stored[value]}
        else:
            found = {vid: p for vid, p in stored.items() if _matches(value, p)}
            for path in inputs:
                if _matches(value, path):
                    found.setdefault(input_id(path), path)
            if not found and not is_glob(value) and inputs:  # perhaps the id of an input not stored yet
                found = {vid: p for p in inputs if (vid := input_id(p)) == value}
        if not found:
            what = "matches no video" if is_glob(value) else "names no video (not an id, file or folder name)"
            raise VideoNameError(value, f"{what}; {known_as}: {describe_known(stored, inputs)}")
        if len(found) > 1 and not is_glob(value):
            both = ", ".join(f"{p} ({vid})" for vid, p in sorted(found.items(), key=lambda kv: kv[1]))
            raise VideoNameError(value, f"is ambiguous: it names {len(found)} videos ({both}); give more of the "
                                        "path or the id")
        out += [vid for vid in sorted(found, key=lambda v: found[v]) if vid not in out]
    return out
