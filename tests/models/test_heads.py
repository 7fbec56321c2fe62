"""Heads on synthetic feature lists: shapes, strides, ASPP rates, initialisation, norms, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weakseg.models.heads import (
    ASPP,
    HEADS,
    DeepLabV2ASPPBNHead,
    DeepLabV2Head,
    DeepLabV3PlusHead,
    ImagePooling,
    available_heads,
    create_head,
)
from weakseg.models.layers import make_norm

CHANNELS = [8, 16, 24, 32]
STRIDES = [4, 8, 16, 16]


def _features(size: int = 64, channels=CHANNELS, strides=STRIDES, batch: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(batch, c, size // s, size // s) for c, s in zip(channels, strides)]


def test_registry():
    assert (
        available_heads()
        == ["deeplabv2", "deeplabv2_aspp_bn", "deeplabv2_cdsp", "deeplabv3plus", "upernet"]
        == sorted(HEADS)
    )
    with pytest.raises(ValueError, match="unknown head 'fcn'; available: deeplabv2, deeplabv2_aspp_bn"):
        create_head("fcn", CHANNELS, STRIDES, 3)
    with pytest.raises(ValueError, match="must match"):
        create_head("deeplabv2", CHANNELS, STRIDES[:2], 3)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        create_head("deeplabv2", CHANNELS, STRIDES, 0)


@pytest.mark.parametrize(
    "name, stride, embed_dim",
    [("deeplabv2", 16, 32), ("deeplabv2_aspp_bn", 16, 256), ("deeplabv3plus", 4, 256)],
)
def test_output_shapes_and_gradients(name, stride, embed_dim):
    head = create_head(name, CHANNELS, STRIDES, num_classes=5)
    assert (head.output_stride, head.embed_dim, head.num_classes) == (stride, embed_dim, 5)
    feats = [f.requires_grad_() for f in _features()]
    logits, embedding = head(feats)
    assert logits.shape == (2, 5, 64 // stride, 64 // stride)
    assert embedding.shape == (2, embed_dim, 64 // stride, 64 // stride)
    (logits.square().mean() + embedding.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    if name == "deeplabv2":  # only the deepest level is read
        assert feats[0].grad is None and feats[-1].grad is not None


def test_deeplabv2_is_a_sum_of_dilated_classifiers():
    head = DeepLabV2Head(CHANNELS, STRIDES, num_classes=3).eval()
    assert [conv.dilation[0] for conv in head.branches] == [6, 12, 18, 24]
    assert [conv.padding[0] for conv in head.branches] == [6, 12, 18, 24]
    for conv in head.branches:
        assert conv.out_channels == 3 and conv.bias is not None
        assert torch.count_nonzero(conv.bias) == 0
        assert 0.007 < conv.weight.std() < 0.013  # N(0, 0.01^2) initialisation
    feats = _features()
    logits, embedding = head(feats)
    torch.testing.assert_close(logits, sum(conv(feats[-1]) for conv in head.branches))
    assert embedding is feats[-1]


def test_deeplabv2_aspp_bn_structure():
    head = DeepLabV2ASPPBNHead(CHANNELS, STRIDES, num_classes=3)
    branches = head.aspp.branches
    assert len(branches) == 5 and isinstance(branches[-1], ImagePooling)
    assert [b[0].dilation[0] for b in branches[:4]] == [6, 12, 18, 24]
    assert all(isinstance(b[1], nn.BatchNorm2d) for b in branches[:4])
    assert head.aspp.project[0].in_channels == 5 * 256
    assert head.dropout.p == 0.5
    head.eval()
    logits, embedding = head(_features())
    torch.testing.assert_close(logits, head.classifier(embedding))  # no dropout in eval
    assert (embedding >= 0).all()  # ReLU output


@pytest.mark.parametrize("deep_stride, rates", [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_deeplabv3plus_rates_follow_output_stride(deep_stride, rates):
    strides = [4, 8, deep_stride, deep_stride]
    head = DeepLabV3PlusHead(CHANNELS, strides, num_classes=3)
    assert head.rates == rates
    assert [b[0].dilation[0] for b in head.aspp.branches[1:4]] == rates
    assert head.aspp.branches[0][0].kernel_size == (1, 1)
    assert head.low_level[0].out_channels == 48
    logits, _ = head(_features(strides=strides))
    assert logits.shape == (2, 3, 16, 16)
    assert DeepLabV3PlusHead(CHANNELS, strides, 3, rates=(2, 4)).rates == [2, 4]


def test_deeplabv3plus_on_a_single_level_backbone():
    head = DeepLabV3PlusHead([40], [16], num_classes=4)
    assert head.output_stride == 16 and head.low_level[0].in_channels == 40
    logits, embedding = head([torch.randn(2, 40, 5, 7)])
    assert logits.shape == (2, 4, 5, 7) and embedding.shape == (2, 256, 5, 7)


def test_deeplabv3plus_aligns_odd_sizes():
    feats = [torch.randn(2, c, n, n) for c, n in zip(CHANNELS, [17, 9, 5, 5])]  # a 65 px input
    logits, _ = DeepLabV3PlusHead(CHANNELS, STRIDES, num_classes=2)(feats)
    assert logits.shape == (2, 2, 17, 17)


@pytest.mark.parametrize(
    "norm, cls", [("bn", nn.BatchNorm2d), ("syncbn", nn.SyncBatchNorm), ("gn", nn.GroupNorm)]
)
def test_norm_options(norm, cls):
    head = create_head("deeplabv3plus", CHANNELS, STRIDES, 3, norm=norm)
    norms = [m for m in head.modules() if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm))]
    assert norms and all(type(m) is cls for m in norms)
    logits, _ = head.train()(_features())  # SyncBatchNorm runs as BatchNorm outside torch.distributed
    assert torch.isfinite(logits).all()
    assert make_norm("gn", 48).num_groups == 16
    with pytest.raises(ValueError, match="unknown norm 'ln'"):
        make_norm("ln", 8)


def test_aspp_image_pooling_is_constant_over_space():
    aspp = ASPP(8, 4, rates=(2,), with_1x1=True).eval()
    pooled = aspp.branches[-1](torch.randn(1, 8, 6, 5))
    assert pooled.shape == (1, 4, 6, 5)
    assert torch.equal(pooled, pooled[..., :1, :1].expand_as(pooled))


def test_cdsp_aspp_head_has_class_wide_branches_and_a_conv_norm_fusion() -> None:
    from weakseg.models.heads import CDSPASPPHead

    head = CDSPASPPHead([8, 16], [4, 8], 5)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    logits, embedding = head(feats)
    assert logits.shape == (2, 5, 8, 8) and embedding.shape == (2, 25, 8, 8)
    # 1x1 branch, then 3x3 branches at the last three rates, then image pooling
    assert [b[0].kernel_size[0] for b in head.aspp.branches[:4]] == [1, 3, 3, 3]
    assert [b[0].dilation[0] for b in head.aspp.branches[1:4]] == [12, 18, 24]
    assert all(b[0].out_channels == 5 for b in head.aspp.branches[:4])
    conv, norm = head.fuse
    assert conv.bias is None and isinstance(norm, torch.nn.BatchNorm2d)
    head.eval()
    assert torch.allclose(head(feats)[0], head.fuse(head.aspp(feats[-1])))
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters())
