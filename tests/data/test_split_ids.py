"""Split ids cannot escape the dataset folder; duplicates are warned about and reported by verify."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.data import COCODataset, FolderDataset
from weakseg.data.folder import write_split
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.io import DataError, WeaksegWarning


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_synthetic_dataset(root, num_train=3, num_val=2, size=(16, 16), seed=0)
    return root


@pytest.mark.parametrize("bad", ["../../victim/v", "/etc/hostname", "train_0000/../../../victim/v"])
def test_traversal_ids_are_refused_where_the_split_is_read(data: Path, bad: str) -> None:
    victim = data.parent.parent / "victim"
    victim.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(victim / "v.png")
    (data / "splits" / "evil.txt").write_text(f"train_0000\n{bad}\n")
    with pytest.raises(DataError, match=r"evil\.txt: sample id .* (absolute|'\.\.')"):
        FolderDataset(data, "evil")


def test_ids_changed_after_reading_still_cannot_reach_outside(data: Path) -> None:
    ds = FolderDataset(data, "train")
    ds.ids[0] = "../../victim/v"
    with pytest.raises(DataError, match="sample id '../../victim/v'"):
        ds.load_raw(0)


def test_coco_split_file_ids_are_checked(tmp_path: Path) -> None:
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val2014.txt").write_text("../../../etc/passwd\n")
    with pytest.raises(DataError, match=r"val2014\.txt: sample id"):
        COCODataset(tmp_path, "val2014", load_masks=False)


def test_duplicate_ids_warn_when_read_and_fail_verify(data: Path) -> None:
    write_split(data, "dup", ["train_0000", "train_0001", "train_0000"])
    with pytest.warns(
        WeaksegWarning, match=r"dup\.txt lists 1 sample id\(s\) more than once \('train_0000' x2\)"
    ):
        ds = FolderDataset(data, "dup")
    assert len(ds) == 3  # kept as listed (the warning says they are drawn twice)
    assert ds.verify() == ["split 'dup' lists sample id 'train_0000' 2 times"]
