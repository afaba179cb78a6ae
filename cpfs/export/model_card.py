"""The model card of an exported CPFS network (``MODEL_CARD.md``): what data and settings made it, on what
machine, how it scored against random init, and its limits, in the manner of Hugging Face model cards.

Everything comes from two records, never from the machine doing the export: the checkpoint (``Checkpoint``:
training configuration, split, store index version, architecture and the ``provenance`` training recorded:
video names, flow backends, hardware, wall time) and the evaluation's ``results.json`` (its paired comparisons
against random init with their confidence intervals, only when it evaluated this very checkpoint). What a
record lacks (a checkpoint older than the provenance record) is written as "not recorded", never guessed.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from cpfs.training.checkpoint import Checkpoint
from cpfs.training.model import MIN_INPUT_SIZE

NOT_RECORDED = "not recorded"


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in doc.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _video_rows(ranges: list, videos: Mapping[str, Mapping[str, Any]]) -> tuple[list[list[Any]], int]:
    rows, frames = [], 0
    for vid, start, stop in ranges:
        info = videos.get(vid) or {}
        rows.append([info.get("name") or NOT_RECORDED, f"`{vid[:12]}`", f"{start}..{stop - 1}", stop - start,
                     info.get("backend") or NOT_RECORDED])
        frames += stop - start
    return rows, frames


def data_section(ckpt: Checkpoint) -> str:
    """Training data: the store index version, every video trained on and held out (name, id, frames, flow
    backend) from the checkpoint's split and provenance."""
    videos = ckpt.provenance.get("videos") or {}
    out = ["## Training data\n",
           f"Frames and their optical flow from a Zarr store of index version `{ckpt.store_version or NOT_RECORDED}`; "
           "training reads (frame t, flow t -> t+1) pairs.\n"]
    header = ["video", "id", "frames", "count", "flow backend"]
    for part, title in (("train", "Trained on"), ("heldout", "Held out (never trained on; the evaluation's video)")):
        ranges = ckpt.split.get(part)
        if ranges is None:
            out.append(f"{title}: {NOT_RECORDED} (checkpoint without a split record).\n")
            continue
        rows, frames = _video_rows(ranges, videos)
        out.append(f"**{title}**: {len(rows)} video(s), {frames} frames.\n")
        if rows:
            out.append(_table(header, rows))
    backends = sorted({str(v.get("backend")) for v in videos.values() if v.get("backend")})
    out.append(f"Flow backend(s): {', '.join(backends) if backends else NOT_RECORDED}.\n")
    return "\n".join(out)


def training_section(ckpt: Checkpoint) -> str:
    """Preset, loss, steps, seed, hardware and time, then every training setting."""
    cfg = ckpt.train_config
    prov = ckpt.provenance
    hw = prov.get("hardware") or {}
    hardware = (f"{hw.get('device')} ({hw.get('name') or 'unnamed'}), {hw.get('processes', 1)} process(es), "
                f"{hw.get('threads')} torch thread(s) of {hw.get('cpus')} CPU(s), torch {hw.get('torch')}") if hw else NOT_RECORDED
    seconds = prov.get("train_seconds")
    lines = ["## Training\n",
             f"- Preset `{cfg.get('preset', NOT_RECORDED)}`, loss `{cfg.get('loss', NOT_RECORDED)}`, "
             f"{ckpt.step} of {cfg.get('steps', NOT_RECORDED)} steps, seed {cfg.get('seed', NOT_RECORDED)}.",
             f"- Hardware: {hardware}.",
             f"- Training time (wall clock, all resumed parts): "
             f"{_duration(float(seconds)) if isinstance(seconds, (int, float)) else NOT_RECORDED}.",
             f"- Checkpoint `{ckpt.path.name}`, SHA-256 `{ckpt.sha256}`.\n",
             "Every setting (`TrainConfig`):\n",
             _table(["setting", "value"], [[f"`{k}`", f"`{v}`"] for k, v in _flatten(cfg)])]
    return "\n".join(lines)


def _number(x: Any) -> str:
    return f"{x:+.3f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


# The paired comparisons a protocol's row may hold: against random init of the same seed, and against position.
PAIRED_KEYS: tuple[str, ...] = ("paired", "paired_position", "paired_random_layers")


def paired_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every paired comparison of ``results.json`` (protocol, source and the record under ``PAIRED_KEYS``), in
    order."""
    rows = []
    for proto, sources in (results.get("protocols") or {}).items():
        for source, res in (sources or {}).items():
            for key in PAIRED_KEYS:
                p = res.get(key) if isinstance(res, Mapping) else None
                if isinstance(p, Mapping):
                    rows.append({"protocol": proto, "source": source, **p})
    return rows


def evaluation_section(ckpt: Checkpoint, results: Mapping[str, Any] | None, results_path: str | None) -> str:
    """The verdicts and their confidence intervals from ``results.json``, when it evaluated this checkpoint."""
    out = ["## Evaluation\n"]
    if results is None:
        out.append("Not evaluated: no `results.json` was found (run `cpfs evaluate --checkpoint ...`, then export "
                   "again).\n")
        return "\n".join(out)
    meta = results.get("meta") or {}
    if meta.get("checkpoint_sha256") not in (None, ckpt.sha256):
        out.append(f"The evaluation in `{results_path}` is of another checkpoint (SHA-256 "
                   f"`{str(meta.get('checkpoint_sha256'))[:16]}...`), so its numbers are not reported here.\n")
        return "\n".join(out)
    level = (meta.get("config") or {}).get("ci_level")
    store = meta.get("store") or {}
    out.append(f"From `{results_path}`: the trained network against a random-init network of the same "
               f"architecture and seed (and where measured, against a baseline), paired on the same held-out "
               f"frames (store index version "
               f"`{store.get('index_version', NOT_RECORDED)}`); the intervals are paired bootstrap "
               f"{f'{round(100 * level)} % ' if level else ''}confidence intervals of the difference.\n")
    rows = paired_rows(results)
    if rows:
        out.append(_table(
            ["protocol", "source", "metric", "against", "trained", "against's", "difference", "CI low", "CI high"],
            [[r["protocol"], r["source"], r.get("metric", ""), r.get("against", ""), _number(r.get("trained_mean")),
              _number(r.get("random_same_seed_mean", r.get("baseline_mean"))), _number(r.get("mean")),
              _number(r.get("ci_low")), _number(r.get("ci_high"))] for r in rows]))
    verdicts = list(meta.get("verdicts") or [r["verdict"] for r in rows if r.get("verdict")])
    if verdicts:
        out.append("In words:\n\n" + "\n".join(f"- {v[0].upper() + v[1:]}." for v in verdicts) + "\n")
    else:
        out.append("The evaluation made no paired comparison against random init.\n")
    for note in meta.get("notes") or []:
        out.append(f"Note: {note}\n")
    return "\n".join(out)


def limitations_section(ckpt: Checkpoint, results: Mapping[str, Any] | None) -> str:
    cfg = ckpt.train_config
    train_videos = len(ckpt.split.get("train") or [])
    lines = ["## Limitations\n",
             f"- Trained on {train_videos or 'an unrecorded number of'} video(s) for {ckpt.step} steps: a narrow "
             "domain and a short schedule next to the paper's (YouTube-8M frames, 100,000 steps on a GPU). Expect "
             "its features to transfer far less than ImageNet-scale pretraining.",
             "- The objective groups pixels that move together; nothing in it names objects or classes. The "
             "embedding is a motion-similarity embedding; the trunk's layers are the part meant for reuse.",
             f"- Inputs are RGB images in [0, 1] of at least {MIN_INPUT_SIZE} x {MIN_INPUT_SIZE} px; the network "
             "standardises them with the ImageNet mean and std itself (do not standardise twice).",
             "- The batch-norm statistics in the weights are the training run's."]
    if results is not None and ((results.get("meta") or {}).get("config") or {}).get("recalibrate_checkpoints"):
        lines[-1] += (" The evaluation above re-estimated them on training crops (as for random init, so the "
                      "comparison differs in the weights only); features from these weights can differ slightly "
                      "from the evaluated ones.")
    if cfg.get("crop"):
        lines.append(f"- Trained on {cfg['crop']} x {cfg['crop']} px crops; far larger or smaller images see "
                     "objects at scales it never saw.")
    if results is not None and (results.get("meta") or {}).get("smoke_scale"):
        lines.append("- The linear probe ran at smoke scale (scikit-learn digits), not on ImageNet: it checks the "
                     "plumbing, not the representation's quality.")
    return "\n".join(lines) + "\n"


def model_card(ckpt: Checkpoint, results: Mapping[str, Any] | None, export: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md`` of an export: model, use, data, training, evaluation, the ONNX check, limitations.

    ``results``: the evaluation's ``results.json`` (None when there is none); ``export``: the export record
    (``cpfs.export.exporter``: its ``onnx`` check and ``results_json`` path)."""
    arch = ckpt.architecture
    n_params = sum(math.prod(shape) for key, shape in (arch.get("shapes") or {}).items()
                   if not key.endswith(("running_mean", "running_var", "num_batches_tracked")))
    run = ckpt.run.path.name
    onnx = export.get("onnx") or {}
    check = onnx.get("check") or {}
    parts = [
        f"# CPFS network `{run}`, step {ckpt.step}\n",
        "A convolutional network pretrained without labels by Cross Pixel Optical-Flow Similarity (Mahendran, "
        "Thewlis, Vedaldi, ACCV 2018): an AlexNet trunk whose per-pixel hypercolumns feed an embedding head, "
        "trained so that the similarity of two pixels' embeddings matches the similarity of their optical flow.\n",
        "## Model\n",
        f"- AlexNet trunk, width x{arch.get('width')}, batch norm {arch.get('batch_norm')}, fully convolutional "
        f"(conv1 ... fc7); embedding head on the hypercolumn of {', '.join(arch.get('hypercolumn_layers') or [])} "
        f"(hidden {arch.get('hidden')}), D = {arch.get('embed_dim')} unit vectors per pixel; "
        f"{n_params:,} parameters.",
        "- Files: `model.safetensors` (weights), `architecture.json` (rebuilds it), `model.onnx` (images -> "
        f"dense embedding at stride {onnx.get('stride', 4)} and every trunk layer's map), `export.json`.",
        f"- ONNX against eager PyTorch (onnxruntime, CPU): max abs difference "
        f"{check.get('max_abs_diff', float('nan')):.2e} over inputs {check.get('sizes')}.\n",
        "## Use\n",
        "```python\nimport torch, cpfs\n\nbackbone = cpfs.load_backbone(\"path/to/this/folder\")\n"
        "images = torch.rand(1, 3, 224, 224)  # RGB in [0, 1]\n"
        "maps = backbone.feature_maps(images, [\"conv3\", \"conv5\"])  # {name: (1, C, h, w)}\n"
        "emb = backbone.dense_embedding(images)  # (1, D, 56, 56)\n```\n",
        data_section(ckpt),
        training_section(ckpt),
        evaluation_section(ckpt, results, export.get("results_json")),
        limitations_section(ckpt, results),
    ]
    return "\n".join(parts)


def verdict_markdown(ckpt: Checkpoint, results: Mapping[str, Any] | None, export: Mapping[str, Any], folder: str) -> str:
    """The card's verdict on its own (a Prefect markdown artifact): which network, where its export is, the ONNX
    check, and the evaluation section of the card."""
    check = (export.get("onnx") or {}).get("check") or {}
    return "\n".join([
        f"# Model card of `{ckpt.run.path.name}`, step {ckpt.step}\n",
        f"Exported to `{folder}` (`MODEL_CARD.md`, `model.safetensors`, `model.onnx`); ONNX against PyTorch: max abs "
        f"difference {check.get('max_abs_diff', float('nan')):.2e}.\n",
        evaluation_section(ckpt, results, export.get("results_json")),
    ])
