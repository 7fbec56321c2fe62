"""Dataset formats (folder, VOC, COCO), the sample contract, validation errors and determinism."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from weakseg.data.base import SegDataset
from weakseg.data.coco import (
    COCO_CLASSES,
    COCODataset,
    coco_category_to_index,
    coco_label_map,
    decode_rle_counts,
    polygons_to_mask,
    write_coco_label_pngs,
)
from weakseg.data.folder import FolderDataset, list_splits, read_dataset_json, write_dataset_json, write_split
from weakseg.data.tags import write_tags_csv
from weakseg.data.transforms import build_train_transform
from weakseg.data.voc import VOC_CLASSES, VOCDataset, convert_sbd_to_png, read_sbd_mat
from weakseg.io import DataError, atomic_save_image, atomic_save_label_png, read_image, read_label

CLASSES = ["background", "cat", "dog"]
H, W = 20, 24
LAYOUT = {"images": "images/{id}.png", "masks": "masks/{id}.png", "scribbles": "scribbles/{id}.png"}


def toy_labels(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask (0 bg, object of class 1 or 2, ignore top row) and a scribble on it."""
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[5:15, 4:14] = 1 + index % 2
    mask[0] = 255
    scribble = np.full((H, W), 255, dtype=np.uint8)
    scribble[10, 6:12] = 1 + index % 2
    scribble[17, 2:20] = 0
    return mask, scribble


def make_folder(root: Path, ids=("a", "b", "c"), mode: str = "RGB", classes=CLASSES, **json_kw) -> Path:
    rng = np.random.default_rng(0)
    for i, sid in enumerate(ids):
        shape = (H, W, 3) if mode == "RGB" else (H, W)
        atomic_save_image(root / "images" / f"{sid}.png", rng.integers(0, 256, shape, dtype=np.uint8))
        mask, scribble = toy_labels(i)
        atomic_save_label_png(root / "masks" / f"{sid}.png", mask)
        atomic_save_label_png(root / "scribbles" / f"{sid}.png", scribble)
    write_dataset_json(
        root, classes, name="toy", layout=json_kw.pop("layout", LAYOUT), image_mode=mode, **json_kw
    )
    (root / "splits").mkdir(exist_ok=True)
    # Blank lines and no trailing newline must be tolerated.
    (root / "splits" / "train.txt").write_text("\n".join(ids[:1]) + "\n\n" + "\n".join(ids[1:]))
    return root


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "toy")


def edit_json(root: Path, **changes) -> None:
    obj = json.loads((root / "dataset.json").read_text())
    obj.update(changes)
    (root / "dataset.json").write_text(json.dumps(obj))


# ---------------------------------------------------------------------- folder format
def test_folder_sample_contract(toy: Path) -> None:
    ds = FolderDataset(toy, "train")
    assert (ds.name, ds.split, ds.classes, ds.num_classes, ds.background) == ("toy", "train", CLASSES, 3, 0)
    assert ds.ids == ["a", "b", "c"] and len(ds) == 3 and ds.ignore_index == 255
    s = ds[1]
    assert set(s) == {"image", "mask", "scribble", "valid", "tags", "id", "size"}
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    expected = torch.from_numpy(read_image(toy / "images" / "b.png").copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(s["image"], expected)
    mask, scribble = toy_labels(1)
    assert s["mask"].dtype == torch.int64 and torch.equal(s["mask"], torch.from_numpy(mask).long())
    assert torch.equal(s["scribble"], torch.from_numpy(scribble).long())
    assert s["valid"].dtype == torch.bool and s["valid"].all()
    # "auto" tags come from the scribbles; background entry is 1.
    assert s["tags"].dtype == torch.float32 and s["tags"].tolist() == [1.0, 0.0, 1.0]
    assert s["id"] == "b" and s["size"].tolist() == [H, W] and s["size"].dtype == torch.int64
    assert ds[-1]["id"] == "c"
    with pytest.raises(IndexError):
        ds[3]
    assert all(ds.has(k) for k in ("image", "mask", "scribble", "tags")) and not ds.has("pseudo")


def test_folder_grayscale_images_become_three_channels(tmp_path: Path) -> None:
    ds = FolderDataset(make_folder(tmp_path / "grey", mode="L"), "train")
    raw = ds.load_raw(0)
    assert raw["image"].shape == (H, W, 3) and raw["image"].dtype == np.uint8
    grey = read_image(tmp_path / "grey" / "images" / "a.png", mode="L")
    for c in range(3):
        np.testing.assert_array_equal(raw["image"][..., c], grey)
    assert ds[0]["image"].shape == (3, H, W)


def test_folder_load_flags_and_tag_sources(toy: Path) -> None:
    no_mask = FolderDataset(toy, "train", load_masks=False)
    assert "mask" not in no_mask[0] and not no_mask.has("mask") and no_mask.has("scribble")
    from_masks = FolderDataset(toy, "train", load_masks=False, load_scribbles=False, tags_source="masks")
    s = from_masks[0]
    assert "mask" not in s and "scribble" not in s and s["tags"].tolist() == [1.0, 1.0, 0.0]
    assert from_masks.tags_of(1).tolist() == [1.0, 0.0, 1.0]
    assert "tags" not in FolderDataset(toy, "train", tags_source="none")[0]
    csv = write_tags_csv(toy / "my_tags.csv", {"a": np.array([0, 1, 1]), "b": np.array([0, 0, 0])}, CLASSES)
    from_file = FolderDataset(toy, "train", tags_source=csv)
    assert from_file[0]["tags"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(DataError, match=r"my_tags\.csv has no entry for sample 'c'"):
        from_file.tags_of(2)
    # A tags file named in the layout wins under "auto".
    layout = dict(LAYOUT, tags="my_tags.csv")
    write_dataset_json(toy, CLASSES, name="toy", layout=layout)
    assert FolderDataset(toy, "train")[1]["tags"].tolist() == [1.0, 0.0, 0.0]


def test_folder_without_background_class(tmp_path: Path) -> None:
    classes = ["sky", "road", "car"]
    root = make_folder(
        tmp_path / "street", classes=classes, layout={"images": "images/{id}.png", "masks": "masks/{id}.png"}
    )
    ds = FolderDataset(root, "train")
    assert ds.background is None and not ds.has("scribble")
    assert ds[0]["tags"].tolist() == [1.0, 1.0, 0.0]  # from the mask: 0 and 1 present
    mask = np.full((H, W), 2, dtype=np.uint8)
    atomic_save_label_png(root / "masks" / "a.png", mask)
    # No background entry is forced (a fresh dataset: tags are cached per sample).
    assert FolderDataset(root, "train").tags_of(0).tolist() == [0.0, 0.0, 1.0]
    edit_json(root, background=1)
    assert FolderDataset(root, "train").tags_of(0).tolist() == [0.0, 1.0, 1.0]


def test_folder_maps_a_different_ignore_index_to_255(toy: Path) -> None:
    edit_json(toy, ignore_index=9)
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[:3] = 9
    atomic_save_label_png(toy / "masks" / "a.png", mask)
    got = FolderDataset(toy, "train", load_scribbles=False)[0]["mask"]
    assert (got[:3] == 255).all() and (got[3:] == 0).all()


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"classes": None}, "missing required key 'classes'"),
        ({"classes": "cat"}, "non-empty list"),
        ({"classes": ["a", "a"]}, "duplicate"),
        ({"image_mode": "CMYK"}, "image_mode"),
        ({"ignore_index": "x"}, "ignore_index"),
        ({"ignore_index": 1}, "collides"),
        ({"layout": {"masks": "m/{id}.png"}}, "'images'"),
        ({"layout": {"images": "i/{id}.png", "depth": "d/{id}.png"}}, "unknown layout key 'depth'"),
        ({"layout": {"images": "images/x.png"}}, "must contain '{id}'"),
        ({"background": 7}, "'background'"),
        ({"name": 3}, "'name'"),
    ],
)
def test_dataset_json_errors_name_the_file(toy: Path, change: dict, pattern: str) -> None:
    obj = json.loads((toy / "dataset.json").read_text())
    for key, value in change.items():
        if value is None:
            del obj[key]
        else:
            obj[key] = value
    (toy / "dataset.json").write_text(json.dumps(obj))
    with pytest.raises(DataError, match="dataset.json") as info:
        FolderDataset(toy, "train")
    assert pattern in str(info.value)


def test_dataset_json_missing_or_unparsable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset\.json not found"):
        FolderDataset(tmp_path, "train")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match=r"cannot parse .*dataset\.json"):
        read_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        read_dataset_json(tmp_path)


def test_unknown_and_empty_splits(toy: Path) -> None:
    with pytest.raises(DataError, match=r"unknown split 'test'.*splits/test\.txt.*available splits: train"):
        FolderDataset(toy, "test")
    (toy / "splits" / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"split file .*empty\.txt lists no sample ids"):
        FolderDataset(toy, "empty")


def test_missing_and_unreadable_files_name_the_file(toy: Path) -> None:
    ds = FolderDataset(toy, "train")
    (toy / "masks" / "a.png").unlink()
    with pytest.raises(DataError, match=r"mask file not found: .*masks/a\.png"):
        ds[0]
    (toy / "images" / "b.png").unlink()
    with pytest.raises(DataError, match=r"image file not found: .*images/b\.png"):
        ds[1]
    (toy / "images" / "c.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"cannot read image .*images/c\.png"):
        ds.load_raw(2)


def test_size_mismatch_names_both_files_and_sizes(toy: Path) -> None:
    atomic_save_label_png(toy / "scribbles" / "b.png", np.zeros((H + 1, W), dtype=np.uint8))
    with pytest.raises(DataError) as info:
        FolderDataset(toy, "train")[1]
    msg = str(info.value)
    assert "scribbles/b.png" in msg and "images/b.png" in msg and f"{H + 1}x{W}" in msg and f"{H}x{W}" in msg


def test_out_of_range_labels_name_file_and_values(toy: Path) -> None:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[0, 0], mask[1, 1], mask[2, 2] = 3, 17, 255
    atomic_save_label_png(toy / "masks" / "c.png", mask)
    with pytest.raises(DataError, match=r"masks/c\.png has values \[3, 17\] outside 0\.\.2"):
        FolderDataset(toy, "train")[2]


def test_verify_reports_every_problem(toy: Path) -> None:
    ds = FolderDataset(toy, "train")
    assert ds.verify() == []
    (toy / "masks" / "a.png").unlink()
    atomic_save_label_png(toy / "scribbles" / "a.png", np.full((H, W), 5, dtype=np.uint8))
    (toy / "images" / "c.png").unlink()
    atomic_save_label_png(toy / "masks" / "c.png", np.full((H, W), 9, dtype=np.uint8))
    problems = ds.verify()
    assert len(problems) == 4
    assert any("masks/a.png" in p for p in problems)
    assert any("scribbles/a.png" in p and "[5]" in p for p in problems)
    assert any("images/c.png" in p for p in problems)
    # The labels of a sample whose image is missing are still checked.
    assert any("masks/c.png" in p and "[9]" in p for p in problems)
    with pytest.raises(DataError, match=r"4 problem\(s\) in dataset 'toy' split 'train'"):
        ds.verify(raise_on_error=True)


def test_add_label_dir_for_pseudo_labels(toy: Path, tmp_path: Path) -> None:
    ds = FolderDataset(toy, "train")
    pseudo_dir = tmp_path / "pseudo_out"
    for i, sid in enumerate(ds.ids):
        atomic_save_label_png(pseudo_dir / f"{sid}_pl.png", np.full((H, W), i % 3, dtype=np.uint8))
    ds.add_label_dir("pseudo", pseudo_dir, pattern="{id}_pl.png")
    assert ds.has("pseudo") and ds[2]["pseudo"].unique().tolist() == [2]
    atomic_save_label_png(pseudo_dir / "a_pl.png", np.full((H, W), 4, dtype=np.uint8))
    with pytest.raises(DataError, match=r"a_pl\.png has values \[4\]"):
        ds[0]
    with pytest.raises(DataError, match="not found"):
        ds.add_label_dir("pseudo", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="identifier"):
        ds.add_label_dir("image", pseudo_dir)
    with pytest.raises(ValueError, match="{id}"):
        ds.add_label_dir("other", pseudo_dir, pattern="fixed.png")


def test_add_map_follows_the_augmentation(toy: Path) -> None:
    def mask_as_float(raw: dict[str, np.ndarray]) -> np.ndarray:
        return np.where(raw["mask"] == 255, 0, raw["mask"]).astype(np.float32) * 10

    ds = FolderDataset(toy, "train", transform=build_train_transform(16, rotate=20), seed=3)
    ds.add_map("dist", mask_as_float)
    assert ds.has("dist") and ds.keys == ["mask", "scribble", "dist"]
    for i in range(len(ds)):
        s = ds[i]
        assert s["dist"].dtype == torch.float32 and s["dist"].shape == (16, 16)
        # Away from label edges the float map equals 10 x the (nearest) mask label.
        inner = s["valid"] & (s["mask"] != 255)
        lab = s["mask"].float() * 10
        agree = (s["dist"] - lab).abs() < 1e-3
        assert agree[inner].float().mean() > 0.6
    ds.add_map("bad", lambda raw: np.zeros((2, 2), np.float32))
    with pytest.raises(DataError, match="map 'bad'.*shape"):
        ds.load_raw(0)


def test_loader_batches_and_augmentation_is_a_function_of_seed_epoch_index(toy: Path) -> None:
    transform = build_train_transform(16, scale_range=(0.5, 1.5), rotate=15, color_jitter=0.2)
    ds = FolderDataset(toy, "train", transform=transform, seed=11)
    ds.set_epoch(2)
    a, b = ds[1], ds[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    ds.set_epoch(3)
    assert not torch.equal(ds[1]["image"], a["image"])
    other_seed = FolderDataset(toy, "train", transform=transform, seed=12)
    other_seed.set_epoch(2)
    assert not torch.equal(other_seed[1]["image"], a["image"])
    # The same numbers in worker processes (persistent across epochs) and in the main process.
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, persistent_workers=True)
    for epoch in (2, 3):
        ds.set_epoch(epoch)
        batch = next(iter(loader))
        assert batch["image"].shape == (3, 3, 16, 16) and batch["mask"].shape == (3, 16, 16)
        assert batch["tags"].shape == (3, 3) and batch["id"] == ["a", "b", "c"]
        for i in range(3):
            assert torch.equal(batch["image"][i], ds[i]["image"])
            assert torch.equal(batch["scribble"][i], ds[i]["scribble"])


def test_decoded_cache_returns_the_same_samples_and_reads_files_once(toy: Path, monkeypatch) -> None:
    import weakseg.data.base as base

    reads = []
    real_read = base.read_image_rgb
    monkeypatch.setattr(
        base, "read_image_rgb", lambda path, mode="RGB": reads.append(path) or real_read(path, mode)
    )

    def scaled_mask(raw: dict[str, np.ndarray]) -> np.ndarray:
        return raw["mask"].astype(np.float32) / 7

    transform = build_train_transform(16, scale_range=(0.5, 1.5), rotate=15, color_jitter=0.2)
    plain = FolderDataset(toy, "train", transform=transform, seed=5)
    cached = FolderDataset(toy, "train", transform=transform, seed=5)
    for ds in (plain, cached):
        ds.add_map("dist", scaled_mask)
    cached.cache_decoded(64)
    for epoch in range(3):
        for ds in (plain, cached):
            ds.set_epoch(epoch)
        for i in range(len(plain)):
            a, b = plain[i], cached[i]
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], key
    assert len(reads) == 3 * len(plain) + len(cached)  # the cached set read each image once
    # callers may edit what load_raw returns: the cache keeps its own copy
    raw = cached.load_raw(0)
    raw["image"][:] = 0
    assert np.array_equal(cached.load_raw(0)["image"], plain.load_raw(0)["image"])
    # a new map clears the cache (its samples lack the map)
    cached.add_map("twice", lambda raw: scaled_mask(raw) * 2)
    assert cached._cache_bytes == 0 and "twice" in cached.load_raw(1)


def test_decoded_cache_keeps_to_its_budget(toy: Path) -> None:
    ds = FolderDataset(toy, "train")
    one = sum(v.nbytes for v in ds.load_raw(0).values())
    ds.cache_decoded(1.5 * one / 2**20)  # room for one sample, not two
    for i in range(len(ds)):
        ds.load_raw(i)
    assert list(ds._cache) == [0] and ds._cache_bytes == one
    ds.cache_decoded(0)  # off: everything is dropped
    assert ds._cache == {} and ds._cache_bytes == 0
    ds.load_raw(1)
    assert ds._cache == {}
    with pytest.raises(ValueError, match=">= 0"):
        ds.cache_decoded(-1)


def test_write_dataset_json_and_split_helpers(tmp_path: Path) -> None:
    path = write_dataset_json(tmp_path, ["background", "x"], name="gen", extra={"source": "unit test"})
    obj = json.loads(path.read_text())
    assert (
        obj["background"] == 0 and obj["layout"]["masks"] == "masks/{id}.png" and obj["source"] == "unit test"
    )
    spec = read_dataset_json(tmp_path)
    assert spec.name == "gen" and spec.extra == {"source": "unit test"}
    with pytest.raises(DataError, match="image_mode"):
        write_dataset_json(tmp_path, ["a"], image_mode="RGBA")
    assert not (tmp_path / "splits").exists()
    write_split(tmp_path, "val", ["p", "q"])
    assert (tmp_path / "splits" / "val.txt").read_text() == "p\nq\n" and list_splits(tmp_path) == ["val"]
    with pytest.raises(ValueError, match="sample ids"):
        write_split(tmp_path, "bad", ["ok", " padded"])


# ---------------------------------------------------------------------- VOC layout
def make_voc(root: Path, ids=("2007_000001", "2008_000002")) -> Path:
    rng = np.random.default_rng(1)
    for i, sid in enumerate(ids):
        atomic_save_image(root / "JPEGImages" / f"{sid}.jpg", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        mask = np.zeros((H, W), dtype=np.uint8)
        mask[4:12, 3:9] = 15 if i == 0 else 20
        mask[12, :] = 255
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[15] = (192, 128, 128)
        atomic_save_label_png(root / "SegmentationClass" / f"{sid}.png", mask, palette=palette)
        scribble = np.full((H, W), 255, dtype=np.uint8)
        scribble[8, 4:8] = 7
        scribble[18, :] = 0
        atomic_save_label_png(root / "pascal_2012_scribble" / f"{sid}.png", scribble)
    # DeepLab-style list file: image and label paths per line.
    lines = [f"/JPEGImages/{sid}.jpg /SegmentationClassAug/{sid}.png" for sid in ids]
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(lines))
    return root


def test_voc_layout(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC2012")
    ds = VOCDataset(root, "train")
    assert (
        ds.ids == ["2007_000001", "2008_000002"] and ds.classes == list(VOC_CLASSES) and ds.num_classes == 21
    )
    s = ds[0]
    assert s["image"].shape == (3, H, W)
    # Palette PNG masks are read as class indices (SegmentationClass used when there is no ...Aug).
    assert set(s["mask"].unique().tolist()) == {0, 15, 255}
    assert set(s["scribble"].unique().tolist()) == {0, 7, 255}
    assert s["tags"].nonzero().flatten().tolist() == [0, 7]  # auto: from scribbles
    assert np.flatnonzero(VOCDataset(root, "train", tags_source="masks").tags_of(1)).tolist() == [0, 20]
    fg = np.zeros(20, dtype=np.float32)
    fg[[1, 2]] = 1
    np.save(root / "cls_labels.npy", {2007000001: fg, 2008000002: fg})
    assert VOCDataset(root, "train")[0]["tags"].nonzero().flatten().tolist() == [0, 2, 3]
    no_labels = VOCDataset(root, "train", scribbles=None, load_masks=False, tags_source="none")
    assert set(no_labels[1]) == {"image", "valid", "id", "size"}
    assert ds.verify() == []


def test_voc_errors(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC2012")
    with pytest.raises(DataError, match=r"unknown split 'val'.*available splits: train"):
        VOCDataset(root, "val")
    with pytest.raises(DataError, match=r"scribble folder not found: .*pascal_2012 "):
        VOCDataset(root, "train", scribbles="xml")
    with pytest.raises(DataError, match="mask folder not found"):
        VOCDataset(root, "train", mask_dir="SegmentationClassAug")
    with pytest.raises(DataError, match="VOC root folder not found"):
        VOCDataset(tmp_path / "nope", "train")
    with pytest.raises(ValueError, match="scribbles"):
        VOCDataset(root, "train", scribbles="svg")  # type: ignore[arg-type]


@pytest.mark.skipif(
    importlib.util.find_spec("weakseg.data.scribbles") is None, reason="scribbles module absent"
)
def test_voc_xml_scribbles(tmp_path: Path) -> None:
    from weakseg.data.scribbles import read_scribble_xml

    root = make_voc(tmp_path / "VOC2012", ids=("2007_000001",))
    xml = """<annotation><size><width>24</width><height>20</height></size>
      <polygon><tag>cat</tag><point><X>4</X><Y>8</Y></point><point><X>15</X><Y>8</Y></point></polygon>
      <polygon><tag>background</tag><point><X>2</X><Y>17</Y></point><point><X>20</X><Y>17</Y></point></polygon>
    </annotation>"""
    (root / "pascal_2012").mkdir()
    (root / "pascal_2012" / "2007_000001.xml").write_text(xml)
    ds = VOCDataset(root, "train", scribbles="xml", scribble_width=1)
    scribble = ds.load_raw(0)["scribble"]
    expected = read_scribble_xml(root / "pascal_2012" / "2007_000001.xml", list(VOC_CLASSES), (H, W), width=1)
    np.testing.assert_array_equal(scribble, expected)
    assert scribble[8, 4:16].tolist() == [8] * 12 and scribble[17, 10] == 0
    assert ds.tags_of(0).nonzero()[0].tolist() == [0, 8]


def test_sbd_mat_conversion(tmp_path: Path) -> None:
    from scipy.io import savemat

    seg = np.zeros((H, W), dtype=np.uint8)
    seg[2:6, 2:6] = 12
    savemat(
        tmp_path / "2008_000123.mat", {"GTcls": {"Segmentation": seg, "CategoriesPresent": np.array([12])}}
    )
    np.testing.assert_array_equal(read_sbd_mat(tmp_path / "2008_000123.mat"), seg)
    assert convert_sbd_to_png(tmp_path, tmp_path / "out") == 1
    np.testing.assert_array_equal(read_label(tmp_path / "out" / "2008_000123.png"), seg)
    savemat(tmp_path / "bad.mat", {"other": seg})
    with pytest.raises(DataError, match=r"bad\.mat"):
        read_sbd_mat(tmp_path / "bad.mat")
    with pytest.raises(DataError, match="no SBD .mat files"):
        convert_sbd_to_png(tmp_path / "out", tmp_path / "x")


# ---------------------------------------------------------------------- COCO layout
def encode_rle_string(runs: list[int]) -> str:
    """COCO's compressed RLE string for ``runs`` (the inverse of the library's decoder)."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        while True:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | (0x20 if more else 0)) + 48))
            if not more:
                break
    return "".join(out)


def test_category_mapping_and_class_names() -> None:
    mapping = coco_category_to_index()
    assert len(mapping) == 80 and len(COCO_CLASSES) == 81
    assert sorted(mapping.values()) == list(range(1, 81))
    assert mapping[1] == 1 and mapping[13] == 12 and mapping[90] == 80 and 12 not in mapping
    assert COCO_CLASSES[mapping[1]] == "person" and COCO_CLASSES[mapping[90]] == "toothbrush"
    assert COCO_CLASSES[mapping[67]] == "dining table" and COCO_CLASSES[mapping[72]] == "tv"


def test_rle_and_polygon_rasterisation() -> None:
    np.testing.assert_array_equal(decode_rle_counts([1, 2, 3], 2, 3), [[0, 1, 0], [1, 0, 0]])
    rng = np.random.default_rng(0)
    mask = rng.random((7, 9)) < 0.4
    flat = mask.T.reshape(-1)  # column-major
    change = np.flatnonzero(np.diff(flat.astype(int))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    np.testing.assert_array_equal(decode_rle_counts(runs, 7, 9), mask)
    np.testing.assert_array_equal(decode_rle_counts(encode_rle_string(runs), 7, 9), mask)
    with pytest.raises(ValueError, match="RLE"):
        decode_rle_counts([1, 2], 2, 3)
    box = polygons_to_mask([[2, 1, 7, 1, 7, 6, 2, 6]], 8, 10)  # pixel-edge coordinates
    expected = np.zeros((8, 10), dtype=bool)
    expected[1:6, 2:7] = True
    np.testing.assert_array_equal(box, expected)
    tri = polygons_to_mask([[0, 0, 10, 0, 0, 10]], 10, 10)
    yy, xx = np.mgrid[:10, :10]
    np.testing.assert_array_equal(tri, (xx + 0.5) + (yy + 0.5) < 10)


def test_overlap_and_crowd_rules() -> None:
    left = {"category_id": 1, "segmentation": [[0, 0, 6, 0, 6, 4, 0, 4]]}
    right = {"category_id": 3, "segmentation": [[4, 0, 10, 0, 10, 4, 4, 4]]}
    crowd = {"category_id": 18, "iscrowd": 1, "segmentation": {"counts": [0, 40], "size": [4, 10]}}
    later = coco_label_map([left, right, crowd], 4, 10)
    assert later[0].tolist() == [1] * 4 + [3] * 6
    ignored = coco_label_map([left, right], 4, 10, overlap="ignore")
    assert ignored[0].tolist() == [1] * 4 + [255] * 2 + [3] * 4
    only_crowd = coco_label_map([crowd], 4, 10)
    assert (only_crowd == 255).all()
    assert (coco_label_map([crowd], 4, 10, crowd="label") == coco_category_to_index()[18]).all()
    with pytest.raises(ValueError, match="category id 12"):
        coco_label_map([{"category_id": 12, "segmentation": [[0, 0, 1, 0, 1, 1]]}], 4, 10)


def make_coco(root: Path) -> Path:
    images = [
        {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": H, "width": W},
        {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": H, "width": W},
    ]
    rle_mask = np.zeros((H, W), dtype=bool)
    rle_mask[10:14, 2:5] = True
    flat = rle_mask.T.reshape(-1)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat.astype(int))) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    anns = [
        {"id": 1, "image_id": 9, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]]},
        {"id": 2, "image_id": 9, "category_id": 90, "iscrowd": 0,
         "segmentation": {"counts": encode_rle_string(runs), "size": [H, W]}},
        {"id": 3, "image_id": 9, "category_id": 3, "iscrowd": 1,
         "segmentation": {"counts": runs, "size": [H, W]}},
    ]  # fmt: skip
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": []})
    )
    rng = np.random.default_rng(2)
    for img in images:
        atomic_save_image(
            root / "images" / "train2014" / img["file_name"], rng.integers(0, 256, (H, W, 3), np.uint8)
        )
    return root


def test_coco_label_writer_and_dataset(tmp_path: Path) -> None:
    root = make_coco(tmp_path / "coco")
    ids = write_coco_label_pngs(
        root / "annotations" / "instances_train2014.json", root / "labels" / "train2014"
    )
    assert ids == ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    label = read_label(root / "labels" / "train2014" / f"{ids[0]}.png")
    assert (label[2:6, 2:8] == 1).all() and (label[10:14, 2:5] == 80).all()
    assert set(np.unique(label).tolist()) == {0, 1, 80}  # crowd fully covered by the later instance
    assert (read_label(root / "labels" / "train2014" / f"{ids[1]}.png") == 0).all()
    ds = COCODataset(root, "train2014")  # ids derived from the label folder
    assert ds.ids == ids and ds.num_classes == 81 and ds.background == 0
    s = ds[0]
    assert s["mask"].shape == (H, W) and s["tags"].nonzero().flatten().tolist() == [0, 1, 80]
    assert ds[1]["tags"].nonzero().flatten().tolist() == [0]
    write_split(root, "train2014", ids[1:])
    assert COCODataset(root, "train2014").ids == ids[1:]
    assert COCODataset(root, "train2014", load_masks=False).tags_of(0).tolist()[0] == 1.0
    with pytest.raises(DataError, match=r"unknown split 'val2014'.*available splits: train2014"):
        COCODataset(root, "val2014")


def test_coco_writer_reports_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError, match=r"instances\.json"):
        write_coco_label_pngs(path, tmp_path / "out")
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
                "annotations": [{"image_id": 1, "category_id": 91, "segmentation": [[0, 0, 2, 0, 2, 2]]}],
            }
        )
    )
    with pytest.raises(DataError, match=r"instances\.json: image 1 \(a\.jpg\).*category id 91"):
        write_coco_label_pngs(path, tmp_path / "out")


# ---------------------------------------------------------------------- real data
@pytest.mark.shared_data
def test_voc_samples(shared_data: Path) -> None:
    root = shared_data / "voc-samples" / "VOC2012"
    train, val = VOCDataset(root, "train"), VOCDataset(root, "val")
    assert train.ids == ["2007_000032"] and val.ids == ["2007_000033"]
    assert train.verify() == [] and val.verify() == []
    s = train[0]
    assert s["image"].shape == (3, 281, 500) and s["size"].tolist() == [281, 500]
    np.testing.assert_array_equal(
        s["scribble"].numpy(), read_label(root / "pascal_2012_scribble" / "2007_000032.png")
    )
    np.testing.assert_array_equal(
        s["mask"].numpy(), read_label(root / "SegmentationClassAug" / "2007_000032.png")
    )
    assert s["tags"].nonzero().flatten().tolist() == [0, 1, 15]  # background, aeroplane, person
    assert val[0]["tags"].nonzero().flatten().tolist() == [0, 1]
    train.add_label_dir("pseudo", root / "bmp_pseudolabel")
    assert set(train[0]["pseudo"].unique().tolist()) <= {0, 1}


@pytest.mark.shared_data
def test_acdc_slices(shared_data: Path) -> None:
    ds = FolderDataset(shared_data / "acdc-scribble", "val", transform=build_train_transform(64, rotate=10))
    assert ds.image_mode == "L" and ds.background == 0 and ds.num_classes == 4
    ds.ids = ds.ids[:3]
    assert ds.verify() == []
    raw = ds.load_raw(0)
    assert np.array_equal(raw["image"][..., 0], raw["image"][..., 2])
    assert raw["mask"].shape == raw["image"].shape[:2] == raw["scribble"].shape
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["scribble"].shape == (3, 64, 64)
    assert batch["tags"][:, 0].eq(1).all()
    labelled = batch["scribble"][batch["scribble"] != 255]
    assert labelled.numel() > 0 and labelled.max() <= 3


@pytest.mark.shared_data
def test_camvid_has_no_background(shared_data: Path) -> None:
    ds = FolderDataset(shared_data / "camvid", "val")
    assert ds.background is None and ds.num_classes == 11 and not ds.has("scribble")
    s = ds[0]
    present = sorted(set(s["mask"].unique().tolist()) - {255})
    assert s["tags"].nonzero().flatten().tolist() == present


def test_datasets_pickle_for_spawned_workers(toy: Path, tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOC2012")
    for ds in (FolderDataset(toy, "train", transform=build_train_transform(8)), VOCDataset(root, "train")):
        assert isinstance(ds, SegDataset)
        ds.set_epoch(4)
        copy = pickle.loads(pickle.dumps(ds))
        assert copy.epoch == 4 and copy.ids == ds.ids
        assert torch.equal(copy[0]["image"], ds[0]["image"])
