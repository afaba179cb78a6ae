"""A validation measure tracked during training, and the best checkpoint it keeps.

More steps on a few thousand frames fit the flow kernel better and can transfer worse (issue 18: a
``cpu-hour`` run's DAVIS J&F gain over random init was +0.060 at step 600 and +0.048 at step 2,500, while
its held-out flow alignment still rose). So the last checkpoint is not always the one to keep: training
measures, at its checkpoints, DAVIS label propagation (the evaluation's own protocol,
``cpfs.evaluation.davis``) on annotated sequences it does not train on, and keeps the best checkpoint as
``checkpoints/best.pt`` beside the others (``cpfs.training.run_folder.RunFolder``), with ``validation.jsonl``, one
line per validated step.

Which sequences: ``ValidationConfig.sequences``, or every sequence of ``ValidationConfig.davis`` whose frame
folder is not the source of a training video of the run. A named sequence that the run trains on is an
error: a checkpoint chosen on its own training data says nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from cpfs.config.train import ValidationConfig
from cpfs.training.run_folder import RunFolder

RESOLUTION = "480p"
METRIC = "J&F"  # the validation measure: DAVIS J&F mean over the validation sequences (higher is better)


@dataclass(frozen=True)
class ValidationResult:
    """One validation: the step, the measure and its parts."""

    step: int
    score: float  # J&F mean over the sequences
    J: float
    F: float
    per_sequence: dict[str, float]  # J&F of each sequence

    def record(self) -> dict:
        return {"step": self.step, METRIC: self.score, "J": self.J, "F": self.F, "per_sequence": self.per_sequence}


def validation_sequences(cfg: ValidationConfig, training_sources: Iterable[str | Path]) -> list[str]:
    """The sequences to validate on: ``cfg.sequences``, or every sequence under ``cfg.davis`` not trained on.

    Raises:
        ValueError: ``cfg.davis`` is None, a named sequence is a training video (its frame folder is the
            source of one), or no sequence is left.
        FileNotFoundError: the root's ``JPEGImages/480p`` folder is missing.
    """
    from cpfs.evaluation.datasets import list_davis_sequences

    if cfg.davis is None:
        raise ValueError("validation.davis is not set: there is nothing to validate on")
    frames = (Path(cfg.davis).expanduser() / "JPEGImages" / RESOLUTION).resolve()
    available = list_davis_sequences(cfg.davis, RESOLUTION)
    trained = {Path(s).expanduser().resolve() for s in training_sources}
    trained_names = sorted(name for name in available if frames / name in trained)
    if cfg.sequences is None:
        names = [name for name in available if name not in trained_names]
    else:
        unknown = [name for name in cfg.sequences if name not in available]
        if unknown:
            raise ValueError(f"validation.sequences {unknown} are not sequences of {frames} (have: {available})")
        overlap = [name for name in cfg.sequences if name in trained_names]
        if overlap:
            raise ValueError(f"validation.sequences {overlap} are training videos of this run (their frames under "
                             f"{frames} were ingested and are not held out): hold them out or validate on others")
        names = list(cfg.sequences)
    if not names:
        raise ValueError(f"no validation sequence under {frames}: every one is a training video of this run "
                         f"({trained_names}); hold some out (heldout_videos)")
    return names


class Validator:
    """Runs the validation measure on a model and keeps the best checkpoint of a run folder."""

    def __init__(self, cfg: ValidationConfig, sequences: list[str], run_dir: str | Path,
                 measure: Callable[[torch.nn.Module], dict] | None = None) -> None:
        self.cfg = cfg
        self.sequences = sequences
        self.run = RunFolder(run_dir)
        self._measure = measure or self._davis

    def _davis(self, model: torch.nn.Module) -> dict:
        from cpfs.evaluation.davis import davis_protocol
        from cpfs.evaluation.features import network_features

        fn = network_features(model, self.cfg.layers, stride=4, name="validation")
        return davis_protocol(fn, self.cfg.davis, self.sequences, size=self.cfg.size, max_frames=self.cfg.max_frames)

    def due(self, step: int, checkpoint_every: int, end: int) -> bool:
        """Whether ``step`` is validated: every ``cfg.every`` steps (default: at every checkpoint) and at the end."""
        every = self.cfg.every or checkpoint_every
        return step % every == 0 or step == end

    def measure(self, model: torch.nn.Module, step: int) -> ValidationResult:
        """The validation measure of ``model`` at ``step``. Leaves the model's mode, and every RNG, as it found
        them: validation must not change the training that follows (resume stays exact)."""
        was_training = model.training
        cpu_rng = torch.get_rng_state()
        try:
            model.eval()
            out = self._measure(model)
        finally:
            torch.set_rng_state(cpu_rng)
            model.train(was_training)
        return ValidationResult(step=step, score=float(out["JF_mean"]), J=float(out["J_mean"]), F=float(out["F_mean"]),
                                per_sequence={k: float(v["J&F"]) for k, v in out["sequences"].items()})

    def history(self) -> list[dict]:
        """The records of ``validation.jsonl`` (``[]`` before the first validation)."""
        path = self.run.validation
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def best(self) -> dict | None:
        """The best record so far (highest score; the earliest step on a tie), or None."""
        rows = self.history()
        return max(rows, key=lambda r: (r[METRIC], -r["step"])) if rows else None

    def truncate(self, last_step: int) -> None:
        """Drop records after ``last_step`` (a resumed run redoes those steps and validates them again)."""
        rows = [r for r in self.history() if r["step"] <= last_step]
        if self.run.validation.is_file():
            self.run.validation.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def record(self, result: ValidationResult, checkpoint: Path) -> bool:
        """Append ``result`` and, when it beats every earlier step, make ``checkpoint`` the run's best
        (``checkpoints/best.pt``, replaced atomically). Returns whether it is the new best."""
        before = self.best()
        with open(self.run.validation, "a") as f:
            f.write(json.dumps(result.record()) + "\n")
        if before is not None and result.score <= before[METRIC]:
            return False
        tmp = self.run.best_checkpoint.with_name(f".best.pt.tmp-{os.getpid()}")
        shutil.copyfile(checkpoint, tmp)
        os.replace(tmp, self.run.best_checkpoint)
        return True
