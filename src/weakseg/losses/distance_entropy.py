"""CDSP's distance entropy loss: prediction entropy weighted by a distance map.

``L_d = (1 / N_d) Σ_i d(i) · H(p_i)``,  ``H(p) = −Σ_c p_c log p_c``,  ``N_d = #{i : d(i) > 0}``.

With the scribble map ``d_s`` (1 on foreground scribbles, fading with distance) it asks for confident
predictions near the scribbles; with the pseudo-label boundary map ``d_c`` (0 on the boundary, rising
away from it) it asks for confidence inside regions and tolerates uncertainty at the boundary, where
pseudo-labels are least reliable. The paper prints ``p log p`` without the minus; minimising the
entropy is its intent, so the entropy is used here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from weakseg.ops.resize import resize_bilinear

__all__ = ["distance_entropy_loss", "entropy_map"]


def entropy_map(logits: Tensor) -> Tensor:
    """Per-pixel entropy of ``softmax(logits)``: ``[B, K, H, W]`` → ``[B, H, W]`` (float32)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def distance_entropy_loss(logits: Tensor, distance: Tensor) -> Tensor:
    """``(1 / #{d > 0}) Σ d · H(softmax(logits))``.

    Args:
        logits: ``[B, K, h, w]``; upsampled bilinearly to the map size when it differs.
        distance: ``[B, H, W]`` weights in [0, 1] (0 = no weight, e.g. padding).

    Returns:
        Scalar; 0 (with a gradient path) when no pixel has weight.
    """
    logits = resize_bilinear(logits, distance.shape[-2:])
    weight = distance.float()
    count = (weight > 0).sum().clamp_min(1)
    return (weight * entropy_map(logits)).sum() / count
