"""Operators on class activation maps (CAMs): channel layout, max normalisation, PCM and prototypes.

Shared by the CAM classifier and the single-stage network (:mod:`weakseg.models`), the image-level
methods (``cam``, ``sfc``, ``aal``), the CAM pipeline (:mod:`weakseg.cam`) and SFC's consistency losses.

Channel layout: a dataset has ``K`` classes, one of which may be the background; a network's raw CAMs
have one channel per *foreground* class (``C = K - 1``, or ``C = K`` without a background), in dataset
order (:func:`foreground_indices`). Maps over all ``K`` classes carry a background channel of their own
(:func:`insert_background`, e.g. SFC's ``1 - max_c M_c``, :func:`background_from_foreground`).

SFC's refinement (Zhao et al., AAAI 2024; formulas as the authors' code, github.com/Barrett-python/SFC):

* ``M_W``: the classifier-weight CAM with a background channel, refined by the pixel correlation module
  (:func:`pcm_propagate`);
* ``M_P``: the prototype CAM, ``ReLU(cos(feature, P_c))`` with per-image class prototypes ``P_c`` pooled
  under seeds taken from ``M_W`` (:func:`seed_masks`, :func:`class_prototypes`, :func:`prototype_cam`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "background_from_foreground",
    "class_prototypes",
    "foreground_indices",
    "insert_background",
    "max_normalize",
    "pcm_affinity",
    "pcm_propagate",
    "prototype_cam",
    "seed_masks",
]


def foreground_indices(num_classes: int, background: int | None) -> list[int]:
    """The class indices other than ``background`` (all of them when it is None), in order: the dataset
    class of each CAM channel."""
    if background is not None and not 0 <= background < num_classes:
        raise ValueError(f"background index {background} is outside 0..{num_classes - 1}")
    return [c for c in range(num_classes) if c != background]


def insert_background(fg: Tensor, bg: Tensor, background: int) -> Tensor:
    """Place the channel ``bg`` ``[B, 1, ...]`` at index ``background`` among ``fg`` ``[B, C, ...]``.

    Returns ``[B, C + 1, ...]``, the layout of the dataset's class indices.
    """
    return torch.cat([fg[:, :background], bg.to(fg.dtype), fg[:, background:]], dim=1)


def max_normalize(maps: Tensor, eps: float = 1e-5) -> Tensor:
    """Divide every channel of ``[..., h, w]`` maps by its spatial maximum + ``eps``.

    ``maps / (max_{h, w} maps + eps)`` as IRN/SIPE/SFC do (``eps`` keeps all-zero channels at 0); the
    last step of CAM inference, so non-negative maps lie in [0, 1].
    """
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + eps)


def background_from_foreground(normalized_fg: Tensor) -> Tensor:
    """SIPE/SFC background score ``1 - max_c M_c``: ``[B, C, h, w]`` (max-normalised) -> ``[B, 1, h, w]``."""
    return 1.0 - normalized_fg.amax(dim=1, keepdim=True)


def pcm_affinity(embedding: Tensor, eps: float = 1e-5) -> Tensor:
    """The PCM's affinity ``[B, N, N]`` (``N = h w``) of ``[B, D, h, w]`` pixel features.

    With ``f_i`` the per-pixel L2-normalised ``embedding`` (``f / (|f| + eps)``), ``A_ij = ReLU(f_i . f_j)``,
    each column normalised to sum 1 (``A_ij / (sum_i A_ij + eps)``). Differentiable.
    """
    f = embedding.flatten(2)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    affinity = F.relu(torch.bmm(f.transpose(1, 2), f))
    return affinity / (affinity.sum(dim=1, keepdim=True) + eps)


def pcm_propagate(cam: Tensor, embedding: Tensor, iterations: int = 2, eps: float = 1e-5) -> Tensor:
    """Pixel correlation module (SEAM's PCM as SFC uses it): propagate ``cam`` along feature affinities.

    The map is multiplied ``iterations`` times by :func:`pcm_affinity` ``A``: ``M <- M A`` (``M`` as
    ``[K, N]``, ``N = h w``), i.e. ``M'_kj = sum_i M_ki A_ij``. Differentiable in both arguments.

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
    affinity = pcm_affinity(embedding, eps)
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
