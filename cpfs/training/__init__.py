"""The training stage: the CPFS network, what it is trained on and how, and what a run leaves behind.

- ``model``: the AlexNet trunk, hypercolumns and the embedding head (``CPFSModel``);
- ``kernels`` and ``losses``: the flow and embedding kernels and the KTA / CE / CE-reversed objectives;
- ``data``: the train / held-out split and the flow-pair dataset read from the store;
- ``train``: the training loop (exact resume, checkpoints, progress); ``distributed`` and
  ``distributed_train``: the same under torchrun / DDP (``python -m cpfs.distributed_train`` still works);
- ``validation``: label propagation on held-out DAVIS sequences during training, and the best checkpoint;
- ``checkpoint`` and ``run_folder``: the one owner of checkpoint files and of the names inside a run folder;
- ``launch``: where a run folder stands, the torchrun command line, the summary of a finished run.

The names below are the stage's public face (``from cpfs.training import train``); each module is imported on
first use.
"""

from __future__ import annotations

_PUBLIC = {
    "train": "train", "TrainResult": "train", "build_model": "train",
    "CPFSModel": "model", "CPFSModelConfig": "model", "AlexNetConfig": "model",
    "FlowPairDataset": "data", "plan_split": "data", "DataSplit": "data",
    "Validator": "validation", "ValidationResult": "validation",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "load_model": "checkpoint",
    "read_checkpoint": "checkpoint", "resolve_checkpoint": "checkpoint", "latest_checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
    "RunFolder": "run_folder", "EvalFolder": "run_folder", "ExportFolder": "run_folder",
    "torchrun_command": "launch", "run_torchrun": "launch", "run_summary": "launch", "start_step": "launch",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: the public face, each module imported on first use
    if name in _PUBLIC:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
