"""Soft Dice loss against a per-class loop written from the formula, with ignore pixels."""

from __future__ import annotations

import torch

from weakseg.losses import soft_dice_loss


def _reference(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    probs = logits.double().softmax(1)
    keep = target != 255
    losses = []
    for k in range(logits.shape[1]):
        p = probs[:, k][keep]
        g = (target[keep] == k).double()
        losses.append(1 - (2 * (p * g).sum() + smooth) / ((p * p).sum() + (g * g).sum() + smooth))
    return torch.stack(losses).mean()


def test_soft_dice_matches_the_formula_value_and_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 5, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 6, 5), generator=gen)
    target[0, :2] = 255
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ours = soft_dice_loss(a, target)
    ref = _reference(b, target)
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    ours.backward()
    ref.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_soft_dice_is_zero_for_a_perfect_one_hot_prediction_and_ignores_255() -> None:
    target = torch.tensor([[[0, 1], [2, 255]]])
    logits = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 100
    logits[0, :, 1, 1] = torch.tensor([0.0, 0.0, 100.0])  # wrong where ignored: must not count
    logits[0, 0, 1, 1] = 100.0
    assert soft_dice_loss(logits, target).item() < 1e-4


def test_soft_dice_on_a_background_prediction_is_large_for_rare_classes() -> None:
    """Predicting background everywhere on a 96 %-background map: CE is small, Dice is not."""
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, 4:6, 4:6] = 1  # 4 % foreground
    logits = torch.zeros(1, 2, 10, 10)
    logits[:, 0] = 5.0
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert ce.item() < 0.25
    assert soft_dice_loss(logits, target).item() > 0.45
