"""Pseudo-labels: the IR-label rule on hand-built CAMs, CRF refinement, the derived dataset."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from weakseg.cam.pseudo_labels import PseudoLabelParams, ir_labels
from weakseg.data import FolderDataset, VOCDataset, write_dataset_json, write_split
from weakseg.io import atomic_save_image, atomic_save_label_png, read_label
from weakseg.tools.cam_store import cam_file, save_cams, write_cam_meta
from weakseg.tools.pseudo_dataset import make_pseudo_labels

NO_CRF = PseudoLabelParams(crf="none")
# One row: classes a (1) and b (2) of a dataset with background 0.
CAMS = torch.tensor([[[0.9, 0.31, 0.30, 0.2, 0.06, 0.05, 0.0]], [[0.1, 0.0, 0.1, 0.25, 0.0, 0.0, 0.5]]])


def test_background_rule_fg_bg_ignore():
    images = torch.zeros(1, 3, 1, 7, dtype=torch.uint8)
    got = ir_labels([CAMS], [[1, 2]], images, background=0, params=NO_CRF)
    # peak > 0.30: confident foreground; 0.05 < peak <= 0.30: ignore; peak <= 0.05: background.
    assert got.tolist() == [[[1, 1, 255, 255, 255, 0, 2]]]
    wider = ir_labels([CAMS], [[1, 2]], images, background=0, params=replace(NO_CRF, fg_threshold=0.2))
    assert wider.tolist() == [[[1, 1, 1, 2, 255, 0, 2]]]


def test_no_background_rule_marks_uncertain():
    images = torch.zeros(1, 3, 1, 7, dtype=torch.uint8)
    got = ir_labels(
        [CAMS], [[0, 3]], images, background=None, params=replace(NO_CRF, uncertain_threshold=0.2)
    )
    assert got.tolist() == [[[0, 0, 0, 3, 255, 255, 3]]]


def _cam2ir_reference(fg: np.ndarray, bg: np.ndarray, keys: list[int]) -> np.ndarray:
    """SFC's cam2ir.py without the CRF: arg-max over [bg, fg...] then with the background halved."""
    cams = np.concatenate([bg[None], fg])
    full_keys = np.array([0, *keys])
    fg_conf = full_keys[np.argmax(cams, axis=0)]
    cams = cams.copy()
    cams[0] *= 0.5
    bg_conf = full_keys[np.argmax(cams, axis=0)]
    conf = fg_conf.copy()
    conf[fg_conf == 0] = 255
    conf[bg_conf + fg_conf == 0] = 0
    return conf


def test_sfc_rule_follows_cam2ir():
    # biased scores as make_cam leaves them: foreground 2 M, background B + 0.4
    fg = torch.tensor([[[1.8, 0.9, 0.7, 0.2, 0.1, 1.2]], [[0.2, 0.1, 0.5, 0.3, 0.0, 1.3]]])
    bg = torch.tensor([[0.5, 1.2, 1.0, 1.1, 0.45, 0.5]])
    images = torch.zeros(1, 3, 1, 6, dtype=torch.uint8)
    got = ir_labels([fg], [[1, 2]], images, background=0, params=replace(NO_CRF, rule="sfc"), bg_scores=[bg])
    want = _cam2ir_reference(fg.numpy(), bg.numpy(), [1, 2])
    # fg map (1, bg, bg, bg, bg, 2); halved background (1, 1, 2, bg, bg, 2): ignore where they disagree
    assert want.tolist() == [[1, 255, 255, 0, 0, 2]]
    assert got[0].tolist() == want.tolist()
    with pytest.raises(ValueError, match="bg_scores"):
        ir_labels([fg], [[1, 2]], images, background=0, params=NO_CRF, bg_scores=[bg])
    with pytest.raises(ValueError, match="rule"):
        PseudoLabelParams(rule="sipe")


def test_image_without_tags_is_background_or_uncertain():
    images = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    empty = torch.zeros(0, 2, 2)
    assert ir_labels([empty], [[]], images, background=0, params=NO_CRF).tolist() == [[[0, 0], [0, 0]]]
    assert (ir_labels([empty], [[]], images, background=None, params=NO_CRF) == 255).all()


def _two_region_case():
    """A 12×12 image: left half dark, right half bright; the CAM says class 1 on the left and
    class 2 on the right, except one wrong pixel inside each half."""
    image = torch.zeros(1, 3, 12, 12, dtype=torch.uint8)
    image[..., 6:] = 200
    cams = torch.zeros(2, 12, 12)
    cams[0, :, :6] = 0.9
    cams[1, :, 6:] = 0.8
    cams[:, 3, 2] = torch.tensor([0.0, 0.9])  # b inside the a region
    cams[:, 8, 9] = torch.tensor([0.9, 0.0])  # a inside the b region
    return image, cams


@pytest.mark.parametrize("crf", ["torch", "pydensecrf"])
def test_crf_removes_isolated_wrong_pixels(crf):
    if crf == "pydensecrf":
        pytest.importorskip("pydensecrf.densecrf")
    image, cams = _two_region_case()
    raw = ir_labels([cams], [[1, 2]], image, background=0, params=NO_CRF)[0]
    assert raw[3, 2] == 2 and raw[8, 9] == 1
    refined = ir_labels([cams], [[1, 2]], image, background=0, params=PseudoLabelParams(crf=crf))[0]
    expected = torch.ones(12, 12, dtype=torch.long)
    expected[:, 6:] = 2
    assert torch.equal(refined, expected)


def test_batched_crf_with_padding_equals_one_image_at_a_time():
    image, cams = _two_region_case()
    torch.manual_seed(0)
    other = torch.rand(3, 12, 12)
    other_image = torch.randint(0, 255, (1, 3, 12, 12), dtype=torch.uint8)
    params = PseudoLabelParams(crf="torch")
    batch = ir_labels(
        [cams, other], [[1, 2], [1, 3, 4]], torch.cat([image, other_image]), background=0, params=params
    )
    alone0 = ir_labels([cams], [[1, 2]], image, background=0, params=params)
    alone1 = ir_labels([other], [[1, 3, 4]], other_image, background=0, params=params)
    assert torch.equal(batch, torch.cat([alone0, alone1]))


def test_params_check():
    with pytest.raises(ValueError, match="crf"):
        PseudoLabelParams(crf="gpu")
    with pytest.raises(ValueError, match="must not exceed"):
        PseudoLabelParams(fg_threshold=0.1, bg_threshold=0.2)


def test_pseudo_label_dataset_round_trips_through_folder_dataset(tmp_path):
    src = tmp_path / "src"
    classes = ["background", "a", "b"]
    masks = [np.array([[1, 1, 0, 2, 2, 0, 2]], np.uint8), np.array([[0, 1, 1, 0, 0, 0, 0]], np.uint8)]
    for i, mask in enumerate(masks):
        atomic_save_image(src / "images" / f"s{i}.png", np.full((1, 7, 3), 40 * i, np.uint8))
        atomic_save_label_png(src / "masks" / f"s{i}.png", mask)
    write_dataset_json(src, classes, layout={"images": "images/{id}.png", "masks": "masks/{id}.png"})
    write_split(src, "train", ["s0", "s1"])
    write_split(src, "val", ["s1"])
    cams = tmp_path / "cams"
    stored = CAMS.clone()
    stored[0, 0, 2] = 0.28  # 0.30 is not exact in float16 storage
    save_cams(cam_file(cams, "s0"), [1, 2], {"cam": stored})
    save_cams(cam_file(cams, "s1"), [1], {"cam": torch.tensor([[[0.0, 0.7, 0.5, 0.2, 0.0, 0.0, 0.0]]])})
    write_cam_meta(cams, {"classes": classes, "background": 0, "cam_keys": ["cam"]})

    out = tmp_path / "out"
    summary = make_pseudo_labels(cams, FolderDataset(src, "train"), out, params=NO_CRF, progress=False)
    assert read_label(out / "pseudo" / "s0.png").tolist() == [[1, 1, 255, 255, 255, 0, 2]]
    assert read_label(out / "pseudo" / "s1.png").tolist() == [[0, 1, 1, 255, 0, 0, 0]]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["layout"] == {
        "images": "../src/images/{id}.png",
        "masks": "../src/masks/{id}.png",
        "pseudo": "pseudo/{id}.png",
    }
    assert meta["derived_from"]["op"] == "pseudo-labels" and meta["background"] == 0
    assert (out / "splits" / "val.txt").read_text() == "s1\n"

    derived = FolderDataset(out, "train")
    sample = derived[0]
    assert sample["pseudo"].tolist() == [[1, 1, 255, 255, 255, 0, 2]]
    assert sample["mask"].tolist() == masks[0].tolist() and sample["image"].shape == (3, 1, 7)

    # Quality: 10 labelled pixels of 14, all right: s0 [1,1,-,-,-,0,2], s1 [0,1,1,-,0,0,0].
    q = summary["quality"]
    assert q["coverage"] == pytest.approx(10 / 14)
    assert q["mIoU_labelled"] == pytest.approx(1.0)
    # Counting ignored pixels as misses: bg 5 of 7 (s0 px2, s1 px3 missed), a 4 of 4, b 1 of 3.
    assert q["mIoU_ignore_as_miss"] == pytest.approx((5 / 7 + 4 / 4 + 1 / 3) / 3)
    assert json.loads((out / "pseudo_labels.json").read_text())["params"]["crf"] == "none"


def test_pseudo_labels_of_a_voc_dataset_point_back_at_voc_files(tmp_path, shared_data):
    voc = VOCDataset(shared_data / "voc-samples" / "VOC2012", "train", scribbles=None, tags_source="none")
    cams = tmp_path / "cams"
    for i, sid in enumerate(voc.ids):
        mask = voc.load_raw(i)["mask"]
        keys = [c for c in np.unique(mask) if 0 < c < 255]
        save_cams(
            cam_file(cams, sid), keys, {"cam": np.stack([(mask == c).astype(np.float32) for c in keys])}
        )
    write_cam_meta(cams, {"classes": voc.classes, "background": 0, "cam_keys": ["cam"]})
    make_pseudo_labels(cams, voc, tmp_path / "out", params=NO_CRF, progress=False)
    derived = FolderDataset(tmp_path / "out", "train")
    assert derived.spec.layout["images"].endswith("voc-samples/VOC2012/JPEGImages/{id}.jpg")
    sample = derived[0]
    mask = sample["mask"]
    expected = torch.where(mask == 255, torch.zeros_like(mask), mask)  # void pixels score 0 in every CAM
    assert torch.equal(sample["pseudo"], expected)


@pytest.mark.parametrize("background", [0, None])
@pytest.mark.parametrize("crf", ["torch", "none"])
def test_on_the_fly_labels_are_the_same_with_tagged_slots_packed(background, crf, monkeypatch):
    """``cam_pseudo_labels`` packs the tagged classes into the fewest slots on a CPU; the labels equal
    those of the one-slot-per-class layout (the GPU's), with crop padding and an image without tags."""
    from weakseg.cam import pseudo_labels as pl
    from weakseg.postprocess.crf import CRFParams

    gen = torch.Generator().manual_seed(3)
    num_classes, size = 9, (20, 24)
    fg = num_classes - (background is not None)
    cam = torch.randn(4, fg, 5, 6, generator=gen)
    tags = torch.zeros(4, num_classes)
    tags[0, [2, 5, 7]] = 1.0
    tags[1, [8]] = 1.0
    tags[2, [1, 3, 4, 6]] = 1.0  # image 3 has no tag
    if background is not None:
        tags[:, background] = 1.0
    images = (torch.rand(4, 3, *size, generator=gen) * 255).round().to(torch.uint8)
    valid = torch.ones(4, *size, dtype=torch.bool)
    valid[1, :, -5:] = False
    params = PseudoLabelParams(crf=crf, crf_params=CRFParams.pseudo_label(scale=0.5, num_iters=5))
    kwargs = dict(num_classes=num_classes, background=background, params=params, valid=valid)

    packed_calls = []
    real_pack = pl.pack_tagged_slots
    monkeypatch.setattr(pl, "pack_tagged_slots", lambda *a: packed_calls.append(1) or real_pack(*a))
    packed, scores = pl.cam_pseudo_labels(cam, tags, images, **kwargs)
    assert packed_calls and pl.packs_slots(torch.device("cpu"))
    monkeypatch.setattr(pl, "packs_slots", lambda device: False)
    per_class, scores_per_class = pl.cam_pseudo_labels(cam, tags, images, **kwargs)
    assert torch.equal(packed, per_class) and torch.equal(scores, scores_per_class)
    assert len(set(packed.unique().tolist()) - {255}) >= 4  # the rule labels several classes


def test_packing_keeps_each_images_used_slots_in_order():
    from weakseg.cam.pseudo_labels import pack_tagged_slots, packs_slots

    maps = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1, 1).expand(2, 5, 2, 3)
    classes = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    present = torch.tensor([[False, True, False, True, False], [True, False, False, False, False]])
    m, c, p = pack_tagged_slots(maps, classes, present)
    assert c.tolist() == [[2, 4], [1, 2]] and p.tolist() == [[True, True], [True, False]]
    assert m[:, :, 0, 0].tolist() == [[1.0, 3.0], [5.0, 6.0]] and m.shape == (2, 2, 2, 3)
    assert not packs_slots(torch.device("meta")) and packs_slots(torch.device("cpu"))
