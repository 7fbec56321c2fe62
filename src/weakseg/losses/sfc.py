"""Shared Feature Calibration (SFC; Zhao et al., AAAI 2024): the maths of its CAMs and losses.

Notation (``K`` channels = background + foreground classes, ``C`` foreground classes, maps on the
CAM grid ``h x w``):

* ``M_W``: the classifier-weight CAM with a background channel, refined by the pixel correlation
  module (:func:`pcm_propagate`).
* ``M_P``: the prototype CAM, ``ReLU(cos(feature, P_c))`` with per-image class prototypes ``P_c``
  pooled under seeds taken from ``M_W`` (:func:`seed_masks`, :func:`class_prototypes`,
  :func:`prototype_cam`).
* MSDW loss = ``L_P_DW`` (:func:`prototype_consistency_loss`, ``M_W`` vs ``M_P / max``) +
  ``L_W_DW`` (:func:`scale_consistency_loss`, ``M_W(I)`` downscaled vs ``M_W(I x 0.5)``), both
  L1 distances re-weighted per class by the distribution coefficients
  (:func:`distribution_coefficients`).

Every formula follows the authors' code (github.com/Barrett-python/SFC, ``network/resnet50_SFC.py``
and ``train_resnet50_SFC.py``); ``docs``-level notes are in ``shared/methods/SFC.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "background_from_foreground",
    "class_prototypes",
    "distribution_coefficients",
    "frequency_spread",
    "max_normalize",
    "pcm_propagate",
    "prototype_cam",
    "prototype_consistency_loss",
    "scale_consistency_loss",
    "seed_masks",
    "weighted_l1",
]


def max_normalize(maps: Tensor, eps: float = 1e-5) -> Tensor:
    """Divide every channel by its spatial maximum: ``[B, C, h, w] -> [B, C, h, w]``.

    ``maps / (max_{h, w} maps + eps)`` as IRN/SIPE/SFC do (``eps`` keeps all-zero channels at 0).
    """
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + eps)


def background_from_foreground(normalized_fg: Tensor) -> Tensor:
    """SIPE/SFC background score ``1 - max_c M_c``: ``[B, C, h, w]`` (max-normalised) -> ``[B, 1, h, w]``."""
    return 1.0 - normalized_fg.amax(dim=1, keepdim=True)


def pcm_propagate(cam: Tensor, embedding: Tensor, iterations: int = 2, eps: float = 1e-5) -> Tensor:
    """Pixel correlation module (SEAM's PCM as SFC uses it): propagate ``cam`` along feature affinities.

    With ``f_i`` the per-pixel L2-normalised ``embedding`` (``f / (|f| + eps)``), the affinity is
    ``A_ij = ReLU(f_i . f_j)``, each column normalised to sum 1 (``A_ij / (sum_i A_ij + eps)``), and
    the map is multiplied by it ``iterations`` times: ``M <- M A`` (``M`` as ``[K, N]``, ``N = h w``),
    i.e. ``M'_kj = sum_i M_ki A_ij``. Differentiable in both arguments.

    Args:
        cam: ``[B, K, h, w]`` maps to refine.
        embedding: ``[B, D, h, w]`` pixel features on the same grid.

    Returns:
        ``[B, K, h, w]``. Memory is ``B N^2`` (fine at stride 16: N = 1024 for a 512 crop).
    """
    if cam.shape[0] != embedding.shape[0] or cam.shape[-2:] != embedding.shape[-2:]:
        raise ValueError(
            f"cam {tuple(cam.shape)} and embedding {tuple(embedding.shape)} must share batch and grid"
        )
    b, k, h, w = cam.shape
    f = embedding.flatten(2)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    affinity = F.relu(torch.bmm(f.transpose(1, 2), f))
    affinity = affinity / (affinity.sum(dim=1, keepdim=True) + eps)
    out = cam.reshape(b, k, h * w)
    for _ in range(iterations):
        out = torch.bmm(out, affinity)
    return out.view(b, k, h, w)


@torch.no_grad()
def seed_masks(cam: Tensor, region: Tensor, background: int | None, bg_scale: float = 0.3) -> Tensor:
    """Confident one-hot seeds for the prototypes: ``[B, K, h, w]`` float in {0, 1}, no gradient.

    The background channel (index ``background``; None: no background) is multiplied by ``bg_scale``
    (0.3 in SFC, so foreground wins wherever it is moderately active), every pixel takes the arg-max
    channel, and the one-hot map is multiplied by ``region`` (``[B, K, h, w]`` or broadcastable;
    SFC's valid mask: 1 inside the crop, and for foreground channels only where the class is tagged).
    """
    scores = cam.detach().float().clone()
    if background is not None:
        scores[:, background] *= bg_scale
    onehot = F.one_hot(scores.argmax(dim=1), cam.shape[1]).permute(0, 3, 1, 2).to(scores.dtype)
    return onehot * region.to(scores.dtype)


def class_prototypes(seeds: Tensor, features: Tensor) -> Tensor:
    """Per-image class prototypes ``P_bk = 1/(h w) sum_{ij} seed_bkij feature_bij``: ``[B, K, D]``.

    SFC divides by the grid area, not by the seed area; the prototypes only enter a cosine, which is
    scale-invariant, so both give the same prototype CAM. A class without seed pixels gets 0.
    """
    if seeds.shape[-2:] != features.shape[-2:]:
        seeds = F.interpolate(seeds, size=features.shape[-2:], mode="nearest")
    h, w = features.shape[-2:]
    return torch.einsum("bkhw,bdhw->bkd", seeds.to(features.dtype), features) / float(h * w)


def prototype_cam(features: Tensor, prototypes: Tensor, eps: float = 1e-8) -> Tensor:
    """Prototype CAM ``M_P = ReLU(cos(f_ij, P_k))``: ``[B, D, h, w]``, ``[B, K, D]`` -> ``[B, K, h, w]``.

    Both vectors are divided by ``max(|v|, eps)`` (as :func:`torch.cosine_similarity` clamps), so a zero
    prototype (absent class) gives 0. Computed as one batched product, without the ``[B, K, D, h, w]``
    broadcast of the reference.
    """
    f = features / features.norm(dim=1, keepdim=True).clamp_min(eps)
    p = prototypes / prototypes.norm(dim=2, keepdim=True).clamp_min(eps)
    return F.relu(torch.einsum("bdhw,bkd->bkhw", f, p))


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
