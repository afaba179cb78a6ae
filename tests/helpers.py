"""Small real inputs for tests, made with the ffmpeg binary that imageio-ffmpeg ships."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import imageio_ffmpeg


def ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True, timeout=120)


def cut_clip(src: Path, dst: Path, frames: int, width: int = 96) -> Path:
    """The first ``frames`` frames of a real video, scaled to ``width`` px wide, as H.264 mp4."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-i", str(src), "-frames:v", str(frames), "-vf", f"scale={width}:-2", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(dst))
    return dst


def truncated_copy(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def h264_with_damage(clean: Path, damaged: Path, seed: int = 0) -> tuple[Path, Path]:
    """A real H.264 mp4 and a damaged copy of it: 60 frames of ffmpeg's testsrc2 at 128x96, a key frame every
    20 frames and B-frames between the P-frames, encoded on one thread (the same bytes on every run); in the
    copy, 300 bytes past the middle of the media data (the ``mdat`` box) are overwritten with random bytes
    drawn with ``seed``. The container stays intact: every frame decodes, one of them with errors that the
    decoder conceals, and the damage lasts until the next key frame."""
    for p in (clean, damaged):
        p.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x96:rate=25", "-frames:v", "60", "-c:v", "libx264",
           "-threads", "1", "-g", "20", "-bf", "2", "-pix_fmt", "yuv420p", str(clean))
    data = bytearray(clean.read_bytes())
    pos = 0
    while data[pos + 4 : pos + 8] != b"mdat":  # top-level boxes: 4-byte big-endian size, 4-byte type
        pos += int.from_bytes(data[pos : pos + 4], "big")
    start, stop = pos + 8, pos + int.from_bytes(data[pos : pos + 4], "big")
    at = start + (stop - start) * 55 // 100
    data[at : at + 300] = random.Random(seed).randbytes(300)
    damaged.write_bytes(bytes(data))
    return clean, damaged


def set_when_called(monkeypatch, cls: type, name: str, event, when=lambda *args, **kwargs: True) -> None:  # noqa: ANN001
    """Patch the method ``cls.name`` so that a call whose arguments ``when`` accepts sets ``event`` (a
    ``threading.Event``) before the method runs as before: how a test learns that code under test reached a
    point (asked for a lock, say) without timing."""
    real = getattr(cls, name)

    def watched(self, *args, **kwargs):  # noqa: ANN001, ANN202
        if when(*args, **kwargs):
            event.set()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, watched)
