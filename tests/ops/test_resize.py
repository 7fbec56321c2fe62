"""The resize rules of weakseg.ops.resize: sizes, identity at the same size, and each rule's values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.ops.resize import (
    bilinear_at,
    resize_area,
    resize_bilinear,
    resize_gate,
    resize_mask,
    resize_nearest,
    scaled_size,
)


def test_scaled_size_rounds_and_keeps_one_pixel():
    assert scaled_size((96, 100), 1 / 8) == (12, 12)
    assert scaled_size((3, 3), 0.1) == (1, 1)
    assert scaled_size(torch.Size([10, 7]), 1.5) == (15, 10)  # round half to even, as Python's round


def test_every_rule_returns_its_input_at_the_same_size():
    x = torch.randn(2, 3, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    assert resize_bilinear(x, (5, 6)) is x
    assert resize_bilinear(x, torch.Size([5, 6]), antialias=True) is x
    assert resize_area(x, (5, 6)) is x
    assert resize_nearest(labels, (5, 6)) is labels


def test_bilinear_is_align_corners_false():
    logits = torch.arange(4.0).view(1, 1, 2, 2)
    up = resize_bilinear(logits, torch.Size([4, 6]))
    assert up.shape == (1, 1, 4, 6)
    torch.testing.assert_close(up[0, 0, 0, 0], torch.tensor(0.0))  # the corner keeps the corner value
    torch.testing.assert_close(up.mean(), logits.mean())


def test_bilinear_antialias_only_when_shrinking():
    x = torch.randn(1, 2, 16, 16)
    small = resize_bilinear(x, (4, 4), antialias=True)
    torch.testing.assert_close(
        small, F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    )
    assert not torch.allclose(small, resize_bilinear(x, (4, 4)))
    torch.testing.assert_close(resize_bilinear(x, (32, 20), antialias=True), resize_bilinear(x, (32, 20)))


def test_area_averages_when_shrinking_and_interpolates_otherwise():
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(resize_area(x, (4, 4)), F.avg_pool2d(x, 2))
    torch.testing.assert_close(resize_area(x, (16, 16)), resize_bilinear(x, (16, 16)))
    torch.testing.assert_close(resize_area(x, (4, 16)), resize_bilinear(x, (4, 16)))  # one side grows


def test_nearest_keeps_ids_and_dtype():
    labels = torch.tensor([[[0, 1], [2, 255]]], dtype=torch.uint8)
    up = resize_nearest(labels, (4, 4))
    assert up.dtype == torch.uint8
    assert up[0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]]


def test_mask_majority_of_each_cell():
    valid = torch.zeros(1, 8, 8, dtype=torch.bool)
    valid[:, :, :5] = True
    assert resize_mask(valid, (2, 2)).tolist() == [[[True, False], [True, False]]]
    assert resize_mask(valid, (4, 4))[0, 0].tolist() == [True, True, False, False]
    assert resize_mask(None, (4, 4)) is None


def test_gate_keeps_only_cells_fully_inside():
    gate = torch.ones(1, 4, 4)
    gate[0, 0, 0] = 0.0
    out = resize_gate(gate, (2, 2))
    assert out.dtype == torch.float32
    assert out.tolist() == [[[0.0, 1.0], [1.0, 1.0]]]
    assert resize_gate(gate.bool(), (4, 4)).tolist() == gate.tolist()
    assert resize_gate(torch.full((1, 2, 2), float("nan")), (1, 1)).tolist() == [[[0.0]]]


@pytest.mark.parametrize("size", [(12, 15), (8, 10), (5, 7), (4, 4), (3, 9)])
def test_bilinear_at_reads_the_resized_map_at_the_mask(size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    where = torch.rand(2, *size) < 0.3
    got = bilinear_at(x, size, where)
    full = resize_bilinear(x, size)  # [B, C, H, W]
    expected = full.permute(0, 2, 3, 1)[where]  # [P, C] in the same nonzero order
    torch.testing.assert_close(got, expected)
    weights = torch.randn_like(expected)
    (grad,) = torch.autograd.grad((got * weights).sum(), x)
    (ref_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    torch.testing.assert_close(grad, ref_grad)


def test_bilinear_at_checks_the_mask_shape():
    with pytest.raises(ValueError, match=r"where must be \[B, H, W\]"):
        bilinear_at(torch.zeros(1, 2, 3, 3), (6, 6), torch.ones(1, 3, 3, dtype=torch.bool))
