"""A tiny training run folder written by hand (no store, no training): one checkpoint of a width-0.125 network
with every record a real one carries, and optionally an evaluation ``results.json`` of it. Shared by the
backbone, export and model-card tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cpfs.training.checkpoint import CHECKPOINT_FORMAT, describe_architecture, file_sha256, save_checkpoint
from cpfs.config import TrainConfig
from cpfs.evaluation import stats
from cpfs.training.model import AlexNetConfig, CPFSModel, CPFSModelConfig
from cpfs.training.run_folder import RunFolder

CROP = 80  # the training crop: the export checks its ONNX graph at this size
STEP = 7
VIDEOS = {"a1" * 8: {"name": "cup.mp4", "backend": "dis"}, "b2" * 8: {"name": "soapbox", "backend": "dis"}}


def tiny_model(seed: int = 0) -> CPFSModel:
    torch.manual_seed(seed)
    model = CPFSModel(CPFSModelConfig(trunk=AlexNetConfig(width=0.125), hidden=32, embed_dim=8))
    with torch.no_grad():  # non-trivial batch-norm statistics, so a load that dropped them would show
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def write_run(path: Path, *, provenance: bool = True) -> Path:
    """A run folder holding one checkpoint (step ``STEP``) of ``tiny_model()``; returns the checkpoint file."""
    run = RunFolder(path)
    model = tiny_model()
    cfg = TrainConfig(steps=STEP, crop=CROP, width=0.125, embed_dim=8, seed=3)
    payload = {
        "format": CHECKPOINT_FORMAT, "step": STEP, "model": model.state_dict(), "config": cfg.model_dump(mode="json"),
        "store_version": "0123456789abcdef", "architecture": describe_architecture(model), "world_size": 1,
        "split": {"train": [["a1" * 8, 0, 40]], "heldout": [["b2" * 8, 0, 12]]},
    }
    if provenance:
        payload["provenance"] = {"videos": VIDEOS, "train_seconds": 754.0,
                                 "hardware": {"device": "cpu", "name": "x86_64", "processes": 1, "cpus": 2,
                                              "threads": 1, "torch": str(torch.__version__)}}
    return save_checkpoint(run.checkpoint(STEP), payload)


def paired(mean: float, low: float, high: float, what: str) -> dict:
    overall = {"mean": mean, "ci_low": low, "ci_high": high, "level": 0.95, "n_pairs": 24}
    return {"metric": "alignment", "against": "random-init seed 3", "trained_mean": 0.5 + mean,
            "random_same_seed_mean": 0.5, **overall, "per_video": {},
            "verdict": stats.verdict(overall, what, "random init (seed 3)")}


def write_results(checkpoint: Path, *, sha256: str | None = None) -> Path:
    """``<run>/eval/results.json`` with two paired comparisons of ``checkpoint`` (or of another SHA-256)."""
    rows = {"flow_alignment": paired(0.0612, 0.0421, 0.0803, "held-out flow alignment"),
            "motion_segmentation": paired(-0.0104, -0.0301, 0.0093, "the motion-segmentation probe")}
    doc = {"meta": {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256 or file_sha256(checkpoint),
                    "config": {"ci_level": 0.95, "recalibrate_checkpoints": True},
                    "store": {"index_version": "0123456789abcdef"}, "smoke_scale": False, "notes": [],
                    "verdicts": [p["verdict"] for p in rows.values()]},
           "protocols": {proto: {"cpfs": {"summary": {"alignment": {"mean": p["trained_mean"], "std": 0.01}}, "paired": p},
                                 "random-init": {"summary": {"alignment": {"mean": 0.5, "std": 0.02}}}}
                         for proto, p in rows.items()}}
    out = RunFolder.of_checkpoint(checkpoint).eval.results_json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return out
