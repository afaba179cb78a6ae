"""Tests of cpfs.ingest.discovery, cpfs.ingest.probe and cpfs.ingest.video with the real ffmpeg binary (imageio-ffmpeg) on real and
generated videos."""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cpfs.config import DecodeConfig
from cpfs.ingest.discovery import content_id, discover, list_frames, sample_videos
from cpfs.errors import VideoError
from cpfs.ingest.probe import expected_frame_count, output_size, probe
from cpfs.ingest.probe import ffmpeg_message
from cpfs.records import DecodeErrors, VideoMeta, VideoSource
from cpfs.ingest.video import DecodeReport, decode, decode_range, decode_stream, seek_points
from cpfs.ingest.video import _command  # only to check which demuxer reads a frame folder
from cpfs.ingest.decode_log import DecodedFrame, damaged_mask  # the damage's reach, on a made-up frame sequence
from imageio_ffmpeg import get_ffmpeg_exe
from tests.helpers import h264_with_damage

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
DAVIS = DATA / "davis"
needs_davis = pytest.mark.skipif(not (DAVIS / "JPEGImages").is_dir(), reason=f"DAVIS frames not found at {DAVIS}")


# ------------------------------------------------------------------------------------------- helpers


def _ffmpeg(*args: str) -> None:
    subprocess.run([get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def make_video(path: Path, n: int = 20, size: str = "64x48", *extra: str) -> Path:
    """A tiny real H.264 mp4 from ffmpeg's testsrc (a moving pattern and a frame counter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate=10", "-frames:v", str(n), "-pix_fmt", "yuv420p",
            *extra, str(path))
    return path


def file_source(path: Path | str) -> VideoSource:
    return VideoSource(path=os.path.abspath(path), kind="file")


def ffmpeg_children() -> list[int]:
    """Pids of ffmpeg processes (running or zombie) whose parent is this test process."""
    me, found = os.getpid(), []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == me and comm.startswith("ffmpeg"):
            found.append(int(d))
    return found


@pytest.fixture(scope="module")
def samples() -> dict[str, VideoSource]:
    return {p.stem: file_source(p) for p in sample_videos()}


# ----------------------------------------------------------------------------------- sample videos


def test_sample_videos_are_the_three_shipped_files() -> None:
    paths = sample_videos()
    assert [p.name for p in paths] == ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"]
    assert all(p.is_absolute() and p.stat().st_size > 10_000 for p in paths)


@pytest.mark.parametrize(
    ("name", "width", "height", "n_frames", "fps"),
    [("bikes", 640, 272, 250, 25.0), ("bigbuckbunny", 1280, 720, 132, 25.0), ("carphone_pristine", 176, 144, 120, 29.97)],
)
def test_probe_sample_videos(samples, name, width, height, n_frames, fps) -> None:
    meta = probe(samples[name])
    assert (meta.width, meta.height, meta.n_frames, meta.codec) == (width, height, n_frames, "h264")
    assert meta.fps == pytest.approx(fps)
    assert meta.duration_s == pytest.approx(n_frames / fps, rel=0.02)


@pytest.mark.parametrize("name", ["carphone_pristine", "bikes"])
def test_decode_full_sample_gives_probed_count_and_size(samples, name) -> None:
    meta = probe(samples[name])
    cfg = DecodeConfig(short_side=32)
    w, h = output_size(meta, cfg)
    n = 0
    for frame in decode(samples[name], cfg, meta):
        assert frame.shape == (h, w, 3) and frame.dtype == np.uint8
        n += 1
    assert n == meta.n_frames == expected_frame_count(meta, cfg)
    assert min(w, h) == 32 and w % 2 == 0


def test_decode_step_keeps_every_step_th_frame(samples) -> None:
    src = samples["carphone_pristine"]
    meta = probe(src)
    every = np.stack(list(decode(src, DecodeConfig(short_side=32), meta)))
    for step in (2, 3):
        stepped = np.stack(list(decode(src, DecodeConfig(short_side=32, step=step), meta)))
        assert len(stepped) == math.ceil(meta.n_frames / step)
        # select runs before scale, and scaling is per frame: the kept frames are exactly every step-th one
        np.testing.assert_array_equal(stepped, every[::step])


def test_decode_step_and_cap_on_large_sample(samples) -> None:
    src = samples["bigbuckbunny"]
    meta = probe(src)
    cfg = DecodeConfig(short_side=48, step=3, max_frames=10)
    frames = list(decode(src, cfg, meta))
    assert len(frames) == expected_frame_count(meta, cfg) == 10
    assert frames[0].shape == (48, 86, 3)  # 1280x720 -> short side 48, long side 85.3 rounded to even


def test_decode_matches_opencv_reference(samples) -> None:
    """Naive reference: OpenCV's own VideoCapture, frame by frame, at the coded size (carphone's pixels are
    not square, SAR 128:117: its display size is 193x144, so the coded size is asked for explicitly)."""
    src = samples["carphone_pristine"]
    ours = list(decode(src, DecodeConfig(size=(176, 144), max_frames=8)))
    cap = cv2.VideoCapture(src.path)
    try:
        for frame in ours:
            ok, bgr = cap.read()
            assert ok
            diff = np.abs(bgr[..., ::-1].astype(np.int16) - frame.astype(np.int16))
            assert diff.mean() < 1.0, diff.mean()
    finally:
        cap.release()


@pytest.mark.parametrize(
    ("name", "codec_args", "codec"),
    [("clip.mkv", ["-c:v", "libx264", "-pix_fmt", "yuv420p"], "h264"), ("clip.avi", ["-c:v", "mjpeg"], "mjpeg"),
     ("clip.y4m", ["-pix_fmt", "yuv420p"], "rawvideo"), ("clip.mov", ["-c:v", "libx264", "-pix_fmt", "yuv420p"], "h264")],
)
def test_other_containers_decode_the_probed_count(tmp_path, name, codec_args, codec) -> None:
    path = tmp_path / name
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=48x32:rate=10", "-frames:v", "13", *codec_args, str(path))
    meta = probe(file_source(path))
    assert (meta.width, meta.height, meta.n_frames, meta.codec) == (48, 32, 13, codec)
    frames = list(decode(file_source(path), DecodeConfig(short_side=None, step=4), meta))
    assert len(frames) == 4 and frames[0].shape == (32, 48, 3)


def test_mp4_cut_without_reencoding_counts_every_coded_frame(tmp_path) -> None:
    """A stream-copy cut starts at the previous keyframe and writes an edit list hiding the frames before
    the cut; probe's packet count and decode must agree (both ignore the edit list)."""
    full = make_video(tmp_path / "full.mp4", 60, "64x48", "-g", "20")
    cut = tmp_path / "cut.mp4"
    _ffmpeg("-ss", "1.55", "-i", str(full), "-c", "copy", str(cut))
    meta = probe(file_source(cut))
    frames = list(decode(file_source(cut), DecodeConfig(short_side=None), meta))
    assert len(frames) == meta.n_frames == 60  # the cut keeps the keyframe at 0: packets 0..59
    np.testing.assert_array_equal(frames[-1], list(decode(file_source(full), DecodeConfig(short_side=None)))[-1])


# -------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("src_wh", "cfg", "out"),
    [
        ((640, 272), DecodeConfig(short_side=64), (150, 64)),  # 640*64/272 = 150.6 -> even 150
        ((272, 640), DecodeConfig(short_side=64), (64, 150)),  # portrait
        ((1280, 720), DecodeConfig(short_side=256), (456, 256)),  # 455.1 -> 456
        ((176, 144), DecodeConfig(short_side=None), (176, 144)),
        ((176, 144), DecodeConfig(short_side=64, size=(100, 50)), (100, 50)),  # size overrides short_side
        ((100, 100), DecodeConfig(short_side=32), (32, 32)),
    ],
)
def test_output_size(src_wh, cfg, out) -> None:
    meta = VideoMeta(width=src_wh[0], height=src_wh[1], fps=25.0, n_frames=10, duration_s=None, codec="h264")
    assert output_size(meta, cfg) == out


def test_expected_frame_count() -> None:
    meta = VideoMeta(width=64, height=48, fps=25.0, n_frames=21, duration_s=None, codec="h264")
    assert expected_frame_count(meta, DecodeConfig()) == 21
    assert expected_frame_count(meta, DecodeConfig(step=2)) == 11
    assert expected_frame_count(meta, DecodeConfig(step=2, max_frames=5)) == 5
    assert expected_frame_count(meta, DecodeConfig(step=30)) == 1
    unknown = VideoMeta(width=64, height=48, fps=25.0, n_frames=None, duration_s=None, codec="h264")
    assert expected_frame_count(unknown, DecodeConfig()) is None


# ---------------------------------------------------------------------------------- decode_range


@pytest.mark.parametrize("step", [1, 2])
def test_decode_range_equals_slice_of_full_decode(samples, step) -> None:
    src = samples["carphone_pristine"]
    meta = probe(src)
    cfg = DecodeConfig(short_side=32, step=step)
    full = np.stack(list(decode(src, cfg, meta)))
    n = len(full)
    for start, stop in [(0, 5), (7, 19), (n - 3, n), (n - 4, n + 10)]:
        got = decode_range(src, cfg, start, stop, meta)
        np.testing.assert_array_equal(got, full[start:stop])
    # ranges tile the video exactly
    tiles = np.concatenate([decode_range(src, cfg, a, a + 16, meta) for a in range(0, n, 16)])
    np.testing.assert_array_equal(tiles, full)


def test_decode_range_respects_max_frames_and_rejects_bad_ranges(samples) -> None:
    src = samples["carphone_pristine"]
    cfg = DecodeConfig(short_side=32, max_frames=10)
    full = np.stack(list(decode(src, cfg)))
    np.testing.assert_array_equal(decode_range(src, cfg, 6, 20), full[6:20])
    # displayed 192.5x144 (SAR 128:117): 192.5 * 32 / 144 = 42.8 -> even 42
    assert decode_range(src, cfg, 12, 20).shape == (0, *full.shape[1:]) == (0, 32, 42, 3)
    with pytest.raises(ValueError, match="start < stop"):
        decode_range(src, cfg, 5, 5)
    with pytest.raises(ValueError, match="start < stop"):
        decode_range(src, cfg, -1, 3)


# --------------------------------------------------------------------------------- decode_stream (seeking)


def _assert_stream_equals_slices(src: VideoSource, cfg: DecodeConfig, n_starts: int = 8) -> dict:
    """decode_stream from several starts (with its seek points) gives exactly full[start:stop]."""
    meta = probe(src)
    full = np.stack(list(decode(src, cfg, meta)))
    n = len(full)
    starts = sorted({*range(1, n, max(1, n // n_starts)), n - 1})
    seeks = seek_points(src, cfg, meta, starts)
    for start in starts:
        stop = min(n, start + 12)
        got = np.stack(list(decode_stream(src, cfg, start, stop, meta, seeks.get(start))))
        np.testing.assert_array_equal(got, full[start:stop], err_msg=f"{src.path} [{start}, {stop}) {seeks.get(start)}")
    return seeks


@pytest.mark.parametrize("step", [1, 3])
def test_decode_stream_seeks_exactly_in_the_samples(samples, step) -> None:
    for name in ("bikes", "bigbuckbunny"):
        seeks = _assert_stream_equals_slices(samples[name], DecodeConfig(short_side=32, step=step))
        assert any(p.seek_s is not None for p in seeks.values())  # a real seek happened, not a decode from 0


@pytest.mark.parametrize("kind", ["bframes_gop7", "cut_edit_list", "vfr", "mkv"])
def test_decode_stream_exact_on_awkward_files(tmp_path, kind) -> None:
    """B-frames with short GOPs, a stream-copy cut (edit list, frames before the key frame), variable
    frame rate: seeking stays frame-exact. Matroska is not seeked (decode from the start), still exact."""
    src_args = ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:d=6"]
    path = tmp_path / ("clip.mkv" if kind == "mkv" else "clip.mp4")
    if kind == "bframes_gop7":
        _ffmpeg(*src_args, "-c:v", "libx264", "-bf", "3", "-g", "7", "-pix_fmt", "yuv420p", str(path))
    elif kind == "cut_edit_list":
        full = tmp_path / "full.mp4"
        _ffmpeg(*src_args, "-c:v", "libx264", "-bf", "2", "-g", "20", "-pix_fmt", "yuv420p", str(full))
        _ffmpeg("-ss", "1.55", "-i", str(full), "-c", "copy", str(path))
    elif kind == "vfr":
        _ffmpeg(*src_args, "-vf", "setpts='if(lt(N,60),N/25,N/10)/TB'", "-fps_mode", "vfr", "-c:v", "libx264",
                "-pix_fmt", "yuv420p", str(path))
    else:
        _ffmpeg(*src_args, "-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p", str(path))
    seeks = _assert_stream_equals_slices(file_source(path), DecodeConfig(short_side=None), n_starts=12)
    assert (seeks == {}) == (kind == "mkv")


def test_decode_stream_from_zero_and_errors(samples) -> None:
    src = samples["carphone_pristine"]
    cfg = DecodeConfig(short_side=32, max_frames=10)
    full = np.stack(list(decode(src, cfg)))
    np.testing.assert_array_equal(np.stack(list(decode_stream(src, cfg, 0, 4))), full[:4])
    np.testing.assert_array_equal(np.stack(list(decode_stream(src, cfg, 6, 20))), full[6:])  # capped like a slice
    assert list(decode_stream(src, cfg, 12, 20)) == []
    with pytest.raises(ValueError, match="start < stop"):
        decode_stream(src, cfg, 5, 5)
    meta = probe(src)
    other = seek_points(src, cfg, meta, [3])[3]
    with pytest.raises(ValueError, match="seek point of frame 3"):
        decode_stream(src, cfg, 4, 8, meta, other)


# --------------------------------------------------------------------------------- frame folders


def make_frames(folder: Path, names: list[str]) -> list[np.ndarray]:
    """PNG frames whose colour encodes their index (lossless, so decoding must give them back exactly)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, name in enumerate(names):
        img = np.zeros((20, 24, 3), np.uint8)
        img[..., 0] = 10 * i
        img[:, : i + 1, 1] = 255  # a bar whose width is the index
        img[..., 2] = 200 - 5 * i
        Image.fromarray(img).save(folder / name)
        images.append(img)
    return images


def test_frame_folder_in_numeric_order_exactly(tmp_path) -> None:
    names = [f"{i}.png" for i in range(1, 13)]  # unpadded: 1, 2, ..., 10, 11, 12
    images = make_frames(tmp_path / "clip", names)
    (tmp_path / "clip" / "notes.txt").write_text("not a frame")
    src = VideoSource(str(tmp_path / "clip"), "frames")
    assert [p.name for p in list_frames(src.path)] == names
    meta = probe(src)
    assert (meta.width, meta.height, meta.n_frames, meta.fps, meta.codec) == (24, 20, 12, 25.0, "png")
    got = list(decode(src, DecodeConfig(short_side=None), meta))
    np.testing.assert_array_equal(np.stack(got), np.stack(images))


@pytest.mark.parametrize(
    ("folder_name", "stray", "demuxer"),
    [("plain", False, "image2"), ("plain", True, "concat"), ("glob [chars]*?", False, "concat"),
     ("quote's {x}", True, "concat")],
)
def test_frame_folder_glob_or_concat_give_the_same_frames(tmp_path, folder_name, stray, demuxer) -> None:
    """image2 glob when it reproduces the frame order exactly, else a concat list: same frames either way."""
    images = make_frames(tmp_path / folder_name, [f"{i:05d}.png" for i in range(6)])
    if stray:  # an image the glob would match but that is not a frame (its name has no number)
        Image.fromarray(np.full((20, 24, 3), 77, np.uint8)).save(tmp_path / folder_name / "cover.png")
    src = VideoSource(str(tmp_path / folder_name), "frames")
    meta = probe(src)
    tmp: list[str] = []
    cmd = _command(src, DecodeConfig(short_side=None), meta, None, None, tmp)
    assert cmd[cmd.index("-f") + 1] == demuxer
    for d in tmp:
        shutil.rmtree(d)
    got = np.stack(list(decode(src, DecodeConfig(short_side=None), meta)))
    np.testing.assert_array_equal(got, np.stack(images))
    np.testing.assert_array_equal(decode_range(src, DecodeConfig(short_side=None, step=2), 1, 3), got[2:6:2])


@needs_davis
def test_davis_frame_folder_decodes_like_pillow() -> None:
    folder = DAVIS / "JPEGImages" / "480p" / "blackswan"
    src = VideoSource(str(folder.resolve()), "frames")
    meta = probe(src)
    assert (meta.width, meta.height, meta.n_frames, meta.codec) == (854, 480, 50, "mjpeg")
    frames = list(decode(src, DecodeConfig(short_side=None, step=7), meta))
    assert len(frames) == expected_frame_count(meta, DecodeConfig(step=7)) == 8
    files = list_frames(folder)
    for k, frame in enumerate(frames):
        ref = np.asarray(Image.open(files[7 * k]).convert("RGB"), dtype=np.int16)
        # two JPEG decoders: same image up to chroma upsampling and IDCT rounding
        assert np.abs(ref - frame).mean() < 2.0
    small = np.stack(list(decode(src, DecodeConfig(short_side=64, max_frames=5))))
    assert small.shape == (5, 64, 114, 3)


# -------------------------------------------------------------------------------------- discover


def test_discover_walks_folders_sorted_and_deduplicated(tmp_path) -> None:
    a = make_video(tmp_path / "root" / "a.mp4", 3)
    b = make_video(tmp_path / "root" / "sub" / "b.MOV", 3)
    odd = make_video(tmp_path / "odd.mp4", 3).rename(tmp_path / "odd.bin")  # explicit: tried whatever its extension
    make_frames(tmp_path / "root" / "frames" / "seq1", ["000.png", "001.png"])
    (tmp_path / "root" / "readme.txt").write_text("x")
    (tmp_path / "root" / "data.bin").write_bytes(b"x")  # walked: not a video extension
    make_video(tmp_path / "root" / ".hidden" / "c.mp4", 3)
    (tmp_path / "empty").mkdir()

    sources, errors = discover([tmp_path / "root", str(a), tmp_path / "root" / "sub", odd, tmp_path / "gone.mp4",
                                tmp_path / "empty"])
    expected = sorted(
        [file_source(a), file_source(b), file_source(odd), VideoSource(str(tmp_path / "root" / "frames" / "seq1"), "frames")],
        key=lambda s: s.path,
    )
    assert sources == expected
    assert [(Path(e.path).name, e.reason) for e in errors] == [("gone.mp4", "missing"), ("empty", "no videos found")]
    assert "gone.mp4" in str(errors[0])
    # deterministic
    assert discover([odd, tmp_path / "root"])[0] == expected


@needs_davis
def test_discover_finds_davis_frame_folders() -> None:
    sources, errors = discover([DAVIS])
    assert errors == []
    frames = [s for s in sources if s.kind == "frames" and "/JPEGImages/" in s.path]
    assert [Path(s.path).name for s in frames] == ["blackswan", "car-shadow", "dog", "libby"]
    # a frame folder given directly is one source
    assert discover([DAVIS / "JPEGImages" / "480p" / "dog"])[0] == [
        VideoSource(os.path.abspath(DAVIS / "JPEGImages" / "480p" / "dog"), "frames")
    ]


def test_spaces_and_non_ascii_paths_work_everywhere(tmp_path) -> None:
    video = make_video(tmp_path / "vidéo à tester" / "clip ü.mp4", 12)
    make_frames(tmp_path / "vidéo à tester" / "images ß", ["0001.png", "0002.png", "0003.png"])
    sources, errors = discover([tmp_path / "vidéo à tester"])
    assert errors == []
    assert [(Path(s.path).name, s.kind) for s in sources] == [("clip ü.mp4", "file"), ("images ß", "frames")]
    for src in sources:
        meta = probe(src)
        frames = list(decode(src, DecodeConfig(short_side=16), meta))
        assert len(frames) == meta.n_frames == (12 if src.kind == "file" else 3)
        assert len(content_id(src)) == 20
    assert decode_range(sources[0], DecodeConfig(short_side=16), 2, 5).shape[0] == 3
    assert video.exists()


def test_discover_reports_each_unreadable_entry_and_finds_every_other_video(tmp_path) -> None:
    """Issue 21: a symbolic link loop (two links naming each other) and a dangling link beside a good video.
    Each becomes its own "unreadable" error naming the entry; the good video, and a frame folder holding a
    looping entry among its frames, are still found (and the frame folder decodes without that entry)."""
    root = tmp_path / "drop"
    good = make_video(root / "good.mp4", 5)
    (root / "loop a.mp4").symlink_to("loop b.mp4")
    (root / "loop b.mp4").symlink_to("loop a.mp4")
    (root / "dangling.mkv").symlink_to(tmp_path / "moved away.mkv")
    (root / "notes.txt").symlink_to("nowhere.txt")  # could never have been a video: not reported
    (root / "linked folder").symlink_to("linked folder")  # a link to itself, named like a folder
    make_frames(root / "seq", ["0000.png", "0001.png", "0002.png"])
    (root / "seq" / "0003.png").symlink_to("0003.png")

    sources, errors = discover([root, root / "loop a.mp4"])
    assert sources == [file_source(good), VideoSource(str(root / "seq"), "frames")]
    assert [(e.path, e.reason, e.detail) for e in errors] == [
        (str(root / "dangling.mkv"), "unreadable", f"dangling symbolic link to {tmp_path / 'moved away.mkv'}"),
        (str(root / "linked folder"), "unreadable", "symbolic link loop"),
        (str(root / "loop a.mp4"), "unreadable", "symbolic link loop"),  # reached twice, reported once
        (str(root / "loop b.mp4"), "unreadable", "symbolic link loop"),
        (str(root / "seq" / "0003.png"), "unreadable", "symbolic link loop"),
    ]
    assert [p.name for p in list_frames(root / "seq")] == ["0000.png", "0001.png", "0002.png"]
    assert len(list(decode(sources[1], DecodeConfig(short_side=16)))) == 3
    assert len(content_id(sources[1])) == 20
    # a frame folder given directly: its unreadable entry is reported too
    assert [(e.path, e.reason) for e in discover([root / "seq"])[1]] == [(str(root / "seq" / "0003.png"), "unreadable")]


def test_a_folder_that_vanishes_while_walked_is_reported_and_the_walk_goes_on(tmp_path, monkeypatch) -> None:
    """The race, made certain: the sub-folder is removed just before the walk lists it."""
    root = tmp_path / "drop"
    good = make_video(root / "a" / "good.mp4", 5)
    make_video(root / "gone" / "lost.mp4", 5)
    real_scandir = os.scandir

    def scandir(path="."):  # noqa: ANN001, ANN202
        if isinstance(path, str | os.PathLike) and Path(path).name == "gone":  # (rmtree passes descriptors)
            shutil.rmtree(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    sources, errors = discover([root])
    assert sources == [file_source(good)]
    assert [(e.path, e.reason, e.detail) for e in errors] == [
        (str(root / "gone"), "unreadable", "vanished while the folder was read")]


def _as_another_user(fn):  # noqa: ANN001, ANN202
    """``fn()`` where permissions apply: run directly when not root; as root (who reads everything) in a forked
    child that becomes user ``nobody``, its result (or exception) sent back through a pipe."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os calls and fn, then os._exit (never back into pytest)
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            data = pickle.dumps(fn())
        except BaseException as e:  # noqa: BLE001 - sent to the parent
            code, data = 1, pickle.dumps(RuntimeError(f"{type(e).__name__}: {e}"))
        with os.fdopen(w, "wb") as fh:
            fh.write(data)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    result = pickle.loads(data)
    if os.waitstatus_to_exitcode(status) != 0:
        raise result
    return result


def test_entries_without_permission_fail_alone() -> None:
    """A folder that cannot be listed is an "unreadable" error; a file that cannot be read is found (its name
    and type can be read) and fails alone when it is hashed. chmod does not stop root: as root the checks
    run as user nobody in a forked child."""
    base = Path(tempfile.mkdtemp(prefix="cpfs-perm-"))
    try:
        base.chmod(0o755)
        good = make_video(base / "good.mp4", 5)
        secret = make_video(base / "secret.mp4", 5)
        make_video(base / "locked" / "inside.mp4", 5)
        for p in (base, good):
            p.chmod(0o755 if p.is_dir() else 0o644)
        secret.chmod(0o000)
        (base / "locked").chmod(0o000)

        def check() -> tuple:
            sources, errors = discover([base])
            hashed = []
            for s in sources:
                try:
                    hashed.append(len(content_id(s)))
                except VideoError as e:
                    hashed.append((e.path, e.reason, e.detail))
            return sources, [(e.path, e.reason, e.detail) for e in errors], hashed

        sources, errors, hashed = _as_another_user(check)
        assert sources == [file_source(good), file_source(secret)]
        assert errors == [(str(base / "locked"), "unreadable", "permission denied")]
        assert hashed == [20, (str(secret), "unreadable", "secret.mp4: permission denied")]
    finally:
        if (base / "locked").exists():
            (base / "locked").chmod(0o755)
        shutil.rmtree(base)


def test_a_loop_or_dangling_link_given_by_name_is_unreadable_not_missing(tmp_path) -> None:
    (tmp_path / "a.mp4").symlink_to("b.mp4")
    (tmp_path / "b.mp4").symlink_to("a.mp4")
    (tmp_path / "c.mp4").symlink_to("gone.mp4")
    _, errors = discover([tmp_path / "a.mp4", tmp_path / "c.mp4", tmp_path / "d.mp4"])
    assert [(Path(e.path).name, e.reason) for e in errors] == [("a.mp4", "unreadable"), ("c.mp4", "unreadable"),
                                                              ("d.mp4", "missing")]


# ------------------------------------------------------------------------------------ content_id


def test_content_id_is_a_hash_of_the_bytes(tmp_path) -> None:
    a = make_video(tmp_path / "a.mp4", 5)
    copy = tmp_path / "elsewhere" / "renamed.mp4"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    assert content_id(file_source(a)) == content_id(file_source(copy))
    # naive reference: the whole file hashed at once
    assert content_id(file_source(a)) == hashlib.blake2b(a.read_bytes(), digest_size=10).hexdigest()
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    assert content_id(file_source(a)) != content_id(file_source(copy))


def test_content_id_of_frame_folder_depends_on_names_and_bytes(tmp_path) -> None:
    make_frames(tmp_path / "x", ["0.png", "1.png", "2.png"])
    shutil.copytree(tmp_path / "x", tmp_path / "y")
    src_x, src_y = VideoSource(str(tmp_path / "x"), "frames"), VideoSource(str(tmp_path / "y"), "frames")
    assert content_id(src_x) == content_id(src_y)
    (tmp_path / "y" / "2.png").rename(tmp_path / "y" / "3.png")
    assert content_id(src_x) != content_id(src_y)
    (tmp_path / "y" / "foo.txt").write_text("ignored")  # not a frame: does not change the id
    (tmp_path / "y" / "3.png").rename(tmp_path / "y" / "2.png")
    assert content_id(src_x) == content_id(src_y)


# ---------------------------------------------------------------------------------- bad inputs


def _reason(fn, *args) -> VideoError:  # noqa: ANN001
    with pytest.raises(VideoError) as info:
        result = fn(*args)
        if not isinstance(result, (VideoMeta, np.ndarray)):
            list(result)
    return info.value


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    out = {"empty": d / "empty.mp4", "text": d / "text.mp4"}
    out["empty"].write_bytes(b"")
    out["text"].write_text("hello, I am not a video\n" * 20)
    # moov at the end (ffmpeg's default): cutting the file loses the index
    end = make_video(d / "moov_end.mp4", 40, "160x120")
    out["moov_end"] = d / "moov_end_cut.mp4"
    out["moov_end"].write_bytes(end.read_bytes()[: int(end.stat().st_size * 0.6)])
    # moov first: the cut file opens and plays until the data runs out
    fast = make_video(d / "faststart.mp4", 40, "160x120", "-movflags", "+faststart")
    out["faststart_full"] = fast
    out["faststart"] = d / "faststart_cut.mp4"
    out["faststart"].write_bytes(fast.read_bytes()[: int(fast.stat().st_size * 0.6)])
    # a real AVI whose codec tag is rewritten to one no decoder knows
    mj = d / "mjpeg.avi"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", "5", "-c:v", "mjpeg", str(mj))
    out["unknown_codec"] = d / "unknown codec.avi"
    out["unknown_codec"].write_bytes(mj.read_bytes().replace(b"MJPG", b"ZZZZ"))
    return out


@pytest.mark.parametrize(
    ("key", "reason"),
    [("empty", "empty file"), ("text", "not a video"), ("moov_end", "truncated"), ("faststart", "truncated"),
     ("unknown_codec", "unsupported codec")],
)
def test_probe_and_decode_name_the_bad_file_and_reason(bad_files, key, reason) -> None:
    src = file_source(bad_files[key])
    for err in (_reason(probe, src), _reason(decode, src, DecodeConfig(short_side=16))):
        assert err.reason == reason, str(err)
        assert err.path == src.path and bad_files[key].name in str(err)
        if key not in ("empty",):
            assert err.detail  # ffmpeg's own line...
        assert " @ 0x" not in str(err) and "[" not in err.detail.split(":")[0]  # ...without ffmpeg's pointers
    if key == "moov_end":
        assert _reason(probe, src).detail == "moov atom not found"


def test_ffmpeg_message_strips_contexts_pointers_and_levels() -> None:
    assert ffmpeg_message("[in#0 @ 0x5569aab07080] moov atom not found") == "moov atom not found"
    assert ffmpeg_message("[vist#0:0/h264 @ 0x55e25da867c0] [dec:h264 @ 0x55e25db14dc0] [warning] corrupt decoded "
                          "frame\n") == "corrupt decoded frame"
    assert ffmpeg_message("[error] Error opening input file x.mp4.") == "Error opening input file x.mp4."
    assert ffmpeg_message("  Stream #0:0[0x1](und): Video: h264") == "Stream #0:0[0x1](und): Video: h264"


def test_truncated_video_raises_after_its_good_frames(bad_files) -> None:
    """Given the intact file's metadata, the cut file decodes some frames, then must fail loudly."""
    meta = probe(file_source(bad_files["faststart_full"]))
    got = []
    with pytest.raises(VideoError) as info:
        for frame in decode(file_source(bad_files["faststart"]), DecodeConfig(short_side=None), meta):
            got.append(frame)
    assert info.value.reason == "truncated"
    assert 1 <= len(got) < 40
    with pytest.raises(VideoError, match="truncated"):
        decode_range(file_source(bad_files["faststart"]), DecodeConfig(short_side=None), 0, 40, meta)


def test_unsupported_codec_when_decoding_with_given_meta(bad_files) -> None:
    meta = VideoMeta(width=64, height=48, fps=10.0, n_frames=5, duration_s=0.5, codec="mjpeg")
    err = _reason(decode, file_source(bad_files["unknown_codec"]), DecodeConfig(short_side=None), meta)
    assert err.reason == "unsupported codec" and "codec" in err.detail.lower()


def test_missing_path(tmp_path) -> None:
    gone = file_source(tmp_path / "nope" / "gone.mp4")
    folder = VideoSource(str(tmp_path / "no frames"), "frames")
    for err, name in ((_reason(probe, gone), "gone.mp4"), (_reason(decode, gone, DecodeConfig()), "gone.mp4"),
                      (_reason(probe, folder), "no frames"), (_reason(content_id, folder), "no frames")):
        assert err.reason == "missing" and name in str(err)


# ------------------------------------------------------------------------------- decode errors


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> tuple[VideoSource, VideoSource]:
    """A real H.264 mp4 and a copy with 300 random bytes (seed 1) past the middle of its media data."""
    d = tmp_path_factory.mktemp("damaged")
    clean, bad = h264_with_damage(d / "clean.mp4", d / "damaged.mp4", seed=1)
    plain = subprocess.run([get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(bad), "-f", "null", "-"],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0 and "corrupt decoded frame" in plain.stderr  # ffmpeg itself says so
    return file_source(clean), file_source(bad)


def test_decode_reports_the_flagged_frame_and_exactly_the_frames_its_damage_reaches(damaged) -> None:
    clean, bad = damaged
    cfg = DecodeConfig(short_side=None)
    clean_report, report = DecodeReport(), DecodeReport()
    ref = np.stack(list(decode(clean, cfg, report=clean_report)))
    got = np.stack(list(decode(bad, cfg, report=report)))
    assert not clean_report.errors
    assert got.shape == ref.shape == (60, 96, 128, 3)  # every frame decodes: the damage is concealed
    differ = np.flatnonzero((got != ref).any(axis=(1, 2, 3)))
    a, b = int(differ[0]), int(differ[-1]) + 1
    assert list(differ) == list(range(a, b)) and b % 20 == 0  # up to the next key frame (one every 20)
    assert report.errors == DecodeErrors(corrupt=report.errors.corrupt, damaged=((a, b),))
    assert report.errors.count == 1 and a < report.errors.corrupt[0] < b  # B-frames shown before it: damaged
    assert report.errors.describe() == f"1 decode error in frames ~{a}-{b - 1}"


@pytest.mark.parametrize("step", [1, 2])
def test_ranges_seeking_or_not_report_together_what_one_pass_reports(damaged, step) -> None:
    """Ranges decoded as an ingest decodes them (each with its look-ahead frame; later ones seek to a key frame
    before them): the union of their reports is the whole decode's, whatever range sees the damaged frame."""
    _, bad = damaged
    cfg = DecodeConfig(short_side=None, step=step)
    meta = probe(bad)
    whole = DecodeReport()
    n = len(list(decode(bad, cfg, meta, whole)))
    starts = list(range(0, n, 8))
    seeks = seek_points(bad, cfg, meta, starts)
    assert any(p.seek_s is not None for p in seeks.values())
    seeking = plain = DecodeErrors()
    for a in starts:
        with_seek, without = DecodeReport(), DecodeReport()
        list(decode_stream(bad, cfg, a, min(a + 9, n), meta, seeks.get(a), with_seek))
        list(decode_stream(bad, cfg, a, min(a + 9, n), meta, None, without))
        seeking, plain = seeking.union(with_seek.errors), plain.union(without.errors)
    assert whole.errors.count == 1
    assert seeking == plain == whole.errors


def test_damage_reaches_back_over_b_frames_and_stops_at_a_clean_key_frame() -> None:
    def f(key: bool = False, b: bool = False, corrupt: bool = False) -> DecodedFrame:
        return DecodedFrame(t=None, key=key, b_frame=b, corrupt=corrupt)

    seq = [f(key=True), f(), f(b=True), f(b=True), f(corrupt=True), f(b=True), f(), f(key=True), f(b=True)]
    assert damaged_mask(seq).tolist() == [False, False, True, True, True, True, True, False, False]
    seq = [f(key=True, corrupt=True), f(), f(key=True), f(corrupt=True, b=True), f()]
    assert damaged_mask(seq).tolist() == [True, True, False, True, True]


# ------------------------------------------------------------------------ process hygiene, timeouts


def test_closing_the_generator_early_leaves_no_ffmpeg(samples) -> None:
    gen = decode(samples["bikes"], DecodeConfig(short_side=32))
    next(gen)
    assert len(ffmpeg_children()) == 1  # ffmpeg is decoding ahead...
    gen.close()
    assert ffmpeg_children() == []  # ...and is killed and reaped on close


def test_slow_consumer_is_not_a_stall(samples) -> None:
    """The timeout is about ffmpeg producing nothing, not about the consumer taking its time."""
    frames = []
    for frame in decode(samples["carphone_pristine"], DecodeConfig(short_side=16, max_frames=2, timeout_s=0.5)):
        time.sleep(0.8)
        frames.append(frame)
    assert len(frames) == 2
    assert ffmpeg_children() == []


def test_stall_times_out_and_kills_ffmpeg(tmp_path) -> None:
    fifo = tmp_path / "never written.mp4"
    os.mkfifo(fifo)  # ffmpeg blocks opening it: no writer ever comes
    meta = VideoMeta(width=64, height=48, fps=10.0, n_frames=10, duration_s=1.0, codec="h264")
    t0 = time.monotonic()
    err = _reason(decode, file_source(fifo), DecodeConfig(short_side=None, timeout_s=1.0), meta)
    assert err.reason == "ffmpeg timed out" and fifo.name in str(err)
    assert time.monotonic() - t0 < 30  # liveness: the 1 s limit applied, not the 60 s default
    assert ffmpeg_children() == []
    err = _reason(lambda s: probe(s, timeout_s=1.0), file_source(fifo))
    assert err.reason == "ffmpeg timed out"
    assert ffmpeg_children() == []
    assert _reason(content_id, file_source(fifo)).reason == "not a video"  # never blocks reading a FIFO


# ------------------------------------------------------------------ truncation, repeat frames, geometry

TREE_AVI = DATA / "videos" / "tree.avi"


def _noisy_video(path: Path, seconds: float, *extra: str) -> Path:
    """A real H.264 video that does not compress to nothing (testsrc2 plus temporal noise), 160x120, 25 fps."""
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-vf", "noise=alls=30:allf=t", "-t", str(seconds),
            "-c:v", "libx264", "-pix_fmt", "yuv420p", *extra, str(path))
    return path


def test_matroska_cut_short_is_truncated_not_stored_short(tmp_path) -> None:
    """A Matroska file cut at 30 KB still opens (its header declares 2.00 s, 50 frames) and its packets
    decode without a decoder error: only comparing what the file holds with what it declares finds it."""
    full = _noisy_video(tmp_path / "full.mkv", 2.0)
    assert full.stat().st_size > 100_000  # the cut below really loses most of the frames
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[:30_000])
    err = _reason(probe, file_source(cut))
    assert err.reason == "truncated" and err.path == str(cut)
    assert "of ~50 frames" in err.detail and "2.00 s" in err.detail, err.detail
    err = _reason(decode, file_source(cut), DecodeConfig(short_side=None))
    assert err.reason == "truncated"
    meta = probe(file_source(full))  # the intact file is fine
    assert (meta.n_frames, meta.duration_s) == (50, 2.0)


@pytest.mark.parametrize("name", ["audio_longer.mkv", "audio_longer.mp4", "vfr.mkv", "vfr.mp4", "clip.webm", "clip.ts"])
def test_good_files_are_not_taken_for_truncated(tmp_path, name) -> None:
    """Audio that outlasts the video, variable frame rate, VP9/WebM and MPEG-TS (which starts at 1.4 s) all
    declare durations their packets cover."""
    path = tmp_path / name
    src = ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:d=2"]
    if name.startswith("audio_longer"):
        _ffmpeg(*src, "-f", "lavfi", "-i", "sine=d=5", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path))
        n = 50
    elif name.startswith("vfr"):
        _ffmpeg(*src, "-vf", "setpts='if(lt(N,30),N/25,N/10)/TB'", "-fps_mode", "vfr", "-c:v", "libx264",
                "-pix_fmt", "yuv420p", str(path))
        n = 50
    elif name.endswith(".webm"):
        _ffmpeg(*src, "-c:v", "libvpx-vp9", "-b:v", "100k", str(path))
        n = 50
    else:
        _ffmpeg(*src, "-c:v", "mpeg2video", str(path))
        n = 50
    meta = probe(file_source(path))
    assert meta.n_frames == n
    assert len(list(decode(file_source(path), DecodeConfig(short_side=None), meta))) == n


@pytest.mark.skipif(not TREE_AVI.is_file(), reason=f"OpenCV's sample tree.avi not found at {TREE_AVI} (shared data)")
def test_avi_repeat_frames_are_not_frames() -> None:
    """tree.avi (Cinepak in AVI): 444 index entries, 376 of them empty 'repeat the previous frame' entries.
    The video is its 68 distinct frames (a repeat would only add a zero-flow pair), and it is complete."""
    src = file_source(TREE_AVI)
    meta = probe(src)
    assert (meta.width, meta.height, meta.codec, meta.n_frames) == (320, 240, "cinepak", 68)
    frames = list(decode(src, DecodeConfig(short_side=None), meta))
    assert len(frames) == 68
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))
    np.testing.assert_array_equal(decode_range(src, DecodeConfig(short_side=None), 60, 68, meta), np.stack(frames[60:]))


def _ffmpeg_rgb(path: Path, w: int, h: int) -> np.ndarray:
    """Frames as ffmpeg's own command line decodes them (autorotation on: its default), (n, h, w, 3)."""
    out = subprocess.run([get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotated_video_comes_out_as_displayed(tmp_path, rotation) -> None:
    """A 320x240 video with a display matrix of 90 degrees is shown portrait, 240x320: decoded frames are
    portrait with the source's aspect ratio, and equal ffmpeg's own autorotated frames."""
    plain = tmp_path / "plain.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10", "-frames:v", "6", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", str(plain))
    rotated = tmp_path / f"rot{rotation}.mp4"
    _ffmpeg("-display_rotation", str(rotation), "-i", str(plain), "-c", "copy", str(rotated))
    meta = probe(file_source(rotated))
    assert (meta.width, meta.height, meta.rotation) == (320, 240, rotation)
    assert output_size(meta, DecodeConfig(short_side=128)) == (128, 170)  # portrait, 3:4
    frames = np.stack(list(decode(file_source(rotated), DecodeConfig(short_side=None), meta)))
    assert frames.shape == (6, 320, 240, 3)
    np.testing.assert_array_equal(frames, _ffmpeg_rgb(rotated, 240, 320))
    # the content is the plain video's, turned a quarter: compare with numpy's rotation of the plain frames
    upright = np.stack(list(decode(file_source(plain), DecodeConfig(short_side=None))))
    turned = [np.abs(np.rot90(upright, k, axes=(1, 2)).astype(int) - frames).mean() for k in (1, 3)]
    assert min(turned) < 2.0 < max(turned)
    small = np.stack(list(decode(file_source(rotated), DecodeConfig(short_side=128), meta)))
    assert small.shape == (6, 170, 128, 3)


def test_sample_aspect_ratio_is_honoured(tmp_path) -> None:
    """320x240 coded at SAR 2:1 displays as 640x240: the decoded frames keep the displayed shape."""
    path = tmp_path / "sar.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10", "-frames:v", "4", "-vf", "setsar=2/1",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    meta = probe(file_source(path))
    assert (meta.width, meta.height, meta.sar) == (320, 240, (2, 1))
    assert output_size(meta, DecodeConfig(short_side=None)) == (640, 240)
    assert output_size(meta, DecodeConfig(short_side=120)) == (320, 120)
    frames = np.stack(list(decode(file_source(path), DecodeConfig(short_side=120), meta)))
    assert frames.shape == (4, 120, 320, 3)
