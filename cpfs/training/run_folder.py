"""The one owner of the names inside a training run folder and an evaluation output folder.

A training run folder (``TrainStageConfig.run_dir``) holds::

    checkpoints/step-XXXXXXXX.pt   every checkpoint (``cpfs.training.checkpoint`` writes and reads them)
    checkpoints/best.pt            the checkpoint with the best validation measure (``cpfs.training.validation``)
    validation.jsonl               one JSON object per validated step (when training validates)
    metrics.jsonl                  one JSON object per logged training step
    .train.lock                    held by the run training into the folder (``RunFolder.lock``, ``cpfs.locks``)
    eval/                          the default evaluation output folder (an ``EvalFolder``)
    export/                        the default export folder (an ``ExportFolder``: ``cpfs export``)

An evaluation output folder (``EvalConfig.out``, by default ``<run>/eval``) holds ``results.json``,
``report.md``, ``report.html`` and ``figures/`` (and ``.evaluate.lock``, held by the evaluation writing it). An export folder (``cpfs.export.exporter``) holds ``model.safetensors``,
``architecture.json``, ``model.onnx``, ``MODEL_CARD.md`` and ``export.json``. Every other module asks these objects for a path instead of
spelling the name again, and ``metrics.jsonl`` has one reader (``RunFolder.read_metrics``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpfs import locks

CHECKPOINT_RE = re.compile(r"^step-(\d{8})\.pt$")  # the name of a complete checkpoint (temporaries start with ".")


@dataclass(frozen=True)
class EvalFolder:
    """An evaluation's output folder: the report files and the figures beside them."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path).expanduser())

    def lock(self, *, wait: bool = True, on_wait: Callable[[str], None] | None = None):  # noqa: ANN201
        """The lock an evaluation holds while it writes this folder (``cpfs.locks.exclusive``): a second
        evaluation into it waits, so the report files of two evaluations never mix."""
        return locks.exclusive(self.path / ".evaluate.lock", f"evaluation folder {self.path}", wait=wait,
                               on_wait=on_wait)

    @property
    def results_json(self) -> Path:
        return self.path / "results.json"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def figures(self) -> Path:
        return self.path / "figures"


@dataclass(frozen=True)
class ExportFolder:
    """An exported model (``cpfs.export.exporter``): weights, architecture, ONNX graph, model card and export record."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path).expanduser())

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def architecture(self) -> Path:
        return self.path / "architecture.json"

    @property
    def onnx(self) -> Path:
        return self.path / "model.onnx"

    @property
    def card(self) -> Path:
        return self.path / "MODEL_CARD.md"

    @property
    def record(self) -> Path:
        """``export.json``: where the export came from, its files' SHA-256 and the ONNX check."""
        return self.path / "export.json"

    def files(self) -> tuple[Path, ...]:
        """Every file an export writes (``record`` last: an export without it is incomplete)."""
        return (self.weights, self.architecture, self.onnx, self.card, self.record)


@dataclass(frozen=True)
class RunFolder:
    """A training run folder: its checkpoints, its metrics log and its default evaluation folder."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path).expanduser())

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> "RunFolder":
        """The run folder a checkpoint file ``<run>/checkpoints/step-*.pt`` belongs to."""
        return cls(Path(checkpoint).parent.parent)

    # --- checkpoints ---------------------------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def lock(self, *, wait: bool = True, on_wait: Callable[[str], None] | None = None):  # noqa: ANN201
        """The lock a training holds while it trains into this folder (``cpfs.locks.exclusive``): a second
        training into the same folder waits for the first, then resumes from its last checkpoint or finds the
        run finished, so checkpoints of two trainings never interleave."""
        return locks.exclusive(self.path / ".train.lock", f"run folder {self.path}", wait=wait, on_wait=on_wait)

    def checkpoint(self, step: int) -> Path:
        """The file of the checkpoint of ``step`` (whether or not it exists)."""
        return self.checkpoints / f"step-{step:08d}.pt"

    def checkpoint_files(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every complete checkpoint, by increasing step (temporary files are ignored)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted((int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := CHECKPOINT_RE.match(p.name)))

    @property
    def best_checkpoint(self) -> Path:
        """The copy of the checkpoint with the best validation measure (exists only when training validated)."""
        return self.checkpoints / "best.pt"

    @property
    def validation(self) -> Path:
        return self.path / "validation.jsonl"

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint of the highest step (None when there is none)."""
        found = self.checkpoint_files()
        return found[-1][1] if found else None

    # --- metrics -------------------------------------------------------------------------------------------

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (blank lines skipped; ``[]`` when the file does not exist yet).

        Raises:
            ValueError: a line that is not a JSON object, naming the file and the line number.
        """
        return read_metrics_file(self.metrics) if self.metrics.is_file() else []

    # --- evaluation ----------------------------------------------------------------------------------------

    @property
    def eval(self) -> EvalFolder:
        """The default evaluation output folder of this run."""
        return EvalFolder(self.path / "eval")

    @property
    def export(self) -> ExportFolder:
        """The default export folder of this run (``cpfs export``, the pipeline's ``export`` switch)."""
        return ExportFolder(self.path / "export")


def read_metrics_file(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (blank lines skipped).

    Raises:
        FileNotFoundError: the file is missing. ValueError: a malformed line, naming ``path:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training metrics file is missing")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
    return records
