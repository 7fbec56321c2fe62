"""Pretrained weights: file formats, checkpoint unwrapping, prefixes, strict errors, EfficientNet package."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.compat import import_timm
from weakseg.io import DataError, atomic_torch_save, atomic_write, read_image
from weakseg.models.weights import (
    EFFICIENTNET_LITE0_STAGE_DEPTHS,
    WeightsError,
    convert_efficientnet_pytorch_keys,
    efficientnet_lite0_package_path,
    efficientnet_lite0_package_state_dict,
    load_pretrained,
    read_state_dict,
    strip_prefixes,
    unwrap_checkpoint,
)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.rand(1, 3, 5, 5))  # materialise the lazy layer
    with torch.no_grad():
        net[1].running_mean.uniform_()
    return net


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_pth_and_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    src = _net(0)
    atomic_torch_save(tmp_path / "w.pth", src.state_dict())
    atomic_write(tmp_path / "w.safetensors", lambda p: save_file(src.state_dict(), str(p)))
    for name in ("w.pth", "w.safetensors"):
        dst = _net(1)
        report = load_pretrained(dst, tmp_path / name)
        _assert_same(src, dst)
        assert report.loaded == sorted(src.state_dict()) and report.ignored == []
        assert report.source.endswith(name)


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
def test_training_checkpoint_is_unwrapped(tmp_path, wrap):
    src = _net(0)
    atomic_torch_save(tmp_path / "ckpt.pt", {wrap: src.state_dict(), "epoch": 7})
    dst = _net(1)
    load_pretrained(dst, str(tmp_path / "ckpt.pt"))
    _assert_same(src, dst)


def test_wrapper_prefixes_are_stripped():
    src = _net(0)
    state = {f"module.backbone.{k}": v for k, v in src.state_dict().items()}
    dst = _net(1)
    load_pretrained(dst, {"state_dict": state})
    _assert_same(src, dst)
    stripped = strip_prefixes({"encoder.a": torch.zeros(1), "b": torch.ones(1)}, ("encoder.",))
    assert stripped.keys() == {"a", "b"}
    with pytest.raises(WeightsError, match="two checkpoint keys become 'a'"):
        strip_prefixes({"module.a": torch.zeros(1), "a": torch.ones(1)}, ("module.",))


def test_ignored_prefixes_are_skipped_on_both_sides():
    src = _net(0)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("3.")}
    state["fc.weight"] = torch.zeros(10, 4)  # a classifier the model does not have
    dst = _net(1)
    before = dst[3].weight.clone()
    report = load_pretrained(dst, state, ignore_prefixes=("3.", "fc."))
    assert torch.equal(dst[0].weight, src[0].weight)
    assert torch.equal(dst[3].weight, before)  # ignored model keys keep their values
    assert report.ignored == ["3.bias", "3.weight", "fc.weight"]


def test_mismatch_lists_every_problem():
    state = dict(_net(0).state_dict())
    del state["0.bias"]
    state["1.weight"] = torch.ones(5)
    state["extra.weight"] = torch.ones(1)
    dst = _net(1)
    before = dst[0].weight.clone()
    with pytest.raises(WeightsError) as err:
        load_pretrained(dst, state)
    msg = str(err.value)
    assert "1 missing keys (in the model, not in the checkpoint): 0.bias" in msg
    assert "1 unexpected keys (in the checkpoint, not in the model): extra.weight" in msg
    assert "1 shape mismatches: 1.weight: checkpoint (5,) vs model (4,)" in msg
    assert isinstance(err.value, DataError)
    assert torch.equal(dst[0].weight, before)  # nothing was loaded


def test_bad_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="junk.pth: cannot read weights"):
        read_state_dict(tmp_path / "junk.pth")
    atomic_torch_save(tmp_path / "meta.pt", {"epoch": 3, "lr": 0.1})
    with pytest.raises(WeightsError, match=r"meta.pt: expected a state dict .* keys \['epoch', 'lr'\]"):
        read_state_dict(tmp_path / "meta.pt")
    with pytest.raises(WeightsError, match="got list"):
        unwrap_checkpoint([1, 2])


# --------------------------------------------------------------------------- EfficientNet-Lite0 package


@pytest.fixture(scope="module")
def lite0_classifier() -> nn.Module:
    """timm's full tf_efficientnet_lite0 classifier with the package weights (eval mode)."""
    timm = import_timm()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    report = load_pretrained(model, efficientnet_lite0_package_state_dict())
    # every tensor is used, the classifier too
    assert report.ignored == [] and report.loaded == sorted(model.state_dict())
    return model.eval()


def test_package_keys_map_one_to_one():
    raw = read_state_dict(efficientnet_lite0_package_path())
    mapped = convert_efficientnet_pytorch_keys(raw, EFFICIENTNET_LITE0_STAGE_DEPTHS)
    assert len(mapped) == len(raw) == 296
    assert torch.equal(mapped["blocks.0.0.conv_dw.weight"], raw["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.conv_pw.weight"], raw["_blocks.1._expand_conv.weight"])
    assert torch.equal(mapped["blocks.5.3.bn3.running_var"], raw["_blocks.14._bn2.running_var"])
    assert torch.equal(mapped["classifier.weight"], raw["_fc.weight"])
    with pytest.raises(WeightsError, match="unknown EfficientNet-PyTorch key '_blocks.16._bn0.weight'"):
        convert_efficientnet_pytorch_keys(
            {"_blocks.16._bn0.weight": torch.zeros(1)}, EFFICIENTNET_LITE0_STAGE_DEPTHS
        )


def test_package_weights_are_trained(lite0_classifier):
    timm = import_timm()
    torch.manual_seed(0)
    fresh = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    for key, value in lite0_classifier.state_dict().items():
        if value.is_floating_point():
            assert not torch.equal(value, fresh[key]), f"{key} still has its initial value"
    bns = [m for m in lite0_classifier.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49
    for bn in bns:  # trained statistics, not the (0, 1) initial ones
        assert bn.running_mean.abs().max() > 1e-3
        assert (bn.running_var - 1).abs().max() > 1e-2
        assert (bn.running_var >= 0).all()  # a few channels are dead (variance 0) in the TF weights


@pytest.mark.shared_data
def test_package_weights_recognise_an_airliner(lite0_classifier, shared_data):
    """An ImageNet sanity check: VOC 2007_000033 (an airliner on the ground) is classified as such."""
    rgb = read_image(shared_data / "voc-samples/VOC2012/JPEGImages/2007_000033.jpg")
    x = torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    with torch.no_grad():
        probs = lite0_classifier((x - 0.5) / 0.5).softmax(-1)[0]  # mean = std = 0.5 (TF-Lite preprocessing)
    airliner = 404  # ImageNet-1k class index
    assert int(probs.argmax()) == airliner
    assert probs[airliner] > 0.5
