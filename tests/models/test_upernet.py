"""UperNet head: pyramid inputs (Swin/ResNet), single-stride inputs (ViT), structure, a hand-built forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.models import HEADS, create_head, create_segmentor
from weakseg.models.upernet import PyramidPooling, SimplePyramid, UperNetHead


def _features(channels, strides, size: int = 64, batch: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(batch, c, -(-size // s), -(-size // s)) for c, s in zip(channels, strides)]


def test_registered_in_heads():
    assert HEADS["upernet"] is UperNetHead
    assert isinstance(create_head("upernet", [8, 16], [4, 8], 3, channels=16), UperNetHead)


@pytest.mark.parametrize(
    "channels, strides, out_stride",
    [
        ([8, 16, 24, 32], [4, 8, 16, 32], 4),  # Swin / ResNet at output stride 32
        ([8, 16, 24, 32], [4, 8, 16, 16], 4),  # dilated ResNet at output stride 16
        ([24], [16], 4),  # plain ViT, one level: pyramid built from it
        ([24, 24, 24, 24], [16, 16, 16, 16], 4),  # ViT, four blocks
    ],
)
def test_shapes_strides_and_gradients(channels, strides, out_stride):
    head = UperNetHead(channels, strides, num_classes=5, channels=16).train()
    assert (head.output_stride, head.embed_dim, head.num_classes) == (out_stride, 16, 5)
    assert (head.pyramid is not None) == (len(set(strides)) == 1)
    feats = [f.requires_grad_() for f in _features(channels, strides)]
    logits, embedding = head(feats)
    assert logits.shape == (2, 5, 64 // out_stride, 64 // out_stride)
    assert embedding.shape == (2, 16, 64 // out_stride, 64 // out_stride)
    (logits.square().mean() + embedding.mean()).backward()
    assert [n for n, p in head.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)  # every level is read


def test_structure_and_initialisation():
    head = UperNetHead([8, 16, 24, 32], [4, 8, 16, 32], num_classes=3)
    assert head.embed_dim == 512 and head.ppm.scales == [1, 2, 3, 6]
    assert head.bottleneck[0].in_channels == 32 + 4 * 512 and head.bottleneck[0].kernel_size == (3, 3)
    assert [lat[0].in_channels for lat in head.laterals] == [8, 16, 24]
    assert all(lat[0].kernel_size == (1, 1) for lat in head.laterals)
    assert len(head.fpn_convs) == 3 and head.fuse[0].in_channels == 4 * 512
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert torch.count_nonzero(head.classifier.bias) == 0 and 0.007 < head.classifier.weight.std() < 0.013


def test_forward_matches_a_hand_built_upernet():
    """PPM on the top level, top-down FPN sums, 3x3 smoothing, fusion at the finest level."""
    torch.manual_seed(0)
    head = UperNetHead([4, 6, 8], [4, 8, 16], num_classes=2, channels=8, pool_scales=(1, 2)).eval()
    f0, f1, f2 = _features([4, 6, 8], [4, 8, 16], size=32)

    def up(x, ref):
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)

    pooled = [up(b(F.adaptive_avg_pool2d(f2, s)), f2) for s, b in zip((1, 2), head.ppm.branches)]
    top = head.bottleneck(torch.cat([f2, *pooled], 1))
    m1 = head.laterals[1](f1) + up(top, f1)
    m0 = head.laterals[0](f0) + up(m1, f0)
    p0, p1 = head.fpn_convs[0](m0), head.fpn_convs[1](m1)
    embedding = head.fuse(torch.cat([p0, up(p1, p0), up(top, p0)], 1))
    logits, got = head([f0, f1, f2])
    torch.testing.assert_close(got, embedding)
    torch.testing.assert_close(logits, head.classifier(embedding))


def test_simple_pyramid_rescales_a_stride16_map():
    pyramid = SimplePyramid(6, num_inputs=1).eval()
    x = torch.randn(1, 6, 5, 7)
    outs = pyramid([x])
    assert [tuple(o.shape[-2:]) for o in outs] == [(20, 28), (10, 14), (5, 7), (3, 4)]
    torch.testing.assert_close(outs[2], x)
    torch.testing.assert_close(outs[3], F.max_pool2d(x, 2, ceil_mode=True))
    four = SimplePyramid(6, num_inputs=4).eval()
    xs = [torch.randn(1, 6, 4, 4) for _ in range(4)]
    torch.testing.assert_close(four(xs)[2], xs[2])  # level i reads map i


def test_pyramid_pooling_output():
    ppm = PyramidPooling(4, 3, (1, 3)).eval()
    out = ppm(torch.randn(2, 4, 6, 6))
    assert out.shape == (2, 4 + 2 * 3, 6, 6)
    assert torch.allclose(out[:, 4:7], out[:, 4:7, :1, :1].expand(-1, -1, 6, 6))  # the 1x1 branch is constant


def test_rejects_unusable_level_layouts():
    with pytest.raises(ValueError, match="non-decreasing strides"):
        UperNetHead([8, 16], [8, 4], 3)
    with pytest.raises(ValueError, match="non-decreasing strides"):
        UperNetHead([8, 8], [16, 8], 3)
    with pytest.raises(ValueError, match="1 or 4 levels"):
        SimplePyramid(8, num_inputs=2)
    with pytest.raises(ValueError, match="share one width"):
        UperNetHead([8, 16, 8, 8], [16, 16, 16, 16], 3)


@pytest.mark.slow  # builds a timm backbone
def test_segmentor_with_cnn_backbone():
    model = create_segmentor("efficientnet_lite0", "upernet", num_classes=3, head_kwargs={"channels": 16})
    assert model.logits_stride == 4 and model.embed_dim == 16
    out = model.train()(torch.rand(2, 3, 64, 64))
    assert out["logits"].shape == (2, 3, 16, 16)
