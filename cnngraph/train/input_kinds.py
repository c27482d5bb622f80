"""The per-sample inputs training takes: sequences (C, L), images (C, H, W) and volumes (C, D, H, W)."""
from __future__ import annotations

__all__ = ["INPUT_KINDS", "input_kind", "mask_unit"]

# The per-sample input shapes training takes: kind, plural, shape text, channels-first and -last layout names.
INPUT_KINDS = {2: ("sequence", "sequences", "(C, L)", "NCL", "NLC"),
               3: ("image", "images", "(C, H, W)", "NCHW", "NHWC"),
               4: ("volume", "volumes", "(C, D, H, W)", "NCDHW", "NDHWC")}


def input_kind(shape) -> str | None:
    """'sequence', 'image' or 'volume' for a per-sample input shape (C, L), (C, H, W) or (C, D, H, W), else None."""
    entry = INPUT_KINDS.get(len(tuple(shape)))
    return entry[0] if entry else None


def mask_unit(spatial_axes: int) -> str:
    """What one position of a segmentation mask with this many spatial axes is: a step, a pixel or a voxel."""
    return {1: "step", 2: "pixel", 3: "voxel"}.get(spatial_axes, "pixel")
