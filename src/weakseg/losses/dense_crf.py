"""Dense CRF loss of Tang et al., "On Regularized Losses for Weakly-supervised CNN Segmentation" (ECCV 2018).

The loss is the relaxed Potts energy of the soft segmentation ``S`` under the fully connected
bilateral kernel ``W_ij = exp(-|p_i - p_j|²/(2σ_xy²) - |I_i - I_j|²/(2σ_rgb²))``:

    E(S) = Σ_k S_kᵀ W (1 - S_k)  =  Σ_k S_kᵀ W 1  -  Σ_k S_kᵀ W S_k.

The reference implementation (meng-tang/rloss, ``pytorch-deeplab_v3_plus/DenseCRFLoss.py``) returns
``-weight · Σ_k S_kᵀ W S_k / B`` (B = images in the batch) and back-propagates ``-2·weight·W S / B``:
both drop the first term. With a softmax ``S`` (``Σ_k S_k = 1`` on the ROI) the first term equals
``roiᵀ W roi``, a constant, and its gradient ``W·roi`` is the same for every class, which the softmax
Jacobian cancels, so :func:`dense_crf_loss` trains exactly like the reference while keeping the Potts
form, which is ≥ 0 and is 0 for a prediction that is one-hot and constant across every non-zero
kernel link. Details that follow the reference:

* ``W`` includes the diagonal (``w_ii = 1``; the permutohedral filter the reference calls includes
  the centre pixel), so soft predictions also pay ``Σ_i (1 - Σ_k S_ik²)``.
* For speed the loss runs on a grid downscaled by ``scale`` (0.5): probabilities bilinearly,
  the image and the ROI by nearest neighbour (``F.interpolate``'s default, as the reference), with
  positions in pixels of the original image (σ_xy keeps its meaning; the reference divides grid
  indices by ``σ_xy·scale``, the same thing).
* The ROI (crop padding excluded) multiplies ``S`` on both sides of ``W``.
* ``weight`` = 2e-9 multiplies the sum over the batch divided by the number of images.

``backend`` chooses how ``W`` is applied (:mod:`weakseg.ops.pairwise_kernel`): ``"exact"`` (default) or
``"lattice"``, the permutohedral lattice of the reference implementation itself (linear in the number of
pixels; at the reference's setting on natural images its kernel sums, hence the loss, are ≈ 0.59× the
exact ones, the gradient direction agrees to cosine ≥ 0.99: docs/lattice.md), or ``"auto"``. Because the
scale differs, ``"auto"`` (which picks by grid size) changes the effective weight when it switches.

``normalization="pixels"`` divides by the number of ROI pixels on the loss grid instead, making the
weight independent of the crop size: a per-image sum over ``P`` grid pixels with weight ``w`` equals
a per-pixel mean with weight ``w·P``. For rloss's VOC setting (513 crops at scale 0.5, P = 257² =
66,049) 2e-9 corresponds to 1.3e-4; for a 465 crop (P = 233² = 54,289) to 1.1e-4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.ops.pairwise_kernel import gaussian_affinity_apply, kernel_features_rgbxy

__all__ = ["dense_crf_loss", "downscale_for_crf"]

_NORMALIZATIONS = ("batch", "pixels")


def downscale_for_crf(
    probs: Tensor, image_rgb255: Tensor, roi: Tensor | None, scale: float
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Resize to the loss grid as the reference does: probabilities bilinear, image and ROI nearest.

    Args:
        probs: [B, K, H, W]; image_rgb255: [B, 3, H, W]; roi: [B, H, W] or None.
        scale: the factor (1 keeps the inputs unchanged).

    Returns:
        The three tensors on the ``⌊H·scale⌋ × ⌊W·scale⌋`` grid (roi as float 0/1).
    """
    if scale == 1.0:
        return probs, image_rgb255, None if roi is None else roi.float()
    small_probs = F.interpolate(probs, scale_factor=scale, mode="bilinear", align_corners=False)
    small_image = F.interpolate(image_rgb255.float(), scale_factor=scale, mode="nearest")
    small_roi = None
    if roi is not None:
        small_roi = F.interpolate(roi[:, None].float(), scale_factor=scale, mode="nearest")[:, 0]
    return small_probs, small_image, small_roi


def dense_crf_loss(
    probs: Tensor,
    image_rgb255: Tensor,
    roi: Tensor | None = None,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    scale: float = 0.5,
    weight: float = 2e-9,
    normalization: str = "batch",
    backend: str = "exact",
) -> Tensor:
    """Weighted dense CRF (Potts) loss ``weight · Σ_k S_kᵀ W (1 - S_k) / norm`` (see the module doc).

    Args:
        probs: [B, K, H, W] class probabilities (softmax of the logits at the image size).
        image_rgb255: [B, 3, H, W] the image with colours in 0..255.
        roi: [B, H, W] bool, pixels that take part (False on crop padding); None = all.
        sigma_rgb: colour bandwidth (0..255 units); rloss uses 15.
        sigma_xy: spatial bandwidth in original-image pixels; rloss uses 100.
        scale: resolution of the loss grid relative to the input (rloss: 0.5).
        weight: multiplies the loss (rloss: 2e-9 with ``normalization="batch"``).
        normalization: ``"batch"`` divides by the number of images (the reference), ``"pixels"`` by
            the number of ROI pixels on the loss grid.
        backend: ``"exact"``, ``"lattice"`` or ``"auto"`` (see the module docstring).

    Returns:
        Scalar fp32 tensor, differentiable with respect to ``probs``.
    """
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got '{normalization}'")
    if probs.shape[0] != image_rgb255.shape[0] or probs.shape[-2:] != image_rgb255.shape[-2:]:
        raise ValueError(f"probs {tuple(probs.shape)} and image {tuple(image_rgb255.shape)} differ in size")
    small_probs, small_image, small_roi = downscale_for_crf(probs.float(), image_rgb255, roi, scale)
    features = kernel_features_rgbxy(small_image, sigma_rgb, sigma_xy, scale=scale)
    ones = torch.ones_like(small_probs[:, :1])
    # one kernel pass gives both W S_k (per class) and W 1 (the last channel); outputs are ROI-masked
    kernel_sums = gaussian_affinity_apply(
        features,
        torch.cat([small_probs, ones], dim=1),
        small_roi,
        mode="dense",
        include_self=True,
        backend=backend,
    )
    w_s, w_one = kernel_sums[:, :-1], kernel_sums[:, -1:]
    energy = (small_probs * (w_one - w_s)).sum()
    if normalization == "batch":
        denom = float(probs.shape[0])
        return weight * energy / denom
    n_pixels = small_roi.sum() if small_roi is not None else small_probs.new_tensor(small_probs[:, 0].numel())
    return weight * energy / n_pixels.clamp_min(1.0)
