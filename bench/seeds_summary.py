"""The spread over training seeds of every paired difference (issue 18: ">= 3 training seeds ... report the spread
over training seeds beside every paired difference").

Reads, for each training run folder given, the evaluation's ``eval/results.json`` (``cpfs evaluate`` on that
run: the run folder means its best validated checkpoint) and, when present, ``../learning.json`` written by
``bench/learning.py``; prints per seed each protocol's paired difference (trained - random init of the same
seed) with its CI, then the mean and the standard deviation over training seeds, and the baselines beside.

    .venv/bin/python bench/seeds_summary.py RUN_SEED0 RUN_SEED1 RUN_SEED2 [--eval-dir eval] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HEADLINES = {"flow_alignment": "alignment_centered", "motion_segmentation": "IoU_moving", "davis": "J&F",
             "foreground": "mIoU", "linear_probe": "best_layer"}


def one_run(run: Path, eval_dir: str = "eval") -> dict:
    res = json.loads((run / eval_dir / "results.json").read_text())
    out = {"checkpoint": res["meta"]["checkpoint"], "protocols": {}}
    for proto, sources in res["protocols"].items():
        row = {}
        cpfs = sources.get("cpfs", {})
        for key in ("paired", "paired_position"):
            p = cpfs.get(key)
            if isinstance(p, dict) and "mean" in p:
                row[key] = {k: p[k] for k in ("mean", "ci_low", "ci_high")}
                row[key]["trained"] = p.get("trained_mean")
                row[key]["against"] = p.get("random_same_seed_mean")
        metric = HEADLINES.get(proto)
        for name in ("colour-lab", "position"):
            summary = (sources.get(name) or {}).get("summary") or {}
            if metric in summary:
                row[name] = summary[metric]["mean"]
        out["protocols"][proto] = row
    learning = run.parent / "learning.json"
    if learning.is_file():
        doc = json.loads(learning.read_text())
        out["final"] = {k: doc.get("final", {}).get(k) for k in ("checkpoint", "step")}
        out["validation"] = doc.get("final", {}).get("validation")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", default=None)
    ap.add_argument("--eval-dir", default="eval", help="the evaluation folder inside each run folder (default: eval)")
    args = ap.parse_args()
    runs = {str(r): one_run(Path(r), args.eval_dir) for r in args.runs}
    protocols = sorted({p for r in runs.values() for p in r["protocols"]})
    summary = {}
    for proto in protocols:
        for key in ("paired", "paired_position"):
            vals = [r["protocols"].get(proto, {}).get(key) for r in runs.values()]
            if not any(vals):
                continue
            print(f"\n{proto} ({'vs random init of the same seed' if key == 'paired' else 'vs pixel position'}):")
            for name, v in zip(runs, vals):
                if v:
                    print(f"  {name}: {v['mean']:+.4f} (CI {v['ci_low']:+.4f} .. {v['ci_high']:+.4f}); "
                          f"trained {v['trained']:.4f}, against {v['against']:.4f}")
            means = np.array([v["mean"] for v in vals if v])
            summary[f"{proto} {key}"] = {"mean_over_seeds": float(means.mean()), "std_over_seeds": float(means.std()),
                                         "n_seeds": int(means.size), "all_ci_above_0": all(v["ci_low"] > 0 for v in vals if v)}
            print(f"  over {means.size} training seeds: {means.mean():+.4f} +- {means.std():.4f} (std); "
                  f"every CI above 0: {summary[f'{proto} {key}']['all_ci_above_0']}")
        for name in ("colour-lab", "position"):
            vals = [r["protocols"].get(proto, {}).get(name) for r in runs.values()]
            if any(v is not None for v in vals):
                print(f"  {name}: {next(v for v in vals if v is not None):.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
