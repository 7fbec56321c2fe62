"""The CAM classifier: outputs, tag-free logits, background layouts, undilation, freezing, SFC heads."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from weakseg.models.classifier import (
    CAMClassifier,
    cam_seed_logits,
    create_cam_classifier,
    remove_dilation,
)


@pytest.fixture(scope="module")
def lite() -> CAMClassifier:
    torch.manual_seed(0)
    return create_cam_classifier(
        "efficientnet_lite0", num_classes=4, pcm=True, side_channels=[8, 8, 16, 16]
    ).eval()


def test_outputs_shapes_and_scores(lite: CAMClassifier) -> None:
    image = torch.rand(2, 3, 64, 48)
    out = lite(image)
    assert lite.num_foreground == 3 and lite.logits_stride == 16
    assert out["cls_logits"].shape == (2, 3)
    assert out["cam"].shape == (2, 3, 4, 3)
    assert out["logits"].shape == (2, 4, 4, 3)
    assert out["pcm_embedding"].shape == (2, 320, 4, 3)
    assert out["side_embedding"].shape == (2, 48, 4, 3)
    assert [f.shape[1] for f in out["features"]] == [24, 40, 112, 320]
    assert torch.allclose(out["cls_logits"], out["cam"].mean(dim=(2, 3)), atol=1e-6)
    # every side level is L2-normalised per pixel before the (here trivial) resize
    for lo, hi in ((0, 8), (8, 16), (16, 32), (32, 48)):
        norms = out["side_embedding"][:, lo:hi].norm(dim=1)
        assert (norms < 1 + 1e-4).all() and (norms > 0.5).all()


def test_logits_are_the_tag_free_normalised_cam_with_a_threshold_background(lite: CAMClassifier) -> None:
    out = lite(torch.rand(1, 3, 64, 64))
    logits, cam = out["logits"], out["cam"]
    assert torch.equal(logits[:, 0], torch.full_like(logits[:, 0], lite.bg_threshold))
    fg = cam.relu() / (cam.relu().amax(dim=(2, 3), keepdim=True) + 1e-5)
    assert torch.allclose(logits[:, 1:], fg, atol=1e-6)
    assert float(logits[:, 1:].max()) <= 1.0 and float(logits[:, 1:].min()) >= 0.0


def test_cam_seed_logits_with_tags_and_background_layouts() -> None:
    cam = torch.tensor([[[[2.0, 0.1]], [[1.0, 4.0]]]])  # two foreground classes, two pixels
    tags = torch.tensor([[1.0, 1.0, 0.0]])  # background, class 1 tagged, class 2 not
    out = cam_seed_logits(cam, num_classes=3, background=0, bg_threshold=0.2, tags=tags)
    assert torch.allclose(out[0, :, 0], torch.tensor([[0.2, 0.2], [1.0, 0.05], [-1.0, -1.0]]), atol=1e-5)
    assert out.argmax(1).tolist() == [[[1, 0]]]
    # background at index 2: [class 0, class 1, background]
    moved = cam_seed_logits(cam, num_classes=3, background=2, bg_threshold=0.2)
    assert torch.allclose(moved[:, 2], torch.full((1, 1, 2), 0.2))
    assert moved.argmax(1).tolist() == [[[0, 1]]]
    # no background: the maps alone
    assert cam_seed_logits(cam, num_classes=2, background=None).shape == (1, 2, 1, 2)
    with pytest.raises(ValueError, match="foreground maps"):
        cam_seed_logits(cam, num_classes=4, background=0)


def test_dataset_without_background_gets_a_channel_per_class() -> None:
    model = create_cam_classifier("efficientnet_lite0", num_classes=3, background=None).eval()
    out = model(torch.rand(1, 3, 32, 32))
    assert out["cls_logits"].shape == (1, 3) and out["logits"].shape == (1, 3, 2, 2)


def test_remove_dilation_keeps_weights_and_sizes() -> None:
    torch.manual_seed(0)
    dilated = create_cam_classifier("efficientnet_lite0", num_classes=3, dilated=True).eval()
    plain = copy.deepcopy(dilated)
    assert remove_dilation(plain) == 4  # the depthwise convs of the two stride-capped stages
    assert any(m.dilation != (1, 1) for m in dilated.modules() if isinstance(m, nn.Conv2d))
    assert all(m.dilation == (1, 1) for m in plain.modules() if isinstance(m, nn.Conv2d))
    x = torch.rand(1, 3, 64, 64)
    a, b = dilated(x), plain(x)
    assert [f.shape for f in a["features"]] == [f.shape for f in b["features"]]
    assert not torch.allclose(a["cam"], b["cam"])  # the receptive field changed, the weights did not
    conv = nn.Conv2d(2, 2, 3, padding=1, dilation=2)  # not the 'same' padding of its dilation
    with pytest.raises(ValueError, match="undilate"):
        remove_dilation(conv)


def test_resnet50_as_sfc_configures_it() -> None:
    # torchvision's ImageNet weights through timm's tag, as IRN/SFC (not fetched here: pretrained=None)
    model = create_cam_classifier("resnet50.tv_in1k", num_classes=21, frozen_stages=3, freeze_bn=True,
                                  pcm=True, side_channels=[128, 128, 256, 256])  # fmt: skip
    assert model.backbone.name == "resnet50.tv_in1k"
    assert model.backbone.model.pretrained_cfg["tag"] == "tv_in1k"
    conv2 = model.backbone.model.layer4[1].conv2
    assert conv2.dilation == (1, 1) and conv2.padding == (1, 1) and model.output_stride == 16
    for name, p in model.backbone.model.named_parameters():
        # stem, layer1 and layer2 frozen; the BatchNorm gamma/beta of layer3/layer4 train (IRN's optimiser
        # includes them; only their statistics are fixed)
        frozen = name.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")
        assert p.requires_grad != frozen, name
    groups = model.param_groups()
    head = {id(p) for p in groups["head"]}
    assert head == {id(p) for m in (model.classifier, model.pcm, model.side) for p in m.parameters()}
    assert len(groups["backbone"]) + len(groups["head"]) == len(list(model.parameters()))
    assert model.classifier.weight.shape == (20, 2048, 1, 1) and model.pcm.weight.shape == (2048, 2051, 1, 1)
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_gradient_paths_of_the_sfc_heads(lite: CAMClassifier) -> None:
    model = lite
    out = model(torch.rand(2, 3, 64, 64))
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    side = list(model.side.parameters())
    # the side features see detached levels: gradient reaches the side convs, never the backbone
    grads = torch.autograd.grad(out["side_embedding"].square().sum(), backbone + side, allow_unused=True)
    assert all(g is None for g in grads[: len(backbone)])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(backbone) :])
    # the PCM embedding carries gradient into the deepest backbone level
    (g,) = torch.autograd.grad(
        out["pcm_embedding"].square().sum(), [model.backbone.model.blocks[6][0].conv_pw.weight]
    )
    assert g.abs().sum() > 0


def test_side_channels_must_match_the_levels() -> None:
    with pytest.raises(ValueError, match="levels"):
        create_cam_classifier("efficientnet_lite0", num_classes=3, side_channels=[8, 8])


def test_freeze_bn_fixes_statistics_and_trains_gamma_beta() -> None:
    torch.manual_seed(0)
    model = create_cam_classifier(
        "efficientnet_lite0", num_classes=4, frozen_stages=1, freeze_bn=True
    ).train()
    bns = {n: m for n, m in model.backbone.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert all(not m.training for m in bns.values())  # statistics fixed even in train mode
    stem, deep = bns["bn1"], bns["blocks.6.0.bn1"]
    assert not stem.weight.requires_grad and deep.weight.requires_grad and deep.bias.requires_grad
    before = {n: m.running_mean.clone() for n, m in bns.items()}
    out = model(torch.rand(2, 3, 64, 64))
    out["cls_logits"].sum().backward()
    assert all(torch.equal(m.running_mean, before[n]) for n, m in bns.items())
    assert deep.weight.grad is not None and deep.weight.grad.abs().sum() > 0 and stem.weight.grad is None
    loose = create_cam_classifier("efficientnet_lite0", num_classes=4, freeze_bn=False).train()
    assert all(m.training for m in loose.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="unknown backbone"):
        create_cam_classifier("resnet999.tv_in1k", num_classes=4)
