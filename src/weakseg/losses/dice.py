"""Soft Dice loss over dense labels, as the medical scribble-supervision benchmarks use it.

For probabilities ``p`` (softmax of the logits) and the one-hot target ``g`` of class ``k``, summed over
every labelled pixel of the batch:

    Dice_k = 1 - (2 Σ p_k g_k + s) / (Σ p_k² + Σ g_k² + s),       s = 1e-5

and the loss is the mean of ``Dice_k`` over all classes, background included. This is the form of
WSL4MIS's ``DiceLoss`` (squared terms in the denominator, batch-wide sums, mean over classes), which its
fully supervised ACDC baseline combines with cross-entropy as ``0.5·CE + 0.5·Dice``. Pixels labelled
``ignore_index`` take no part (their ``p`` and ``g`` are zeroed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.ops.resize import resize_bilinear

__all__ = ["soft_dice_loss"]


def soft_dice_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, smooth: float = 1e-5) -> Tensor:
    """Mean over classes of ``1 - (2 Σ p g + s) / (Σ p² + Σ g² + s)`` (see the module doc).

    Args:
        logits: [B, K, h, w] raw scores; upsampled bilinearly to the label size when it differs.
        target: [B, H, W] int64 class ids, ``ignore_index`` where unlabelled.
        smooth: ``s``, keeps classes absent from both prediction and target at a loss of 0.

    Returns:
        Scalar fp32 tensor.
    """
    logits = resize_bilinear(logits, target.shape[-2:])
    num_classes = logits.shape[1]
    labelled = target != ignore_index  # [B, H, W]
    probs = logits.float().softmax(1) * labelled[:, None]
    onehot = F.one_hot(torch.where(labelled, target, 0), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * labelled[:, None]
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    return dice.mean()
