"""Where the Zarr store lives and how its arrays are chunked (shared by every stage)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from cpfs.config.base import Cli, ConfigModel


class StoreConfig(ConfigModel):
    """Where the Zarr store lives and how its arrays are chunked."""

    cli_panels: ClassVar[dict[str, tuple[str, ...]]] = {
        "Common": ("path",), "Store": ("shard_frames", "flow_scale", "flow_bound", "storage_options")}
    # A local folder or an fsspec URL (s3://bucket/prefix when s3fs is installed, memory://...).
    path: Annotated[str, Cli(flag="--store")] = Field(default="cpfs-data/store.zarr", description="Store location: folder or fsspec URL")
    # Frames per shard: the unit of writing, of parallel work and of dask chunks.
    shard_frames: Annotated[int, Cli(flag="--shard-frames")] = Field(default=32, ge=1, description="Frames per Zarr shard")
    # Fixed-point scale of stored flow: value = round(flow_px * scale) as int16.
    flow_scale: float = Field(default=64.0, gt=0, description="Fixed-point scale of stored flow (units per px)")
    # Clipping bound of stored flow, px; |flow| beyond it is clipped and counted.
    flow_bound: float = Field(default=500.0, gt=0, description="Flow clipping bound, px")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options")

    @field_validator("flow_bound")
    @classmethod
    def _bound_fits_int16(cls, v: float, info) -> float:  # noqa: ANN001
        scale = info.data.get("flow_scale", 64.0)
        if v * scale > 32767:
            raise ValueError(f"flow_bound*flow_scale must fit int16 (<= 32767), got {v}*{scale}")
        return v
