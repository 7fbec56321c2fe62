"""The fused Gaussian kernel product against the explicit N×N matrix (values and gradients)."""

from __future__ import annotations

import resource

import pytest
import torch

from weakseg.ops.pairwise_kernel import (
    GaussianAffinityMatrix,
    gaussian_affinity_apply,
    kernel_features_rgbxy,
    naive_gaussian_affinity_apply,
)

B, D, C, H, W = 2, 5, 3, 9, 11


def _inputs(seed: int = 0, spread: float = 1.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, D, H, W, generator=gen) * spread
    vals = torch.rand(B, C, H, W, generator=gen)
    roi = torch.rand(B, H, W, generator=gen) > 0.25
    return feats, vals, roi


def _value_and_grads(fn, feats, vals, roi, grad_out, **kw):
    f = feats.clone().requires_grad_()
    v = vals.clone().requires_grad_()
    out = fn(f, v, roi, **kw)
    gf, gv = torch.autograd.grad((out * grad_out).sum(), [f, v])
    return out, gf, gv


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("mode", ["dense", "local"])
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("use_roi", [False, True])
def test_matches_naive_matrix_values_and_gradients(mode: str, include_self: bool, use_roi: bool) -> None:
    feats, vals, roi = _inputs()
    roi = roi if use_roi else None
    grad_out = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(1))
    kw = dict(mode=mode, radius=2, include_self=include_self)
    out, gf, gv = _value_and_grads(gaussian_affinity_apply, feats, vals, roi, grad_out, **kw)
    ref, rf, rv = _value_and_grads(naive_gaussian_affinity_apply, feats, vals, roi, grad_out, **kw)
    assert out.dtype == torch.float32
    assert _rel_err(out, ref) < 1e-5
    assert _rel_err(gv, rv) < 1e-5
    assert _rel_err(gf, rf) < 1e-5


def test_local_window_is_the_square_of_half_size_radius() -> None:
    # one pixel carries value 1: it reaches exactly the pixels with |dx|, |dy| <= radius, with weight
    # exp(-(dx² + dy²) / 2) for xy features (positions in units of the bandwidth)
    h = w = 9
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    feats = torch.stack([xs, ys])[None]
    vals = torch.zeros(1, 1, h, w)
    vals[0, 0, 4, 4] = 1.0
    out = gaussian_affinity_apply(feats, vals, mode="local", radius=2)[0, 0]
    expected = torch.exp(-0.5 * ((xs - 4) ** 2 + (ys - 4) ** 2))
    expected[((xs - 4).abs() > 2) | ((ys - 4).abs() > 2)] = 0
    expected[4, 4] = 0  # include_self=False
    assert torch.allclose(out, expected, atol=1e-7)


@pytest.mark.parametrize("mode", ["dense", "local"])
def test_roi_pixels_neither_receive_nor_contribute(mode: str) -> None:
    feats, vals, roi = _inputs(seed=3)
    out = gaussian_affinity_apply(feats, vals, roi, mode=mode, radius=3)
    assert (out[~roi.unsqueeze(1).expand_as(out)] == 0).all()
    # changing anything at excluded pixels changes nothing
    feats2, vals2 = feats.clone(), vals.clone()
    outside = ~roi
    feats2.permute(0, 2, 3, 1)[outside] += 7.0
    vals2.permute(0, 2, 3, 1)[outside] = 100.0
    out2 = gaussian_affinity_apply(feats2, vals2, roi, mode=mode, radius=3)
    assert torch.allclose(out, out2, atol=1e-6, rtol=1e-5)
    # and excluded pixels get no gradient
    v = vals.clone().requires_grad_()
    f = feats.clone().requires_grad_()
    gaussian_affinity_apply(f, v, roi, mode=mode, radius=3).sum().backward()
    assert (v.grad.permute(0, 2, 3, 1)[outside] == 0).all()
    assert (f.grad.permute(0, 2, 3, 1)[outside] == 0).all()


@pytest.mark.parametrize("mode", ["dense", "local"])
def test_include_self_adds_exactly_the_value(mode: str) -> None:
    feats, vals, roi = _inputs(seed=4)
    without = gaussian_affinity_apply(feats, vals, roi, mode=mode, radius=2)
    with_self = gaussian_affinity_apply(feats, vals, roi, mode=mode, radius=2, include_self=True)
    assert torch.allclose(with_self - without, vals * roi.unsqueeze(1), atol=1e-5)


def test_dense_stays_exact_for_offset_features_thanks_to_centring() -> None:
    # Uncentred, an offset of 300 gives |f|² ~ 5e5 and the score f_i·f_j - |f_i|²/2 - |f_j|²/2 would lose
    # ~ε·|f|² ~ 0.05 to cancellation; centring brings it back to the fp32 level of the naive reference
    # (which sees the same fp32-rounded inputs).
    feats, vals, roi = _inputs(seed=5)
    shifted = feats + 300.0
    assert (
        _rel_err(
            gaussian_affinity_apply(shifted, vals, roi), naive_gaussian_affinity_apply(shifted, vals, roi)
        )
        < 1e-5
    )


def test_far_pairs_underflow_to_zero_without_nan() -> None:
    # positions 12 bandwidths apart: every off-diagonal weight is <= exp(-72) and only w_ii = 1 survives.
    # The tolerance is the documented score error ~ε·|f_centred|² (|f_centred|² <= 5.9e3 here).
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
    )
    feats = (12.0 * torch.stack([xs, ys])).expand(B, 2, H, W)
    vals = torch.rand(B, C, H, W, generator=torch.Generator().manual_seed(6))
    out = gaussian_affinity_apply(feats, vals, include_self=True)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, vals, atol=1e-3)
    assert gaussian_affinity_apply(feats, vals).abs().max() < 1e-3


def test_bf16_autocast_runs_in_fp32() -> None:
    # Under autocast the kernel still computes in fp32: with the same (bf16-rounded) inputs it agrees
    # with the fp32 reference to 1e-5; against unrounded inputs the bf16 rounding of the inputs alone
    # (2^-8 relative) bounds the difference, measured < 2e-2 relative here.
    feats, vals, roi = _inputs(seed=7)
    f16, v16 = feats.bfloat16(), vals.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gaussian_affinity_apply(f16, v16, roi)
    assert out.dtype == torch.float32
    ref_rounded = naive_gaussian_affinity_apply(f16.float(), v16.float(), roi)
    assert _rel_err(out, ref_rounded) < 1e-5
    assert _rel_err(out, naive_gaussian_affinity_apply(feats, vals, roi)) < 2e-2


def test_kernel_features_rgbxy_positions_are_in_original_pixels() -> None:
    image = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    feats = kernel_features_rgbxy(image, sigma_rgb=15.0, sigma_xy=10.0, scale=0.5)
    assert feats.shape == (2, 5, 4, 6)
    # grid column 3 of a ×0.5 grid sits at original x = 6 -> 6 / σ_xy
    assert feats[1, 0, 2, 3].item() == pytest.approx(0.6)
    assert feats[1, 1, 2, 3].item() == pytest.approx(0.4)
    assert torch.allclose(feats[:, 2:], image / 15.0)


def test_rejects_bad_arguments() -> None:
    feats, vals, roi = _inputs()
    with pytest.raises(ValueError, match="mode"):
        gaussian_affinity_apply(feats, vals, mode="global")
    with pytest.raises(ValueError, match="roi"):
        gaussian_affinity_apply(feats, vals, roi[:, :-1])
    with pytest.raises(ValueError, match="match"):
        gaussian_affinity_apply(feats, vals[..., :-1])


def _exact_rows(feats: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``Σ_{j≠i} w_ij v_j`` for a few pixels ``i`` of image 0 by direct summation: [len(rows), C]."""
    f = feats[0].flatten(1).T.double()
    v = vals[0].flatten(1).T.double()
    w = torch.exp(-0.5 * (f[rows, None] - f[None]).pow(2).sum(-1))
    w[torch.arange(len(rows)), rows] = 0
    return (w @ v).float()


@pytest.mark.slow
def test_large_image_runs_without_an_n_by_n_buffer() -> None:
    # 192×192 = 36,864 pixels: an N×N fp32 matrix would need 5.4 GB; forward + backward must stay
    # far below (the N×N path of SDPA asked for tens of GB at this size).
    gen = torch.Generator().manual_seed(8)
    image = torch.rand(1, 3, 192, 192, generator=gen) * 255
    feats = kernel_features_rgbxy(image, sigma_rgb=15.0, sigma_xy=100.0, scale=0.5)
    vals = torch.rand(1, 2, 192, 192, generator=gen).requires_grad_()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = gaussian_affinity_apply(feats, vals)
    out.sum().backward()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 500, f"peak memory grew by {grown_mib:.0f} MiB"
    rows = torch.tensor([0, 5000, 20000, 36863])
    got = out[0].flatten(1).T[rows].detach()
    assert _rel_err(got, _exact_rows(feats, vals.detach(), rows)) < 1e-4
    assert torch.isfinite(vals.grad).all()


# --------------------------------------------------------------------------------------------------
# backend switch: the permutohedral lattice (weakseg.ops.lattice) in dense mode
# --------------------------------------------------------------------------------------------------
def _image_features(seed: int, h: int = 30, w: int = 40) -> torch.Tensor:
    """rloss-like RGBXY features of a smooth image with pixel noise: [1, 5, H, W]."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 5, generator=gen) * 255, size=(h, w))
    image = (base + 8 * torch.randn(1, 3, h, w, generator=gen)).clamp(0, 255)
    return kernel_features_rgbxy(image, sigma_rgb=15.0, sigma_xy=20.0)


@pytest.mark.parametrize("include_self", [True, False])
def test_lattice_backend_approximates_the_exact_kernel(include_self: bool) -> None:
    from weakseg.ops import PermutohedralLattice

    feats = _image_features(0)
    gen = torch.Generator().manual_seed(1)
    vals = torch.rand(1, 3, 30, 40, generator=gen).softmax(1)
    roi = torch.rand(1, 30, 40, generator=gen) > 0.2
    lattice = gaussian_affinity_apply(feats, vals, roi, include_self=include_self, backend="lattice")
    ones = torch.ones_like(vals[:, :1])
    mass = gaussian_affinity_apply(feats, ones, roi, include_self=include_self, backend="lattice")
    exact = gaussian_affinity_apply(feats, vals, roi, include_self=include_self, backend="exact")
    exact_mass = gaussian_affinity_apply(feats, ones, roi, include_self=include_self, backend="exact")
    inside = roi[:, None].expand_as(vals)
    assert lattice[~inside].abs().max().item() == 0.0
    # the lattice's kernel sums are a lumpy ~0.4–0.7 of the exact ones at d = 5 (docs/lattice.md) ...
    ratio = (mass / exact_mass)[roi[:, None]]
    assert 0.3 < ratio.mean().item() < 0.75
    # ... while the normalised product agrees closely
    err = (lattice / mass - exact / exact_mass)[inside]
    assert err.abs().mean().item() < 0.02
    if not include_self:  # the self term subtracted is the lattice's own (an upper bound, <= 1)
        with_self = gaussian_affinity_apply(feats, vals, roi, include_self=True, backend="lattice")
        self_weight = PermutohedralLattice(feats, roi).self_weight_map()
        torch.testing.assert_close(with_self - lattice, self_weight * vals, rtol=1e-5, atol=1e-6)


def test_lattice_backend_gradient_flows_to_the_values_only() -> None:
    feats = _image_features(2).requires_grad_()
    vals = torch.rand(1, 2, 30, 40).requires_grad_()
    out = gaussian_affinity_apply(feats, vals, backend="lattice")
    out.sum().backward()
    assert feats.grad is None and torch.isfinite(vals.grad).all()


def test_auto_backend_keeps_the_exact_kernel_for_small_grids_and_feature_gradients() -> None:
    feats = _image_features(3, h=60, w=80)  # 4,800 pixels at d = 5: the lattice on CPU
    vals = torch.rand(1, 2, 60, 80)
    torch.testing.assert_close(
        gaussian_affinity_apply(feats, vals, backend="auto"),
        gaussian_affinity_apply(feats, vals, backend="lattice"),
    )
    # features that need a gradient: the lattice gives none, so auto stays exact
    f = feats.clone().requires_grad_()
    out = gaussian_affinity_apply(f, vals, backend="auto")
    torch.testing.assert_close(
        out, gaussian_affinity_apply(feats, vals, backend="exact"), rtol=1e-5, atol=1e-5
    )
    # a small grid: exact
    small, small_vals = _image_features(3, h=20, w=30), torch.rand(1, 2, 20, 30)
    torch.testing.assert_close(
        gaussian_affinity_apply(small, small_vals, backend="auto"),
        gaussian_affinity_apply(small, small_vals, backend="exact"),
    )
    with pytest.raises(ValueError, match="local mode is exact only"):
        gaussian_affinity_apply(feats, vals, mode="local", backend="lattice")
    with pytest.raises(ValueError, match="backend must be one of"):
        gaussian_affinity_apply(feats, vals, backend="fast")


def test_dfr_shallow_kernel_backend_reaches_the_normalised_potts_loss() -> None:
    from weakseg.losses.normalized_potts import dfr_regularized_loss

    gen = torch.Generator().manual_seed(4)
    image = torch.rand(2, 3, 96, 128, generator=gen)
    logits = torch.randn(2, 3, 96, 128, generator=gen).requires_grad_()
    values, grads = {}, {}
    for backend in ("exact", "lattice", None):  # None: the default, "auto" (lattice on this 48x64 grid)
        kwargs = {} if backend is None else {"shallow_backend": backend}
        loss = dfr_regularized_loss(logits.softmax(1), image, None, None, **kwargs)["shallow"]
        (grads[backend],) = torch.autograd.grad(loss, logits)
        values[backend] = loss.item()
    assert values[None] == values["lattice"]
    # a disagreement probability: the lattice's overall scale cancels in the quotient
    assert values["lattice"] == pytest.approx(values["exact"], rel=0.05)
    cosine = torch.nn.functional.cosine_similarity(
        grads["lattice"].flatten(), grads["exact"].flatten(), dim=0
    )
    assert cosine.item() > 0.95


@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("roi_kind", ["none", "bool", "float"])
def test_explicit_matrix_equals_the_naive_dense_kernel(include_self: bool, roi_kind: str) -> None:
    feats, vals, roi = _inputs(spread=2.0)
    roi = {"none": None, "bool": roi, "float": roi.float() * torch.rand(B, H, W)}[roi_kind]
    matrix = GaussianAffinityMatrix(feats, roi, include_self=include_self)
    v = vals.clone().requires_grad_()
    out = matrix.apply(v)
    grad_out = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(2))
    (gv,) = torch.autograd.grad((out * grad_out).sum(), [v])
    ref, _, rv = _value_and_grads(
        naive_gaussian_affinity_apply, feats, vals, roi, grad_out, mode="dense", include_self=include_self
    )
    assert out.dtype == torch.float32 and out.shape == (B, C, H, W)
    assert _rel_err(out, ref) < 1e-5 and _rel_err(gv, rv) < 1e-5
    with pytest.raises(ValueError, match="do not match"):
        matrix.apply(vals[:, :, :-1])
    assert GaussianAffinityMatrix.fits(16, 28, 28, 1 << 27)  # AAL's CRF grid: 39 MB
    assert not GaussianAffinityMatrix.fits(1, 100, 100, 1 << 27)  # 400 MB


def test_shared_matrix_serves_a_batch_of_equal_features_with_per_image_rois() -> None:
    feats, vals, roi = _inputs()
    same = feats[:1].expand(B, -1, -1, -1)
    shared = GaussianAffinityMatrix(same, roi, shared=True)
    assert shared.matrix.shape == (1, H * W, H * W)
    ref = naive_gaussian_affinity_apply(same, vals, roi, mode="dense")
    assert _rel_err(shared.apply(vals), ref) < 1e-5
    assert _rel_err(GaussianAffinityMatrix(same, roi).apply(vals), ref) < 1e-5


def test_far_pairs_weigh_exactly_zero_and_no_weight_is_subnormal() -> None:
    # -|f_i - f_j|²/2 from the first: -0.5, -84.5 (a normal weight), -91.1 (a subnormal exp), -800
    feats = torch.tensor([0.0, 1.0, 13.0, 13.5, 40.0]).view(1, 1, 1, 5)
    matrix = GaussianAffinityMatrix(feats).matrix[0]
    assert matrix[0, 1] == pytest.approx(torch.exp(torch.tensor(-0.5)).item())
    assert matrix[0, 2] == pytest.approx(torch.exp(torch.tensor(-84.5)).item(), rel=1e-4)
    assert torch.exp(torch.tensor(-91.125)) > 0  # what a plain exp would leave: subnormal
    assert matrix[0, 3] == 0.0 and matrix[0, 4] == 0.0
    tiny = torch.finfo(torch.float32).tiny
    assert not ((matrix > 0) & (matrix < tiny)).any()
