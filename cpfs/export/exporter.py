"""Export a trained CPFS network for use outside this project: safetensors weights, the architecture as JSON, an
ONNX graph checked against PyTorch, and a model card.

An export folder (``cpfs.training.run_folder.ExportFolder`` owns the names)::

    model.safetensors   the CPFSModel's state dict (trunk.* and head.*): no pickle, so weights from someone else
                        load safely; the same checkpoint gives the same bytes
    architecture.json   the checkpoint's architecture record plus the input convention and the layer table:
                        enough for ``cpfs.load_backbone`` to rebuild the network
    model.onnx          images (B, 3, H, W) in [0, 1] -> the dense embedding (B, D, ceil(H/s), ceil(W/s)) and
                        every trunk layer's map; batch, height and width are dynamic (H, W >= 63 px)
    MODEL_CARD.md       data, settings, hardware and scores of the network (``cpfs.export.model_card``)
    export.json         where it came from, each file's SHA-256, the ONNX check; written last

Reading order: ``export_target_error`` (a bad target is an error before any work), ``export_model``,
``OnnxGraph`` (the dense embedding written with traceable shapes), ``check_onnx`` (onnxruntime against eager
PyTorch), ``load_exported_model`` (the inverse, used by ``cpfs.load_backbone``).

The ONNX graph is written by torch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), not the
default dynamo exporter of torch 2.13: the dynamo exporter needs ``onnxscript`` and ``onnx-ir`` on top of
``onnx``, and this network (convolutions, max-pool, batch norm, grid sampling) traces exactly, so the older path
costs two packages less (``docs/export.md`` has the measurements). Sizes read while tracing are tensors, so the
graph keeps height and width dynamic as long as no Python ``max`` or ``len`` freezes them (``_span``).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cpfs
from cpfs.training.checkpoint import Checkpoint, CheckpointError, architecture_config, describe_architecture, load_model, resolve_checkpoint
from cpfs.errors import CPFSError
from cpfs.training.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_NAMES,
    MIN_INPUT_SIZE,
    CPFSModel,
    LayerGeometry,
)
from cpfs.training.run_folder import ExportFolder

EXPORT_FORMAT = "cpfs-export"
EXPORT_VERSION = 1
ONNX_OPSET = 17  # GridSample is in the standard domain from opset 16
# The export fails when ONNX and PyTorch disagree by more than this (a graph that is wrong, not rounding: the demo
# model agrees to ~1e-6).
ONNX_FAIL_ABOVE = 1e-3
ONNX_OUTPUTS: tuple[str, ...] = ("embedding", *LAYER_NAMES)


class ExportError(CPFSError):
    """An export cannot be made: a bad target folder, an unreadable results.json, or an ONNX graph that disagrees
    with PyTorch. ``parameter`` names the argument at fault ("out", "results_json"), None for the graph."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class ExportResult:
    """What ``export_model`` wrote and measured."""

    folder: ExportFolder
    checkpoint: Checkpoint
    onnx_max_abs_diff: float  # largest |onnxruntime - eager PyTorch| over every output and check input
    seconds: float  # the whole export
    results_json: Path | None  # the evaluation the card reports (None: none found)
    verdict_markdown: str  # the card's verdict on its own (``cpfs.export.model_card.verdict_markdown``)

    def summary(self) -> "ExportSummary":
        return ExportSummary(str(self.folder.path), str(self.checkpoint.path), self.checkpoint.sha256,
                             self.onnx_max_abs_diff, str(self.results_json) if self.results_json else None,
                             self.seconds)


@dataclass(frozen=True)
class ExportSummary:
    """What the Prefect task returns: small, typed, picklable."""

    folder: str
    checkpoint: str
    checkpoint_sha256: str
    onnx_max_abs_diff: float
    results_json: str | None
    seconds: float


# -----------------------------------------------------------------------------------------------------------
# The target folder


def export_target_error(out: str | Path) -> str | None:
    """Why ``out`` cannot receive an export, or None when it can: it must be a new folder, an empty one, or an
    earlier export (only export files in it), and writable (tried with a probe file, as every stage does)."""
    from cpfs.pipeline import writable_error

    p = Path(out).expanduser()
    if p.exists():
        if not p.is_dir():
            return f"{p} exists and is not a folder"
        ours = {f.name for f in ExportFolder(p).files()}
        others = sorted(c.name for c in p.iterdir() if c.name not in ours)
        if others:
            shown = ", ".join(others[:5]) + (f", ... ({len(others) - 5} more)" if len(others) > 5 else "")
            return (f"{p} exists and holds other files ({shown}): give a new or empty folder, or an earlier "
                    "export to replace")
    return writable_error(str(p))


# -----------------------------------------------------------------------------------------------------------
# The export


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def architecture_document(model: CPFSModel) -> dict[str, Any]:
    """``architecture.json``: ``describe_architecture`` (what ``architecture_config`` reads back) plus what a user
    of the weights needs: the input convention and each trunk layer's channels and receptive geometry."""
    trunk = model.trunk
    return {
        **describe_architecture(model),
        "input": {"layout": "(B, 3, H, W) RGB", "range": [0.0, 1.0], "min_size": MIN_INPUT_SIZE,
                  "normalisation": "inside the network: (x - mean) / std per channel",
                  "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "layers": {name: {"channels": trunk.channels[name], "stride": trunk.geometry[name].stride,
                          "offset": trunk.geometry[name].offset} for name in LAYER_NAMES},
    }


def _write_weights(model: CPFSModel, path: Path, checkpoint_sha256: str) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # One metadata key: safetensors 0.8 writes the metadata map in hash order, which differs between processes
    # with two keys or more (the tensors themselves it orders by dtype and name), so the bytes would not repeat.
    note = json.dumps({"class": type(model).__name__, "checkpoint_sha256": checkpoint_sha256}, sort_keys=True)
    # Bytes written like every other export file (save_file renames a private temporary: mode 0600).
    path.write_bytes(save(state, metadata={"cpfs": note}))


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    results_json: str | Path | None = None,
    stride: int = 4,
    opset: int = ONNX_OPSET,
) -> ExportResult:
    """Export a training checkpoint (a file, or a run folder: its best validated one, else its latest) into ``out``.

    ``results_json``: the evaluation whose verdicts the model card reports (default: the checkpoint's run's
    ``eval/results.json`` when it exists; it is used only when it evaluated this very checkpoint). ``stride``:
    the pixel grid of the ONNX graph's embedding output.

    Raises:
        ExportError: ``out`` is not a folder, holds other files, or cannot be written, or a ``results_json``
        given is missing (before anything is read); ``results.json`` is unreadable; the ONNX graph disagrees with
        PyTorch by more than ``ONNX_FAIL_ABOVE``.
        CheckpointError: the checkpoint is missing, unreadable or of another architecture.
    """
    t0 = time.perf_counter()
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    reason = export_target_error(out)
    if reason:
        raise ExportError(reason, parameter="out")
    if results_json is not None and not Path(results_json).is_file():
        raise ExportError(f"{results_json}: evaluation results not found", parameter="results_json")
    resolve_checkpoint(checkpoint)  # a missing checkpoint is named before the folder is touched
    folder = ExportFolder(out)
    model, record = load_model(checkpoint)
    results_path = Path(results_json) if results_json is not None else record.run.eval.results_json
    results = _read_results(results_path)

    folder.path.mkdir(parents=True, exist_ok=True)
    folder.record.unlink(missing_ok=True)  # an interrupted replacement must not look complete
    t_weights = time.perf_counter()
    _write_weights(model, folder.weights, record.sha256)
    folder.architecture.write_text(json.dumps(architecture_document(model), indent=2, sort_keys=True) + "\n")
    t_onnx = time.perf_counter()
    write_onnx(model, folder.onnx, stride=stride, opset=opset)
    crop = max(int(record.train_config.get("crop", 112)), MIN_INPUT_SIZE)  # the training crop, and one larger
    check = check_onnx(model, folder.onnx, stride=stride, sizes=((2, crop, crop), (1, crop + 17, crop + 45)))
    if check["max_abs_diff"] > ONNX_FAIL_ABOVE:
        raise ExportError(f"{folder.onnx}: onnxruntime and PyTorch disagree by {check['max_abs_diff']:.3g} "
                          f"(more than {ONNX_FAIL_ABOVE:g}); the graph is wrong")
    t_card = time.perf_counter()
    from cpfs.export.model_card import model_card, verdict_markdown

    doc = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "checkpoint": {"path": str(record.path), "sha256": record.sha256, "step": record.step},
        "results_json": str(results_path.resolve()) if results is not None else None,
        "onnx": {"exporter": "torch.onnx TorchScript (dynamo=False)", "opset": opset, "stride": stride,
                 "input": "images (batch, 3, height, width) float32 in [0, 1]", "outputs": list(ONNX_OUTPUTS),
                 "check": check},
        "versions": _versions(),
    }
    folder.card.write_text(model_card(record, results, doc))
    doc["files"] = {f.name: _sha256(f) for f in (folder.weights, folder.architecture, folder.onnx, folder.card)}
    seconds = time.perf_counter() - t0
    doc["seconds"] = {"total": round(seconds, 3), "load": round(t_weights - t0, 3),
                      "weights": round(t_onnx - t_weights, 3), "onnx_and_check": round(t_card - t_onnx, 3)}
    folder.record.write_text(json.dumps(doc, indent=2) + "\n")
    return ExportResult(folder, record, float(check["max_abs_diff"]), seconds,
                        results_path if results is not None else None,
                        verdict_markdown(record, results, doc, str(folder.path)))


def _read_results(path: Path) -> dict | None:
    """The evaluation's ``results.json`` (None when there is none; an unreadable one is an error naming it)."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable evaluation results ({exc})", parameter="results_json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict):
        raise ExportError(f"{path}: not an evaluation results.json (no 'meta')", parameter="results_json")
    return doc


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import safetensors

    return {"cpfs": cpfs.__version__, "torch": str(torch.__version__), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "safetensors": safetensors.__version__}


# -----------------------------------------------------------------------------------------------------------
# The ONNX graph


def _span(n: int | Tensor) -> int | Tensor:
    """``max(n - 1, 1)``: the divisor that puts grid -1/+1 on a map's first/last unit. While tracing, a map's
    size is a tensor and Python's ``max`` would freeze it into the graph as a constant."""
    return torch.clamp(n - 1, min=1) if isinstance(n, Tensor) else max(n - 1, 1)


def _grid_read(fmap: Tensor, geometry: LayerGeometry, xs: Tensor, ys: Tensor) -> Tensor:
    """``cpfs.training.model.sample_on_grid`` with traceable sizes: ``(B, C, h, w) -> (B, C, len(ys), len(xs))``."""
    h, w = fmap.shape[-2], fmap.shape[-1]
    gx = 2.0 * geometry.to_layer(xs) / _span(w) - 1.0  # (Wg,)
    gy = 2.0 * geometry.to_layer(ys) / _span(h) - 1.0  # (Hg,)
    grid_y, grid_x = torch.meshgrid(gy, gx, indexing="ij")  # (Hg, Wg) each
    grid = torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0).expand(fmap.shape[0], -1, -1, -1)  # (B, Hg, Wg, 2)
    return F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=True)


class OnnxGraph(nn.Module):
    """The network as one ONNX graph: ``images (B, 3, H, W)`` in [0, 1] -> ``(embedding, conv1, ..., fc7)``.

    ``embedding`` is ``CPFSModel.dense_embedding(images, stride)``: ``(B, D, ceil(H/stride), ceil(W/stride))``
    unit vectors, grid cell ``(i, j)`` = input pixel ``(x, y) = (j * stride, i * stride)``. Written without
    Python arithmetic on sizes, and every layer projected by the head's first layer before interpolation
    (``dense_embedding`` does so only for wide layers; both are exact, linear maps commute), so one trace serves
    every input size. The layer maps are ``AlexNetTrunk.features``'s, ``(B, C_l, H_l, W_l)``.
    """

    def __init__(self, model: CPFSModel, stride: int = 4) -> None:
        super().__init__()
        self.model = model
        self.stride = stride

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        maps = model.trunk.features(images, LAYER_NAMES)
        ys = torch.arange(0, images.shape[-2], self.stride).to(images.dtype)  # (Hg,) grid rows, px
        xs = torch.arange(0, images.shape[-1], self.stride).to(images.dtype)  # (Wg,) grid columns, px
        weight = model.head.fc1.weight  # (hidden, sum C): one column block per hypercolumn layer
        pre, start = None, 0
        for name in model.layers:
            c = model.trunk.channels[name]
            projected = F.conv2d(maps[name], weight[:, start : start + c, None, None])  # (B, hidden, h, w)
            start += c
            v = _grid_read(projected, model.trunk.geometry[name], xs, ys)  # (B, hidden, Hg, Wg)
            pre = v if pre is None else pre + v
        assert pre is not None
        b, _, hg, wg = pre.shape
        emb = model.head.from_first_layer(pre.flatten(2))  # (B, D, Hg*Wg) unit vectors
        return (emb.reshape(b, -1, hg, wg), *(maps[name] for name in LAYER_NAMES))


def write_onnx(model: CPFSModel, path: str | Path, *, stride: int = 4, opset: int = ONNX_OPSET) -> Path:
    """Trace ``OnnxGraph(model, stride)`` in eval mode into ``path`` (batch, height and width dynamic)."""
    graph = OnnxGraph(model, stride).eval()
    example = torch.rand(1, 3, 2 * MIN_INPUT_SIZE, 2 * MIN_INPUT_SIZE, generator=torch.Generator().manual_seed(0))
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in ONNX_OUTPUTS})
    with warnings.catch_warnings(), torch.no_grad():
        # The trunk's input checks become constants in the trace (they only validate); say nothing about them,
        # nor about the TorchScript exporter being the older one: it is chosen on purpose (module docstring).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=list(ONNX_OUTPUTS), dynamic_axes=dynamic)
    return Path(path)


@torch.no_grad()
def check_onnx(model: CPFSModel, path: str | Path, *, stride: int = 4,
               sizes: tuple[tuple[int, int, int], ...] = ((2, 112, 112), (1, 129, 157)), seed: int = 0) -> dict[str, Any]:
    """Run the ONNX graph with onnxruntime (CPU) on seeded random images of each ``(batch, H, W)`` in ``sizes``
    and compare every output with eager PyTorch: the embedding with ``CPFSModel.dense_embedding``, the layer
    maps with ``AlexNetTrunk.features``. Returns ``{"max_abs_diff", "per_output", "sizes", "seed"}``."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # deterministic and polite on a shared machine
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    per_output = dict.fromkeys(ONNX_OUTPUTS, 0.0)
    try:
        for b, h, w in sizes:
            images = torch.rand(b, 3, h, w, generator=gen)
            got = session.run(list(ONNX_OUTPUTS), {"images": images.numpy()})
            maps = model.trunk.features(images, LAYER_NAMES)
            expected = [model.dense_embedding(images, stride=stride), *(maps[name] for name in LAYER_NAMES)]
            for name, g, e in zip(ONNX_OUTPUTS, got, expected):
                if tuple(g.shape) != tuple(e.shape):
                    raise ExportError(f"{path}: ONNX output {name} has shape {tuple(g.shape)} for input "
                                      f"{(b, 3, h, w)}, PyTorch {tuple(e.shape)}")
                per_output[name] = max(per_output[name], float(np.abs(g - e.numpy()).max()))
    finally:
        model.train(was_training)
    return {"max_abs_diff": max(per_output.values()), "per_output": per_output,
            "sizes": [[b, 3, h, w] for b, h, w in sizes], "seed": seed}


# -----------------------------------------------------------------------------------------------------------
# Reading an export back


def load_exported_model(folder: str | Path) -> CPFSModel:
    """The ``CPFSModel`` of an export folder (its ``architecture.json`` and ``model.safetensors``), in eval mode.

    Raises:
        CheckpointError: a file is missing, or the weights do not fit the architecture (naming the file).
    """
    from safetensors.torch import load_file

    ex = ExportFolder(folder)
    for f in (ex.architecture, ex.weights):
        if not f.is_file():
            raise CheckpointError(f"{f}: missing from the export folder {ex.path}")
    try:
        arch: Mapping[str, Any] = json.loads(ex.architecture.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{ex.architecture}: not JSON ({exc})") from None
    model = CPFSModel(architecture_config(arch, ex.architecture))
    state = load_file(str(ex.weights))
    expected = model.state_dict()
    bad = sorted(set(expected) ^ set(state)) + sorted(k for k in set(expected) & set(state)
                                                     if tuple(expected[k].shape) != tuple(state[k].shape))
    if bad:
        raise CheckpointError(f"{ex.weights}: weights do not fit {ex.architecture} ({', '.join(bad[:6])}"
                              + (f", ... ({len(bad) - 6} more))" if len(bad) > 6 else ")"))
    model.load_state_dict(state)
    return model.eval()
