"""DFR's regularized loss against explicit N x N references: values, gradients, kernels, grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.losses.normalized_potts import (
    dfr_regularized_loss,
    normalized_potts_loss,
    rgbxy_features,
    unit_features_on_grid,
)
from weakseg.ops.resize import resize_area, resize_mask, scaled_size


def _naive_potts(features, probs, roi=None, window: int | None = None):
    """``mean_b sum_k S_k^T K (1 - S_k) / 1^T K 1`` with K built explicitly (no self pairs, ROI only)."""
    b, _, h, w = features.shape
    f = features.flatten(2).transpose(1, 2)
    kernel = torch.exp(-0.5 * (f[:, :, None] - f[:, None]).pow(2).sum(-1)) * (1 - torch.eye(h * w))
    if window is not None:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        kernel = kernel * (((ys[:, None] - ys).abs() <= window) & ((xs[:, None] - xs).abs() <= window))
    r = torch.ones(b, h * w) if roi is None else roi.flatten(1).float()
    kernel = kernel * r[:, :, None] * r[:, None, :]
    s = probs.flatten(2).transpose(1, 2)
    energy = torch.einsum("bik,bij,bjk->b", s, kernel, 1 - s)
    return (energy / kernel.sum((1, 2))).mean()


def _inputs(b=2, k=3, h=5, w=6, d=4, seed=0):
    torch.manual_seed(seed)
    features = torch.randn(b, d, h, w)
    logits = torch.randn(b, k, h, w, requires_grad=True)
    roi = torch.rand(b, h, w) > 0.25
    return features, logits, roi


@pytest.mark.parametrize("mode, window", [("dense", None), ("local", 2)])
def test_potts_matches_naive_values_and_gradients(mode, window):
    features, logits, roi = _inputs()
    loss = normalized_potts_loss(features, logits.softmax(1), roi, mode=mode, radius=2)
    (grad,) = torch.autograd.grad(loss, logits)
    reference = _naive_potts(features, logits.softmax(1), roi, window)
    (ref_grad,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-8)


def test_potts_range_and_fixed_points():
    features, logits, _ = _inputs(k=4)
    constant = F.one_hot(torch.full((2, 5, 6), 2), 4).permute(0, 3, 1, 2).float()
    assert normalized_potts_loss(features, constant).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((2, 4, 5, 6), 0.25)
    assert normalized_potts_loss(features, uniform).item() == pytest.approx(0.75, abs=1e-5)  # 1 - 1/K
    assert 0.0 < normalized_potts_loss(features, logits.softmax(1)).item() < 0.75


def test_potts_features_get_no_gradient_and_empty_roi_is_zero():
    features, logits, _ = _inputs()
    features.requires_grad_()
    loss = normalized_potts_loss(features, logits.softmax(1))
    loss.backward()
    assert features.grad is None and logits.grad.abs().sum() > 0
    empty = torch.zeros(2, 5, 6, dtype=torch.bool)
    assert normalized_potts_loss(features, logits.softmax(1), empty).item() == 0.0


def test_potts_is_invariant_to_grid_size_for_a_fixed_layout():
    """Normalised by the kernel mass: the same two-region picture at two resolutions gives similar losses."""
    values = []
    for n in (8, 16):
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        feats = torch.stack([xs, ys]).float()[None] / (n / 4)  # bandwidth = a quarter of the image
        probs = torch.stack([(xs < n // 2).float(), (xs >= n // 2).float()])[None] * 0.8 + 0.1
        values.append(normalized_potts_loss(feats, probs).item())
    assert values[0] == pytest.approx(values[1], rel=0.1)


def test_rgbxy_features_use_original_pixel_units():
    image = torch.rand(1, 3, 8, 12)
    feats = rgbxy_features(image, (4, 6), sigma_rgb=10.0, sigma_xy=4.0)
    assert feats.shape == (1, 5, 4, 6)
    torch.testing.assert_close(feats[0, 0, 0, :3], torch.tensor([0.0, 0.5, 1.0]))  # x = j / 0.5 / sigma_xy
    torch.testing.assert_close(feats[0, 2:], F.avg_pool2d(image, 2)[0] * 255 / 10)


def _reference_terms(probs, image, valid, deep, *, combination, beta, sigma_deep, scale):
    """The same loss assembled by hand from the grid helpers and the naive Potts energy."""
    h, w = image.shape[-2:]
    if combination == "product":
        size = deep.shape[-2:]
        feats = torch.cat([rgbxy_features(image, size, 15.0, 100.0), deep / sigma_deep], 1)
        return {"product": _naive_potts(feats, resize_area(probs, size), resize_mask(valid, size))}
    size = scaled_size((h, w), scale)
    shallow = _naive_potts(
        rgbxy_features(image, size, 15.0, 100.0), resize_area(probs, size), resize_mask(valid, size)
    )
    size = deep.shape[-2:]
    deep_term = _naive_potts(deep / sigma_deep, resize_area(probs, size), resize_mask(valid, size))
    return {"shallow": shallow, "deep": beta * deep_term}


@pytest.mark.parametrize("combination", ["sum", "product"])
def test_regularized_loss_matches_the_hand_assembled_reference(combination):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 16, 16)
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[1, :, 12:] = False  # crop padding
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    deep = F.normalize(torch.randn(2, 6, 4, 4), dim=1).requires_grad_()
    kw = dict(combination=combination, beta=0.7, sigma_deep=0.5)
    got = dfr_regularized_loss(logits.softmax(1), image, valid, deep, shallow_scale=0.5, **kw)
    want = _reference_terms(logits.softmax(1), image, valid, deep.detach(), scale=0.5, **kw)
    assert got.keys() == want.keys()
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    (g1,) = torch.autograd.grad(sum(got.values()), logits)
    (g2,) = torch.autograd.grad(sum(want.values()), logits)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=2e-5 * float(g2.abs().max()))  # fp32 rounding
    assert deep.grad is None  # the deep features are never trained by the regularizer


def test_product_kernel_is_the_product_of_the_two_gaussians():
    torch.manual_seed(1)
    shallow = torch.randn(1, 5, 3, 3)
    deep = torch.randn(1, 4, 3, 3)
    f = torch.cat([shallow, deep], 1).flatten(2)[0].T
    fs, fd = shallow.flatten(2)[0].T, deep.flatten(2)[0].T
    k = torch.exp(-0.5 * torch.cdist(f, f).pow(2))
    torch.testing.assert_close(
        k, torch.exp(-0.5 * torch.cdist(fs, fs).pow(2)) * torch.exp(-0.5 * torch.cdist(fd, fd).pow(2))
    )


def test_shallow_only_and_bad_combination():
    image = torch.rand(1, 3, 8, 8)
    probs = torch.rand(1, 2, 8, 8).softmax(1)
    assert set(dfr_regularized_loss(probs, image, None, None)) == {"shallow"}
    assert set(dfr_regularized_loss(probs, image, None, None, combination="product")) == {"shallow"}
    with pytest.raises(ValueError, match="kernel combination 'max'"):
        dfr_regularized_loss(probs, image, None, None, combination="max")


def test_unit_features_on_grid():
    x = torch.randn(2, 3, 8, 8)
    unit = unit_features_on_grid(x, (4, 4))
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2, 4, 4))
