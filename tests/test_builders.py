"""Config -> objects: ASPP rates fitted to the crop, padding colour of grey datasets."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.builders import aspp_head_kwargs, build_dataset, build_model
from weakseg.config import load_config
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.models.heads import fit_aspp_rates


def test_fit_aspp_rates_scales_small_crops_only() -> None:
    assert fit_aspp_rates([6, 12, 18], 1.0) == [6, 12, 18]
    assert fit_aspp_rates([6, 12, 18], 128 / 513) == [1, 3, 4]
    assert fit_aspp_rates([6, 12, 18, 24], 256 / 513) == [3, 6, 9, 12]
    assert fit_aspp_rates([2], 0.01) == [1]


@pytest.mark.parametrize(("crop", "rates"), [(513, [6, 12, 18]), (128, [1, 3, 4])])
def test_deeplabv3plus_rates_follow_the_crop(crop: int, rates: list[int]) -> None:
    cfg = load_config(
        None, [f"data.crop_size=[{crop},{crop}]", "model.pretrained=null", "model.head_channels=16"]
    )
    model = build_model(cfg, num_classes=3, pretrained=False)
    assert model.head.rates == rates
    dilations = [branch[0].dilation[0] for branch in model.head.aspp.branches[1:4]]
    assert dilations == rates


def test_explicit_aspp_rates_are_kept_and_other_heads_get_none() -> None:
    cfg = load_config(None, ["data.crop_size=[128,128]", "model.aspp_rates=[6,12,18]"])
    assert aspp_head_kwargs(cfg) == {"rates": [6, 12, 18]}
    cfg = load_config(None, ["model.head=upernet"])
    assert aspp_head_kwargs(cfg) == {}


@pytest.mark.parametrize(("mode", "pad"), [("L", 0), ("RGB", None)])
def test_grey_datasets_are_padded_with_black(tmp_path, mode: str, pad: int | None) -> None:
    root = make_synthetic_dataset(tmp_path / mode, num_train=2, num_val=1, size=(24, 24), image_mode=mode)
    cfg = load_config(
        None,
        [f"data.root={root}", "data.crop_size=[40,40]", "data.scale_range=[1.0,1.0]", "data.hflip=0"],
    )
    sample = build_dataset(cfg, "train", train=True)[0]
    outside = ~sample["valid"].numpy()
    assert outside.any()
    padded = sample["image"].numpy()[:, outside] * 255
    if pad is not None:
        assert np.allclose(padded, pad)
    else:  # the ImageNet mean colour
        assert np.allclose(padded.mean(1), [124, 116, 104], atol=1)
