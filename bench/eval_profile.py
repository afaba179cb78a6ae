"""Where the evaluation's time goes, and the evaluation of two code versions side by side.

Profile (library level, no Prefect): builds the context once, then runs each protocol and the report, printing
wall and CPU seconds of each part and, with ``--top N``, the N functions with the most own time under cProfile::

    python bench/eval_profile.py profile --checkpoint runs/demo --store cpfs-data/store.zarr --top 25

Compare: the whole ``cpfs evaluate`` of the same checkpoint and store with two source trees (``--before``, a
git worktree of an older commit; ``--after``, this one), each in its own process, alternated ``--repeats``
times; prints CPU seconds (user + sys of the process tree), wall seconds, peak RSS and the after/before ratio
of each, and whether the two ``results.json`` hold the same numbers::

    git worktree add /tmp/before a04981f
    python bench/eval_profile.py compare --before /tmp/before --after . --checkpoint runs/demo \\
        --store cpfs-data/store.zarr --repeats 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def profile(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    import torch

    from cpfs.config import EvalConfig
    from cpfs.evaluation.context import prepare
    from cpfs.evaluation.run import _with_threads, run_protocol, write_evaluation_report

    out = Path(args.out or tempfile.mkdtemp(prefix="cpfs-eval-profile-"))
    cfg = EvalConfig(checkpoint=args.checkpoint, store={"path": args.store}, out=str(out), **json.loads(args.set))
    _with_threads(cfg)
    prof = cProfile.Profile() if args.top else None
    rows = []

    def part(name: str, fn):  # noqa: ANN001, ANN202
        w0, c0 = _clock()
        if prof:
            prof.enable()
        value = fn()
        if prof:
            prof.disable()
        w1, c1 = _clock()
        rows.append((name, w1 - w0, c1 - c0))
        print(f"{name:<22} wall {w1 - w0:8.1f} s   cpu {c1 - c0:8.1f} s", flush=True)
        return value

    ctx = part("prepare", lambda: prepare(cfg))
    protocols = {name: part(name, lambda n=name: run_protocol(n, ctx)) for name in (args.protocols or cfg.protocols())}
    if not args.protocols:
        part("report+figures", lambda: write_evaluation_report(ctx, protocols, None))
    wall, cpu = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'total':<22} wall {wall:8.1f} s   cpu {cpu:8.1f} s   (torch threads {torch.get_num_threads()}, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB)")
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(args.sort).print_stats(args.top)
        print(s.getvalue())


def _one(tree: Path, args: argparse.Namespace, out: Path) -> dict:
    """``cpfs evaluate`` from ``tree`` in a fresh process (and a fresh Prefect home); its resource use."""
    (out / "prefect").mkdir(parents=True)  # Prefect creates its home, not the folders above it
    env = {**os.environ, "PYTHONPATH": str(tree), "PREFECT_HOME": str(out / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    env.pop("PREFECT_API_URL", None)
    code = ("import sys; from flows.cli import app; sys.argv = ['cpfs'] + sys.argv[1:]; app()")
    cmd = [sys.executable, "-c", code, "evaluate", "--checkpoint", args.checkpoint, "--store", args.store,
           "--out", str(out / "eval")] + args.extra
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: cpfs evaluate failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[:3000]}\n...\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu": cpu, "wall": wall, "rss_gb": after.ru_maxrss / 2**20, "results": out / "eval" / "results.json"}


def _numbers(doc: object, prefix: str = "") -> dict[str, float]:
    """Every number under ``protocols`` of a results.json, by its path (timings left out)."""
    out: dict[str, float] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            if "seconds" not in str(k):
                out.update(_numbers(v, f"{prefix}/{k}"))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.update(_numbers(v, f"{prefix}[{i}]"))
    elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
        out[prefix] = float(doc)
    return out


def compare(args: argparse.Namespace) -> None:
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="cpfs-eval-compare-") as tmp:
        for i in range(args.repeats):
            order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            for name in order:
                r = _one(trees[name], args, Path(tmp) / f"{name}-{i}")
                runs[name].append(r)
                print(f"{name:<7} run {i}: cpu {r['cpu']:7.1f} s  wall {r['wall']:7.1f} s  peak RSS (largest child) "
                      f"{r['rss_gb']:.2f} GB", flush=True)
        a = _numbers(json.loads(runs["before"][0]["results"].read_text())["protocols"])
        b = _numbers(json.loads(runs["after"][0]["results"].read_text())["protocols"])
        differ = [k for k in a.keys() | b.keys() if k not in a or k not in b or abs(a[k] - b[k]) > args.atol]
        common = [k for k in a.keys() & b.keys() if np.isfinite(a[k]) and np.isfinite(b[k])]
        worst = max(common, key=lambda k: abs(a[k] - b[k]), default=None)
        heads = {k: (a[k], b[k]) for k in sorted(common) if k.endswith("/paired/mean")}
    for key in ("cpu", "wall"):
        mb = sum(r[key] for r in runs["before"]) / args.repeats
        ma = sum(r[key] for r in runs["after"]) / args.repeats
        print(f"{key:<5} before {mb:7.1f} s   after {ma:7.1f} s   after/before {ma / mb:.3f}")
    print(f"results.json: {len(a)} numbers before, {len(b)} after, {len(differ)} differ by more than {args.atol}"
          + (": " + ", ".join(sorted(differ)[:5]) + " ..." if differ else ""))
    if worst is not None:
        print(f"largest difference: {abs(a[worst] - b[worst]):.3g} at {worst} ({a[worst]!r} -> {b[worst]!r})")
    for k, (x, y) in heads.items():
        print(f"  {k}: before {x:.6f}  after {y:.6f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("profile", help="time (and cProfile) each part of one evaluation, in this process")
    cp = sub.add_parser("compare", help="cpfs evaluate with two source trees, alternated")
    for q in (pp, cp):
        q.add_argument("--checkpoint", required=True)
        q.add_argument("--store", required=True)
    pp.add_argument("--out", default=None)
    pp.add_argument("--protocols", nargs="*", default=None, help="only these protocols (no report)")
    pp.add_argument("--set", default="{}", help="JSON of more EvalConfig fields")
    pp.add_argument("--top", type=int, default=0, help="print the top N functions under cProfile (0: no profile)")
    pp.add_argument("--sort", default="tottime")
    cp.add_argument("--before", required=True)
    cp.add_argument("--after", default=str(REPO))
    cp.add_argument("--repeats", type=int, default=1)
    cp.add_argument("--atol", type=float, default=0.0)
    cp.add_argument("extra", nargs="*", help="more `cpfs evaluate` flags, after --")
    args = p.parse_args()
    profile(args) if args.cmd == "profile" else compare(args)


if __name__ == "__main__":
    main()
