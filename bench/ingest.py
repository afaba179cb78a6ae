"""Does the ingest pipeline keep up with its optical flow, and is its memory bounded? Measured side by side.

Throughput (one run, same frames, same cores, repeats interleaved): for each backend,

- *bare*: ``make_backend(cfg.flow).compute`` over consecutive pairs of frames already decoded in memory,
  block by block as the pipeline does (``shard_frames + 1`` frames per call, the last frame of a block
  starting the next), nothing else;
- *flow*: the real Prefect flow ``flows.ingest.ingest`` (decode + flow + photometric error + Zarr write +
  cut detection + index + Prefect/Dask orchestration) on a fresh store in a temporary folder.

Both are given in frames/s over the same sample videos (``cpfs.ingest.discovery.sample_videos()``) and as the ratio
flow / bare (goal >= 0.9: decoding and writing overlap the flow computation). CPU seconds per frame (this
process, its finished children such as ffmpeg, and its live children such as the Prefect server) are given
beside the wall times: on a shared machine they are less noisy than wall time. The temporary Prefect server
starts before anything is timed (a trivial flow is run twice: the first call's time is the server start-up,
the second a flow's fixed cost); both are printed.

Memory: the library ``cpfs.ingest.steps.ingest_video`` ingests a short input (bikes.mp4) and a ten-times-longer
one (bikes.mp4 looped with ``ffmpeg -stream_loop 9 -c copy``), each in a fresh subprocess into a fresh
store; the peak RSS of the Python process (the kernel's high-water mark ``VmHWM``), and the peaks of its
ffmpeg children and of the whole process tree (psutil sampling every 20 ms) are printed with the long/short
ratio (goal: about 1, no growth with length). ``ru_maxrss`` is not used: Linux carries the parent's peak
into a forked child's ``ru_maxrss`` across ``exec``, so it would report the benchmark's own peak.

    .venv/bin/python bench/ingest.py [--backends opencv-dis,opencv-farneback] [--size 256] [--repeats 2]
        [--memory-backend opencv-dis] [--loops 10] [--no-throughput] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil


# ------------------------------------------------------------------------------------------ environment


def prefect_env(home: Path) -> None:
    """Point Prefect at a throw-away home (its temporary server's database lives there). Must run before
    ``prefect`` is imported: Prefect reads its settings at import."""
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # keep the table readable


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, its reaped children (ffmpeg) and its live descendants
    (the temporary Prefect server, Dask)."""
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total


def load_average() -> float:
    return os.getloadavg()[0]


# ------------------------------------------------------------------------------------------ throughput


def decode_all(paths: list[Path], cfg) -> tuple[list[np.ndarray], float]:  # noqa: ANN001 (IngestConfig)
    """Every video decoded in memory as the pipeline decodes it -> ([(T, H, W, 3) uint8], seconds)."""
    from cpfs.records import VideoSource
    from cpfs.ingest.video import decode

    t0 = time.perf_counter()
    frames = [np.stack(list(decode(VideoSource(str(p), "file"), cfg.decode))) for p in paths]
    return frames, time.perf_counter() - t0


def bare_loop(videos: list[np.ndarray], cfg) -> dict:  # noqa: ANN001 (IngestConfig)
    """Flow of every consecutive pair, blocks of ``shard_frames + 1`` frames -> {"seconds", "cpu_s"}."""
    from cpfs.flow import make_backend

    backend = make_backend(cfg.flow)
    backend.compute(videos[0][:2])  # warm-up: builds the algorithm object
    step = cfg.store.shard_frames
    c0, t0 = cpu_seconds(), time.perf_counter()
    for frames in videos:
        for a in range(0, frames.shape[0] - 1, step):
            backend.compute(frames[a : a + step + 1])
    return {"seconds": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}


def run_flow(paths: list[Path], cfg, store: Path) -> dict:  # noqa: ANN001 (IngestConfig)
    """The real Prefect ingest flow on a fresh store -> {"seconds", "cpu_s", "frames"}."""
    from flows.ingest import ingest

    run_cfg = cfg.model_copy(update={"inputs": [str(p) for p in paths],
                                     "store": cfg.store.model_copy(update={"path": str(store)})})
    c0, t0 = cpu_seconds(), time.perf_counter()
    summary = ingest(run_cfg)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if summary.failed or len(summary.stored) != len(paths):
        raise RuntimeError(f"ingest flow did not store every video: {summary.results}")
    return {"seconds": seconds, "cpu_s": cpu, "frames": sum(r.n_frames for r in summary.stored)}


def warm_prefect() -> dict:
    """Start the temporary Prefect server by running a trivial flow; time it and a second call."""
    from prefect import flow

    @flow(name="bench-noop")
    def noop() -> int:
        return 1

    t0 = time.perf_counter()
    noop()
    t1 = time.perf_counter()
    noop()
    return {"first_flow_s": t1 - t0, "noop_flow_s": time.perf_counter() - t1}


def throughput(backends: list[str], size: int, repeats: int, work: Path) -> dict:
    """Bare loop vs the Prefect flow for each backend, repeats interleaved -> plain numbers."""
    from cpfs.config import IngestConfig
    from cpfs.ingest.discovery import sample_videos

    paths = sample_videos()
    out: dict = {"videos": [p.name for p in paths], "size": size, "cpu_count": os.cpu_count(), "backends": {}}
    out["prefect"] = warm_prefect()
    base = IngestConfig.model_validate({"decode": {"short_side": size}})
    videos, decode_s = decode_all(paths, base)
    n_frames = sum(v.shape[0] for v in videos)
    out.update(frames=n_frames, shapes=[list(v.shape[1:3]) for v in videos], decode_fps=n_frames / decode_s)
    for name in backends:
        cfg = base.model_copy(update={"flow": base.flow.model_copy(update={"backend": name})})
        runs = []
        for i in range(repeats):
            load = load_average()
            bare = bare_loop(videos, cfg)
            store = work / f"store-{name}-{i}.zarr"
            fl = run_flow(paths, cfg, store)
            shutil.rmtree(store, ignore_errors=True)
            if fl["frames"] != n_frames:
                raise RuntimeError(f"the flow stored {fl['frames']} frames, the bare loop saw {n_frames}")
            runs.append({"load_1min": load, "bare_fps": n_frames / bare["seconds"],
                         "flow_fps": n_frames / fl["seconds"],
                         "bare_cpu_ms_per_frame": 1e3 * bare["cpu_s"] / n_frames,
                         "flow_cpu_ms_per_frame": 1e3 * fl["cpu_s"] / n_frames,
                         "ratio": bare["seconds"] / fl["seconds"]})
        out["backends"][name] = runs
    return out


# ------------------------------------------------------------------------------------------ memory


def make_long(video: Path, loops: int, dst: Path) -> Path:
    """``video`` played ``loops`` times in a row, stream-copied (no re-encode) by imageio-ffmpeg's ffmpeg."""
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", str(loops - 1),
                    "-i", str(video), "-c", "copy", str(dst)], check=True, timeout=300)
    return dst


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB: ``VmHWM`` of ``/proc/self/status`` (reset at exec, unlike
    ``ru_maxrss``, which inherits the forking parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?): cannot measure peak memory")


def child_memory(video: str, store: str, backend: str, size: int) -> None:
    """In a fresh process: ingest one video with the library, print peaks as JSON on the last line."""
    from cpfs.config import IngestConfig
    from cpfs.ingest.steps import ingest_video
    from cpfs.records import VideoSource

    cfg = IngestConfig.model_validate({"store": {"path": store}, "decode": {"short_side": size},
                                       "flow": {"backend": backend}})
    t0 = time.perf_counter()
    res = ingest_video(VideoSource(video, "file"), cfg)
    seconds = time.perf_counter() - t0
    if res.status != "stored":
        raise SystemExit(f"ingest of {video} failed: {res.error}")
    print(json.dumps({"frames": res.n_frames, "seconds": seconds, "self_peak_mib": peak_rss_mib()}))


def measure_memory(video: Path, store: Path, backend: str, size: int) -> dict:
    """Run ``child_memory`` in a subprocess, sampling the RSS of its children (ffmpeg) and of its whole tree
    every 20 ms."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", str(video), "--store", str(store),
           "--memory-backend", backend, "--size", str(size)]
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree_peak = children_peak = 0
    while proc.poll() is None:
        try:
            own = proc.memory_info().rss
            # ffmpeg by name: a child caught between fork and exec is a copy of Python sharing its pages
            kids = sum(p.memory_info().rss for p in proc.children(recursive=True) if "ffmpeg" in p.name())
        except psutil.NoSuchProcess:  # a child (or the process) ended between listing and reading it
            own = kids = 0
        tree_peak, children_peak = max(tree_peak, own + kids), max(children_peak, kids)
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"memory run on {video} failed (exit {proc.returncode}): {stderr[-2000:]}")
    out = json.loads(stdout.strip().splitlines()[-1])
    out["tree_peak_mib"] = tree_peak / 2**20
    out["ffmpeg_peak_mib"] = children_peak / 2**20
    return out


def memory(backend: str, size: int, loops: int, work: Path) -> dict:
    """Peak memory of ``ingest_video`` on bikes.mp4 and on bikes.mp4 looped ``loops`` times."""
    from cpfs.ingest.discovery import sample_videos

    bikes = next(p for p in sample_videos() if p.name == "bikes.mp4")
    long = make_long(bikes, loops, work / f"bikes-x{loops}.mp4")
    out = {"backend": backend, "size": size, "loops": loops}
    for label, video in (("short", bikes), ("long", long)):
        out[label] = measure_memory(video, work / f"mem-{label}.zarr", backend, size)
        shutil.rmtree(work / f"mem-{label}.zarr", ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------ report


def format_throughput(r: dict) -> str:
    p = r["prefect"]
    lines = [f"Throughput: {r['frames']} frames of {', '.join(r['videos'])} at short side {r['size']} px "
             f"(H x W {', '.join('x'.join(map(str, s)) for s in r['shapes'])}), {r['cpu_count']} cores",
             f"decode alone (ffmpeg, into memory): {r['decode_fps']:.1f} frames/s",
             f"Prefect: first trivial flow (temporary server start-up) {p['first_flow_s']:.1f} s, "
             f"second trivial flow {p['noop_flow_s']:.2f} s; neither is in the flow timings below",
             "",
             f"{'backend':<18} {'run':>3} {'load':>5} {'bare fps':>9} {'flow fps':>9} {'ratio':>6} "
             f"{'bare cpu ms/f':>14} {'flow cpu ms/f':>14}"]
    for name, runs in r["backends"].items():
        for i, x in enumerate(runs):
            lines.append(f"{name:<18} {i:>3} {x['load_1min']:5.1f} {x['bare_fps']:9.1f} {x['flow_fps']:9.1f} "
                         f"{x['ratio']:6.2f} {x['bare_cpu_ms_per_frame']:14.1f} {x['flow_cpu_ms_per_frame']:14.1f}")
        best = max(runs, key=lambda x: x["ratio"])
        med = float(np.median([x["ratio"] for x in runs]))
        lines.append(f"{name:<18} ratio flow/bare: median {med:.2f}, best {best['ratio']:.2f} (goal >= 0.9)")
    return "\n".join(lines)


def format_memory(m: dict) -> str:
    s, lg = m["short"], m["long"]
    lines = [f"Memory: ingest_video, {m['backend']}, short side {m['size']} px, fresh subprocess each",
             f"{'input':<8} {'frames':>7} {'seconds':>8} {'python MiB':>11} {'ffmpeg MiB':>11} {'tree MiB':>9}"]
    for label, x in (("short", s), ("long", lg)):
        lines.append(f"{label:<8} {x['frames']:>7} {x['seconds']:8.1f} {x['self_peak_mib']:11.1f} "
                     f"{x['ffmpeg_peak_mib']:11.1f} {x['tree_peak_mib']:9.1f}")
    lines.append(f"long/short: python {lg['self_peak_mib'] / s['self_peak_mib']:.2f}, "
                 f"tree {lg['tree_peak_mib'] / s['tree_peak_mib']:.2f} (goal: about 1); "
                 f"seconds per frame {(lg['seconds'] / lg['frames']) / (s['seconds'] / s['frames']):.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="opencv-dis,opencv-farneback", help="comma-separated flow backends")
    parser.add_argument("--size", type=int, default=256, help="short side of decoded frames, px")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved bare/flow repeats per backend")
    parser.add_argument("--memory-backend", default="opencv-dis", help="backend of the memory runs")
    parser.add_argument("--loops", type=int, default=10, help="the long input is bikes.mp4 this many times")
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput comparison")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    parser.add_argument("--child-memory", metavar="VIDEO", help=argparse.SUPPRESS)  # internal: one memory run
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        child_memory(args.child_memory, args.store, args.memory_backend, args.size)
        return

    work = Path(tempfile.mkdtemp(prefix="cpfs-bench-ingest-"))
    prefect_env(work / "prefect-home")
    report: dict = {"load_1min_start": load_average()}
    try:
        if not args.no_throughput:
            report["throughput"] = throughput([b for b in args.backends.split(",") if b], args.size, args.repeats, work)
            print(format_throughput(report["throughput"]), flush=True)
            print()
        if not args.no_memory:
            report["memory"] = memory(args.memory_backend, args.size, args.loops, work)
            print(format_memory(report["memory"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_1min_end"] = load_average()
    print(f"\n1-min load average: {report['load_1min_start']:.1f} at start, {report['load_1min_end']:.1f} at end "
          f"({os.cpu_count()} cores)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
