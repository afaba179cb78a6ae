"""The main job's budget (issue 18, item 5): what `make run` (`cpfs run` on the embedded sample videos) shows
with more of its 10 minutes spent on training. Not run by CI.

Runs ``cpfs run`` once per variant, in this checkout, on the default store (the sample videos; ingested by the
first variant, skipped by the others), each into its own run folder, one after the other (never side by
side: the machine's 2 cores would measure each other), and prints per variant: the wall time of the command,
the time of each stage from its logs, and the held-out flow-alignment verdicts the report states (trained -
random init of the same seed, and trained - pixel position, with their 95 % CIs). The install is not timed
(``make test`` on a clean clone measured it: about 1.2 minutes).

    .venv/bin/python bench/demo_budget.py --out runs/demo-budget
    .venv/bin/python bench/demo_budget.py --out runs/demo-budget --variants demo-200 cpu-hour-400

Variants: ``demo`` (what `make run` runs: the demo preset), ``demo-200`` (the demo preset before issue 18
changed it: 200 steps, 112 px crops, a 20-step warm-up), ``cpu-hour-400`` and ``cpu-hour-600`` (the cpu-hour
preset, 128 px crops, cut to 400 or 600 steps), ``demo-ce`` (the demo preset with the ``ce`` loss, temperature
0.1: on the ``cpu-hour`` store it fitted held-out flow best, docs/benchmarks.md).

These figures chose the demo preset (2 quiet cores, the store already ingested, one variant after the other):
``demo-200`` (then the demo) 192 s, trained - random init +0.008 (-0.022 .. +0.036); ``cpu-hour-400`` 356 s,
+0.038 (+0.018 .. +0.059); ``cpu-hour-600`` 445 s, +0.035 (+0.016 .. +0.057); none above pixel position
(+0.001 .. +0.003, every CI across 0). The demo preset is now ``cpu-hour-400``'s settings. ``demo-ce`` (later,
the machine shared with a training run): +0.037 (+0.019 .. +0.056), against position +0.003: no change.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "demo": [],
    "demo-200": ["--steps", "200", "--crop", "112", "--schedule-warmup-steps", "20"],
    "demo-ce": ["--loss", "ce"],
    "cpu-hour-400": ["--preset", "cpu-hour", "--steps", "400"],
    "cpu-hour-600": ["--preset", "cpu-hour", "--steps", "600"],
}


def _verdict(res: dict, key: str) -> str:
    p = res["protocols"]["flow_alignment"]["cpfs"][key]
    return f"{p['mean']:+.3f} ({p['ci_low']:+.3f} .. {p['ci_high']:+.3f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/demo-budget")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cpfs = str(Path(sys.executable).with_name("cpfs"))
    env = {**os.environ, "PREFECT_HOME": str(out / "prefect-home")}
    env.pop("PREFECT_API_URL", None)  # a temporary server, as `make run` has
    rows = []
    for name in a.variants:
        run = out / name
        cmd = [cpfs, "run", "--run-dir", str(run), *VARIANTS[name]]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        (out / f"{name}.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            rows.append({"variant": name, "exit": r.returncode, "seconds": round(seconds, 1)})
            print(f"{name}: exit {r.returncode} after {seconds:.0f} s (log {out / (name + '.log')})")
            continue
        res = json.loads((run / "eval" / "results.json").read_text())
        train_s = re.findall(r"train \S+: \d+/\d+ step \(100.0%\).*?elapsed (\d+):(\d+):(\d+)", r.stdout + r.stderr)
        eval_s = re.findall(r"evaluate: report: .*?elapsed (\d+):(\d+):(\d+)", r.stdout + r.stderr)
        hms = lambda m: int(m[0]) * 3600 + int(m[1]) * 60 + int(m[2]) if m else None  # noqa: E731
        row = {"variant": name, "exit": 0, "seconds": round(seconds, 1),
               "train_s": hms(train_s[-1]) if train_s else None, "evaluate_s": hms(eval_s[-1]) if eval_s else None,
               "vs_random": _verdict(res, "paired"), "vs_position": _verdict(res, "paired_position"),
               "verdicts": res["meta"]["verdicts"]}
        rows.append(row)
        print(f"{name}: {seconds:.0f} s (training {row['train_s']} s, evaluation {row['evaluate_s']} s); "
              f"trained - random {row['vs_random']}; trained - position {row['vs_position']}", flush=True)
    (out / "demo_budget.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
