"""Video decoding and seeking: stream RGB frames of a source out of ffmpeg.

Finding and naming sources is ``cpfs.ingest.discovery``'s work; probing them and the geometry of decoded frames
is ``cpfs.ingest.probe``'s. Everything goes through the ffmpeg binary shipped by ``imageio-ffmpeg``:

- ``decode`` streams ``rawvideo``/``rgb24`` frames through a pipe; frame selection (``select``), scaling
  (``scale``) and the frame cap (``-frames:v``) are ffmpeg's work, not Python's. Memory is bounded by a
  small queue of frames whatever the video's length, and ffmpeg never outlives the generator.
  ``decode_range`` gives a range of those frames as one array, decoding from the start.
- ``decode_stream`` streams a range of those frames; in an mp4/mov whose frames each have a timestamp it
  seeks to a key frame before the range and cuts at the first frame's timestamp (``seek_points``), so a
  range late in a long video does not decode everything before it. The frames are those of ``decode``.

Failures are ``VideoError(path, reason, detail)`` with a short reason ("missing", "empty file",
"not a video", "unsupported codec", "truncated", "ffmpeg timed out", "ffmpeg failed") and ffmpeg's own
stderr line in ``detail`` (without its ``[in#0 @ 0x...]`` prefixes).

Decode errors that ffmpeg conceals (a damaged stream still gives every frame) are not failures: a decode
given a ``DecodeReport`` fills it with the frames ffmpeg flagged; how they are read from ffmpeg's log is
``cpfs.ingest.decode_log``'s work.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import ffmpeg
import numpy as np

from cpfs.config import DecodeConfig
from cpfs.ingest.discovery import FRAME_FOLDER_FPS, list_frames
from cpfs.errors import VideoError
from cpfs.ingest.probe import (
    _check_file,
    _classify,
    _ffmpeg_exe,
    _frame_times,
    _input_options,
    expected_frame_count,
    output_size,
    probe,
    rotated_size,
)
from cpfs.ingest.decode_log import DecodeReport, FfmpegLog, decode_errors  # noqa: F401 - DecodeReport: importable from here
from cpfs.records import VideoMeta, VideoSource

_QUEUE_FRAMES = 4  # decoded frames ffmpeg may run ahead of the consumer (bounds memory)
_GLOB_CHARS = set("*?[]{}\\")  # glob metacharacters: a folder path holding one can't be given as a glob
# ------------------------------------------------------------------------------------------- decoding


def _frames_input(source: VideoSource, tmpdir: list[str]) -> ffmpeg.nodes.FilterableStream:
    """ffmpeg input of a frame folder: image2 glob when it reproduces ``list_frames``'s order exactly,
    else a concat list (glob metacharacters in the path, unpadded numbering, stray matching files)."""
    frames = list_frames(source.path)
    if not frames:
        raise VideoError(source.path, "no frames", "expected numbered .jpg/.jpeg/.png files")
    ext = frames[0].suffix  # exact case: glob is case-sensitive
    names = [f.name for f in frames]
    # every name glob(3) matches, whatever it is (a sub-folder, a broken link): ffmpeg would try to read it
    glob_names = sorted(e.name for e in os.scandir(source.path) if e.name.endswith(ext) and not e.name.startswith("."))
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
    # global options first (ffmpeg-python appends them after the output, where ffmpeg may ignore them);
    # -debug_ts at level info: one line per decoded frame, which places each decode error (``FfmpegLog``)
    return [args[0], "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info", "-debug_ts", *extra,
            *args[1:]]


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
         n_expected: int | None, seek: SeekPoint | None = None, first: int = 0,
         report: DecodeReport | None = None) -> Iterator[np.ndarray]:
    """Run ffmpeg and yield (H, W, 3) uint8 frames; raise VideoError on any failure (see ``decode``).
    ``first``: the number (in ``decode``'s numbering) of the first frame yielded; ``report`` receives the
    decode errors once ffmpeg has finished cleanly."""
    path = source.path
    w, h = output_size(meta, cfg)
    frame_bytes = w * h * 3
    tmpdir: list[str] = []
    proc: subprocess.Popen | None = None
    stop = threading.Event()
    frames_q: queue.Queue = queue.Queue(maxsize=_QUEUE_FRAMES)
    log = FfmpegLog()
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
                    log.add(raw.decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass
        log.add(pending.decode("utf-8", "replace"))

    def failure(rc: int | None) -> VideoError:
        lines = list(log.damage) + list(log.tail)
        found = _classify(lines)
        tail_text = " | ".join(list(log.tail)[-5:])
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
        if log.damage:
            raise VideoError(path, "truncated", f"decoding errors after {n_out} frames: {log.damage[0]}")
        if n_expected is not None and n_out < n_expected:
            raise VideoError(path, "truncated", f"ffmpeg produced {n_out} frames, expected {n_expected}")
        if report is not None:
            report.errors = decode_errors(log.decoded, cfg.step, first, n_out, seek)
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


def decode(source: VideoSource, cfg: DecodeConfig, meta: VideoMeta | None = None,
           report: DecodeReport | None = None) -> Iterator[np.ndarray]:
    """Decoded frames of a source, streamed: (H, W, 3) uint8 RGB, with (W, H) = ``output_size(meta, cfg)``.

    Kept frames are decoded frames n with ``n mod step == 0`` (ffmpeg ``select``, ``-fps_mode passthrough``
    so nothing is duplicated or dropped), scaled by ffmpeg (``area`` down, ``bicubic`` up), at most
    ``max_frames`` of them (``-frames:v``). At most a few frames are buffered whatever the video's length.
    Raises VideoError: "ffmpeg timed out" after ``cfg.timeout_s`` without a frame (ffmpeg is killed),
    "truncated" when frames stop early or decoding errors appear (after yielding the good frames),
    "unsupported codec"/"not a video"/"ffmpeg failed" on a non-zero exit. ffmpeg is killed and reaped
    when the generator finishes, fails or is closed early. Frames ffmpeg decoded with errors it concealed
    are yielded; ``report`` (when given) then says which (see ``DecodeReport``).
    """
    if meta is None:
        meta = probe(source, timeout_s=cfg.timeout_s)
    if source.kind == "file":
        _check_file(source.path)
    select = f"not(mod(n,{cfg.step}))" if cfg.step > 1 else None
    return _run(source, cfg, meta, select, cfg.max_frames, expected_frame_count(meta, cfg), report=report)


def decode_range(source: VideoSource, cfg: DecodeConfig, start: int, stop: int,
                 meta: VideoMeta | None = None) -> np.ndarray:
    """Frames [start, stop) of ``decode(source, cfg)`` as one (n, H, W, 3) uint8 array: ``decode_stream``
    without seeking (always frame-accurate), collected. Like a slice, a range reaching past the end gives the
    frames that exist."""
    if meta is None:
        meta = probe(source, timeout_s=cfg.timeout_s)
    frames = list(decode_stream(source, cfg, start, stop, meta))
    if not frames:
        w, h = output_size(meta, cfg)
        return np.empty((0, h, w, 3), dtype=np.uint8)
    return np.stack(frames)


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
                  seek: SeekPoint | None = None, report: DecodeReport | None = None) -> Iterator[np.ndarray]:
    """Frames [start, stop) of ``decode(source, cfg)``, streamed like ``decode`` (a few frames in memory).

    From frame 0 this is ``decode`` capped at ``stop``. From a later frame: with its ``seek`` point
    (``seek_points``), ffmpeg jumps to a key frame before it and cuts at its timestamp; without one,
    ffmpeg decodes from the start and selects the range with a select filter, always exact.
    Like a slice, a range reaching past the end gives the frames that exist; fewer frames than that
    raise VideoError "truncated". ``report`` (when given) receives the decode errors of the range's frames
    once the range is decoded (``DecodeReport``).
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
                    stop if total is not None else None, report=report)
    n = stop - start
    expected = n if total is not None else None
    if seek is not None:
        if seek.frame != start:
            raise ValueError(f"decode_stream: seek point of frame {seek.frame} given for a range starting at {start}")
        return _run(source, cfg, meta, f"not(mod(n,{cfg.step}))" if cfg.step > 1 else None, n, expected, seek,
                    start, report)
    s = cfg.step
    return _run(source, cfg, meta, f"not(mod(n,{s}))*gte(n,{start * s})*lt(n,{stop * s})", n, expected,
                first=start, report=report)
