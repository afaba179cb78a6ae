"""Command-line entry point of training, for one process or for torchrun.

    python -m cpfs.training.distributed_train --config cfg.json --store cpfs-data/store.zarr --run-dir runs/demo
    torchrun --nproc_per_node=2 -m cpfs.training.distributed_train --config '{"preset": "paper"}' --store ... --run-dir ...

``--config`` is a JSON file or a JSON string: ``{"preset": "demo"|"cpu-hour"|"paper", ...overrides}`` (the preset defaults
to "demo"; any other key overrides a ``TrainConfig`` field, nested keys merge). ``--store-config`` likewise
gives the other ``StoreConfig`` fields (storage options of an object store). Rank 0 prints one JSON line with
the result at the end; the other ranks print nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cpfs.config import StoreConfig
from cpfs.training.distributed import barrier, init_from_env, parameters_in_sync, shutdown
from cpfs.training.train import train
from cpfs.config import TrainConfig


def _json_arg(text: str, what: str) -> dict:
    """Parse ``text`` as a JSON object, or read it from the file it names."""
    source = text
    path = Path(text)
    if not text.lstrip().startswith("{") and path.is_file():
        source = path.read_text()
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{what}: neither a JSON object nor a readable JSON file: {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def parse_config(text: str) -> TrainConfig:
    """``--config`` text -> TrainConfig (preset plus overrides)."""
    values = _json_arg(text, "--config")
    return TrainConfig.from_preset(values.pop("preset", "demo"), **values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpfs.training.distributed_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="{}", help="TrainConfig as a JSON object or a JSON file")
    parser.add_argument("--store", required=True, help="Store location (folder or fsspec URL)")
    parser.add_argument("--store-config", default="{}", help="Other StoreConfig fields, JSON object or file")
    parser.add_argument("--run-dir", required=True, help="Folder for metrics.jsonl and checkpoints/")
    parser.add_argument("--resume", action="store_true", help="Continue from the run dir's latest checkpoint")
    parser.add_argument("--stop-after", type=int, default=None, help="Stop (with a checkpoint) after this many steps")
    args = parser.parse_args(argv)

    cfg = parse_config(args.config)
    store_cfg = StoreConfig(path=args.store, **_json_arg(args.store_config, "--store-config"))
    ctx = init_from_env(cfg.device)
    ok = False
    try:
        result = train(cfg, store_cfg, Path(args.run_dir), resume=args.resume, stop_after=args.stop_after, dist=ctx)
        in_sync = parameters_in_sync(result.model, ctx)
        barrier(ctx)
        if not in_sync:
            raise RuntimeError("parameters differ across ranks after training (DDP replicas diverged)")
        if ctx.is_main:
            print(json.dumps({
                "run_dir": str(result.run_dir),
                "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                "steps": result.steps,
                "world_size": ctx.world_size,
                "metrics": result.metrics,
            }), flush=True)
        ok = True
    finally:
        # Every rank leaves together after a final barrier on success; a failed rank leaves at once.
        shutdown(ctx, graceful=ok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
