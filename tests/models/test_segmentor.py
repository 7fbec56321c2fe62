"""Segmentor: every backbone x head forward/backward, strides, parameter groups, channels_last, autocast."""

from __future__ import annotations

import math

import pytest
import torch

from weakseg.models import (
    Backbone,
    Segmentor,
    available_backbones,
    available_heads,
    create_backbone,
    create_head,
    create_segmentor,
)

SIZE = 64
_CACHE: dict[str, Backbone] = {}

# The big backbones with the wide heads take several seconds each on a 2-core CPU; one combination per
# backbone and per head stays in the fast suite.
SLOW = {
    ("resnet101", "deeplabv2_aspp_bn"),
    ("resnet101", "deeplabv3plus"),
    ("vit_base_patch16", "deeplabv2_aspp_bn"),
    ("vit_base_patch16", "deeplabv3plus"),
}
COMBOS = [
    pytest.param(
        b, h, marks=[pytest.mark.slow] if (b, h) in SLOW or b.startswith("swin_base") else [], id=f"{b}-{h}"
    )
    for b in available_backbones()
    for h in available_heads()
]


def _backbone(name: str) -> Backbone:
    """Backbones are built once per test session (their gradients are reset by each test)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        # Swin has no dilated variant: it only runs at its native output stride 32
        _CACHE[name] = create_backbone(name, output_stride=32 if name.startswith("swin") else 16)
    backbone = _CACHE[name]
    backbone.zero_grad(set_to_none=True)
    return backbone


@pytest.mark.parametrize("backbone_name, head_name", COMBOS)
def test_forward_backward(backbone_name, head_name):
    torch.manual_seed(0)
    backbone = _backbone(backbone_name)
    model = Segmentor(
        backbone, create_head(head_name, backbone.channels, backbone.strides, num_classes=3)
    ).train()
    image = torch.rand(2, 3, SIZE, SIZE)
    out = model(image)

    side = math.ceil(SIZE / model.logits_stride)
    assert out["logits"].shape == (2, 3, side, side)
    assert out["embedding"].shape == (2, model.embed_dim, side, side)
    assert [tuple(f.shape) for f in out["features"]] == [
        (2, c, math.ceil(SIZE / s), math.ceil(SIZE / s)) for c, s in zip(backbone.channels, backbone.strides)
    ]
    assert all(torch.isfinite(t).all() for t in [out["logits"], out["embedding"], *out["features"]])

    (out["logits"].logsumexp(1).mean() + out["embedding"].mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if backbone_name.startswith("swin") and head_name != "upernet":
        # Swin normalises each returned stage separately; heads that skip a stage leave its norm unused
        missing = [n for n in missing if not n.startswith("backbone.out_norms.")]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_sets_logit_size(output_stride):
    model = create_segmentor("resnet50", "deeplabv2", num_classes=2, output_stride=output_stride).eval()
    assert model.output_stride == model.logits_stride == output_stride
    with torch.no_grad():
        out = model(torch.rand(1, 3, SIZE, SIZE))
    assert out["logits"].shape[-2:] == (SIZE // output_stride,) * 2
    assert [f.shape[-1] for f in out["features"]] == [
        SIZE // s for s in (4, 8, min(16, output_stride), output_stride)
    ]


def test_normalisation_uses_backbone_statistics():
    model = create_segmentor("efficientnet_lite0", "deeplabv2", num_classes=2)
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    image = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(model.normalize(image), image * 2 - 1)
    assert "mean" not in model.state_dict()  # derived from the backbone, not checkpointed
    with pytest.raises(ValueError, match=r"expected an image batch \[B, 3, H, W\], got shape \(3, 8, 8\)"):
        model(image[0])
    with pytest.raises(ValueError, match="expected a float image"):
        model((image * 255).to(torch.uint8))


def test_param_groups_partition_every_parameter_once():
    model = create_segmentor("efficientnet_lite0", "deeplabv3plus", num_classes=4, frozen_stages=2)
    groups = model.param_groups()
    assert set(groups) == {"backbone", "head"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in groups["head"]} == {id(p) for p in model.head.parameters()}
    trainable = model.param_groups(trainable_only=True)
    assert len(trainable["backbone"]) < len(groups["backbone"]) and trainable["head"] == groups["head"]
    assert all(p.requires_grad for ps in trainable.values() for p in ps)


def test_frozen_batchnorm_survives_segmentor_train():
    model = create_segmentor("efficientnet_lite0", "deeplabv2_aspp_bn", num_classes=2, freeze_bn=True).train()
    backbone_bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    head_bns = [m for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert backbone_bns and not any(bn.training for bn in backbone_bns)
    assert head_bns and all(bn.training for bn in head_bns)
    assert all(p.requires_grad for p in model.param_groups()["head"])


def test_channels_last_matches_contiguous():
    model = create_segmentor("efficientnet_lite0", "deeplabv3plus", num_classes=3).eval()
    image = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = model(image)["logits"]
        model = model.to(memory_format=torch.channels_last)
        assert model.head.classifier.weight.is_contiguous(memory_format=torch.channels_last)
        logits = model(image.contiguous(memory_format=torch.channels_last))["logits"]
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5)


def test_autocast_bfloat16():
    model = create_segmentor("vit_small_patch16", "deeplabv3plus", num_classes=3).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 48, 48))
        loss = out["logits"].float().logsumexp(1).mean()
    loss.backward()
    assert out["logits"].dtype == torch.bfloat16 and out["logits"].shape == (2, 3, 3, 3)
    assert torch.isfinite(out["logits"].float()).all()
    assert model.head.classifier.weight.grad.dtype == torch.float32


def test_create_segmentor_forwards_options():
    model = create_segmentor(
        "vit_small_patch16",
        "deeplabv2_aspp_bn",
        num_classes=7,
        freeze_bn=True,
        backbone_kwargs={"out_indices": [1, 3]},
        head_kwargs={"norm": "gn", "channels": 64},
    )
    assert model.backbone.block_indices == [1, 3] and len(model.backbone.model.blocks) == 4
    assert model.embed_dim == 64 and model.num_classes == 7
    assert model.head.aspp.project[1].__class__.__name__ == "GroupNorm"
    with pytest.raises(ValueError, match="unknown head"):
        create_segmentor("resnet50", "unet")
