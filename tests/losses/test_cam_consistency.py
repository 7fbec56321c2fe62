"""SFC's MSDW consistency: distribution coefficients and the prototype and scale terms."""

from __future__ import annotations

import pytest
import torch

from weakseg.losses.cam_consistency import (
    distribution_coefficients,
    frequency_spread,
    prototype_consistency_loss,
    scale_consistency_loss,
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
