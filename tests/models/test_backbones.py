"""Backbones: geometry, output stride (dilation), ViT padding/indices, pretrained loading, freezing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from weakseg.compat import import_timm
from weakseg.io import atomic_torch_save
from weakseg.models.backbones import BACKBONES, Backbone, available_backbones, create_backbone
from weakseg.models.weights import WeightsError, efficientnet_lite0_package_state_dict

GEOMETRY = {
    "resnet50": ([256, 512, 1024, 2048], [4, 8, 16, 16], (0.485, 0.456, 0.406)),
    "resnet101": ([256, 512, 1024, 2048], [4, 8, 16, 16], (0.485, 0.456, 0.406)),
    "efficientnet_lite0": ([24, 40, 112, 320], [4, 8, 16, 16], (0.5, 0.5, 0.5)),
    "vit_small_patch16": ([384], [16], (0.5, 0.5, 0.5)),
    "vit_base_patch16": ([768], [16], (0.5, 0.5, 0.5)),
    "swin_tiny_patch4_window7": ([96, 192, 384, 768], [4, 8, 16, 32], (0.485, 0.456, 0.406)),
    "swin_base_patch4_window7": ([128, 256, 512, 1024], [4, 8, 16, 32], (0.485, 0.456, 0.406)),
    "swin_base_patch4_window12": ([128, 256, 512, 1024], [4, 8, 16, 32], (0.485, 0.456, 0.406)),
}


def test_registry_names():
    assert available_backbones() == sorted(GEOMETRY) == sorted(BACKBONES)
    with pytest.raises(
        ValueError, match="unknown backbone 'resnet18'; available: efficientnet_lite0, resnet101"
    ):
        create_backbone("resnet18")


@pytest.mark.parametrize(
    "name",
    [
        "resnet50",
        pytest.param("resnet101", marks=pytest.mark.slow),
        "efficientnet_lite0",
        "vit_small_patch16",
    ],
)
def test_geometry_at_output_stride_16(name):
    channels, strides, mean = GEOMETRY[name]
    backbone = create_backbone(name).eval()
    assert isinstance(backbone, Backbone) and backbone.name == name
    assert (backbone.channels, backbone.strides, backbone.mean) == (channels, strides, mean)
    assert backbone.output_stride == 16
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 48))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 48 // s) for c, s in zip(channels, strides)]


# dilations of the last blocks of layer3 / layer4 for each output stride
RESNET_DILATIONS = {32: (1, 1), 16: (1, 2), 8: (2, 4)}


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_caps_strides_through_dilation(name, output_stride):
    backbone = create_backbone(name, output_stride=output_stride).eval()
    expected = [min(s, output_stride) for s in (4, 8, 16, 32)]
    assert backbone.strides == expected and backbone.output_stride == output_stride
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [64 // s for s in expected]
    model = backbone.model
    if name == "resnet50":
        dilations = (model.layer3[-1].conv2.dilation[0], model.layer4[-1].conv2.dilation[0])
        assert dilations == RESNET_DILATIONS[output_stride]
        assert model.layer4[0].conv2.stride[0] == (2 if output_stride == 32 else 1)
        assert model.layer3[0].conv2.stride[0] == (1 if output_stride == 8 else 2)
    else:  # the last depthwise conv of stage 7 (stride 32 undilated)
        assert model.blocks[6][0].conv_dw.dilation[0] == 32 // output_stride


def test_unsupported_output_stride():
    with pytest.raises(ValueError, match=r"resnet50: output_stride must be one of \(8, 16, 32\), got 4"):
        create_backbone("resnet50", output_stride=4)
    with pytest.raises(ValueError, match="vit_small_patch16: .* output_stride 16 only, got 8"):
        create_backbone("vit_small_patch16", output_stride=8)


def test_vit_pads_to_the_patch_grid_and_returns_chosen_blocks():
    backbone = create_backbone("vit_small_patch16", out_indices=(3, -1, 7)).eval()
    assert backbone.block_indices == [3, 7, 11]
    assert backbone.channels == [384] * 3 and backbone.strides == [16] * 3
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        feats = backbone(x)
        padded = backbone(torch.nn.functional.pad(x, (0, 10, 0, 14)))
    assert [tuple(f.shape) for f in feats] == [(1, 384, math.ceil(50 / 16), math.ceil(70 / 16))] * 3
    torch.testing.assert_close(feats[-1], padded[-1])  # padding is zeros at the bottom/right


def test_vit_drops_blocks_after_the_deepest_index():
    backbone = create_backbone("vit_small_patch16", out_indices=(5,))
    assert len(backbone.model.blocks) == 6 and backbone.block_indices == [5]
    assert len(backbone.stage_groups) == 7
    with pytest.raises(ValueError, match=r"out_indices must be block indices in \[-12, 12\), got \[12\]"):
        create_backbone("vit_small_patch16", out_indices=(12,))


# --------------------------------------------------------------------------- pretrained weights


def _assert_loaded(model: nn.Module, state: dict) -> None:
    own = model.state_dict()
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


def test_resnet_from_local_file_with_classifier_and_prefix(tmp_path):
    timm = import_timm()
    torch.manual_seed(3)
    reference = timm.create_model("resnet50", pretrained=False)  # includes fc.*, which is ignored
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    atomic_torch_save(tmp_path / "r50.pth", {"state_dict": state})
    backbone = create_backbone("resnet50", pretrained=tmp_path / "r50.pth", output_stride=8)
    _assert_loaded(backbone.model, reference.state_dict())
    assert len(backbone.model.state_dict()) == len(reference.state_dict()) - 2  # all but fc.weight/bias


def test_shape_mismatch_is_reported(tmp_path):
    timm = import_timm()
    state = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    state["blocks.2.0.conv_pw.weight"] = state["blocks.2.0.conv_pw.weight"][:64]
    atomic_torch_save(tmp_path / "bad.pth", state)
    with pytest.raises(
        WeightsError,
        match=r"(?s)bad.pth: weights do not fit backbone 'efficientnet_lite0' "
        r"\(timm 'tf_efficientnet_lite0'\):.*1 shape mismatches: "
        r"blocks.2.0.conv_pw.weight: checkpoint \(64, 24, 1, 1\) vs model \(144, 24, 1, 1\)",
    ):
        create_backbone("efficientnet_lite0", pretrained=str(tmp_path / "bad.pth"))
    with pytest.raises(WeightsError, match="none.pth: pretrained weights file does not exist"):
        create_backbone("resnet101", pretrained=str(tmp_path / "none.pth"))


def test_vit_from_local_file_resamples_position_embedding(tmp_path):
    timm = import_timm()
    reference = timm.create_model("vit_small_patch16_384", pretrained=False)  # 24 x 24 grid + class token
    atomic_torch_save(tmp_path / "vit384.pth", reference.state_dict())
    backbone = create_backbone("vit_small_patch16", pretrained=tmp_path / "vit384.pth")
    state = backbone.model.state_dict()
    assert state["pos_embed"].shape == (1, 1 + 14 * 14, 384)
    torch.testing.assert_close(state["pos_embed"][:, 0], reference.pos_embed[:, 0])  # class token untouched
    for key in state:
        if key != "pos_embed":
            assert torch.equal(state[key], reference.state_dict()[key]), key


def test_efficientnet_imagenet_weights_come_from_the_package():
    state = efficientnet_lite0_package_state_dict()
    backbone = create_backbone("efficientnet_lite0", pretrained="imagenet")
    own = backbone.model.state_dict()
    # every tensor of the feature extractor is loaded; only the 1280-channel head and classifier are unused
    assert set(state) - set(own) == {k for k in state if k.startswith(("conv_head.", "bn2.", "classifier."))}
    _assert_loaded(backbone.model, state)


def test_efficientnet_local_file_in_efficientnet_pytorch_naming(tmp_path):
    from weakseg.models.weights import efficientnet_lite0_package_path

    backbone = create_backbone("efficientnet_lite0", pretrained=efficientnet_lite0_package_path())
    _assert_loaded(backbone.model, efficientnet_lite0_package_state_dict())


# --------------------------------------------------------------------------- freezing


def _bns(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def test_freeze_bn_keeps_statistics_and_affine_fixed():
    backbone = create_backbone("efficientnet_lite0", freeze_bn=True).train()
    assert all(not bn.training for bn in _bns(backbone))
    assert all(not p.requires_grad for bn in _bns(backbone) for p in bn.parameters())
    assert backbone.model.conv_stem.weight.requires_grad
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    sum(f.mean() for f in backbone(torch.randn(2, 3, 32, 32))).backward()
    after = backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert backbone.model.conv_stem.weight.grad is not None
    assert backbone.model.bn1.weight.grad is None


def test_frozen_stages_resnet():
    backbone = create_backbone("resnet50", frozen_stages=2).train()  # stem + layer1
    model = backbone.model
    frozen = [model.conv1, model.bn1, model.layer1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in (model.layer2, model.layer4) for p in m.parameters())
    assert all(not bn.training for m in frozen for bn in _bns(m))
    assert all(bn.training for bn in _bns(model.layer2))
    with pytest.raises(ValueError, match=r"frozen_stages must lie in 0..5, got 6"):
        create_backbone("resnet50", frozen_stages=6)


def test_frozen_stages_vit_stem():
    backbone = create_backbone("vit_small_patch16", frozen_stages=2)  # embeddings + block 0
    model = backbone.model
    assert not model.cls_token.requires_grad and not model.pos_embed.requires_grad
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.blocks[0].parameters())
    assert all(p.requires_grad for p in model.blocks[1].parameters())


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0", "vit_small_patch16"])
def test_freezing_every_stage_freezes_the_whole_backbone(name):
    """The stage groups name real modules/parameters and together cover the backbone."""
    depth = {"resnet50": 5, "efficientnet_lite0": 8, "vit_small_patch16": 13}[name]  # stem + stages/blocks
    backbone = create_backbone(name, frozen_stages=depth).train()
    assert len(backbone.stage_groups) == depth
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    if name == "vit_small_patch16":  # the final LayerNorm follows the last block
        assert trainable == ["model.norm.weight", "model.norm.bias"]
    else:
        assert trainable == [] and all(not bn.training for bn in _bns(backbone))
