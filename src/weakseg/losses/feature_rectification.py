"""Feature rectification loss: features pulled toward their rectified (self-attended) version.

CDSP's LoRM (:class:`weakseg.models.lorm.LoRM`) re-estimates each foreground feature ``F_i`` as an
attention-weighted average of the features of its image, ``F̂``; the loss is the squared distance between
``F`` and ``F̂``. ``F`` is not detached: the loss trains the backbone to produce features that the rectified
features can reproduce.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LORM_REDUCTIONS", "lorm_loss"]

LORM_REDUCTIONS = ("authors", "foreground")


def lorm_loss(features: Tensor, rectified: Tensor, row_mask: Tensor, reduction: str = "authors") -> Tensor:
    """MSE between the features ``F`` and their rectification ``F̂`` (both ``[B, C, h, w]``).

    ``reduction="authors"`` (default, as the CDSP authors' code): ``Σ (F − F̂)² / #{(F − F̂)² ≠ 0}``
    over all positions; ``F̂ = 0`` off the foreground, so the loss also pulls background features
    toward 0. ``"foreground"``: the mean over the positions of ``row_mask`` only (0 without any).
    """
    sq = (features.float() - rectified.float()).square()
    if reduction == "authors":
        return sq.sum() / torch.count_nonzero(sq.detach()).clamp_min(1)
    if reduction == "foreground":
        keep = row_mask.to(sq.dtype).unsqueeze(1)
        return (sq * keep).sum() / (keep.sum() * sq.shape[1]).clamp_min(1)
    raise ValueError(f"lorm reduction is {reduction!r}; expected one of {LORM_REDUCTIONS}")
