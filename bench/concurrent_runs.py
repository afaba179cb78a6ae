"""Two `cpfs run` on one store and one run folder at the same moment (issue 21, item 3). Not run by CI.

Cuts two 40-frame clips from the sample videos, writes one small pipeline configuration (96 px, 40 training
steps, a smoke-scale evaluation), starts ``cpfs run --config`` twice at once (each with its own Prefect home and
temporary server, as two users or a schedule and a user would), waits for both, and prints: their exit codes,
what each said about the other (``waiting for another run ...``, ``stored by another run``, ``already
finished``), the checkpoints in the run folder and whether ``metrics.jsonl`` holds each step exactly once.

    .venv/bin/python bench/concurrent_runs.py --out runs/concurrent
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cpfs.ingest.discovery import sample_videos  # noqa: E402
from tests.helpers import cut_clip  # noqa: E402

SAID = re.compile(r"waiting for another run that holds [^(]*|stored by another run|already complete, skipped|"
                  r"already finished \(\d+ steps\); not retrained|stored \S+: \d+ frames")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/concurrent")
    a = p.parse_args()
    out = Path(a.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "clips").mkdir(parents=True)
    videos = {v.name: v for v in sample_videos()}
    cut_clip(videos["bikes.mp4"], out / "clips" / "bikes.mp4", 40, width=160)
    cut_clip(videos["carphone_pristine.mp4"], out / "clips" / "carphone.mp4", 40, width=160)
    run = out / "run"
    cfg = {"ingest": {"inputs": [str(out / "clips")], "store": {"path": str(out / "store.zarr"), "shard_frames": 8},
                      "decode": {"short_side": 96}, "flow": {"backend": "opencv-dis"}},
           "train": {"run_dir": str(run), "train": {"steps": 40, "checkpoint_every": 10, "batch_size": 4, "crop": 64,
                                                    "points_per_image": 32, "width": 0.25, "num_workers": 0,
                                                    "holdout_fraction": 0.5, "min_moving_fraction": 0.0}},
           "evaluate": {"checkpoint": str(run), "out": str(run / "eval"), "seeds": 1, "digits_per_class": 6,
                        "probe_size": 64, "probe_max_iter": 10, "layers": ["conv1", "conv2"], "pairs_per_video": 2,
                        "points": 64, "pixels_per_image": 64, "bn_batches": 1, "bn_batch_size": 4,
                        "qualitative_frames": 1, "min_moving_fraction": 0.0}}
    (out / "cfg.json").write_text(json.dumps(cfg))
    cpfs = str(Path(sys.executable).with_name("cpfs"))
    procs = []
    for i in (1, 2):
        env = {**os.environ, "PREFECT_HOME": str(out / f"prefect-home-{i}"), "PREFECT_LOGGING_LEVEL": "INFO"}
        env.pop("PREFECT_API_URL", None)
        log = open(out / f"run{i}.log", "w")  # noqa: SIM115 - closed after the wait
        procs.append((subprocess.Popen([cpfs, "run", "--config", str(out / "cfg.json")], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=out), log))
    for i, (proc, log) in enumerate(procs, 1):
        proc.wait()
        log.close()
        said = SAID.findall((out / f"run{i}.log").read_text())
        print(f"run {i}: exit {proc.returncode}; said: {'; '.join(dict.fromkeys(s.strip() for s in said))}")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    print("checkpoints:", ", ".join(sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))))
    print(f"metrics.jsonl: {len(steps)} rows, {len(set(steps))} distinct steps, in order: {steps == sorted(steps)}")


if __name__ == "__main__":
    main()
