"""DAVIS label propagation: the first implementation against the current one, side by side in one run.

Both run ``davis_protocol`` on the shared DAVIS-2016 sequences (``../shared/data/davis``) with the features the
evaluation uses for DAVIS: hypercolumns (conv1..conv5, stride 4) of a random-init half-width CPFS network
(seed 0, no BatchNorm recalibration), frames resized to a 240 px short side. Each implementation runs in its
own child process, so its peak RSS, CPU time and page faults are its own; the parent prints both, the ratio,
and J and F (which must agree).

    .venv/bin/python bench/davis_speed.py [--sequences 2] [--frames 10] [--threads 2] [--impl both|old|new]
        [--reference COMMIT]   (the "old" implementation: default the first, ac4bc53; any commit's davis.py)

``--frames 0`` and ``--sequences 0`` mean all. The defaults (1 sequence x 8 frames) take about 2 minutes on
a shared 2-core machine, mostly the first implementation (~9 s CPU per frame at 240 px, and it holds every
frame's 688-channel features: ~18 MB per frame), so keep ``--frames`` small with ``--impl both``.
The first implementation is read from git history (``cpfs/evaluation/davis.py`` at commit ac4bc53), not copied.

Measured (2 cores shared with other jobs, load average 6-8; 2 sequences x 8 frames, ``--sequences 2
--frames 8``): first implementation 285 s wall, 122 s CPU, 45 s system, 1888 MiB peak, 12.3 M minor faults;
current 85 s wall, 30 s CPU, 2.3 s system, 883 MiB peak, 0.5 M faults; J and F identical (0.907606, 0.882507).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis"
ALL_SEQUENCES = ("blackswan", "car-shadow", "dog", "libby")


REFERENCE_COMMIT = "ac4bc5323b3f38cf9708d40e0879b2175b1eadc6"  # the last commit with the first implementation


def reference_protocol(commit: str = REFERENCE_COMMIT):  # noqa: ANN201
    """``davis_protocol`` of ``commit`` (default: the first implementation), loaded from git history (needs a
    git checkout)."""
    import types

    repo = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", f"{commit}:cpfs/evaluation/davis.py"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("davis_reference")
    module.__dict__["__name__"] = "davis_reference"
    sys.modules["davis_reference"] = module  # dataclasses look their module up by name
    exec(compile(src, f"{commit[:7]}:cpfs/evaluation/davis.py", "exec"), module.__dict__)
    return module.davis_protocol


def child(args: argparse.Namespace) -> None:
    """Run one implementation and print one JSON line with its timings and scores."""
    import torch

    torch.set_num_threads(args.threads)
    from cpfs.evaluation.baselines import random_init_model
    from cpfs.evaluation.features import hypercolumn_features

    if args.impl == "old":
        davis_protocol = reference_protocol(args.reference)
    else:
        from cpfs.evaluation.davis import davis_protocol

    model = random_init_model(seed=0, width=0.5)
    fn = hypercolumn_features(model.trunk, stride=4, name="random-init")
    names = list(ALL_SEQUENCES[: args.sequences or None])
    wall0, cpu0 = time.perf_counter(), time.process_time()
    res = davis_protocol(fn, args.davis, names, size=args.size, max_frames=args.frames or None)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    n_frames = sum(s["n_frames"] for s in res["sequences"].values())
    print(json.dumps({
        "impl": args.impl, "wall_s": wall, "cpu_s": cpu, "sys_s": usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
        "minor_faults": usage.ru_minflt, "frames": n_frames, "J": res["J_mean"], "F": res["F_mean"],
        "per_sequence": {k: [v["J"], v["F"]] for k, v in res["sequences"].items()},
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--davis", type=Path, default=DAVIS, help="DAVIS root (JPEGImages/480p/<seq>/)")
    p.add_argument("--sequences", type=int, default=1, help=f"first N of {ALL_SEQUENCES} (0: all)")
    p.add_argument("--frames", type=int, default=8, help="first frames per sequence (0: all)")
    p.add_argument("--size", type=int, default=240, help="short side of the frames the network sees, px")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--impl", choices=("both", "old", "new"), default="both")
    p.add_argument("--reference", default=REFERENCE_COMMIT,
                   help="commit whose cpfs/evaluation/davis.py is 'old' (default: the first implementation)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not (args.davis / "JPEGImages" / "480p").is_dir():
        sys.exit(f"{args.davis}: no DAVIS tree (JPEGImages/480p/<seq>/) there; pass --davis")
    if args.child:
        child(args)
        return
    impls = ("old", "new") if args.impl == "both" else (args.impl,)
    rows = {}
    for impl in impls:
        cmd = [sys.executable, __file__, "--child", "--impl", impl, "--davis", str(args.davis), "--sequences",
               str(args.sequences), "--frames", str(args.frames), "--size", str(args.size), "--reference", args.reference, "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[impl] = json.loads(out.strip().splitlines()[-1])
    print(f"DAVIS propagation, random-init half-width hypercolumns, {args.size} px, {args.threads} threads, "
          f"{rows[impls[0]]['frames']} frames ({', '.join(rows[impls[0]]['per_sequence'])})")
    print(f"{'impl':5} {'wall s':>8} {'cpu s':>8} {'sys s':>7} {'s/frame':>8} {'peak MiB':>9} {'minflt':>10} {'J':>9} {'F':>9}")
    for impl, r in rows.items():
        print(f"{impl:5} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['sys_s']:7.1f} {r['wall_s'] / r['frames']:8.3f} "
              f"{r['peak_rss_mib']:9.0f} {r['minor_faults']:10d} {r['J']:9.6f} {r['F']:9.6f}")
    for name in rows[impls[0]]["per_sequence"]:
        print(f"  {name:12} " + "  ".join(f"{impl}: J {r['per_sequence'][name][0]:.6f} F {r['per_sequence'][name][1]:.6f}"
                                         for impl, r in rows.items()))
    if len(rows) == 2:
        old, new = rows["old"], rows["new"]
        print(f"speed-up (wall) {old['wall_s'] / new['wall_s']:.1f}x, cpu {old['cpu_s'] / new['cpu_s']:.1f}x, "
              f"peak RSS {old['peak_rss_mib'] / new['peak_rss_mib']:.1f}x lower; "
              f"|dJ| {abs(old['J'] - new['J']):.2e}, |dF| {abs(old['F'] - new['F']):.2e}")


if __name__ == "__main__":
    main()
