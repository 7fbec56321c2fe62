"""Gated CRF loss (Obukhov et al. 2019) against an unfold-based brute force of the official formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weakseg.losses.gated_crf import GatedCRFKernel, gated_crf_loss


def _unfold(x: torch.Tensor, radius: int) -> torch.Tensor:
    n, c, h, w = x.shape
    d = 2 * radius + 1
    return F.unfold(x, d, padding=radius).view(n, c, d * d, h, w)


def _reference(probs, image, kernels, radius, mask_src=None, mask_dst=None):
    """Σ_i m_dst(i) Σ_{j∈window, j≠i, j in image} m_src(j) K_ij (1 - p_i·p_j) / denom, float64, via unfold."""
    n, c, h, w = probs.shape
    p = probs.double()
    img = F.adaptive_avg_pool2d(image.double(), (h, w))
    ys, xs = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    mesh = torch.stack([xs, ys])[None].expand(n, 2, h, w)
    centre = (2 * radius + 1) ** 2 // 2
    inside = _unfold(torch.ones(n, 1, h, w, dtype=torch.float64), radius)  # 0 for neighbours off the image
    total = 0.0
    for k in kernels:
        parts = ([mesh / k.xy] if k.xy else []) + ([img / k.rgb] if k.rgb else [])
        f = torch.cat(parts, 1)
        diff = _unfold(f, radius) - f.unsqueeze(2)
        kern = torch.exp(-0.5 * diff.pow(2).sum(1, keepdim=True)) * inside
        kern[:, :, centre] = 0
        total = total + k.weight * kern
    denom = float(n * h * w)
    if mask_src is not None:
        total = total * _unfold(mask_src[:, None].double(), radius)
        denom = mask_src.sum().item()
    if mask_dst is not None:
        total = total * mask_dst[:, None, None].double()
        denom = mask_dst.sum().item()
    potts = total.sum() - (p * (total * _unfold(p, radius)).sum(2)).sum()
    return potts / denom


KERNELS = [GatedCRFKernel(weight=0.9, xy=2.0, rgb=0.3), GatedCRFKernel(weight=0.1, xy=3.0, rgb=None)]


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 10, 9, generator=gen)
    image = torch.rand(2, 3, 10, 9, generator=gen)
    valid = torch.ones(2, 10, 9, dtype=torch.bool)
    valid[1, -4:] = False
    return logits, image, valid


@pytest.mark.parametrize("masks", ["none", "src", "both"])
def test_matches_brute_force_value_and_gradient(masks: str) -> None:
    logits, image, valid = _batch()
    src = valid.float() if masks in ("src", "both") else None
    dst = valid.float() if masks == "both" else None
    x64 = logits.double().requires_grad_()
    ref = _reference(x64.softmax(1), image, KERNELS, 2, src, dst)
    (ref_grad,) = torch.autograd.grad(ref, x64)
    x = logits.clone().requires_grad_()
    loss = gated_crf_loss(x.softmax(1), image, KERNELS, radius=2, mask_src=src, mask_dst=dst)
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert ((grad.double() - ref_grad).abs().max() / ref_grad.abs().max()).item() < 1e-5


def test_hand_computed_two_pixels() -> None:
    # two neighbours one pixel apart, XY kernel σ = 1: K = exp(-1/2); p = [1, 0] and [0.5, 0.5]
    probs = torch.tensor([[[[1.0, 0.5]], [[0.0, 0.5]]]])
    loss = gated_crf_loss(probs, torch.zeros(1, 1, 1, 2), [{"weight": 1.0, "xy": 1.0, "rgb": None}], radius=1)
    # each pixel: K (1 - 0.5); mean over the 2 pixels
    assert loss.item() == pytest.approx(math.exp(-0.5) * 0.5)


def test_zero_for_prediction_constant_on_regions_with_non_crossing_kernels() -> None:
    image = torch.zeros(1, 1, 8, 8)
    image[..., 4:] = 1.0
    labels = (image[:, 0] > 0.5).long()
    probs = F.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    kernels = [GatedCRFKernel(weight=1.0, xy=6.0, rgb=0.01)]  # exp(-½·100²) = 0 across the edge
    assert gated_crf_loss(probs, image, kernels, radius=3).item() == 0.0
    shifted = torch.roll(probs, 1, dims=-1)  # boundary one pixel off the edge
    assert gated_crf_loss(shifted, image, kernels, radius=3).item() > 0.1


def test_gates_remove_padding() -> None:
    logits, image, _ = _batch(seed=1)
    probs = logits.softmax(1)[:1]
    img = image[:1]
    plain = gated_crf_loss(probs, img, KERNELS, radius=2)
    pad_probs = torch.cat([probs, torch.rand(1, 3, 10, 5)], dim=-1)
    pad_img = torch.cat([img, torch.rand(1, 3, 10, 5)], dim=-1)
    valid = torch.zeros(1, 10, 14)
    valid[..., :9] = 1.0
    gated = gated_crf_loss(pad_probs, pad_img, KERNELS, radius=2, mask_src=valid, mask_dst=valid)
    assert gated.item() == pytest.approx(plain.item(), rel=1e-6)


def test_image_and_masks_are_area_resized_to_the_loss_grid() -> None:
    logits, image, valid = _batch(seed=2)
    probs = logits.softmax(1)[..., :5, :4]  # loss grid 5×4 for 10×8 inputs
    img, mask = image[..., :10, :8], valid[..., :10, :8].float()
    mask[0, 0, 0] = 0.0  # grid cell (0, 0) of image 0 is partly padding: it must drop out entirely
    loss = gated_crf_loss(probs, img, KERNELS, radius=1, mask_src=mask, mask_dst=mask)
    small_img = F.adaptive_avg_pool2d(img, (5, 4))
    small_mask = F.adaptive_avg_pool2d(mask[:, None], (5, 4))[:, 0]
    small_mask = torch.where(small_mask < 1, 0.0, small_mask)
    assert small_mask[0, 0, 0] == 0
    ref = _reference(probs, small_img, KERNELS, 1, small_mask, small_mask)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_rejects_kernels_without_bandwidths() -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        GatedCRFKernel(weight=1.0, xy=None, rgb=None)
    with pytest.raises(ValueError, match="positive"):
        GatedCRFKernel(xy=-1.0)
