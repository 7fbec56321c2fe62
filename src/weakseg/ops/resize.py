"""Resampling per-pixel maps between grids: the one home of weakseg's resize rules.

Every function leaves its input untouched (and returns it as is) when it already has the requested
size, so callers need no size check of their own.

* :func:`scaled_size`: the grid of an image scaled by a factor (rounded, at least 1x1);
* :func:`resize_bilinear`: images, logits, probabilities and CAMs (``align_corners=False``), optionally
  antialiased when shrinking;
* :func:`bilinear_at`: the values :func:`resize_bilinear` would give at a few pixels, without resizing the
  whole map (sparse labels: a loss over scribbled pixels only);
* :func:`resize_area`: area averaging when both sides shrink, else bilinear (kernel grids);
* :func:`resize_nearest`: label ids and masks ``[B, H, W]`` by nearest neighbour;
* :func:`resize_mask`: a validity mask to a coarser grid, a cell inside when most of its pixels are;
* :func:`resize_gate`: Gated CRF's rule, a cell keeps its area average only where it is fully inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bilinear_at",
    "resize_area",
    "resize_bilinear",
    "resize_gate",
    "resize_mask",
    "resize_nearest",
    "scaled_size",
]


def _size(size: Sequence[int]) -> tuple[int, int]:
    return int(size[0]), int(size[1])


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """``(round(scale·H), round(scale·W))`` of ``size = (H, W)``, each side at least 1."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def resize_bilinear(x: Tensor, size: Sequence[int], *, antialias: bool = False) -> Tensor:
    """Bilinear resize of ``[B, C, h, w]`` to ``size = (H, W)`` (``align_corners=False``).

    ``antialias=True`` low-pass filters when either side shrinks (PyTorch's antialiased bilinear), and
    is plain bilinear when both sides grow.
    """
    size = _size(size)
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = antialias and (size[0] < x.shape[-2] or size[1] < x.shape[-1])
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _source_coordinates(
    dst: Tensor, size_in: int, size_out: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """PyTorch's bilinear source rule (``align_corners=False``, no scale factor) along one axis.

    For output indices ``dst``: ``src = max(0, (dst + 0.5) * size_in / size_out - 0.5)``, the lower
    neighbour ``i0 = floor(src)``, the upper ``i1 = min(i0 + 1, size_in - 1)`` and the weight ``src - i0``
    of the upper one, in ``dtype`` (``upsample_bilinear2d`` computes in float64 for float64 inputs and in
    float32 otherwise).
    """
    src = ((dst.to(dtype) + 0.5) * (size_in / size_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(size_in - 1)
    return i0, (i0 + 1).clamp_max(size_in - 1), src - i0


def bilinear_at(x: Tensor, size: Sequence[int], where: Tensor) -> Tensor:
    """``resize_bilinear(x, size)`` read at the pixels of a mask, without resizing the whole map.

    Args:
        x: ``[B, C, h, w]`` (e.g. logits).
        size: the output grid ``(H, W)``.
        where: bool ``[B, H, W]``; its True pixels are read, in ``nonzero`` order (batch, row, column).

    Returns:
        ``[P, C]`` for the ``P`` True pixels: the same values as ``resize_bilinear(x, size)`` there (up
        to float rounding), differentiable in ``x``. Costs ``O(P·C)`` instead of ``O(B·C·H·W)``, which
        pays off when ``P`` is a small share of the pixels (scribbles).
    """
    size = _size(size)
    if tuple(where.shape) != (x.shape[0], *size):
        raise ValueError(f"where must be [B, H, W] = {(x.shape[0], *size)}, got {tuple(where.shape)}")
    bi, yi, xi = where.nonzero(as_tuple=True)
    channels_last = x.permute(0, 2, 3, 1)  # [B, h, w, C]: gathers read rows of C values
    if tuple(x.shape[-2:]) == size:
        return channels_last[bi, yi, xi]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    y0, y1, wy = _source_coordinates(yi, x.shape[-2], size[0], dtype)
    x0, x1, wx = _source_coordinates(xi, x.shape[-1], size[1], dtype)
    wy, wx = wy.unsqueeze(1).to(x.dtype), wx.unsqueeze(1).to(x.dtype)
    top = channels_last[bi, y0, x0] * (1 - wx) + channels_last[bi, y0, x1] * wx
    bottom = channels_last[bi, y1, x0] * (1 - wx) + channels_last[bi, y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def resize_area(x: Tensor, size: Sequence[int]) -> Tensor:
    """Resample ``[B, C, h, w]`` to ``size``: area averaging when shrinking both sides, else bilinear."""
    size = _size(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize_nearest(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resampling of ``[B, H, W]`` maps (label ids, masks or floats) to ``size``.

    Returns ``[B, h, w]`` with the input's dtype. Label ids go through float32, exact for ids below 2**24.
    """
    size = _size(size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    out = F.interpolate(maps[:, None].float(), size=size, mode="nearest")[:, 0]
    return out.to(maps.dtype)


def resize_mask(mask: Tensor | None, size: Sequence[int]) -> Tensor | None:
    """bool ``[B, H, W]`` -> bool ``[B, h, w]`` through :func:`resize_area`: a cell is inside when most
    of its pixels are. None stays None (no mask: every pixel counts)."""
    if mask is None:
        return None
    return resize_area(mask[:, None].float(), size)[:, 0] > 0.5


def resize_gate(mask: Tensor, size: Sequence[int]) -> Tensor:
    """``[B, H, W]`` bool/float gate -> float ``[B, h, w]``: adaptive average pooling to ``size``, then
    every value below 1 becomes 0 (a cell touching a pixel outside drops out; Gated CRF's rule)."""
    size = _size(size)
    m = mask.float().unsqueeze(1)
    if m.shape[-2:] != size:
        m = F.adaptive_avg_pool2d(m, size)
    m = torch.nan_to_num(m, nan=0.0)
    return torch.where(m < 1.0, torch.zeros_like(m), m)[:, 0]
