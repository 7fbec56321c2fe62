"""Multi-label soft-margin loss: the image-level classification loss of CAM networks (IRN, SIPE, SFC)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["multilabel_soft_margin_loss"]


def multilabel_soft_margin_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """One-vs-all logistic loss averaged over classes.

    ``loss_n = -1/C * sum_c [y_nc log sigmoid(x_nc) + (1 - y_nc) log sigmoid(-x_nc)]``, computed as
    ``softplus(-x) y + softplus(x) (1 - y)`` (stable for large ``|x|``); equal to
    :func:`torch.nn.functional.multilabel_soft_margin_loss`.

    Args:
        logits: ``[B, C]`` class scores (e.g. global-average-pooled CAMs).
        targets: ``[B, C]`` multi-hot in {0, 1} (soft targets in [0, 1] are accepted).
        reduction: ``"mean"`` over images (a scalar), ``"sum"`` or ``"none"`` (``[B]``).
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(
            f"expected logits and targets of the same shape [B, C], got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    x = logits if logits.dtype == torch.float64 else logits.float()  # fp16/bf16 -> fp32
    y = targets.to(x.dtype)
    per_image = (F.softplus(-x) * y + F.softplus(x) * (1.0 - y)).mean(dim=1)
    if reduction == "mean":
        return per_image.mean()
    if reduction == "sum":
        return per_image.sum()
    if reduction == "none":
        return per_image
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
