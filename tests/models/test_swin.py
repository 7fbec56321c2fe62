"""Swin backbones: NCHW geometry at any size, output stride, freezing, local weights, UperNet on top."""

from __future__ import annotations

import pytest
import torch

from weakseg.compat import import_timm
from weakseg.io import atomic_torch_save
from weakseg.models import BACKBONES, Segmentor, create_backbone, create_head, create_segmentor
from weakseg.models.backbones import SwinBackbone, _convert_swin

TINY = "swin_tiny_patch4_window7"
# Swin-T's layout (4 stages, window 7) at a fraction of its width and depth keeps the fast tests fast;
# the factory passes these options through to timm.
SMALL = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4)}
_CACHE: dict[str, SwinBackbone] = {}


def _small() -> SwinBackbone:
    if "small" not in _CACHE:
        torch.manual_seed(0)
        _CACHE["small"] = create_backbone(TINY, output_stride=32, **SMALL)
    backbone = _CACHE["small"]
    backbone.zero_grad(set_to_none=True)
    return backbone


def test_registry_entries():
    for name in ("swin_base_patch4_window12", "swin_base_patch4_window7", TINY):
        assert name in BACKBONES


@pytest.mark.parametrize("size", [(64, 64), (70, 50), (33, 97)])
def test_geometry_nchw_at_any_size(size):
    backbone = _small().eval()
    assert isinstance(backbone, SwinBackbone)
    assert backbone.channels == [16, 32, 64, 128] and backbone.strides == [4, 8, 16, 32]
    assert backbone.output_stride == 32 and backbone.mean == (0.485, 0.456, 0.406)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, *size))
    h, w = size
    expected = [(1, c, -(-h // s), -(-w // s)) for c, s in zip(backbone.channels, backbone.strides)]
    assert [tuple(f.shape) for f in feats] == expected


def test_levels_are_the_timm_stages_normalised_and_permuted():
    backbone = _small().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        nhwc = backbone.model(x)
        feats = backbone(x)
    for f, raw, norm in zip(feats, nhwc, backbone.out_norms):
        torch.testing.assert_close(f, norm(raw).permute(0, 3, 1, 2))


def test_output_stride_32_only():
    with pytest.raises(ValueError, match="Swin Transformer has output_stride 32 only"):
        create_backbone(TINY, output_stride=16)


def test_frozen_stages():
    backbone = create_backbone(TINY, output_stride=32, frozen_stages=2, **SMALL)  # patch embedding + stage 0
    frozen = {n.split(".")[0] for n, p in backbone.model.named_parameters() if not p.requires_grad}
    assert frozen == {"patch_embed", "layers_0"}
    assert all(p.requires_grad for p in backbone.out_norms.parameters())


def test_local_weights_timm_and_original_layout(tmp_path):
    timm = import_timm()
    torch.manual_seed(1)
    reference = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, **SMALL
    )  # head + final norm too
    state = reference.state_dict()
    atomic_torch_save(tmp_path / "swin_timm.pth", state)
    backbone = create_backbone(TINY, output_stride=32, pretrained=tmp_path / "swin_timm.pth", **SMALL)
    loaded = backbone.model.state_dict()
    torch.testing.assert_close(
        loaded["layers_1.downsample.reduction.weight"], state["layers.1.downsample.reduction.weight"]
    )
    torch.testing.assert_close(
        loaded["layers_3.blocks.0.mlp.fc2.bias"], state["layers.3.blocks.0.mlp.fc2.bias"]
    )

    # the original Microsoft release: patch merging at the end of a stage, plus non-persistent buffers
    original = {}
    for key, value in state.items():
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.", f"layers.{stage - 1}.", 1)
        original[key] = value
    original["layers.0.blocks.1.attn_mask"] = torch.zeros(1)
    original["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(1)
    converted = _convert_swin(original, backbone.model)
    assert "layers_1.downsample.reduction.weight" in converted and not any(
        "attn_mask" in k for k in converted
    )
    atomic_torch_save(tmp_path / "swin_ms.pth", original)
    again = create_backbone(TINY, output_stride=32, pretrained=tmp_path / "swin_ms.pth", **SMALL)
    for key, value in again.model.state_dict().items():
        torch.testing.assert_close(value, loaded[key])


def test_upernet_on_swin_forward_backward_64():
    torch.manual_seed(0)
    backbone = _small()
    model = Segmentor(
        backbone, create_head("upernet", backbone.channels, backbone.strides, 3, channels=32)
    ).train()
    out = model(torch.rand(2, 3, 64, 64))
    assert out["logits"].shape == (2, 3, 16, 16) and out["embedding"].shape == (2, 32, 16, 16)
    (out["logits"].logsumexp(1).mean() + out["embedding"].mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.slow
def test_swin_base_window12_geometry():
    model = create_segmentor("swin_base_patch4_window12", "upernet", num_classes=21, output_stride=32)
    backbone = model.backbone
    assert backbone.channels == [128, 256, 512, 1024] and backbone.strides == [4, 8, 16, 32]
    assert backbone.model.layers_0.blocks[0].attn.window_size == (12, 12)
    assert model.logits_stride == 4 and model.embed_dim == 512
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 96, 96))
    assert out["logits"].shape == (1, 21, 24, 24)


@pytest.mark.slow
def test_swin_tiny_full_size_forward_backward_64():
    model = create_segmentor(TINY, "upernet", num_classes=3, output_stride=32, head_kwargs={"channels": 32})
    assert model.backbone.channels == [96, 192, 384, 768]
    out = model.train()(torch.rand(2, 3, 64, 64))
    assert out["logits"].shape == (2, 3, 16, 16)
    out["logits"].logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
