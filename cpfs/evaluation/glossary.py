"""What every column and row of the report's tables means, in a sentence each (the report prints the entries of
a table's own columns under it).

A column is explained per protocol (``mIoU`` is a mean over VOC classes in one table and over moving/static in
another), then by a pattern (a layer name), then in general. The sentences follow the code that computes the
numbers: ``cpfs.evaluation.flow_alignment`` (and ``cpfs.training.kernels``, ``cpfs.training.losses``), ``motion_segmentation``,
``linear_probe``, ``segmentation``, ``davis_measures``, ``foreground``, ``finetune`` and ``stats``.
"""

from __future__ import annotations

import re
from typing import Iterable

from cpfs.evaluation.davis_measures import BOUNDARY_TOLERANCE, RECALL_THRESHOLD
from cpfs.training.kernels import MIN_SIGMA_PX

CELL = "Each cell: mean ± standard deviation over the evaluation seeds (random init: one network per seed)."

# Why random init can beat the trained network on raw alignment (flow_alignment.py, kernels.py, losses.py).
RAW_ALIGNMENT_NOTE = (
    "Why random init can score a higher raw alignment than the trained network: raw alignment rewards kernels "
    "that are nearly constant. The flow kernel is positive everywhere (in (0, 1]) and, since most pixels of a "
    "frame move alike, close to a constant matrix. A random network gives nearly every pixel an embedding "
    "pointing the same way (cosine similarity near 1), so its kernel is nearly constant too, and two nearly "
    "constant positive matrices align almost perfectly (a constant embedding scores about 0.9). Training pulls "
    "apart the embeddings of pixels that move differently, down to small or negative kernel values: the "
    "structure that matters, but farther from a constant matrix, so the raw score drops. Centered alignment "
    "removes the constant part before comparing; read it, not the raw value.")

PROTOCOL_COLUMNS: dict[str, dict[str, str]] = {
    "flow_alignment": {
        "alignment": "raw kernel alignment <K_emb, K_flow> / (|K_emb| |K_flow|) at sampled pixels of each held-out "
                     "frame pair: K_emb is a quarter of the cosine similarity of two pixels' embeddings (the training "
                     "kernel), K_flow a Gaussian of their flow difference; 1 when proportional. See the note below.",
        "alignment_centered": "the same alignment after centering both kernels (subtracting row and column means): "
                              "a constant embedding scores 0, the flow oracle 1. The headline; higher is better.",
        "ce": "the training loss on held-out pairs: cross entropy of the embedding kernel's column softmax against "
              "the flow kernel's, in nats; lower is better. Its values differ in the second or third decimal.",
        "ce_excess": "ce minus its floor, the entropy of the flow kernel's softmax (the mean KL divergence): 0 for "
                     "the flow oracle; lower is better.",
        "sigma_at_floor": f"fraction of pairs whose flow bandwidth (the median flow difference between the sampled "
                          f"pixels) hit its {MIN_SIGMA_PX} px floor: their flow differences are at the level of "
                          "flow-estimation noise. Near 1: the held-out video moves little, and alignment says less.",
    },
    "motion_segmentation": {
        "IoU_moving": "intersection over union of the pixels a linear classifier on the frozen features calls "
                      "moving and those whose flow exceeds the video's motion threshold; fitted on the first half "
                      "of each held-out video's pairs, scored on the second. The headline; higher is better.",
        "mIoU": "mean of the IoU of the moving and of the static pixels.",
        "pixel_acc": "fraction of pixels classified correctly (high even for 'nothing moves' when little moves).",
    },
    "segmentation": {
        "mIoU": "mean over the VOC classes of the IoU of a per-pixel linear classifier on frozen hypercolumns "
                "(fitted on VOC train, scored on val). Higher is better.",
        "pixel_acc": "fraction of (non-void) pixels classified correctly.",
    },
    "davis": {
        "J": "region similarity: IoU of the propagated mask and the ground truth, averaged over objects and the "
             "scored frames (all but the first, which is given, and the last).",
        "F": "contour accuracy: F-measure of boundary precision and recall, a boundary pixel matched within "
             f"{100 * BOUNDARY_TOLERANCE:g} % of the image diagonal.",
        "J&F": "the mean of J and F, the DAVIS benchmark's headline. Higher is better.",
        "J_recall": f"fraction of frames whose J is above {RECALL_THRESHOLD}.",
        "F_recall": f"fraction of frames whose F is above {RECALL_THRESHOLD}.",
        "J_decay": "J over the first quarter of the frames minus J over the last quarter: how much the propagated "
                   "mask drifts (lower is better).",
        "F_decay": "the same drift for F.",
    },
    "foreground": {
        "mIoU": "mean of the background and foreground IoU over the pooled test pixels of a linear classifier on "
                "frozen hypercolumns, fitted on davis_train's masks and scored on the DAVIS sequences. The headline.",
        "IoU_fg": "IoU of the foreground (annotated object) pixels alone.",
        "pixel_acc": "fraction of pixels classified correctly.",
    },
    "finetune": {
        "accuracy": "top-1 accuracy on the test images after fine-tuning the trunk with a new linear head.",
        "mAP": "mean over the VOC classes of the 11-point average precision (the VOC 2007 devkit's), after "
               "fine-tuning the trunk with a new linear head.",
    },
}

# Columns named by pattern, one entry for all the columns a pattern matches: (protocol, regex, sentence).
PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("linear_probe", re.compile(r"^(?:conv|fc)\d+$"),
     "top-1 accuracy of a linear classifier on that layer's globally pooled features (frozen network)."),
    ("foreground", re.compile(r"^mIoU_\w+$"), "mIoU of the same probe on that layer's features alone."),
)

SOURCES: dict[str, str] = {
    "cpfs": "the trained checkpoint under evaluation.",
    "random-init": "the same architecture with random weights (one network per seed, BatchNorm statistics "
                   "re-estimated on training crops): what training must beat.",
    "position": "each pixel's (x, y) position alone: nearby pixels tend to move together, so it is a baseline "
                "for motion too.",
    "colour-lab": "each pixel's colour (CIE Lab) alone.",
    "flow-oracle": "the optical flow itself: the protocol's ceiling.",
    "chance": "1 / the number of classes.",
}

PAIRED_COLUMNS: dict[str, str] = {
    "comparison": "the trained network minus a baseline scored on the same held-out pairs, pixels and seeds "
                  "(random init: the very weights training started from, same seed).",
    "video": "'all' pools every held-out video (or DAVIS sequence); a named row is that video alone. The "
             "video's content id is in small print.",
    "difference": "mean paired difference of the protocol's headline metric; above 0: the trained network "
                  "scores higher.",
    "CI": "bootstrap confidence interval of the difference (pairs and seeds resampled, videos kept as strata); "
          "when it excludes 0 the difference is measurable.",
    "n": "frame pairs (held-out video) or frames (DAVIS) compared.",
}


def table_glossary(protocol: str, columns: Iterable[str], sources: Iterable[str]) -> list[tuple[str, str]]:
    """``(term, sentence)`` for each column of ``protocol``'s table that has an explanation (the columns one
    pattern matches share an entry: "conv1, conv2, conv3"), then for each row (source) that has one."""
    named = PROTOCOL_COLUMNS.get(protocol, {})
    out: dict[str, list[str]] = {}  # sentence -> its columns, in order
    for c in columns:
        text = named.get(c) or next((sentence for proto, pattern, sentence in PATTERNS
                                     if proto == protocol and pattern.match(c)), None)
        if text is not None:
            out.setdefault(text, []).append(c)
    rows = [(s, source_sentence(s)) for s in sources]
    return [(", ".join(cols), text) for text, cols in out.items()] + [(s, text) for s, text in rows if text]


def source_sentence(name: str) -> str | None:
    """What a row (source) is: ``SOURCES``, or random init read at named layers ("random-init (conv1+conv2)")."""
    if name in SOURCES:
        return SOURCES[name]
    if name.startswith("random-init (") and name.endswith(")"):
        return (f"random init of the training seed read at {name[len('random-init ('):-1]}, its own best layers "
                "(davis_baseline_layers), not at the trained network's: the comparison a real gain must survive.")
    return None


# What DAVIS label propagation compares (cpfs.evaluation.features.network_features, EvalConfig.davis_layers).
DAVIS_FEATURES_NOTE = ("Label propagation compares pixels by a network's features named in davis_layers (by default "
                       "its own embedding, the output training shapes, beside conv1's features, each weighing half), "
                       "the same for the trained network and random init; a baseline by its position or colour.")


def table_notes(protocol: str) -> list[str]:
    """Longer notes printed under ``protocol``'s table (the raw-alignment paradox under flow alignment, what DAVIS
    propagation compares)."""
    extra = {"flow_alignment": [RAW_ALIGNMENT_NOTE], "davis": [DAVIS_FEATURES_NOTE]}
    return [CELL] + extra.get(protocol, [])
