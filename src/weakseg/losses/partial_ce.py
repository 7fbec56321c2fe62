"""Cross-entropy over the labelled pixels of a sparse or dense label map."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def partial_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose label is not ``ignore_index``.

    Args:
        logits: [B, K, h, w] raw scores; upsampled bilinearly to the label size when it differs
            (the usual practice for scribble-supervised segmenters).
        target: [B, H, W] int64 class ids, ``ignore_index`` where unlabelled.
        label_smoothing: ε of ``(1-ε)·CE(y, p) + ε·CE(uniform, p)`` (CDSP's pseudo-label term uses 0.1).

    Returns:
        Scalar: the sum of per-pixel losses divided by the number of labelled pixels in the batch.
        A batch without any labelled pixel gives 0 (with a gradient path), never NaN.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(
        logits.float(), target, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
    )
    labelled = (target != ignore_index).sum().clamp_min(1)
    return per_pixel.sum() / labelled
