from __future__ import annotations

import math

import pytest
import torch

from weakseg.losses.distance_entropy import distance_entropy_loss, entropy_map


def test_value_by_hand() -> None:
    # pixel 0: uniform over 2 classes (H = log 2), pixel 1: confident (H ~ 0), pixel 2: weight 0
    logits = torch.tensor([[[[0.0, 50.0, 0.0]], [[0.0, 0.0, 3.0]]]])  # [1, 2, 1, 3]
    d = torch.tensor([[[0.5, 1.0, 0.0]]])
    want = (0.5 * math.log(2) + 1.0 * 0.0) / 2  # N = 2 pixels with d > 0
    assert distance_entropy_loss(logits, d).item() == pytest.approx(want, abs=1e-6)


def test_gradient_matches_autograd_of_the_formula() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    d = torch.rand(2, 3, 3, dtype=torch.float64) * (torch.rand(2, 3, 3) > 0.3)
    distance_entropy_loss(logits, d).backward()
    ref = logits.detach().clone().requires_grad_()
    p = ref.softmax(1)
    ((d * -(p * p.log()).sum(1)).sum() / (d > 0).sum()).backward()
    torch.testing.assert_close(logits.grad, ref.grad)


def test_no_weight_gives_zero_and_upsampling() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = distance_entropy_loss(logits, torch.zeros(1, 4, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert entropy_map(torch.zeros(1, 3, 2, 2)).allclose(torch.full((1, 2, 2), math.log(3)))
