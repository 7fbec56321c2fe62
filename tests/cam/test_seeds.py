"""Seed evaluation: threshold sweep against hand-computed cases and per-threshold confusion matrices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from weakseg.cam.inference import CamRecord
from weakseg.cam.seeds import (
    SeedSweep,
    choose_weights,
    combine_cams,
    resolve_weights,
    seed_labels,
    sfc_scores,
)
from weakseg.data import FolderDataset, write_dataset_json, write_split
from weakseg.io import DataError, atomic_save_image, atomic_save_label_png
from weakseg.metrics import ConfusionMatrix
from weakseg.tools.cam_store import cam_file, save_cams, write_cam_meta
from weakseg.tools.seed_report import evaluate_seeds, write_seed_report

# One row of six pixels; classes 0 = background, 1 = a, 2 = b; the image is tagged a and b.
CAMS = torch.tensor([[[0.9, 0.6, 0.2, 0.1, 0.0, 0.0]], [[0.0, 0.1, 0.3, 0.7, 0.4, 0.05]]])
KEYS = [1, 2]
GT = torch.tensor([[1, 1, 0, 2, 2, 0]])


def test_hand_built_background_sweep():
    sweep = SeedSweep(3, background=0, thresholds=[0.1, 0.35, 0.5])
    sweep.update(CAMS, KEYS, GT)
    res = sweep.compute(["background", "a", "b"])
    # t=0.10: pred [1,1,2,2,2,0]: IoU bg 1/2, a 1, b 2/3.   t=0.35: all right.
    # t=0.50: pred [1,1,0,2,0,0]: IoU bg 2/3, a 1, b 1/2.
    assert res["mIoU"] == pytest.approx([(0.5 + 1 + 2 / 3) / 3, 1.0, (2 / 3 + 1 + 0.5) / 3])
    assert res["best_threshold"] == 0.35 and res["best_mIoU"] == pytest.approx(1.0)
    assert res["per_class_IoU"] == {"background": 1.0, "a": 1.0, "b": 1.0}
    assert res["threshold_kind"] == "background" and res["num_pixels"] == 6


def test_hand_built_sweep_accumulates_images_and_skips_ignore():
    sweep = SeedSweep(3, background=0, thresholds=[0.1, 0.35, 0.5])
    sweep.update(CAMS, KEYS, GT)
    # Second image: tagged "a" only; a peak equal to a threshold is background (ties go to background).
    sweep.update(torch.tensor([[[0.35, 0.8, 0.2]]]), [1], torch.tensor([[1, 255, 0]]))
    sweep.update(torch.zeros(0, 1, 2), [], torch.tensor([[0, 2]]))  # no tags: all background
    m = sweep.matrices()
    # t=0.35 matrix: image 1 all right; image 2: pixel 0 (gt a, peak 0.35) -> bg, pixel 1 ignored,
    # pixel 2 right; image 3: gt 0 right, gt 2 -> bg.
    assert m[1].tolist() == [[4, 0, 0], [1, 2, 0], [1, 0, 2]]
    assert m[0][1].tolist() == [0, 3, 0]  # at t=0.10 the 0.35 pixel is foreground


def test_no_background_counts_uncertain_pixels_as_misses():
    # Classes 0 = a, 1 = b, no background; pixel peaks 0.9 (a), 0.2 (a, gt b), 0.6 (b), 0.3 (b).
    cams = torch.tensor([[[0.9, 0.2, 0.1, 0.0]], [[0.1, 0.1, 0.6, 0.3]]])
    gt = torch.tensor([[0, 1, 1, 1]])
    sweep = SeedSweep(2, background=None, thresholds=[0.0, 0.25, 0.5])
    sweep.update(cams, [0, 1], gt)
    res = sweep.compute(["a", "b"])
    # t=0:    pred [a, a, b, b]: IoU a 1/2, b 2/3.
    # t=0.25: pred [a, -, b, b]: IoU a 1, b 2/3 (the uncertain b pixel is a miss).
    # t=0.5:  pred [a, -, b, -]: IoU a 1, b 1/3.
    assert res["mIoU"] == pytest.approx([(0.5 + 2 / 3) / 2, (1 + 2 / 3) / 2, (1 + 1 / 3) / 2])
    assert res["best_threshold"] == 0.25 and res["threshold_kind"] == "uncertainty"
    assert res["coverage"] == pytest.approx([1.0, 0.75, 0.5])
    assert res["precision_mIoU"] == pytest.approx([(0.5 + 2 / 3) / 2, 1.0, 1.0])
    assert res["pixel_accuracy"] == pytest.approx(0.75)


@pytest.mark.parametrize("background", [0, None])
def test_sweep_equals_one_confusion_matrix_per_threshold(background):
    rng = np.random.default_rng(0)
    k = 5
    thresholds = [0.0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.9]
    sweep = SeedSweep(k, background, thresholds)
    extra = 1 if background is None else 0
    reference = [ConfusionMatrix(k + extra) for _ in thresholds]
    fg = [c for c in range(k) if c != background]
    for _ in range(6):
        n = int(rng.integers(0, len(fg) + 1))
        keys = np.sort(rng.choice(fg, size=n, replace=False))
        cams = torch.from_numpy(rng.random((n, 7, 9)).astype(np.float32)).round(decimals=1)  # with ties
        gt = torch.from_numpy(rng.integers(0, k, size=(7, 9)))
        gt[0, :3] = 255
        sweep.update(cams, keys, gt)
        for t, cm in zip(thresholds, reference):
            pred = seed_labels(cams if n else torch.zeros(0, 7, 9), keys, t, background)
            cm.update(torch.where(pred == 255, torch.full_like(pred, k), pred), gt)
    got = sweep.matrices()
    assert torch.equal(got, torch.stack([cm.matrix for cm in reference]))


def test_seed_labels():
    assert seed_labels(CAMS, KEYS, 0.35, 0).tolist() == [[1, 1, 0, 2, 2, 0]]
    assert seed_labels(CAMS, KEYS, 0.35, None).tolist() == [[1, 1, 255, 2, 2, 255]]
    assert seed_labels(torch.zeros(0, 1, 2), [], 0.1, 0).tolist() == [[0, 0]]


def test_combine_and_weights():
    cams = {"cam": np.array([[[1.0, 0.0]]]), "cam_proto": np.array([[[0.0, 1.0]]])}
    out = combine_cams(cams, {"cam": 1.0, "cam_proto": 0.7})
    assert torch.allclose(out, torch.tensor([[[1 / 1.7, 0.7 / 1.7]]]))
    assert resolve_weights(["cam", "cam_proto"]) == {"cam": 1.0, "cam_proto": 1.0}
    assert resolve_weights(["cam", "cam_proto"], {"cam": 1, "cam_proto": 0}) == {"cam": 1.0}
    with pytest.raises(DataError, match="unknown CAM type"):
        resolve_weights(["cam"], {"cam_proto": 1.0})
    with pytest.raises(ValueError, match="positive"):
        resolve_weights(["cam"], {"cam": 0.0})


def _folder_dataset(root, classes, masks):
    for i, mask in enumerate(masks):
        atomic_save_image(root / "images" / f"s{i}.png", np.zeros((*mask.shape, 3), np.uint8))
        atomic_save_label_png(root / "masks" / f"s{i}.png", mask)
    write_dataset_json(root, classes)
    write_split(root, "train", [f"s{i}" for i in range(len(masks))])
    return FolderDataset(root, "train")


def test_evaluate_seeds_on_a_cam_folder(tmp_path):
    classes = ["background", "a", "b"]
    data = _folder_dataset(
        tmp_path / "data", classes, [GT.numpy().astype(np.uint8), np.array([[1, 0, 0]], np.uint8)]
    )
    cams_dir = tmp_path / "cams"
    # Stored as two CAM types whose weighted mean (1 : 3) is CAMS.
    save_cams(cam_file(cams_dir, "s0"), KEYS, {"cam": CAMS * 4, "cam_proto": torch.zeros_like(CAMS)})
    save_cams(
        cam_file(cams_dir, "s1"),
        [1],
        {"cam": torch.tensor([[[1.6, 0.0, 0.0]]]), "cam_proto": torch.zeros(1, 1, 3)},
    )
    write_cam_meta(
        cams_dir,
        {
            "classes": classes,
            "background": 0,
            "cam_keys": ["cam", "cam_proto"],
            "weights": {"cam": 1, "cam_proto": 3},
        },
    )
    res = evaluate_seeds(cams_dir, data, thresholds=[0.1, 0.35, 0.5], progress=False)
    assert res["best_threshold"] == 0.35 and res["best_mIoU"] == pytest.approx(1.0)
    assert res["weights"] == {"cam": 1.0, "cam_proto": 3.0} and res["num_images"] == 2
    only_cam = evaluate_seeds(
        cams_dir, data, weights={"cam": 1.0}, thresholds=[0.1, 0.35, 0.5], progress=False
    )
    # cam alone is 4x larger: pixel 2 (b at 1.2) stays foreground at every threshold, so at best
    # (t = 0.35, where pixel 5's 0.2 turns background) IoU bg 3/4, a 1, b 2/3.
    assert only_cam["best_threshold"] == 0.35
    assert only_cam["best_mIoU"] == pytest.approx((0.75 + 1 + 2 / 3) / 3)
    written = write_seed_report(res, tmp_path / "report")
    assert all(p.is_file() for p in written.values())
    saved = json.loads((tmp_path / "report" / "seeds.json").read_text())
    assert saved["best_threshold"] == 0.35 and saved["thresholds"] == [0.1, 0.15, 0.35, 0.5]
    # IRN's fixed 0.15 is added to the sweep and reported apart from the oracle best: pixel 4 of s0
    # (b at 0.4 x 3/4 = 0.3 > 0.15, gt b) stays right, pixel 5 (b at 0.0375) is background; s1 is right.
    # At 0.15 pixel 2 (b 0.225, gt bg) is wrong: IoU bg 3/4 (3 of 4), a 1, b 2/3.
    assert res["fixed_threshold"] == 0.15 and res["rule"] == "irn"
    assert res["fixed_mIoU"] == pytest.approx((0.75 + 1 + 2 / 3) / 3)
    assert res["fixed_per_class_IoU"]["b"] == pytest.approx(2 / 3) and "oracle" in res

    write_cam_meta(cams_dir, {"classes": classes, "background": None, "cam_keys": ["cam"]})
    with pytest.raises(DataError, match="background"):
        evaluate_seeds(cams_dir, data, progress=False)


def test_rule_weights_default_to_the_raw_cam_and_to_sfc_combinations():
    meta = {"cam_keys": ["cam", "M_W", "M_P"]}
    assert choose_weights(meta, "irn") == {"cam": 1.0}
    assert choose_weights(meta, "sfc") == {"M_W": 1.0, "M_P": 1.0}  # the paper's seeds
    assert choose_weights(meta, "sfc", purpose="pseudo") == {"M_W": 1.0, "M_P": 0.7}  # cam2ir.py
    assert choose_weights(meta, "irn", {"M_P": 2.0}) == {"M_P": 2.0}
    assert choose_weights({"cam_keys": ["M_W", "M_P"]}, "irn") == {"M_W": 1.0, "M_P": 1.0}  # older folders
    with pytest.raises(ValueError, match="rule"):
        choose_weights(meta, "sipe")


# SFC's rule on one image: foreground class 1 only; maps M_W and M_P with their own backgrounds.
SFC_FG = {"M_W": np.array([[[1.0, 0.5, 0.1, 0.3]]]), "M_P": np.array([[[0.8, 0.2, 0.3, 0.1]]])}
SFC_BG = {"M_W": np.array([[0.0, 0.3, 1.0, 0.5]]), "M_P": np.array([[0.1, 0.9, 0.6, 0.2]])}


def test_sfc_scores_follow_make_cam():
    record = CamRecord(keys=np.array([1]), cams=SFC_FG, backgrounds=SFC_BG)
    fg, bg = sfc_scores(record, {"M_W": 1.0, "M_P": 1.0})
    # make_cam: background + 0.4, foreground x 2, per type; the types are then added (here: averaged)
    ref_fg = (2 * SFC_FG["M_W"] + 2 * SFC_FG["M_P"]) / 2
    ref_bg = ((SFC_BG["M_W"] + 0.4) + (SFC_BG["M_P"] + 0.4)) / 2
    assert torch.allclose(fg, torch.tensor(ref_fg, dtype=torch.float32))
    assert torch.allclose(bg, torch.tensor(ref_bg, dtype=torch.float32))
    with pytest.raises(DataError, match="own background"):
        sfc_scores(CamRecord(keys=np.array([1]), cams={"cam": SFC_FG["M_W"]}), {"cam": 1.0})


def test_evaluate_seeds_by_sfc_rule(tmp_path):
    classes = ["background", "a"]
    gt = np.array([[1, 0, 0, 1]], np.uint8)
    data = _folder_dataset(tmp_path / "data", classes, [gt])
    cams_dir = tmp_path / "cams"
    save_cams(
        cam_file(cams_dir, "s0"),
        [1],
        {"cam": np.array([[[1.0, 0.1, 0.1, 0.2]]]), **SFC_FG},
        backgrounds=SFC_BG,
    )
    meta = {"classes": classes, "background": 0, "cam_keys": ["cam", "M_W", "M_P"]}
    write_cam_meta(cams_dir, {**meta, "backgrounds": ["M_W", "M_P"]})
    res = evaluate_seeds(cams_dir, data, rule="sfc", progress=False)
    # M_W + M_P: fg 2 x mean = (1.8, 0.7, 0.4, 0.4), bg mean + 0.4 = (0.45, 1.0, 1.2, 0.75):
    # seeds (a, bg, bg, bg) against gt (a, bg, bg, a): IoU bg 2/3, a 1/2.
    assert res["rule"] == "sfc" and res["weights"] == {"M_W": 1.0, "M_P": 1.0}
    assert res["thresholds"] == [0.0] and res["fixed_threshold"] == 0.0
    assert res["fixed_mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # M_P alone (eval_cam.py): fg (1.6, 0.4, 0.6, 0.2), bg (0.5, 1.3, 1.0, 0.6): (a, bg, bg, bg) again
    only_p = evaluate_seeds(cams_dir, data, rule="sfc", weights={"M_P": 1.0}, progress=False)
    assert only_p["fixed_mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # t = an extra background offset: margins fg - bg = (1.35, -0.3, -0.8, -0.35); at t = -0.32 pixel 2
    # turns a: seeds (a, a, bg, bg), IoU a 1/3, bg 1/3
    shifted = evaluate_seeds(cams_dir, data, rule="sfc", thresholds=[-0.32, 0.0], progress=False)
    assert shifted["mIoU"] == pytest.approx([1 / 3, (2 / 3 + 1 / 2) / 2]) and shifted["best_threshold"] == 0.0
    # the raw CAM has no background of its own: rule irn only
    with pytest.raises(DataError, match="own background"):
        evaluate_seeds(cams_dir, data, rule="sfc", weights={"cam": 1.0}, progress=False)
    irn = evaluate_seeds(cams_dir, data, progress=False)  # default: the raw CAM at IRN's 0.15
    assert irn["weights"] == {"cam": 1.0} and irn["fixed_mIoU"] == pytest.approx(1.0)


def test_sfc_rule_without_background_is_the_plain_argmax(tmp_path):
    classes = ["a", "b"]
    data = _folder_dataset(tmp_path / "data", classes, [np.array([[0, 1, 1]], np.uint8)])
    cams_dir = tmp_path / "cams"
    save_cams(cam_file(cams_dir, "s0"), [0, 1], {"M_W": np.array([[[0.9, 0.2, 0.0]], [[0.1, 0.6, 0.0]]])})
    write_cam_meta(cams_dir, {"classes": classes, "background": None, "cam_keys": ["M_W"]})
    res = evaluate_seeds(cams_dir, data, rule="sfc", progress=False)
    # arg-max (a, b, -): the last pixel scores 0 for both, so it is unlabelled (a miss): IoU a 1, b 1/2
    assert res["fixed_threshold"] == 0.0 and res["threshold_kind"] == "uncertainty"
    assert res["fixed_mIoU"] == pytest.approx(0.75) and res["fixed_coverage"] == pytest.approx(2 / 3)
