"""The single-stage network: outputs, CAM branch as the CAM classifier computes it, background layouts,
parameter groups, the builder and the CAM / segmentation inference tools on it."""

from __future__ import annotations

import pytest
import torch

from weakseg.builders import build_model
from weakseg.cam.inference import find_cam_keys, multiscale_cams, output_maps
from weakseg.config import load_config
from weakseg.engine.inference import predict_probs
from weakseg.models.heads import create_head
from weakseg.models.single_stage import SingleStageNetwork, create_single_stage


@pytest.fixture(scope="module")
def net() -> SingleStageNetwork:
    torch.manual_seed(0)
    return create_single_stage(
        "efficientnet_lite0", "deeplabv3plus", num_classes=4, output_stride=8, head_kwargs={"channels": 16}
    ).eval()


def test_outputs_and_shapes(net: SingleStageNetwork) -> None:
    out = net(torch.rand(2, 3, 64, 48))
    assert net.num_foreground == 3 and net.fg_index.tolist() == [1, 2, 3]
    assert (net.cam_stride, net.logits_stride, net.output_stride, net.embed_dim) == (8, 4, 8, 16)
    assert out["logits"].shape == (2, 4, 16, 12)
    assert out["embedding"].shape == (2, 16, 16, 12)
    assert out["cam"].shape == (2, 3, 8, 6)
    assert out["cls_logits"].shape == (2, 3)
    assert [f.shape[1] for f in out["features"]] == [24, 40, 112, 320]
    # the CAM branch: a bias-free 1x1 conv on the deepest level, image scores = its spatial mean
    assert net.classifier.bias is None
    torch.testing.assert_close(out["cam"], net.classifier(out["features"][-1]))
    torch.testing.assert_close(out["cls_logits"], out["cam"].mean(dim=(2, 3)))
    # the segmentation branch is the head's own output
    logits, embedding = net.head(out["features"])
    torch.testing.assert_close(out["logits"], logits)
    torch.testing.assert_close(out["embedding"], embedding)


def test_background_layouts() -> None:
    torch.manual_seed(0)
    no_bg = create_single_stage(
        "efficientnet_lite0", "deeplabv2", num_classes=3, background=None, output_stride=16
    )
    out = no_bg(torch.rand(1, 3, 32, 32))
    assert out["cam"].shape[1] == 3 and out["logits"].shape[1] == 3 and no_bg.fg_index.tolist() == [0, 1, 2]
    assert out["embedding"].shape[1] == 320  # DeepLab-v2: the embedding is the deepest feature
    mid = create_single_stage(
        "efficientnet_lite0", "deeplabv2", num_classes=3, background=1, output_stride=16
    )
    assert mid.fg_index.tolist() == [0, 2]
    with pytest.raises(ValueError, match="foreground"):
        create_single_stage("efficientnet_lite0", "deeplabv2", num_classes=1, background=0)


def test_head_class_count_must_match(net: SingleStageNetwork) -> None:
    head = create_head("deeplabv2", net.backbone.channels, net.backbone.strides, 5)
    with pytest.raises(ValueError, match="head predicts 5 classes"):
        SingleStageNetwork(net.backbone, head, 4)


def test_param_groups_put_both_branches_in_the_new_layers(net: SingleStageNetwork) -> None:
    groups = net.param_groups()
    head_ids = {id(p) for p in groups["head"]}
    assert id(net.classifier.weight) in head_ids
    assert all(id(p) in head_ids for p in net.head.parameters())
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in net.backbone.parameters()}
    assert len(groups["head"]) + len(groups["backbone"]) == len(list(net.parameters()))


def test_builder_makes_it_for_aal() -> None:
    cfg = load_config(
        None,
        [
            "method.name=aal",
            "model.backbone=efficientnet_lite0",
            "model.head=deeplabv3plus",
            "model.head_channels=16",
            "model.pretrained=null",
            "model.output_stride=8",
        ],
    )
    model = build_model(cfg, 5, background=None)
    assert isinstance(model, SingleStageNetwork)
    assert model.num_foreground == 5 and model.head.embed_dim == 16 and model.output_stride == 8


def test_cam_and_segmentation_tools_read_it(net: SingleStageNetwork) -> None:
    image = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        out = net(image)
    # weakseg cam: the default maps function finds exactly the CAM branch
    assert find_cam_keys(out) == ["cam"]
    assert list(output_maps(out)) == ["cam"]
    cams = multiscale_cams(net, image, scales=(1.0,), flip=False, foreground=[1, 2, 3])["cam"]
    expected = torch.nn.functional.interpolate(out["cam"].relu(), size=(32, 40), mode="bilinear")
    torch.testing.assert_close(cams, expected)
    # evaluation / predict: the segmentation logits, upsampled to the image
    probs = predict_probs(net, image, num_classes=4)
    torch.testing.assert_close(
        probs, torch.nn.functional.interpolate(out["logits"], size=(32, 40), mode="bilinear").softmax(1)
    )
