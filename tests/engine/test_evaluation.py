"""Tests for weakseg.engine.evaluation with a fake dataset and oracle / constant models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from weakseg.engine.evaluation import evaluate, write_evaluation_report
from weakseg.io import DataError, read_image, read_label
from weakseg.viz import make_palette

CLASSES = ["background", "a", "b", "c"]


class FakeDataset(Dataset):
    """Samples whose image encodes the mask: channel 0 = class id / 10 (ignore pixels encode class 0)."""

    classes = CLASSES
    num_classes = 4
    ignore_index = 255
    background = 0

    def __init__(self, masks: list[np.ndarray], ids: list[str], image_scale: int = 1):
        self.masks = [torch.as_tensor(m, dtype=torch.int64) for m in masks]
        self.ids = ids
        self.image_scale = image_scale

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> dict:
        mask = self.masks[i]
        encoded = torch.where(mask == 255, torch.zeros_like(mask), mask).float() / 10.0
        image = encoded.expand(3, *mask.shape).clone()
        if self.image_scale != 1:  # image at a lower resolution than the mask
            image = image[:, :: self.image_scale, :: self.image_scale].contiguous()
        return {
            "image": image,
            "mask": mask,
            "valid": mask != 255,
            "tags": torch.zeros(self.num_classes),
            "id": self.ids[i],
            "size": torch.tensor(mask.shape),
        }


class OracleModel(nn.Module):
    """Reads the class id back from the image and returns its one-hot (times 10) as logits."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.modes_seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.modes_seen.append(self.training)
        cls = torch.round(x[:, 0] * 10).long()
        one_hot = torch.nn.functional.one_hot(cls, self.num_classes).permute(0, 3, 1, 2).float()
        return {"logits": one_hot * self.scale}


class BackgroundModel(nn.Module):
    """Predicts class 0 everywhere, at stride 2."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, h, w = x.shape
        logits = torch.zeros(b, 4, h // 2, w // 2) + self.dummy
        logits[:, 0] = 5.0
        return {"logits": logits}


MASK_A = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 255, 0],
        [2, 2, 0, 0],
    ]
)
MASK_B = np.array(
    [
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
        [255, 255, 0, 0],
    ]
)


def _dataset(ids=("img_a", "img_b"), masks=(MASK_A, MASK_B), image_scale=1) -> FakeDataset:
    return FakeDataset(list(masks), list(ids), image_scale)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_oracle_scores_perfectly_and_restores_mode(batch_size):
    model = OracleModel()
    model.train()
    out = evaluate(model, _dataset(), batch_size=batch_size, progress=False, flip=True, scales=(1.0, 2.0))
    assert out["mIoU"] == pytest.approx(1.0)
    assert out["pixel_accuracy"] == pytest.approx(1.0)
    assert out["per_class_IoU"]["background"] == pytest.approx(1.0)
    assert out["per_class_IoU"]["a"] == pytest.approx(1.0)
    assert math.isnan(out["per_class_IoU"]["c"])  # absent everywhere: NaN, not in the mean
    assert out["num_samples"] == 2
    assert "volume_Dice" not in out  # ids are not ACDC slices
    assert model.training and model.modes_seen and not any(model.modes_seen)


def test_background_model_hand_computed():
    out = evaluate(BackgroundModel(), _dataset(), progress=False)
    # valid pixels: A has 15 (bg 7, a 4, b 4), B has 14 (bg 10, a 4): bg 17, a 8, b 4 of 29
    assert out["confusion_matrix"] == [[17, 0, 0, 0], [8, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0]]
    assert out["per_class_IoU"]["background"] == pytest.approx(17 / 29)
    assert out["per_class_IoU"]["a"] == 0.0 and out["per_class_IoU"]["b"] == 0.0
    assert out["mIoU"] == pytest.approx((17 / 29) / 3)
    assert out["pixel_accuracy"] == pytest.approx(17 / 29)
    assert out["mean_accuracy"] == pytest.approx(1 / 3)
    assert out["fwIoU"] == pytest.approx((17 / 29) ** 2)
    assert out["per_class_Dice"]["background"] == pytest.approx(34 / 46)


def test_prediction_is_compared_at_mask_resolution():
    out = evaluate(BackgroundModel(), _dataset(image_scale=2), progress=False)
    assert sum(map(sum, out["confusion_matrix"])) == 29  # every valid mask pixel counted once


def test_saved_predictions_round_trip(tmp_path):
    evaluate(OracleModel(), _dataset(), progress=False, save_dir=tmp_path)
    for sid, mask in (("img_a", MASK_A), ("img_b", MASK_B)):
        saved = read_label(tmp_path / f"{sid}.png")
        np.testing.assert_array_equal(saved, np.where(mask == 255, 0, mask))  # ignore pixels encode class 0
        assert read_image(tmp_path / "overlays" / f"{sid}.jpg").shape == (4, 4, 3)
    from PIL import Image

    with Image.open(tmp_path / "img_a.png") as img:
        assert img.mode == "P"
        assert img.getpalette()[3:6] == make_palette()[1].tolist()


def test_volume_dice_auto_for_acdc_ids():
    ids = ["patient001_frame01_slice_0", "patient001_frame01_slice_1"]
    out = evaluate(BackgroundModel(), _dataset(ids=ids), progress=False)
    vol = out["volume_Dice"]
    assert vol["num_volumes"] == 1 and vol["num_slices"] == 2
    assert list(vol["per_class"]) == ["a", "b", "c"]  # background left out
    # foreground never predicted: Dice 0 for a and b, NaN for c (absent from both)
    assert vol["per_class"]["a"] == 0.0 and vol["per_class"]["b"] == 0.0
    assert math.isnan(vol["per_class"]["c"])
    assert vol["mean_Dice"] == 0.0
    assert vol["per_volume"][0]["volume"] == "patient001_frame01"

    oracle = evaluate(OracleModel(), _dataset(ids=ids), progress=False)["volume_Dice"]
    assert oracle["mean_Dice"] == pytest.approx(1.0)
    off = evaluate(OracleModel(), _dataset(ids=ids), progress=False, volume_dice=False)
    assert "volume_Dice" not in off


def test_volume_dice_forced_on_non_slice_ids_fails_clearly():
    with pytest.raises(DataError, match="img_a"):
        evaluate(OracleModel(), _dataset(), progress=False, volume_dice=True)


def test_sample_without_mask_is_rejected():
    class NoMask(FakeDataset):
        def __getitem__(self, i):
            sample = super().__getitem__(i)
            del sample["mask"]
            return sample

    model = OracleModel().train()
    with pytest.raises(DataError, match="no 'mask'"):
        evaluate(model, NoMask([MASK_A], ["x"]), progress=False)
    assert model.training  # mode restored after the failure too


def test_report_files(tmp_path):
    ids = ["patient002_frame01_slice_0", "patient002_frame01_slice_1"]
    metrics = evaluate(BackgroundModel(), _dataset(ids=ids), progress=False)
    written = write_evaluation_report(metrics, tmp_path / "report", CLASSES)
    assert set(written) == {"json", "iou_plot", "dice_plot"}
    data = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert data["mIoU"] == pytest.approx(metrics["mIoU"])
    assert data["per_class_IoU"]["c"] is None  # NaN written as null
    assert data["volume_Dice"]["per_class"]["c"] is None
    for name in ("per_class_IoU.png", "volume_Dice.png"):
        assert (tmp_path / "report" / name).read_bytes().startswith(b"\x89PNG")

    plain = evaluate(BackgroundModel(), _dataset(), progress=False)
    assert set(write_evaluation_report(plain, tmp_path / "plain", CLASSES)) == {"json", "iou_plot"}
