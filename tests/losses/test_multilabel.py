"""Multi-label soft-margin loss against torch's implementation and a hand-computed value."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weakseg.losses import multilabel_soft_margin_loss


def test_matches_torch_values_and_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(5, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    targets = (torch.rand(5, 7, generator=gen) > 0.6).double()
    ours = multilabel_soft_margin_loss(logits, targets)
    ref = F.multilabel_soft_margin_loss(logits, targets)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(g_ours, g_ref, rtol=1e-10, atol=1e-14)
    none = multilabel_soft_margin_loss(logits, targets, reduction="none")
    assert torch.allclose(none, F.multilabel_soft_margin_loss(logits, targets, reduction="none"))
    assert multilabel_soft_margin_loss(logits, targets, reduction="sum").item() == pytest.approx(
        none.sum().item()
    )


def test_hand_computed_value() -> None:
    # one image, two classes: x = (0, 2), y = (1, 0): (log 2 + log(1 + e^2)) / 2
    loss = multilabel_soft_margin_loss(torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.e**2)) / 2, rel=1e-6)


def test_stable_for_large_logits() -> None:
    logits = torch.tensor([[200.0, -200.0]], requires_grad=True)
    loss = multilabel_soft_margin_loss(logits, torch.tensor([[0.0, 1.0]]))
    assert loss.item() == pytest.approx(200.0, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_rejects_bad_shapes_and_reductions() -> None:
    with pytest.raises(ValueError, match="same shape"):
        multilabel_soft_margin_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        multilabel_soft_margin_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="max")
