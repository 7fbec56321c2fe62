"""Tests for weakseg.metrics against hand-computed confusion matrices and volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from weakseg.io import DataError
from weakseg.metrics import (
    ConfusionMatrix,
    VolumeDice,
    acdc_volume_id,
    confusion_counts,
    dice_from_counts,
    frequency_weighted_iou,
    is_volume_slice_id,
    mean_accuracy,
    metrics_from_matrix,
    nanmean,
    per_class_accuracy,
    per_class_dice,
    per_class_iou,
    pixel_accuracy,
)

# rows = ground truth, columns = prediction; class 2 never occurs in gt but is predicted once;
# class 3 occurs nowhere.
MATRIX = np.array(
    [
        [5, 1, 0, 0],
        [2, 3, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)


def test_confusion_counts_rows_are_ground_truth_and_ignore_is_skipped():
    target = torch.tensor([[0, 0, 1], [1, 255, 2]])
    pred = torch.tensor([[0, 1, 1], [0, 2, 2]])
    m = confusion_counts(pred, target, num_classes=3, ignore_index=255)
    expected = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    assert m.dtype == torch.int64
    assert torch.equal(m, expected)


def test_confusion_counts_skips_out_of_range_values():
    target = torch.tensor([0, 1, 7, -1, 1])
    pred = torch.tensor([0, 1, 1, 0, 9])
    m = confusion_counts(pred, target, num_classes=2, ignore_index=None)
    assert torch.equal(m, torch.tensor([[1, 0], [0, 1]]))


def test_confusion_counts_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2)


def test_per_class_values_by_hand():
    iou = per_class_iou(MATRIX)
    # class 0: TP 5, FP 2, FN 1 -> 5/8; class 1: TP 3, FP 1, FN 3 -> 3/7
    # class 2: TP 0, FP 1 -> 0; class 3 absent -> NaN
    np.testing.assert_allclose(iou[:3], [5 / 8, 3 / 7, 0.0])
    assert math.isnan(iou[3])
    dice = per_class_dice(MATRIX)
    np.testing.assert_allclose(dice[:3], [10 / 13, 6 / 10, 0.0])
    assert math.isnan(dice[3])
    acc = per_class_accuracy(MATRIX)
    np.testing.assert_allclose(acc[:2], [5 / 6, 3 / 6])
    assert math.isnan(acc[2]) and math.isnan(acc[3])


def test_summary_values_by_hand():
    assert pixel_accuracy(MATRIX) == pytest.approx(8 / 12)
    assert mean_accuracy(MATRIX) == pytest.approx((5 / 6 + 3 / 6) / 2)
    # gt frequencies 6/12 and 6/12 for classes 0 and 1
    assert frequency_weighted_iou(MATRIX) == pytest.approx(0.5 * 5 / 8 + 0.5 * 3 / 7)
    out = metrics_from_matrix(torch.as_tensor(MATRIX))
    assert out["mIoU"] == pytest.approx((5 / 8 + 3 / 7 + 0.0) / 3)  # class 3 excluded
    assert out["mean_Dice"] == pytest.approx((10 / 13 + 0.6 + 0.0) / 3)
    assert len(out["per_class_IoU"]) == 4 and math.isnan(out["per_class_IoU"][3])
    assert set(out) >= {"mIoU", "per_class_IoU", "pixel_accuracy", "mean_accuracy", "per_class_Dice", "fwIoU"}


def test_empty_matrix_gives_nan_without_warnings():
    with np.errstate(all="raise"):
        out = metrics_from_matrix(np.zeros((3, 3), dtype=np.int64))
    assert math.isnan(out["mIoU"]) and math.isnan(out["pixel_accuracy"]) and math.isnan(out["fwIoU"])
    assert math.isnan(nanmean([]))


def test_non_square_matrix_rejected():
    with pytest.raises(ValueError, match="square"):
        per_class_iou(np.zeros((2, 3)))


def test_confusion_matrix_accumulates_and_resets():
    cm = ConfusionMatrix(3)
    gen = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 3, (2, 5, 7), generator=gen) for _ in range(3)]
    targets = [torch.randint(0, 3, (2, 5, 7), generator=gen) for _ in range(3)]
    targets[1][0, 0] = 255
    expected = np.zeros((3, 3), dtype=np.int64)
    for p, t in zip(preds, targets):
        cm.update(p, t)
        for pv, tv in zip(p.reshape(-1).tolist(), t.reshape(-1).tolist()):
            if tv != 255:
                expected[tv, pv] += 1
    assert cm.matrix.dtype == torch.int64
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    assert cm.compute()["mIoU"] == pytest.approx(float(np.nanmean(per_class_iou(expected))))
    cm.reset()
    assert int(cm.matrix.sum()) == 0


def test_confusion_matrix_perfect_prediction():
    cm = ConfusionMatrix(2)
    target = torch.tensor([[0, 1], [1, 255]])
    cm.update(target.clamp(max=1), target)
    out = cm.compute()
    assert out["mIoU"] == 1.0 and out["pixel_accuracy"] == 1.0 and out["fwIoU"] == pytest.approx(1.0)


def test_all_reduce_is_noop_without_distributed():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    cm.all_reduce()
    assert torch.equal(cm.matrix, torch.tensor([[1, 1], [0, 0]]))


def test_acdc_volume_ids():
    assert acdc_volume_id("patient091_frame01_slice_12") == "patient091_frame01"
    assert is_volume_slice_id("patient001_frame12_slice_0")
    assert not is_volume_slice_id("2007_000032")
    with pytest.raises(DataError, match="2007_000032"):
        acdc_volume_id("2007_000032")


def test_dice_from_counts_both_empty_is_nan():
    d = dice_from_counts(np.array([2, 0, 0]), np.array([3, 0, 4]), np.array([3, 0, 0]))
    np.testing.assert_allclose(d[[0, 2]], [4 / 6, 0.0])
    assert math.isnan(d[1])


def test_volume_dice_hand_computed_out_of_order_and_different_sizes():
    vd = VolumeDice(num_classes=3)  # background 0 excluded from the mean
    # volume A: two 2x3 slices, added interleaved with volume B and in reverse order
    a1_gt = np.array([[1, 1, 0], [2, 2, 0]])
    a1_pr = np.array([[1, 0, 0], [2, 2, 2]])
    a0_gt = np.array([[1, 0, 0], [0, 0, 0]])
    a0_pr = np.array([[1, 1, 0], [0, 0, 0]])
    # volume B: one 3x2 slice, class 2 absent from both -> NaN, excluded
    b_gt = np.array([[1, 1], [0, 0], [255, 0]])
    b_pr = np.array([[1, 0], [0, 0], [1, 0]])
    vd.add("patient001_frame01_slice_1", torch.as_tensor(a1_pr), torch.as_tensor(a1_gt))
    vd.add("patient002_frame12_slice_0", b_pr, b_gt)
    vd.add("patient001_frame01_slice_0", a0_pr, a0_gt)
    out = vd.compute()
    # A, class 1: |P|=1+2, |G|=2+1, |P∩G|=1+1 -> 4/6; class 2: |P|=3, |G|=2, |P∩G|=2 -> 4/5
    # B, class 1: |P|=1 (the ignore pixel is skipped), |G|=2, |P∩G|=1 -> 2/3
    vol_a, vol_b = out["per_volume"]
    assert vol_a["volume"] == "patient001_frame01" and vol_a["num_slices"] == 2
    np.testing.assert_allclose(vol_a["Dice"][1:], [4 / 6, 4 / 5])
    assert vol_b["Dice"][1] == pytest.approx(2 / 3) and math.isnan(vol_b["Dice"][2])
    assert vol_a["mean_Dice"] == pytest.approx((4 / 6 + 4 / 5) / 2)
    assert vol_b["mean_Dice"] == pytest.approx(2 / 3)
    assert out["per_class_Dice"][1] == pytest.approx((4 / 6 + 2 / 3) / 2)
    assert out["per_class_Dice"][2] == pytest.approx(4 / 5)
    assert out["per_class_num_volumes"][1:] == [2, 1]
    assert out["mean_Dice"] == pytest.approx(((4 / 6 + 2 / 3) / 2 + 4 / 5) / 2)
    assert out["num_volumes"] == 2 and out["num_slices"] == 3


def test_volume_dice_background_and_custom_grouping():
    vd = VolumeDice(num_classes=2, volume_of=lambda sid: sid.split("/")[0], include_background=True)
    vd.add("case1/a", np.array([[0, 1]]), np.array([[0, 0]]))
    out = vd.compute()
    # class 0: P={0}, G={0,1} -> 2/3; class 1: P={1}, G={} -> 0
    assert out["per_volume"][0]["volume"] == "case1"
    np.testing.assert_allclose(out["per_class_Dice"], [2 / 3, 0.0])
    assert out["mean_Dice"] == pytest.approx(1 / 3)
    vd.reset()
    assert vd.compute()["num_volumes"] == 0


def test_volume_dice_rejects_non_slice_ids_by_default():
    with pytest.raises(DataError, match="not an ACDC slice id"):
        VolumeDice(2).add("img_001", np.zeros((2, 2)), np.zeros((2, 2)))


@pytest.mark.shared_data
def test_volume_dice_matches_stacked_3d_dice_on_acdc_masks(shared_data):
    from weakseg.io import read_label

    root = shared_data / "acdc-scribble"
    ids = [i for i in (root / "splits" / "val.txt").read_text().split() if i.startswith("patient091_")]
    vd = VolumeDice(num_classes=4)
    stacks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for sid in reversed(ids):  # any slice order
        gt = read_label(root / "masks" / f"{sid}.png").astype(np.int64)
        pred = np.roll(gt, 2, axis=1)  # a prediction off by two pixels
        vd.add(sid, pred, gt)
        stacks.setdefault(acdc_volume_id(sid), []).append((pred, gt))
    out = vd.compute()
    assert out["num_volumes"] == len(stacks) == 2 and out["num_slices"] == len(ids)
    for row in out["per_volume"]:
        pred = np.concatenate([p.ravel() for p, _ in stacks[row["volume"]]])
        gt = np.concatenate([g.ravel() for _, g in stacks[row["volume"]]])
        inter = [np.sum((pred == c) & (gt == c)) for c in range(4)]
        expected = [2 * inter[c] / (np.sum(pred == c) + np.sum(gt == c)) for c in range(4)]
        np.testing.assert_allclose(row["Dice"], expected)
        assert 0.5 < row["mean_Dice"] < 1.0
