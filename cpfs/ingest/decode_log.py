"""ffmpeg's log during a decode, read for what the decoder concealed: which frames it flagged, and which stored
frames their damage may reach (``cpfs.records.DecodeErrors``). ``cpfs.ingest.video`` runs ffmpeg and feeds its
stderr here line by line.

Decode errors that ffmpeg conceals (a damaged stream still gives every frame) are not failures: a decode
given a ``DecodeReport`` fills it with the frames ffmpeg flagged (``cpfs.records.DecodeErrors``). ffmpeg
runs with ``-debug_ts`` at ``-loglevel level+info``: its decoder thread logs "corrupt decoded frame" for a
flagged frame just before that frame's own ``decoder -> pts:... keyframe:... frame_type:...`` line, so each
flag belongs to exactly one decoded frame, in presentation order (``FfmpegLog``). The decoder's own
messages ("error while decoding MB ...", "concealing N errors") come from its worker threads, out of frame
order, and not for every damaged frame, so they are not counted (measured on H.264 and MPEG-4 Part 2 with
the bundled ffmpeg 9; ``-err_detect`` found no more damaged frames). Damage the decoder does not notice
cannot be reported: of 40 copies of a 60-frame H.264 test video with 300 random bytes past the middle of its
data (``tests.helpers.h264_with_damage``, seeds 0-39), 31 were flagged, the frames reported being exactly
those that differ from the clean decode, and 9 decoded wrong frames without a word at any log level.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cpfs.ingest.probe import ffmpeg_message
from cpfs.records import DecodeErrors

if TYPE_CHECKING:
    from cpfs.ingest.video import SeekPoint

STDERR_LINES = 50  # stderr tail kept for error messages
# Decoding problems that make ffmpeg's exit status 0 but mean frames were lost (checked after decode).
DECODE_DAMAGE = re.compile(
    r"partial file|corrupt input packet|Packet corrupt|Invalid NAL unit size|"
    r"Error splitting the input into NAL units|Decoding error|premature end|Truncating packet",
    re.I,
)
# ffmpeg's log at ``-loglevel level+info``: "[ctx @ 0x..] [ctx @ 0x..] [level] message". Lines below
# "warning" (the header, -debug_ts's per-packet lines) are parsed, never shown in an error message.
_LEVEL = re.compile(r"\[(trace|debug|verbose|info|warning|error|fatal|panic)\] ")
_QUIET_LEVELS = frozenset({"trace", "debug", "verbose", "info"})
# -debug_ts's line for each frame leaving the decoder (fftools/ffmpeg_dec.c, video_frame_process).
_DECODED = re.compile(r"^decoder -> pts:(\S+) .*?\bkeyframe:(\d+) frame_type:(\d+) time_base:(\d+)/(\d+)")
_CORRUPT = "corrupt decoded frame"  # logged by the same thread just before the flagged frame's line
_B_FRAME = 3  # AVPictureType AV_PICTURE_TYPE_B


@dataclass
class DecodeReport:
    """Filled in by a decode (``decode``, ``decode_stream``) once ffmpeg has finished: the decode errors of
    the frames it decoded (empty: none were flagged). Frames are numbered as ``decode`` numbers them."""

    errors: DecodeErrors = DecodeErrors()


@dataclass(frozen=True)
class DecodedFrame:
    """One frame leaving ffmpeg's decoder, in presentation order."""

    t: float | None  # presentation time, s (the file's own with -copyts); None: no timestamp
    key: bool
    b_frame: bool
    corrupt: bool  # ffmpeg flagged it ("corrupt decoded frame")


class FfmpegLog:
    """ffmpeg's stderr, line by line: the tail of messages worth showing (warning and worse, without their
    ``[ctx @ 0x...]`` prefixes), the lines naming decoding damage, and every decoded frame (``DecodedFrame``)."""

    def __init__(self) -> None:
        self.tail: deque[str] = deque(maxlen=STDERR_LINES)
        self.damage: list[str] = []  # lines naming decode damage, kept even if they scroll out of the tail
        self.decoded: list[DecodedFrame] = []
        self._corrupt = False  # a "corrupt decoded frame" waits for its frame's line

    def add(self, raw: str) -> None:
        m = _LEVEL.search(raw)
        level = m.group(1) if m else "warning"  # unlabelled: kept, in case it explains a failure
        text = ffmpeg_message(raw)
        if not text:
            return
        if level in _QUIET_LEVELS:
            if d := _DECODED.match(text):
                self.decoded.append(_decoded_frame(d, self._corrupt))
                self._corrupt = False
            return
        if text == _CORRUPT:
            self._corrupt = True
            return
        self.tail.append(text)
        if DECODE_DAMAGE.search(text) and len(self.damage) < 20:
            self.damage.append(text)


def _decoded_frame(m: re.Match, corrupt: bool) -> DecodedFrame:
    pts, num, den = m.group(1), int(m.group(4)), int(m.group(5))
    t = int(pts) * num / den if pts.lstrip("-").isdigit() and den else None
    return DecodedFrame(t=t, key=m.group(2) == "1", b_frame=int(m.group(3)) == _B_FRAME, corrupt=corrupt)


def damaged_mask(decoded: Sequence[DecodedFrame]) -> np.ndarray:
    """Which decoded frames (presentation order) may show the damage of a flagged one: the flagged frame,
    the frames after it up to the next clean key frame (they are predicted from it), and the B-frames shown
    just before it (decoded after it, they may refer to it). bool (n,)."""
    out = np.zeros(len(decoded), dtype=bool)
    on = False
    for i, d in enumerate(decoded):
        if d.corrupt:
            on = True
            j = i - 1
            while j >= 0 and decoded[j].b_frame and not out[j]:
                out[j] = True
                j -= 1
        elif d.key:
            on = False
        out[i] = on
    return out


def decode_errors(decoded: Sequence[DecodedFrame], step: int, first: int, n_out: int,
                   seek: SeekPoint | None) -> DecodeErrors:
    """The decode errors of a decode that output ``n_out`` frames numbered from ``first`` (output frame k is
    source frame k * step). Decoding starts at source frame 0, or with ``seek`` at a key frame before the
    first frame whose time is at least ``seek.t_lo`` (source frame ``seek.frame * step``).

    Every decoded frame up to the last output one counts, those decoded before ``first`` too: a range's
    ffmpeg always decodes the frames between its seek point and its first frame, so the B-frames shown just
    before a damaged frame at a range's start are reported by that range whether or not the previous range's
    ffmpeg ran far enough ahead (past ``-frames:v``) to see the damaged frame."""
    if not decoded or n_out <= 0:
        return DecodeErrors()
    i0 = 0  # decoded index of source frame ``base``
    base = 0
    if seek is not None:
        base = seek.frame * step
        i0 = next((i for i, d in enumerate(decoded) if d.t is not None and d.t >= seek.t_lo), len(decoded))
    mask = damaged_mask(decoded)
    last = (first + n_out - 1) * step  # source number of the last output frame
    corrupt, damaged = [], []
    for i, d in enumerate(decoded):
        n = base + i - i0  # source frame number
        if d.corrupt and n >= 0 and (n <= last or reaches_back(decoded, i) <= last - base + i0):
            corrupt.append(n)  # past the last frame, reported only when it damaged frames up to it
        if 0 <= n <= last and mask[i] and n % step == 0:
            damaged.append((n // step, n // step + 1))
    return DecodeErrors.of(corrupt, damaged)


def reaches_back(decoded: Sequence[DecodedFrame], i: int) -> int:
    """The first decoded index a flagged frame ``i`` damages: the start of the B-frames shown just before it."""
    while i > 0 and decoded[i - 1].b_frame:
        i -= 1
    return i


