"""Permutohedral lattice: densecrf's filter to float precision, the stated tolerances against the exact
Gaussian, the gradient (the exact adjoint), batches with different ROIs, the key paths, and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import weakseg.ops.lattice as lattice_module
from weakseg.ops import PermutohedralLattice, choose_backend, lattice_gaussian_filter, resolve_backend
from weakseg.ops.pairwise_kernel import kernel_features_rgbxy, naive_gaussian_affinity_apply


def _scene(seed: int, h: int = 24, w: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth colour image with pixel noise (0..255, [1, 3, H, W]) and smooth 4-class probabilities."""
    gen = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 4, 5, generator=gen) * 255, size=(h, w), mode="bilinear")
    image = (base + 8 * torch.randn(1, 3, h, w, generator=gen)).clamp(0, 255)
    logits = F.interpolate(torch.randn(1, 4, 3, 4, generator=gen) * 4, size=(h, w), mode="bilinear")
    return image, logits.softmax(1)


def _features(kind: str, image: torch.Tensor) -> torch.Tensor:
    """d = 1 (x / 2), 2 (xy / 3, a CRF smoothness kernel) or 5 (rloss's RGBXY kernel on a 48-wide grid)."""
    if kind == "x":
        return kernel_features_rgbxy(image, 1.0, 2.0)[:, :1]
    if kind == "xy":
        return kernel_features_rgbxy(image, 1.0, 3.0)[:, :2]
    return kernel_features_rgbxy(image, 15.0, 100.0, scale=0.5 * image.shape[-2] / 48)


def _matrix(lattice: PermutohedralLattice, transpose: bool = False) -> torch.Tensor:
    """The filter of a one-image lattice as an explicit [N, N] matrix (A[i, j]: response at i to j)."""
    _, *spatial = lattice.batch_shape
    n = lattice._pixels_per_image
    probes = torch.eye(n).reshape(1, n, *spatial)  # channel j: a unit value at pixel j
    return lattice.filter(probes, transpose=transpose)[0].reshape(n, n).T


# --------------------------------------------------------------------------------------------------
# the same filter as densecrf
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim, points", [(1, 60), (2, 400), (5, 1500), (8, 500), (16, 300)])
def test_filter_is_densecrfs_lattice_filter(dim: int, points: int) -> None:
    """pydensecrf2's raw lattice output (no normalisation, constant kernel, Potts weight -1 read back
    through one ``stepInference`` with a zero unary: ``tmp1 = K·Q``) equals ours to float rounding."""
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    eigen = pytest.importorskip("pydensecrf.eigen")
    gen = torch.Generator().manual_seed(dim)
    feats = torch.rand(dim, points, generator=gen) * 4
    values = torch.rand(3, points, generator=gen)
    crf = dcrf.DenseCRF(points, 3)
    crf.setUnaryEnergy(torch.zeros(3, points).numpy())
    crf.addPairwiseEnergy(
        feats.numpy(), compat=1.0, kernel=dcrf.CONST_KERNEL, normalization=dcrf.NO_NORMALIZATION
    )
    tmp1 = eigen.matrixXf(torch.zeros(3, points).numpy())
    tmp2 = eigen.matrixXf(torch.zeros(3, points).numpy())
    crf.stepInference(eigen.matrixXf(values.numpy()), tmp1, tmp2)
    reference = torch.from_numpy(np.array(tmp1))
    ours = PermutohedralLattice(feats[None, :, :, None]).filter(values[None, :, :, None])[0, ..., 0]
    assert (ours - reference).abs().max().item() <= 1e-6 * reference.abs().max().item() + 1e-6


# --------------------------------------------------------------------------------------------------
# the approximation, stated
# --------------------------------------------------------------------------------------------------
# kind: (mass ratio range over pixels, mean mass ratio range, max and mean |error| of the normalised
# filter W·v / W·1); measured on 16 scenes (24×32 and 36×48): x 0.86–0.94 / 0.92 / 0.008 / 0.0014,
# xy 0.77–0.90 / 0.87 / 0.041 / 0.005, rgbxy 0.20–0.77 / 0.46–0.55 / 0.30 / 0.011.
TOLERANCES = {
    "x": ((0.80, 0.97), (0.88, 0.95), 0.02, 0.004),
    "xy": ((0.70, 0.95), (0.83, 0.91), 0.08, 0.01),
    "rgbxy": ((0.10, 0.85), (0.38, 0.65), 0.40, 0.025),
}


@pytest.mark.parametrize("kind", ["x", "xy", "rgbxy"])
@pytest.mark.parametrize("seed", [0, 1])
def test_tolerance_against_the_exact_gaussian(kind: str, seed: int) -> None:
    """The lattice's kernel sums are a lumpy fraction of the exact ones (less mass, more so as d grows:
    a vertex's blur reaches only lattice neighbours that exist), but the normalised filter, which is
    what mean field and the normalised losses use, stays close."""
    image, probs = _scene(seed)
    feats = _features(kind, image)
    lattice = PermutohedralLattice(feats)
    ones = torch.ones_like(probs[:, :1])
    exact, exact_mass = (naive_gaussian_affinity_apply(feats, x, include_self=True) for x in (probs, ones))
    approx, approx_mass = lattice.filter(probs), lattice.filter(ones)
    (lo, hi), (mean_lo, mean_hi), max_err, mean_err = TOLERANCES[kind]
    ratio = approx_mass / exact_mass
    assert lo <= ratio.min().item() and ratio.max().item() <= hi
    assert mean_lo <= ratio.mean().item() <= mean_hi
    err = (approx / approx_mass - exact / exact_mass).abs()
    assert err.max().item() <= max_err and err.mean().item() <= mean_err


def test_self_weight_formula_is_an_upper_bound_exact_inside_the_cloud() -> None:
    image, _ = _scene(2)
    lattice = PermutohedralLattice(_features("xy", image))
    true_self = _matrix(lattice).diagonal()
    formula = lattice.self_weights()
    excess = formula - true_self
    assert excess.min().item() >= -1e-5  # paths through absent vertices only remove weight
    assert excess.max().item() <= 0.2
    assert (excess.abs() < 1e-5).double().mean().item() >= 0.5  # exact wherever no path is missing
    assert formula.max().item() <= 1.0 + 1e-6


# --------------------------------------------------------------------------------------------------
# gradient: the exact adjoint
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["xy", "rgbxy"])
def test_gradient_is_the_transpose_of_the_filter(kind: str) -> None:
    """The forward filter is not symmetric (the blur runs along the directions in one order, and
    vertices absent from the sparse lattice break the symmetry), so the backward pass must blur in the
    reverse order: it then equals the explicit matrix's transpose."""
    image, probs = _scene(3)
    feats = _features(kind, image)
    lattice = PermutohedralLattice(feats)
    matrix = _matrix(lattice)
    assert (matrix - matrix.T).abs().max().item() > 1e-3  # not symmetric ...
    torch.testing.assert_close(_matrix(lattice, transpose=True), matrix.T, rtol=0, atol=2e-6)  # ... adjoint
    values = probs.clone().requires_grad_()
    out = lattice_gaussian_filter(feats, values)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    expected = (matrix.T @ grad_out[0].reshape(4, -1).T).T.reshape_as(values)
    torch.testing.assert_close(values.grad, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0].reshape(4, -1), (matrix @ probs[0].reshape(4, -1).T).T)


def test_features_receive_no_gradient() -> None:
    image, probs = _scene(4)
    feats = _features("rgbxy", image).requires_grad_()
    out = lattice_gaussian_filter(feats, probs.requires_grad_())
    out.sum().backward()
    assert feats.grad is None and probs.grad is not None


# --------------------------------------------------------------------------------------------------
# batches and regions of interest
# --------------------------------------------------------------------------------------------------
def test_batch_of_images_with_different_rois_equals_each_image_alone() -> None:
    gen = torch.Generator().manual_seed(5)
    scenes = [_scene(10 + k) for k in range(3)]
    feats = torch.cat([_features("rgbxy", image) for image, _ in scenes])
    values = torch.cat([probs for _, probs in scenes])
    roi = torch.rand(3, 24, 32, generator=gen) > torch.tensor([0.0, 0.3, 0.7])[:, None, None]
    roi[0] = True  # image 0: everything; 1 and 2: ~70% and ~30% of the pixels
    batched = lattice_gaussian_filter(feats, values, roi)
    for k in range(3):
        alone = lattice_gaussian_filter(feats[k : k + 1], values[k : k + 1], roi[k : k + 1])
        torch.testing.assert_close(batched[k : k + 1], alone, rtol=0, atol=1e-6)
        assert batched[k][:, ~roi[k]].abs().sum().item() == 0.0  # outside the ROI: nothing
        # pixels outside the ROI do not contribute either: changing them changes nothing
        noisy = values[k : k + 1].clone()
        noisy[:, :, ~roi[k]] = 7.0
        torch.testing.assert_close(lattice_gaussian_filter(feats[k : k + 1], noisy, roi[k : k + 1]), alone)


def test_float_roi_weights_both_sides() -> None:
    image, probs = _scene(6)
    feats = _features("xy", image)
    weights = torch.rand(1, 24, 32, generator=torch.Generator().manual_seed(0))
    weighted = lattice_gaussian_filter(feats, probs, weights)
    plain = lattice_gaussian_filter(feats, probs * weights[:, None])
    torch.testing.assert_close(weighted, plain * weights[:, None], rtol=1e-5, atol=1e-6)


def test_empty_roi_gives_zeros() -> None:
    image, probs = _scene(7)
    lattice = PermutohedralLattice(_features("xy", image), torch.zeros(1, 24, 32, dtype=torch.bool))
    assert lattice.num_points == 0 and lattice.num_vertices == 0
    assert lattice.filter(probs).abs().max().item() == 0.0


# --------------------------------------------------------------------------------------------------
# key paths: packed codes with a table or a search, and row-wise keys
# --------------------------------------------------------------------------------------------------
def test_all_key_paths_give_the_same_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    image, probs = _scene(8)
    feats = _features("rgbxy", image)
    reference = PermutohedralLattice(feats).filter(probs)  # packed int64 codes, dense table
    monkeypatch.setattr(lattice_module, "_TABLE_PER_KEY", 0)
    monkeypatch.setattr(lattice_module, "_TABLE_SLACK", 0)
    torch.testing.assert_close(PermutohedralLattice(feats).filter(probs), reference, rtol=0, atol=0)
    monkeypatch.setattr(lattice_module, "_MAX_CODE", 1)  # nothing fits: unique rows
    torch.testing.assert_close(PermutohedralLattice(feats).filter(probs), reference, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# bad input, backend choice, devices
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_are_rejected_by_name_and_shape(bad: float) -> None:
    feats = torch.rand(2, 5, 6, 7)
    feats[1, 3, 2, 2] = bad
    with pytest.raises(ValueError, match=r"appearance features of shape \(2, 5, 6, 7\) holds NaN or inf"):
        PermutohedralLattice(feats, name="appearance features")


def test_too_many_dimensions_are_rejected_by_name_and_shape() -> None:
    with pytest.raises(ValueError, match=r"features of shape \(1, 17, 4, 4\) has d = 17 .* 1\.\.16"):
        PermutohedralLattice(torch.rand(1, 17, 4, 4))
    with pytest.raises(ValueError, match="must be floating point"):
        PermutohedralLattice(torch.ones(1, 2, 4, 4, dtype=torch.long))


def test_auto_backend_rule() -> None:
    assert choose_backend(2303, 5, "cpu") == "exact" and choose_backend(2304, 5, "cpu") == "lattice"
    assert choose_backend(1535, 2, "cpu") == "exact" and choose_backend(1536, 2, "cpu") == "lattice"
    assert choose_backend(10**6, 9, "cpu") == "exact"  # deep features stay exact
    assert choose_backend(65535, 5, "cuda") == "exact" and choose_backend(65536, 5, "cuda") == "lattice"
    assert resolve_backend("auto", 5000, 5, "cpu") == "lattice"
    assert resolve_backend("exact", 10**6, 5, "cpu") == "exact"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fast", 10, 5, "cpu")


def test_lattice_on_an_unsupported_device_falls_back_to_exact_with_one_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_backend("lattice", 10**5, 5, "meta") == "exact"
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert "not supported" in str(caught[0].message) and "exact" in str(caught[0].message)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu() -> None:
    image, probs = _scene(9)
    feats = _features("rgbxy", image)
    roi = torch.rand(1, 24, 32, generator=torch.Generator().manual_seed(1)) > 0.2
    cpu = lattice_gaussian_filter(feats, probs, roi)
    values = probs.cuda().requires_grad_()
    gpu = lattice_gaussian_filter(feats.cuda(), values, roi.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    gpu.sum().backward()
    assert values.grad is not None and torch.isfinite(values.grad).all()


def test_blocks_of_points_give_the_same_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU the points are split into blocks (each with its own splat matrix): any block size gives
    the same result, in the plain and the transposed filter."""
    image, probs = _scene(12, h=36, w=48)
    feats = _features("rgbxy", image)
    roi = torch.rand(1, 36, 48, generator=torch.Generator().manual_seed(2)) > 0.1
    whole = PermutohedralLattice(feats, roi)
    monkeypatch.setattr(lattice_module, "_CPU_BLOCK", 100)
    blocked = PermutohedralLattice(feats, roi)
    assert len(blocked._blocks) > 10
    for transpose in (False, True):
        torch.testing.assert_close(
            blocked.filter(probs, transpose=transpose),
            whole.filter(probs, transpose=transpose),
            rtol=1e-6,
            atol=1e-6,
        )
