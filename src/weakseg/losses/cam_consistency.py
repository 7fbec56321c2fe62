"""SFC's multi-scale distribution-weighted (MSDW) consistency between CAMs (Zhao et al., AAAI 2024).

Notation (``K`` channels = background + foreground classes, ``C`` foreground classes, maps on the CAM grid
``h x w``): ``M_W`` is the PCM-refined classifier CAM and ``M_P`` the prototype CAM
(:mod:`weakseg.ops.class_maps`). The MSDW loss is

* ``L_P_DW`` (:func:`prototype_consistency_loss`): ``M_W`` vs ``M_P / max``, and
* ``L_W_DW`` (:func:`scale_consistency_loss`): ``M_W(I)`` downscaled vs ``M_W(I x 0.5)``,

both L1 distances re-weighted per class by the distribution coefficients (:func:`distribution_coefficients`),
which up-weight the head and the tail of a long-tailed class distribution.

Every formula follows the authors' code (github.com/Barrett-python/SFC, ``network/resnet50_SFC.py`` and
``train_resnet50_SFC.py``); ``docs``-level notes are in ``shared/methods/SFC.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.ops.class_maps import max_normalize

__all__ = [
    "distribution_coefficients",
    "frequency_spread",
    "prototype_consistency_loss",
    "scale_consistency_loss",
    "weighted_l1",
]


def frequency_spread(counts: Tensor) -> Tensor:
    """``S_c = sum_j |n_c - n_j|`` (float64 ``[C]``): how far class ``c``'s frequency lies from the others'.

    Large for the head and for the tail of a long-tailed distribution, small in the middle. On the VOC
    train_aug image counts this reproduces, to the unit, the constants ``ben`` hard-coded in SFC's
    training script (e.g. person 66642 = 19 x 4155 - 12303).
    """
    n = counts.double()
    return (n[:, None] - n[None, :]).abs().sum(dim=1)


def distribution_coefficients(counts: Tensor, extra: float = 0.0) -> Tensor:
    """SFC's per-class distribution coefficients ``DC_c``, normalised to mean 1: ``[C] -> [C]``.

    ``DC_c ∝ S_c / (n_c + extra)`` with ``S_c`` = :func:`frequency_spread` and ``n_c`` the class
    frequency (training images that contain class ``c``). ``extra`` counts the samples image-bank
    re-sampling adds per class (SFC's code uses ``660 * 4 * 3 / 20 = 396`` for VOC). The result is
    U-shaped in ``n_c``: the head class (large spread, over-activated) and the tail classes (large
    spread over a small count, under-activated) get the largest weights. Denominators are clamped to
    at least 1 so a class absent from the training set gets a finite weight. All spreads zero (every
    class equally frequent) gives uniform weights.
    """
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D tensor, got shape {tuple(counts.shape)}")
    n = counts.double()
    if (n < 0).any() or extra < 0:
        raise ValueError("class counts and the extra count must be non-negative")
    raw = frequency_spread(n) / (n + float(extra)).clamp_min(1.0)
    if raw.sum() <= 0:
        return torch.ones_like(n, dtype=torch.float32)
    return (raw / raw.mean()).float()


def weighted_l1(a: Tensor, b: Tensor, channel_weights: Tensor) -> Tensor:
    """``mean_{b,k,h,w} w_k |a - b|`` for ``[B, K, h, w]`` maps and weights ``[K]`` (a scalar)."""
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    w = channel_weights.to(a.dtype).view(1, -1, 1, 1)
    return ((a - b).abs() * w).mean()


def prototype_consistency_loss(cam_w: Tensor, cam_p: Tensor, channel_weights: Tensor) -> Tensor:
    """``L_P_DW`` (unweighted by its loss weight): ``mean w_k |M_W - M_P / max(M_P)|`` over all channels.

    Args:
        cam_w: ``[B, K, h, w]`` classifier CAM (PCM-refined, background channel included).
        cam_p: ``[B, K, h, w]`` prototype CAM; each channel is divided by its spatial max (+1e-5).
        channel_weights: ``[K]``, 1 for the background and ``DC_c`` for foreground classes.

    Neither side is detached: the classifier and the prototype branch calibrate each other.
    """
    return weighted_l1(cam_w, max_normalize(cam_p), channel_weights)


def scale_consistency_loss(
    cam_full: Tensor, cam_small: Tensor, labels: Tensor, fg_index: Tensor, fg_weights: Tensor
) -> Tensor:
    """``L_W_DW`` (unweighted): ``mean_{b, c in fg, h, w} DC_c |down(M_W(I)) y - M_W(I') y|``.

    Args:
        cam_full: ``[B, K, h, w]`` ``M_W`` of the image; bilinearly resized (``align_corners=True``,
            as SFC) to the grid of ``cam_small``.
        cam_small: ``[B, K, h', w']`` ``M_W`` of the downscaled image.
        labels: ``[B, K]`` channel labels (1 for the background, the tags for foreground classes).
        fg_index: ``[C]`` long, the foreground channels; the mean runs over these only.
        fg_weights: ``[C]`` distribution coefficients.
    """
    down = F.interpolate(cam_full, size=cam_small.shape[-2:], mode="bilinear", align_corners=True)
    y = labels.to(cam_small.dtype)[:, :, None, None]
    diff = (down * y - cam_small * y).abs().index_select(1, fg_index)
    return (diff * fg_weights.to(diff.dtype).view(1, -1, 1, 1)).mean()
