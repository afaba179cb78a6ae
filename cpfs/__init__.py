"""Cross Pixel Optical-Flow Similarity (Mahendran, Thewlis, Vedaldi, 2018): the library.

This package holds the science as plain functions and small classes: video decoding, optical flow,
the CPFS model, kernels and losses, data loading, training and evaluation. It never imports Prefect;
orchestration lives in ``tasks/`` and ``flows/``.

``cpfs.load_backbone(path)`` (``cpfs.export.backbone``) gives a trained network as a frozen feature extractor; it is
imported on first use, so ``import cpfs`` stays light (no torch).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cpfs-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: the backbone API is imported on first use
    if name in ("load_backbone", "Backbone"):
        from cpfs.export import backbone

        return getattr(backbone, name)
    raise AttributeError(f"module 'cpfs' has no attribute {name!r}")
