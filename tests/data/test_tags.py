"""Image-level tags from label maps, cls_labels.npy and CSV files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from weakseg.data.tags import (
    load_tags_file,
    resolve_background,
    tags_from_label,
    tags_to_names,
    with_background,
    write_tags_csv,
)
from weakseg.data.voc import VOC_CLASSES
from weakseg.io import DataError

CLASSES = ["background", "cat", "dog", "person"]


def onehot(*indices: int, k: int = 4) -> np.ndarray:
    v = np.zeros(k, dtype=np.float32)
    v[list(indices)] = 1
    return v


def test_tags_from_label_skips_ignore() -> None:
    label = np.array([[0, 2, 255], [2, 2, 255]], dtype=np.uint8)
    tags = tags_from_label(label, 4)
    assert tags.dtype == np.float32
    np.testing.assert_array_equal(tags, onehot(0, 2))
    np.testing.assert_array_equal(tags_from_label(np.full((2, 2), 255, np.uint8), 4), np.zeros(4))


def test_tags_from_label_rejects_values_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"\[7\]"):
        tags_from_label(np.array([[1, 7]], dtype=np.uint8), 4)


def test_resolve_and_with_background() -> None:
    assert resolve_background(CLASSES) == 0
    assert resolve_background(["sky", "road"]) is None
    assert resolve_background(["sky", "road"], 1) == 1
    with pytest.raises(ValueError):
        resolve_background(["sky"], 3)
    np.testing.assert_array_equal(with_background(onehot(2), 0), onehot(0, 2))
    np.testing.assert_array_equal(with_background(onehot(2), None), onehot(2))
    assert tags_to_names(onehot(0, 3), CLASSES) == ["background", "person"]


def test_npy_foreground_vectors_with_irn_integer_keys(tmp_path: Path) -> None:
    fg = np.zeros(20, dtype=np.float32)
    fg[[0, 14]] = 1  # aeroplane, person (IRN's 20-dim foreground order)
    path = tmp_path / "cls_labels.npy"
    np.save(path, {2007000032: fg, "2008_000001": np.eye(20, dtype=np.float32)[19]})
    tags = load_tags_file(path, VOC_CLASSES)
    assert set(tags) == {"2007_000032", "2008_000001"}
    assert tags["2007_000032"].shape == (21,)
    assert tags_to_names(tags["2007_000032"], VOC_CLASSES) == ["background", "aeroplane", "person"]
    assert tags_to_names(tags["2008_000001"], VOC_CLASSES) == ["background", "tvmonitor"]


def test_npy_full_length_vectors_get_background(tmp_path: Path) -> None:
    path = tmp_path / "tags.npy"
    np.save(path, {"a": onehot(1), "b": onehot(0, 3)})
    tags = load_tags_file(path, CLASSES)
    np.testing.assert_array_equal(tags["a"], onehot(0, 1))
    np.testing.assert_array_equal(tags["b"], onehot(0, 3))
    # Without a background class the vectors are taken as they are.
    plain = load_tags_file(path, ["sky", "road", "car", "tree"])
    np.testing.assert_array_equal(plain["a"], onehot(1))


def test_npy_errors_name_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, {"img7": np.ones(5, dtype=np.float32)})
    with pytest.raises(DataError, match=r"bad\.npy.*'img7'.*5 values"):
        load_tags_file(path, CLASSES)
    arr = tmp_path / "array.npy"
    np.save(arr, np.ones((3, 4)))
    with pytest.raises(DataError, match="array.npy.*dict"):
        load_tags_file(arr, CLASSES)
    with pytest.raises(DataError, match="missing.npy"):
        load_tags_file(tmp_path / "missing.npy", CLASSES)
    other = tmp_path / "tags.txt"
    other.write_text("a cat\n")
    with pytest.raises(DataError, match=r"tags\.txt.*\.npy or \.csv"):
        load_tags_file(other, CLASSES)


def test_csv_names_form_with_and_without_header(tmp_path: Path) -> None:
    with_header = tmp_path / "a.csv"
    with_header.write_text("id,tags\n# a comment\nimg1,cat;person\n\nimg2,\nimg3, dog \n")
    tags = load_tags_file(with_header, CLASSES)
    np.testing.assert_array_equal(tags["img1"], onehot(0, 1, 3))
    np.testing.assert_array_equal(tags["img2"], onehot(0))
    np.testing.assert_array_equal(tags["img3"], onehot(0, 2))
    bare = tmp_path / "b.csv"
    bare.write_text("img1,cat;person")  # no header, no trailing newline
    np.testing.assert_array_equal(load_tags_file(bare, CLASSES)["img1"], onehot(0, 1, 3))


def test_csv_onehot_form(tmp_path: Path) -> None:
    path = tmp_path / "onehot.csv"
    path.write_text("id,dog,cat\nimg1,1,0\nimg2,1,1\n")
    tags = load_tags_file(path, CLASSES)
    np.testing.assert_array_equal(tags["img1"], onehot(0, 2))
    np.testing.assert_array_equal(tags["img2"], onehot(0, 1, 2))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("id,tags\nimg1,cat;horse\n", r"line 2.*'horse'"),
        ("img1,cat\nimg1,dog\n", r"line 2.*'img1' appears twice"),
        ("id,cat,dog\nimg1,1,2\n", r"line 2.*'2'.*'dog'"),
        ("id,cat,dog\nimg1,1\n", r"line 2.*expected 3 fields"),
        ("id,cat,zebra\nimg1,1,0\n", r"header.*'zebra'"),
        ("img1,cat,dog\n", r"line 1.*3 fields"),
        ("\n# only a comment\n", "no rows"),
    ],
)
def test_csv_errors_name_file_line_and_value(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "tags.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=r"tags\.csv") as info:
        load_tags_file(path, CLASSES)
    assert info.match(pattern)


@pytest.mark.parametrize("form", ["names", "onehot"])
def test_write_tags_csv_round_trip(tmp_path: Path, form: str) -> None:
    tags = {"img1": onehot(0, 1, 3), "img2": onehot(0), "img 3": onehot(0, 2)}
    path = write_tags_csv(tmp_path / f"{form}.csv", tags, CLASSES, form=form)
    assert path.is_file()
    back = load_tags_file(path, CLASSES)
    assert list(back) == list(tags)
    for sid in tags:
        np.testing.assert_array_equal(back[sid], tags[sid])
    with pytest.raises(ValueError, match="form"):
        write_tags_csv(tmp_path / "x.csv", tags, CLASSES, form="json")  # type: ignore[arg-type]
