"""LoRM through fused attention against the explicit (HW)x(HW) form, and its loss."""

from __future__ import annotations

import pytest
import torch

from weakseg.losses.feature_rectification import lorm_loss
from weakseg.models.lorm import LoRM, lorm_attention, lorm_attention_explicit


def _inputs(b=2, c=8, h=5, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, c, h, w, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(b, h, w, generator=g) > 0.4
    return q, k, v, mask


@pytest.mark.parametrize("axis", ["query", "key"])
def test_fused_equals_explicit_values_and_gradients(axis: str) -> None:
    q, k, v, mask = _inputs()
    args = [t.clone().float().requires_grad_() for t in (q, k, v)]
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    out = lorm_attention(*args, mask, axis)
    expected = lorm_attention_explicit(*ref, mask, axis)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(expected)
    (out * weights.float()).sum().backward()
    (expected * weights).sum().backward()
    for a, r in zip(args, ref, strict=True):
        torch.testing.assert_close(a.grad.double(), r.grad, atol=1e-5, rtol=1e-4)


def test_explicit_form_by_hand() -> None:
    """One image, two positions: softmax over cosine similarities, rows masked after the softmax."""
    q = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]]).permute(
        1, 0, 2, 3
    )  # [1, 2, 1, 2]: q_0=(1,0), q_1=(0,2)
    k = q.clone()
    v = torch.tensor([[[[3.0, 5.0]]]])  # [1, 1, 1, 2]
    mask = torch.tensor([[[True, False]]])
    # row 0: cos(q0,k0)=1, cos(q0,k1)=0 -> weights e/(e+1), 1/(e+1)
    e = torch.e
    want0 = (3 * e + 5) / (e + 1)
    out = lorm_attention(q, k, v, mask)
    torch.testing.assert_close(out, torch.tensor([[[[want0, 0.0]]]]))
    torch.testing.assert_close(lorm_attention_explicit(q, k, v, mask), out)


def test_key_masked_form_by_hand() -> None:
    """Eq. 11's text: background keys are dropped from every row (softmax still over all keys)."""
    q = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]]).permute(1, 0, 2, 3)
    v = torch.tensor([[[[3.0, 5.0]]]])
    mask = torch.tensor([[[True, False]]])
    e = torch.e
    # row 0: weights e/(e+1) on key 0 (kept), 1/(e+1) on key 1 (dropped); row 1: 1/(e+1) on key 0
    want = torch.tensor([[[[3 * e / (e + 1), 3 / (e + 1)]]]])
    torch.testing.assert_close(lorm_attention(q, q.clone(), v, mask, "key"), want)
    torch.testing.assert_close(lorm_attention_explicit(q, q.clone(), v, mask, "key"), want)
    with pytest.raises(ValueError, match="mask axis"):
        lorm_attention(q, q, v, mask, "rows")


def test_loss_reductions() -> None:
    f = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]])  # [1, 1, 2, 2]
    r = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    mask = torch.tensor([[[True, True], [False, False]]])
    # authors: (0 + 4 + 0 + 9) / 2 nonzero squares
    assert lorm_loss(f, r, mask, "authors").item() == pytest.approx(6.5)
    # foreground: (0 + 4) / 2 positions
    assert lorm_loss(f, r, mask, "foreground").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="expected one of"):
        lorm_loss(f, r, mask, "mean")


def test_module_gradients_reach_delta_convs_and_features() -> None:
    torch.manual_seed(0)
    module = LoRM(6)
    feats = torch.randn(2, 6, 4, 4, requires_grad=True)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 1:3, 1:3] = True
    rect = module(feats, mask)
    assert rect.shape == feats.shape and (rect[:, :, 0, 0] == 0).all()
    lorm_loss(feats, rect, mask).backward()
    assert feats.grad.abs().sum() > 0
    assert module.delta.grad is not None and module.delta.grad != 0
    assert module.query.weight.grad.abs().sum() > 0 and module.key.weight.grad.abs().sum() > 0


def test_shape_errors_are_clear() -> None:
    q, k, v, mask = _inputs()
    with pytest.raises(ValueError, match="row_mask"):
        lorm_attention(q, k, v, mask[:, :2])


def test_inputs_are_eligible_for_the_fused_kernel() -> None:
    """With only the flash backend allowed, an ineligible layout (e.g. channels not contiguous) raises
    instead of silently building the (HW)x(HW) matrix."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, mask = (t.float() if t.is_floating_point() else t for t in _inputs())
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = lorm_attention(q, k, v, mask)
    torch.testing.assert_close(out, lorm_attention_explicit(q, k, v, mask), atol=1e-5, rtol=1e-5)
