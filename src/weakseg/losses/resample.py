"""Resampling per-pixel maps between grids (one home for the nearest-neighbour rule the losses share)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["nearest_resize"]


def nearest_resize(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resampling of ``[B, H, W]`` maps (label ids, masks or floats) to ``size``.

    Returns ``[B, h, w]`` with the input's dtype (the input itself when the size already matches).
    Label ids go through float32, exact for ids below 2**24.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    out = F.interpolate(maps[:, None].float(), size=size, mode="nearest")[:, 0]
    return out.to(maps.dtype)
