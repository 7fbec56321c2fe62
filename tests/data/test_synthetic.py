"""Tests of weakseg.data.synthetic: the generated folder-format dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from weakseg.data.synthetic import make_synthetic_dataset, make_synthetic_sample, synthetic_class_names
from weakseg.io import read_image, read_label


def read_split(root: Path, split: str) -> list[str]:
    return (root / "splits" / f"{split}.txt").read_text().split()


def read_tags(root: Path) -> tuple[list[str], dict[str, list[int]]]:
    with open(root / "tags.csv", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], {row[0]: [int(v) for v in row[1:]] for row in rows[1:]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "shapes"
    return make_synthetic_dataset(root, num_train=12, num_val=4, num_test=2, size=(64, 80), seed=3)


def test_layout_and_metadata(dataset: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["classes"] == ["background", "disc", "square", "triangle"]
    assert meta["ignore_index"] == 255 and meta["image_mode"] == "RGB" and meta["background"] == 0
    assert meta["layout"] == {
        "images": "images/{id}.png",
        "masks": "masks/{id}.png",
        "scribbles": "scribbles/{id}.png",
        "tags": "tags.csv",
    }
    assert read_split(dataset, "train") == [f"train_{i:04d}" for i in range(12)]
    assert len(read_split(dataset, "val")) == 4 and len(read_split(dataset, "test")) == 2
    for split in ("train", "val", "test"):
        for sample_id in read_split(dataset, split):
            for key in ("images", "masks", "scribbles"):
                assert (dataset / meta["layout"][key].format(id=sample_id)).is_file()
    # atomic writes leave no temporary files behind
    assert not [p for p in dataset.rglob(".*") if p.is_file()]


def test_images_masks_scribbles_and_tags_agree(dataset: Path) -> None:
    header, tags = read_tags(dataset)
    assert header == ["id", "background", "disc", "square", "triangle"]
    ids = read_split(dataset, "train") + read_split(dataset, "val") + read_split(dataset, "test")
    assert sorted(tags) == sorted(ids)
    seen = np.zeros(4, dtype=bool)
    for sample_id in ids:
        image = read_image(dataset / "images" / f"{sample_id}.png")
        mask = read_label(dataset / "masks" / f"{sample_id}.png")
        scribble = read_label(dataset / "scribbles" / f"{sample_id}.png")
        assert image.shape == (64, 80, 3) and mask.shape == scribble.shape == (64, 80)
        assert mask.max() < 4  # dense: no ignore pixels
        labelled = scribble != 255
        np.testing.assert_array_equal(scribble[labelled], mask[labelled])
        present = np.bincount(mask.ravel(), minlength=4) > 0
        assert tags[sample_id] == present.astype(int).tolist()
        seen |= present
        # every region of at least 20 pixels carries a scribble
        for cls in np.flatnonzero(present):
            lab, n = ndimage.label(mask == cls, structure=np.ones((3, 3), bool))
            for k in range(1, n + 1):
                region = lab == k
                if region.sum() >= 20:
                    assert (scribble[region] == cls).any()
        assert (mask > 0).any()
        assert image.std() > 10  # textured, not flat
    assert seen.all()


def test_generation_is_deterministic_and_seed_dependent(dataset: Path, tmp_path: Path) -> None:
    again = make_synthetic_dataset(
        tmp_path / "again", num_train=12, num_val=4, num_test=2, size=(64, 80), seed=3
    )
    for sub in ("images", "masks", "scribbles"):
        for path in sorted((dataset / sub).iterdir()):
            assert path.read_bytes() == (again / sub / path.name).read_bytes(), path
    assert (dataset / "tags.csv").read_text() == (again / "tags.csv").read_text()
    other = make_synthetic_dataset(tmp_path / "other", num_train=2, num_val=0, size=(64, 80), seed=4)
    assert not np.array_equal(
        read_image(other / "images" / "train_0000.png"), read_image(dataset / "images" / "train_0000.png")
    )
    assert not (other / "splits" / "val.txt").exists()
    # val samples do not depend on how many train samples there are
    fewer = make_synthetic_dataset(tmp_path / "fewer", num_train=1, num_val=2, size=(64, 80), seed=3)
    for sample_id in ("val_0000", "val_0001"):
        assert (fewer / "masks" / f"{sample_id}.png").read_bytes() == (
            dataset / "masks" / f"{sample_id}.png"
        ).read_bytes()


def test_gray_mode_and_more_classes(tmp_path: Path) -> None:
    root = make_synthetic_dataset(
        tmp_path / "gray", num_train=6, num_val=1, image_mode="L", num_classes=6, seed=1
    )
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["image_mode"] == "L"
    assert meta["classes"] == ["background", "disc", "square", "triangle", "cross", "ring"]
    with Image.open(root / "images" / "train_0000.png") as img:
        assert img.mode == "L" and img.size == (96, 96)
    header, tags = read_tags(root)
    assert header[1:] == meta["classes"]
    for sample_id, row in tags.items():
        mask = read_label(root / "masks" / f"{sample_id}.png")
        assert row == (np.bincount(mask.ravel(), minlength=6) > 0).astype(int).tolist()


def test_sample_generator_and_argument_checks(tmp_path: Path) -> None:
    image, mask = make_synthetic_sample(np.random.default_rng(0), size=(40, 50), num_classes=3, max_shapes=2)
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8
    assert mask.shape == (40, 50) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}
    image2, mask2 = make_synthetic_sample(
        np.random.default_rng(0), size=(40, 50), num_classes=3, max_shapes=2
    )
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(mask, mask2)
    assert synthetic_class_names(2) == ["background", "disc"]
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_class_names(7)
    with pytest.raises(ValueError, match="image_mode"):
        make_synthetic_dataset(tmp_path / "bad", image_mode="CMYK")


def test_classes_are_not_separable_by_colour_alone() -> None:
    """The task is not trivial: a nearest-mean-colour classifier is far from perfect (texture matters)."""
    rng = np.random.default_rng(0)
    samples = [make_synthetic_sample(rng) for _ in range(30)]
    pixels = np.concatenate([img.reshape(-1, 3) for img, _ in samples]).astype(np.float64)
    labels = np.concatenate([m.ravel() for _, m in samples])
    means = np.stack([pixels[labels == c].mean(axis=0) for c in range(4)])
    predicted = ((pixels[:, None, :] - means[None]) ** 2).sum(-1).argmin(axis=1)
    per_class = [np.mean(predicted[labels == c] == c) for c in range(4)]
    assert np.mean(per_class) < 0.8
