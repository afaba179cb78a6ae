"""Small real inputs for tests, made with the ffmpeg binary that imageio-ffmpeg ships."""

from __future__ import annotations

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
