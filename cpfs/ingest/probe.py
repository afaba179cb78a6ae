"""Video probing and frame geometry: what a source holds, found with the ffmpeg binary without decoding.

Everything goes through the ffmpeg binary shipped by ``imageio-ffmpeg`` (no ffprobe, no system ffmpeg):

- ``probe`` runs ``ffmpeg -i PATH -map 0:v:0 -c copy -f null -``: the header gives codec, size, fps and
  duration, and the stream copy counts the video packets exactly without decoding (one packet per frame);
  a file whose packets end well before the duration its header declares is truncated (the truncation
  census, ``_packet_census`` and ``_check_complete``).
- ``_frame_times``: the presentation time of every frame, from a stream copy with ``-copyts``, which
  ``cpfs.ingest.video.seek_points`` turns into seek points.
- The helpers ``cpfs.ingest.video`` shares with it: the ffmpeg binary, the input options of a file
  (``_input_options``), the checks that need no ffmpeg (``_check_file``) and the classification of
  ffmpeg's stderr into a failure reason (``_classify``).
- Geometry: the size of the frames ffmpeg decodes (``rotated_size``), as shown (``display_size``), after
  scaling (``output_size``), and how many frames ``decode`` yields (``expected_frame_count``).

Failures are ``VideoError(path, reason, detail)`` with a short reason ("missing", "empty file",
"not a video", "unsupported codec", "truncated", "ffmpeg timed out", "ffmpeg failed") and ffmpeg's own
stderr line in ``detail``.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import imageio_ffmpeg
import numpy as np
from PIL import Image

from cpfs.config import DecodeConfig
from cpfs.ingest.discovery import FRAME_EXTENSIONS, FRAME_FOLDER_FPS, list_frames
from cpfs.errors import VideoError
from cpfs.records import VideoMeta, VideoSource

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


# ---------------------------------------------------------------------------------------------- probing


def _ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


# What ffmpeg puts before a message: its context with an internal pointer ("[in#0 @ 0x5569aab07080] ",
# "[vist#0:0/h264 @ 0x...] [dec:h264 @ 0x...] ") and, at -loglevel level+..., the level ("[error] ").
_MESSAGE_PREFIX = re.compile(
    r"^(?:\[[^\[\]]* @ 0x[0-9a-fA-F]+\]\s*|\[(?:trace|debug|verbose|info|warning|error|fatal|panic)\]\s*)+"
)


def ffmpeg_message(line: str) -> str:
    """One ffmpeg stderr line as a message for people: stripped, without its context and level prefixes
    (``[in#0 @ 0x5569aab07080] moov atom not found`` -> ``moov atom not found``)."""
    return _MESSAGE_PREFIX.sub("", line.strip()).strip()


def _stderr_lines(text: str) -> list[str]:
    """ffmpeg's stderr split into messages (``ffmpeg_message``; progress lines end with \\r, not \\n)."""
    return [m for ln in re.split(r"[\r\n]+", text) if (m := ffmpeg_message(ln))]


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
