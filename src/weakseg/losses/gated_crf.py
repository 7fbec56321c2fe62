"""Gated CRF loss (Obukhov et al., "Gated CRF Loss for Weakly Supervised Semantic Image Segmentation", 2019).

A Potts pairwise energy restricted to a local window and gated by source/destination masks:

    L = Σ_i m_dst(i) Σ_{j ∈ Ω_r(i), j ≠ i} m_src(j) K_ij (1 - Σ_c p_i^c p_j^c) / denom,
    K_ij = Σ_k weight_k · exp(-½ |x_i - x_j|²/σ_xy,k² - ½ |I_i - I_j|²/σ_rgb,k²),

where ``Ω_r(i)`` is the (2r+1)² square around ``i`` and ``p`` the softmax on the loss grid. This is
the form of the official implementation (github.com/toshas/GatedCRFLoss, ``ModelLossSemsegGatedCRF``
with its Potts shortcut ``Σ K - Σ p·(K p)``; read through public copies of that file), with these facts:

* the window centre is zeroed (``j ≠ i``);
* positions are pixel indices of the prediction grid, so ``σ_xy`` (default 6) is in loss-grid pixels;
  image modalities are area-resized (adaptive average pooling) to that grid;
* ``m_src`` multiplies the kernel at the neighbour ``j``, ``m_dst`` at the centre ``i``; masks are
  area-resized to the grid and every value below 1 is set to 0 (grid cells touching padding drop out);
* ``denom`` is the number of grid pixels in the batch, replaced by ``Σ m_src`` when a source mask is
  given and by ``Σ m_dst`` when a destination mask is given (clamped to ≥ 1).

One deliberate difference: neighbours outside the image are excluded. The official code unfolds
zero-padded features, so without a source mask its ``Σ K`` also counts kernel values between border
pixels and the zero padding; that term does not depend on the prediction (same gradient), and it
vanishes when a source mask is passed, as the official training script always does (``validity``).

Default kernel ``{weight 1, xy 6, rgb 0.1}``, radius 5, loss weight 0.1 (the official defaults, also
WSL4MIS's ACDC setting). The ``rgb`` bandwidth is in the units of the image tensor passed in: the
official VOC code feeds RGB normalised by the ImageNet std (so 0.1 std), WSL4MIS feeds ACDC slices
rescaled to [0, 1] (so 0.1 of the intensity range).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.ops.pairwise_kernel import gaussian_affinity_apply
from weakseg.ops.resize import resize_gate

__all__ = ["GatedCRFKernel", "gated_crf_loss"]


@dataclass(frozen=True)
class GatedCRFKernel:
    """One Gaussian of the Gated CRF kernel: ``weight · exp(-½|Δxy|²/xy² - ½|ΔI|²/rgb²)``.

    ``xy``: spatial bandwidth in loss-grid pixels (None = no spatial term); ``rgb``: bandwidth of the
    image channels in the image tensor's units (None = no image term, an XY-only kernel).
    """

    weight: float = 1.0
    xy: float | None = 6.0
    rgb: float | None = 0.1

    def __post_init__(self) -> None:
        if self.xy is None and self.rgb is None:
            raise ValueError("a Gated CRF kernel needs an 'xy' and/or an 'rgb' bandwidth")
        for name in ("xy", "rgb"):
            sigma = getattr(self, name)
            if sigma is not None and sigma <= 0:
                raise ValueError(f"Gated CRF kernel bandwidth '{name}' must be positive, got {sigma}")


def _as_kernel(spec: GatedCRFKernel | Mapping) -> GatedCRFKernel:
    return spec if isinstance(spec, GatedCRFKernel) else GatedCRFKernel(**dict(spec))


def _kernel_features(kernel: GatedCRFKernel, image: Tensor, batch: int, size: tuple[int, int]) -> Tensor:
    """[B, D, h, w] features of one kernel: grid positions / σ_xy and image / σ_rgb."""
    parts = []
    if kernel.xy is not None:
        h, w = size
        ys = torch.arange(h, device=image.device, dtype=torch.float32)
        xs = torch.arange(w, device=image.device, dtype=torch.float32)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        parts.append(torch.stack([grid_x, grid_y]).unsqueeze(0).expand(batch, 2, h, w) / kernel.xy)
    if kernel.rgb is not None:
        parts.append(image / kernel.rgb)
    return torch.cat(parts, dim=1)


def gated_crf_loss(
    probs: Tensor,
    image: Tensor,
    kernels: Sequence[GatedCRFKernel | Mapping] = (GatedCRFKernel(),),
    radius: int = 5,
    mask_src: Tensor | None = None,
    mask_dst: Tensor | None = None,
) -> Tensor:
    """Gated CRF loss (unweighted; see the module doc for the formula).

    Args:
        probs: [B, K, h, w] class probabilities on the loss grid.
        image: [B, C, H, W] image modality (any channel count, e.g. RGB or one grey channel) in the
            units the ``rgb`` bandwidths refer to; area-resized to ``h × w`` when larger.
        kernels: :class:`GatedCRFKernel` s or mappings with the same keys (``weight``, ``xy``, ``rgb``).
        radius: half-size of the square window (official default 5).
        mask_src, mask_dst: [B, H, W] (or [B, h, w]) bool/float gates of the neighbour and the centre;
            ``None`` = no gate.

    Returns:
        Scalar fp32 tensor, differentiable with respect to ``probs``.
    """
    if probs.dim() != 4 or image.dim() != 4 or image.shape[0] != probs.shape[0]:
        raise ValueError(f"probs {tuple(probs.shape)} and image {tuple(image.shape)} must be NCHW batches")
    if not kernels:
        raise ValueError("gated_crf_loss needs at least one kernel")
    b, _, h, w = probs.shape
    size = (h, w)
    p = probs.float()
    img = image.float()
    if img.shape[-2:] != size:
        img = F.adaptive_avg_pool2d(img, size)
    src = resize_gate(mask_src, size) if mask_src is not None else None
    dst = resize_gate(mask_dst, size) if mask_dst is not None else None

    # values [p·m_src, m_src]: one kernel pass gives Σ_j K_ij m_j p_j and Σ_j K_ij m_j
    gate = src.unsqueeze(1) if src is not None else torch.ones_like(p[:, :1])
    values = torch.cat([p * gate, gate], dim=1)
    sums = None
    for spec in kernels:
        kernel = _as_kernel(spec)
        feats = _kernel_features(kernel, img, b, size)
        out = gaussian_affinity_apply(feats, values, None, mode="local", radius=radius, include_self=False)
        sums = kernel.weight * out if sums is None else sums + kernel.weight * out
    assert sums is not None
    per_pixel = sums[:, -1] - (p * sums[:, :-1]).sum(1)  # Σ_j K_ij m_j (1 - p_i·p_j): [B, h, w]
    if dst is not None:
        per_pixel = per_pixel * dst
        denom = dst.sum().clamp_min(1.0)
    elif src is not None:
        denom = src.sum().clamp_min(1.0)
    else:
        denom = per_pixel.new_tensor(float(b * h * w))
    return per_pixel.sum() / denom
