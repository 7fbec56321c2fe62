"""Cross-entropy over the labelled pixels of a sparse or dense label map."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from weakseg.ops.resize import bilinear_at, resize_bilinear

#: on a CPU, labels covering at most this share of the pixels take the sparse path (see below)
SPARSE_MAX_SHARE = 0.25


def partial_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose label is not ``ignore_index``.

    Args:
        logits: [B, K, h, w] raw scores; upsampled bilinearly to the label size when it differs
            (the usual practice for scribble-supervised segmenters).
        target: [B, H, W] int64 class ids, ``ignore_index`` where unlabelled.
        label_smoothing: ε of ``(1-ε)·CE(y, p) + ε·CE(uniform, p)`` (CDSP's pseudo-label term uses 0.1).
        class_weights: [K] per-class weights ``w``: the loss is then ``Σ w_y CE / Σ w_y`` over labelled
            pixels (``F.cross_entropy``'s weighted mean); None weighs every pixel 1.

    Returns:
        Scalar: the sum of per-pixel losses divided by the number of labelled pixels in the batch.
        A batch without any labelled pixel gives 0 (with a gradient path), never NaN.
    """
    labelled = target != ignore_index
    if logits.device.type == "cpu" and float(labelled.float().mean()) <= SPARSE_MAX_SHARE:
        # Sparse labels (scribbles): the upsampled logits read at the labelled pixels only, so neither the
        # upsampling nor the log-softmax runs over the whole [B, K, H, W] map. Same value and gradient as
        # the dense path below (up to float rounding); on a GPU the dense path avoids a host sync.
        scores = bilinear_at(logits, target.shape[-2:], labelled).float()  # [P, K]
        labels = target[labelled]  # [P], the same nonzero order
    else:
        scores = resize_bilinear(logits, target.shape[-2:]).float()
        labels = target
    per_pixel = F.cross_entropy(
        scores,
        labels,
        weight=class_weights,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    if class_weights is None:
        return per_pixel.sum() / labelled.sum().clamp_min(1)
    pixel_weights = class_weights.to(per_pixel.dtype)[torch.where(labelled, target, 0)] * labelled
    return per_pixel.sum() / pixel_weights.sum().clamp_min(1e-12)
