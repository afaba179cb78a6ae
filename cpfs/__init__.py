"""Cross Pixel Optical-Flow Similarity (Mahendran, Thewlis, Vedaldi, 2018): the library.

This package holds the science as plain functions and small classes: video decoding, optical flow,
the CPFS model, kernels and losses, data loading, training and evaluation. It never imports Prefect;
orchestration lives in ``tasks/`` and ``flows/``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cpfs-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
