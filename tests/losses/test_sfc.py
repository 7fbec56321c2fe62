"""SFC maths: PCM, seeds, prototypes, prototype CAM, distribution coefficients and the MSDW terms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.losses.sfc import (
    background_from_foreground,
    class_prototypes,
    distribution_coefficients,
    frequency_spread,
    max_normalize,
    pcm_propagate,
    prototype_cam,
    prototype_consistency_loss,
    scale_consistency_loss,
    seed_masks,
    weighted_l1,
)

# VOC 2012 train_aug: images per foreground class (person, chair, dog, car, cat, bottle, bird, sofa,
# diningtable, aeroplane, tvmonitor, pottedplant, bicycle, train, motorbike, boat, horse, bus, sheep, cow),
# as listed in SFC's training script, with the constants ``ben`` hard-coded next to them and the
# resulting normalised weights (shared/methods/SFC.md).
VOC_IMAGES = [4155, 1228, 1188, 1150, 1005, 714, 705, 649, 613, 590,
              567, 522, 504, 503, 492, 468, 445, 393, 300, 267]  # fmt: skip
SFC_BEN = [66642, 13956, 13316, 12784, 11044, 8134, 8062, 7726, 7582, 7536,
           7536, 7626, 7698, 7704, 7792, 8032, 8308, 9036, 10524, 11118]  # fmt: skip
SFC_DC = [1.545, 0.907, 0.887, 0.873, 0.832, 0.773, 0.773, 0.780, 0.793, 0.806,
          0.826, 0.877, 0.903, 0.904, 0.926, 0.981, 1.042, 1.208, 1.595, 1.769]  # fmt: skip


def test_max_normalize_and_background() -> None:
    maps = torch.tensor([[[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    norm = max_normalize(maps)
    assert torch.allclose(norm[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]), atol=1e-5)
    assert torch.equal(norm[0, 1], torch.zeros(2, 2))  # an all-zero channel stays 0
    assert torch.allclose(background_from_foreground(norm)[0, 0], 1 - norm[0, 0])


def _naive_pcm(cam: torch.Tensor, emb: torch.Tensor, iterations: int, eps: float = 1e-5) -> torch.Tensor:
    """Pixel-by-pixel loops over one image: A_ij = relu(f_i.f_j), columns sum to 1, M <- M A."""
    k, h, w = cam.shape
    n = h * w
    f = [emb[:, p // w, p % w] for p in range(n)]
    f = [v / (v.norm() + eps) for v in f]
    a = torch.zeros(n, n, dtype=cam.dtype)
    for i in range(n):
        for j in range(n):
            a[i, j] = max(float(f[i] @ f[j]), 0.0)
    for j in range(n):
        a[:, j] = a[:, j] / (a[:, j].sum() + eps)
    m = cam.reshape(k, n)
    for _ in range(iterations):
        m = torch.stack(
            [torch.stack([sum(m[c, i] * a[i, j] for i in range(n)) for j in range(n)]) for c in range(k)]
        )
    return m.reshape(k, h, w)


def test_pcm_matches_naive_loops_and_is_differentiable() -> None:
    gen = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 3, 3, 2, generator=gen, dtype=torch.float64)
    emb = torch.randn(2, 4, 3, 2, generator=gen, dtype=torch.float64)
    out = pcm_propagate(cam, emb, iterations=2)
    for b in range(2):
        assert torch.allclose(out[b], _naive_pcm(cam[b], emb[b], 2), atol=1e-12)
    # columns of A sum to 1: every output pixel is a weighted average of the input pixels
    const = torch.full_like(cam, 0.7)
    assert torch.allclose(pcm_propagate(const, emb, iterations=2), const, rtol=1e-4)
    once = pcm_propagate(cam, emb, iterations=1)
    assert (once <= cam.amax(dim=(2, 3), keepdim=True) + 1e-9).all()
    assert (once >= cam.amin(dim=(2, 3), keepdim=True) * (1 - 1e-4)).all()
    cam.requires_grad_()
    emb.requires_grad_()
    assert torch.autograd.gradcheck(lambda c, e: pcm_propagate(c, e, 2), (cam, emb))


def test_seed_masks_scale_background_and_respect_region() -> None:
    # channels: background, class 1, class 2; three pixels
    cam = torch.tensor([[[[1.0, 1.0, 0.2]], [[0.5, 0.2, 0.1]], [[0.0, 0.1, 0.9]]]])
    region = torch.ones(1, 3, 1, 3)
    region[0, 2] = 0.0  # class 2 not tagged
    seeds = seed_masks(cam, region, background=0, bg_scale=0.3)
    # pixel 0: bg 0.3 < 0.5 -> class 1; pixel 1: bg 0.3 wins; pixel 2: class 2 wins but is masked
    expected = torch.tensor([[[[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]]])
    assert torch.equal(seeds, expected)
    assert seeds.requires_grad is False
    no_bg = seed_masks(cam, torch.ones(1, 3, 1, 3), background=None)
    assert torch.equal(no_bg.argmax(1), cam.argmax(1))


def test_class_prototypes_average_over_the_grid() -> None:
    seeds = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # class 1 has no seed
    features = torch.arange(8.0).view(1, 2, 2, 2)
    protos = class_prototypes(seeds, features)
    assert protos.shape == (1, 2, 2)
    # channel 0 values at the seeds (0, 2), channel 1 (4, 6); divided by h*w = 4
    assert torch.allclose(protos[0, 0], torch.tensor([0.5, 2.5]))
    assert torch.equal(protos[0, 1], torch.zeros(2))


def test_prototype_cam_is_relu_cosine_as_the_reference_broadcast() -> None:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 5, 3, 4, generator=gen)
    protos = torch.randn(2, 3, 5, generator=gen)
    protos[1, 2] = 0.0  # absent class
    ours = prototype_cam(features, protos)
    ref = F.relu(F.cosine_similarity(features.unsqueeze(1), protos[:, :, :, None, None], dim=2))
    assert ours.shape == (2, 3, 3, 4)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.equal(ours[1, 2], torch.zeros(3, 4))
    assert (ours >= 0).all() and (ours <= 1 + 1e-6).all()


def test_frequency_spread_reproduces_the_reference_constants() -> None:
    assert frequency_spread(torch.tensor(VOC_IMAGES)).long().tolist() == SFC_BEN


def test_distribution_coefficients_reproduce_the_reference_weights() -> None:
    dc = distribution_coefficients(torch.tensor(VOC_IMAGES), extra=660 * 4 * 3 / 20)
    assert dc.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(dc, torch.tensor(SFC_DC), atol=6e-4)
    # U-shaped: the head and the tail classes weigh more than the middle
    assert dc[0] > dc[8] < dc[-1]


def test_distribution_coefficients_hand_example() -> None:
    # counts (10, 4, 1), extra 2: spreads (15, 9, 12); raw (15/12, 9/6, 12/3) = (1.25, 1.5, 4); mean 2.25
    dc = distribution_coefficients(torch.tensor([10.0, 4.0, 1.0]), extra=2.0)
    assert torch.allclose(dc, torch.tensor([1.25, 1.5, 4.0]) / 2.25)
    assert torch.equal(distribution_coefficients(torch.tensor([5, 5, 5])), torch.ones(3))
    # a class absent from the training set gets a finite weight (denominator clamped to 1)
    assert torch.isfinite(distribution_coefficients(torch.tensor([3.0, 0.0]))).all()
    with pytest.raises(ValueError, match="non-negative"):
        distribution_coefficients(torch.tensor([1.0, -1.0]))


def test_weighted_l1_and_prototype_term() -> None:
    a = torch.tensor([[[[1.0]], [[0.0]]]])
    b = torch.tensor([[[[0.0]], [[2.0]]]])
    assert weighted_l1(a, b, torch.tensor([3.0, 0.5])).item() == pytest.approx((3 * 1 + 0.5 * 2) / 2)
    cam_w = torch.rand(2, 3, 4, 4)
    cam_p = 5 * torch.rand(2, 3, 4, 4)
    w = torch.tensor([1.0, 2.0, 0.5])
    expected = ((cam_w - cam_p / (cam_p.amax((2, 3), keepdim=True) + 1e-5)).abs() * w.view(1, 3, 1, 1)).mean()
    assert prototype_consistency_loss(cam_w, cam_p, w).item() == pytest.approx(expected.item(), rel=1e-6)


def test_scale_term_is_zero_for_a_scale_equivariant_map() -> None:
    # a linear ramp on align_corners grids: downscaling the 9x9 ramp gives exactly the 5x5 ramp
    def ramp(n: int) -> torch.Tensor:
        t = torch.linspace(0, 1, n, dtype=torch.float64)
        return (0.3 * t[:, None] + 0.6 * t[None, :]).expand(1, 3, n, n).clone()

    labels = torch.tensor([[1.0, 1.0, 1.0]])
    fg = torch.tensor([1, 2])
    w = torch.tensor([1.5, 0.5], dtype=torch.float64)
    assert scale_consistency_loss(ramp(9), ramp(5), labels, fg, w).item() == pytest.approx(0.0, abs=1e-12)
    # a map that is not equivariant gives a positive loss
    bumpy = ramp(9)
    bumpy[..., ::2, ::2] += 0.5
    assert scale_consistency_loss(bumpy, ramp(5), labels, fg, w).item() > 1e-3


def test_scale_term_counts_tagged_foreground_channels_only() -> None:
    full = torch.zeros(1, 3, 4, 4)
    small = torch.zeros(1, 3, 2, 2)
    small[0, 0] = 1.0  # background differs: not counted
    small[0, 2] = 1.0  # class 2 differs but is not tagged: masked by its label
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    fg, w = torch.tensor([1, 2]), torch.tensor([1.0, 1.0])
    assert scale_consistency_loss(full, small, labels, fg, w).item() == 0.0
    small[0, 1] = 1.0  # a tagged class differs by 1 everywhere: mean over 2 channels = 0.5, weight 2
    assert scale_consistency_loss(full, small, labels, fg, torch.tensor([2.0, 1.0])).item() == pytest.approx(
        1.0
    )
