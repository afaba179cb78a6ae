"""Errors that name the thing that failed and the reason, raised at the library's boundaries."""

from __future__ import annotations


class CPFSError(Exception):
    """Base class of every error this project raises on purpose."""


class VideoError(CPFSError):
    """A video (file or frame folder) cannot be used. ``reason`` is one short phrase such as
    'missing', 'empty file', 'not a video', 'truncated', 'unsupported codec', 'ffmpeg timed out'."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        msg = f"{self.path}: {reason}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)

    def __reduce__(self):  # keep pickling (Dask, Prefect) faithful to the three fields
        return (type(self), (self.path, self.reason, self.detail))


class BackendUnavailableError(CPFSError):
    """An optical-flow backend was asked for but cannot run here; the message says why and what to do."""


class StoreError(CPFSError):
    """The Zarr store is missing, malformed, or holds nothing usable; the message names the store path."""
