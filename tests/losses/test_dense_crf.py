"""Dense CRF loss (Tang et al. 2018) against a brute-force N×N evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.losses.dense_crf import dense_crf_loss


def _brute_force(probs, image, roi, sigma_rgb, sigma_xy, scale, weight):
    """weight · Σ_k Σ_ij r_i r_j S_ik W_ij (1 - S_jk) / B in float64, resizing as rloss does."""
    if scale != 1.0:
        probs = F.interpolate(probs, scale_factor=scale, mode="bilinear", align_corners=False)
        image = F.interpolate(image, scale_factor=scale, mode="nearest")
        roi = F.interpolate(roi[:, None].float(), scale_factor=scale, mode="nearest")[:, 0]
    b, k, h, w = probs.shape
    ys, xs = torch.meshgrid(torch.arange(h) / scale, torch.arange(w) / scale, indexing="ij")
    pos = torch.stack([xs, ys]).flatten(1).T.double()  # [N, 2] in original pixels
    total = 0.0
    for n in range(b):
        col = image[n].flatten(1).T.double()
        dist_xy = (pos[:, None] - pos[None]).pow(2).sum(-1) / sigma_xy**2
        dist_rgb = (col[:, None] - col[None]).pow(2).sum(-1) / sigma_rgb**2
        dist = dist_xy + dist_rgb
        kernel = torch.exp(-0.5 * dist)
        r = roi[n].flatten().double()
        kernel = kernel * r[:, None] * r[None]
        s = probs[n].flatten(1).T.double()  # [N, K]
        total = total + (s * (kernel @ (1 - s))).sum()
    return weight * total / b


def _batch(seed=0, b=2, k=3, h=12, w=10):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=gen)
    image = torch.rand(b, 3, h, w, generator=gen) * 255
    roi = torch.ones(b, h, w, dtype=torch.bool)
    roi[-1, :, -3:] = False  # crop padding on the right of the last image
    return logits, image, roi


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_equals_brute_force_value_and_gradient(scale: float) -> None:
    logits, image, roi = _batch()
    logits64 = logits.double().requires_grad_()
    ref = _brute_force(logits64.softmax(1), image, roi, 40.0, 5.0, scale, 1e-3)
    (ref_grad,) = torch.autograd.grad(ref, logits64)
    logits32 = logits.clone().requires_grad_()
    loss = dense_crf_loss(
        logits32.softmax(1), image, roi, sigma_rgb=40.0, sigma_xy=5.0, scale=scale, weight=1e-3
    )
    (grad,) = torch.autograd.grad(loss, logits32)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert ((grad.double() - ref_grad).abs().max() / ref_grad.abs().max()).item() < 1e-4


def test_trains_like_the_reference_form() -> None:
    # rloss returns -w·Σ_k (rS_k)ᵀ W (rS_k) / B; the Potts form differs by a constant whose gradient the
    # softmax cancels, so the gradients with respect to the logits coincide.
    logits, image, roi = _batch(seed=1)
    x = logits.double().requires_grad_()
    s = x.softmax(1)
    b, k, h, w = s.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([xs, ys]).flatten(1).T.double()
    reference = 0.0
    for n in range(b):
        col = image[n].flatten(1).T.double()
        dist = (pos[:, None] - pos[None]).pow(2).sum(-1) / 25.0 + (col[:, None] - col[None]).pow(2).sum(
            -1
        ) / 1600.0
        rs = s[n].flatten(1).T * roi[n].flatten()[:, None]
        reference = reference - (rs * (torch.exp(-0.5 * dist) @ rs)).sum()
    (ref_grad,) = torch.autograd.grad(1e-3 * reference / b, x)
    x32 = logits.clone().requires_grad_()
    (grad,) = torch.autograd.grad(dense_crf_loss(x32.softmax(1), image, roi, 40.0, 5.0, 1.0, 1e-3), x32)
    assert ((grad.double() - ref_grad).abs().max() / ref_grad.abs().max()).item() < 1e-4


def test_zero_for_one_hot_prediction_constant_on_colour_regions() -> None:
    # two colour regions; σ_rgb = 1 makes every cross-region weight exp(-255²/2) = 0
    h, w = 8, 10
    image = torch.zeros(1, 3, h, w)
    image[:, 0, :, :5] = 255.0
    image[:, 2, :, 5:] = 255.0
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[:, :, 5:] = 1
    probs = F.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    assert dense_crf_loss(probs, image, sigma_rgb=1.0, sigma_xy=50.0, scale=1.0, weight=1.0).item() == 0.0
    # a prediction that cuts a colour region pays
    wrong = probs.clone()
    wrong[:, :, :4] = wrong[:, :, :4].flip(1)
    assert dense_crf_loss(wrong, image, sigma_rgb=1.0, sigma_xy=50.0, scale=1.0, weight=1.0).item() > 1.0


def test_roi_removes_padding() -> None:
    logits, image, _ = _batch(seed=2, b=1, h=10, w=8)
    probs = logits.softmax(1)
    padded_probs = torch.cat([probs, torch.rand(1, 3, 10, 4)], dim=-1)
    padded_image = torch.cat([image, torch.rand(1, 3, 10, 4) * 255], dim=-1)
    roi = torch.zeros(1, 10, 12, dtype=torch.bool)
    roi[..., :8] = True
    plain = dense_crf_loss(probs, image, None, 30.0, 6.0, 1.0, 1.0)
    masked = dense_crf_loss(padded_probs, padded_image, roi, 30.0, 6.0, 1.0, 1.0)
    assert masked.item() == pytest.approx(plain.item(), rel=1e-5)


def test_pixel_normalisation_is_the_batch_sum_over_the_roi_size() -> None:
    logits, image, roi = _batch(seed=3)
    probs = logits.softmax(1)
    per_batch = dense_crf_loss(probs, image, roi, scale=0.5, weight=1.0)
    per_pixel = dense_crf_loss(probs, image, roi, scale=0.5, weight=1.0, normalization="pixels")
    grid_roi = F.interpolate(roi[:, None].float(), scale_factor=0.5, mode="nearest")
    assert per_pixel.item() == pytest.approx(per_batch.item() * 2 / grid_roi.sum().item(), rel=1e-6)
    with pytest.raises(ValueError, match="normalization"):
        dense_crf_loss(probs, image, roi, normalization="mean")


# --------------------------------------------------------------------------------------------------
# backend="lattice": the permutohedral lattice of the reference implementation
# --------------------------------------------------------------------------------------------------
def _natural_batch(seed: int, h: int = 96, w: int = 128):
    """Smooth colours with pixel noise, and smooth logits: a stand-in for a photo and a prediction."""
    gen = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 4, 5, generator=gen) * 255, size=(h, w), mode="bilinear")
    image = (base + 8 * torch.randn(1, 3, h, w, generator=gen)).clamp(0, 255)
    logits = F.interpolate(torch.randn(1, 4, 6, 8, generator=gen) * 3, size=(h, w), mode="bilinear")
    return logits, image


def _value_and_grad(logits, image, roi=None, **kw):
    x = logits.clone().requires_grad_()
    loss = dense_crf_loss(x.softmax(1), image, roi, weight=1.0, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.item(), grad


@pytest.mark.parametrize("seed", [0, 1])
def test_lattice_backend_value_and_gradient_within_the_stated_tolerance(seed: int) -> None:
    """rloss's setting (σ_rgb 15, σ_xy 100, scale 0.5): the lattice's energy is a fraction of the exact
    one (its kernel sums are, docs/lattice.md; 0.59 on CamVid photos), with the same gradient direction."""
    logits, image = _natural_batch(seed)
    roi = torch.ones(1, 96, 128, dtype=torch.bool)
    roi[..., -10:] = False
    exact, exact_grad = _value_and_grad(logits, image, roi, backend="exact")
    lattice, lattice_grad = _value_and_grad(logits, image, roi, backend="lattice")
    assert 0.4 <= lattice / exact <= 0.75
    cosine = F.cosine_similarity(lattice_grad.flatten(), exact_grad.flatten(), dim=0).item()
    assert cosine >= 0.97
    assert lattice_grad[..., -10:].abs().max().item() < 1e-3 * lattice_grad.abs().max().item()


def test_lattice_backend_is_the_potts_energy_of_the_lattice_filter() -> None:
    """E = Σ_k S_kᵀ L (1 - S_k) with L the lattice filter, and autograd's gradient through L's adjoint."""
    from weakseg.ops import PermutohedralLattice
    from weakseg.ops.pairwise_kernel import kernel_features_rgbxy

    logits, image = _natural_batch(2, h=48, w=64)
    value, grad = _value_and_grad(logits, image, scale=1.0, backend="lattice")
    x = logits.double().requires_grad_()
    s = x.softmax(1)
    lattice = PermutohedralLattice(kernel_features_rgbxy(image, 15.0, 100.0))
    n = 48 * 64
    matrix = lattice.filter(torch.eye(n).reshape(1, n, 48, 64))[0].reshape(n, n).T.double()  # A[i, j]
    flat = s[0].reshape(4, n)
    energy = (flat * ((1 - flat) @ matrix.T)).sum()
    (ref_grad,) = torch.autograd.grad(energy, x)
    assert value == pytest.approx(energy.item(), rel=1e-5)
    assert ((grad.double() - ref_grad).abs().max() / ref_grad.abs().max()).item() < 1e-4


@pytest.mark.shared_data
@pytest.mark.slow
def test_lattice_backend_on_a_camvid_photo_at_rloss_setting(shared_data) -> None:
    import numpy as np

    from weakseg.io import read_image

    root = shared_data / "camvid"
    sample = (root / "splits" / "val.txt").read_text().split()[0]
    photo = torch.from_numpy(np.array(read_image(root / "images" / f"{sample}.jpg"))).permute(2, 0, 1)
    image = F.interpolate(photo[None].float(), size=(256, 256), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(0)
    logits = F.interpolate(torch.randn(1, 4, 8, 8, generator=gen) * 3, size=(256, 256), mode="bilinear")
    exact, exact_grad = _value_and_grad(logits, image, backend="exact")
    lattice, lattice_grad = _value_and_grad(logits, image, backend="lattice")
    cosine = F.cosine_similarity(lattice_grad.flatten(), exact_grad.flatten(), dim=0).item()
    print(f"CamVid {sample} 256², rloss setting: energy ratio {lattice / exact:.3f}, grad cos {cosine:.4f}")
    assert 0.5 <= lattice / exact <= 0.7
    assert cosine >= 0.98
