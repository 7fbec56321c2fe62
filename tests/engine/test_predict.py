"""predict gives every input its own outputs, also when file stems repeat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from weakseg.config import EvalConfig
from weakseg.engine.predict import output_stems, predict_files
from weakseg.io import DataError


class BrightIsClassOne(nn.Module):
    """Predicts class 1 where the red channel is bright, else 0: outputs tell the inputs apart."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        red = x[:, :1]
        return {"logits": torch.cat([0.5 - red, red - 0.5], dim=1)}


def write_image(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def test_distinct_stems_keep_flat_names() -> None:
    assert output_stems([Path("a/x.png"), Path("b/y.jpg")]) == [Path("x"), Path("y")]


def test_same_stem_inputs_mirror_their_paths_and_keep_suffixes(tmp_path: Path) -> None:
    files = [tmp_path / "a/x.png", tmp_path / "b/x.png", tmp_path / "y.png", tmp_path / "y.jpg"]
    assert output_stems(files) == [Path("a/x"), Path("b/x"), Path("y_png"), Path("y_jpg")]


def test_names_that_would_still_clash_are_refused(tmp_path: Path) -> None:
    files = [tmp_path / "y.png", tmp_path / "y.jpg", tmp_path / "y_png.gif"]
    with pytest.raises(DataError, match=r"y\.png and .*y_png\.gif would both be written as y_png\.png"):
        output_stems(files)


def test_predict_writes_one_mask_per_input_for_repeated_stems(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    files = [
        write_image(inputs / "a/x.png", 255),
        write_image(inputs / "b/x.png", 0),
        write_image(inputs / "y.png", 255),
        write_image(inputs / "y.bmp", 0),
    ]
    out = tmp_path / "out"
    written = predict_files(BrightIsClassOne(), files + [files[0]], out, EvalConfig(), progress=False)
    assert written == [out / "a/x.png", out / "b/x.png", out / "y_png.png", out / "y_bmp.png"]
    values = [int(np.asarray(Image.open(p)).max()) for p in written]
    assert values == [1, 0, 1, 0]  # each mask is its own input's prediction, none overwritten
    assert (out / "a/x_overlay.jpg").is_file() and (out / "y_bmp_overlay.jpg").is_file()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a/x.png",
        "b/x.png",
        "y_bmp.png",
        "y_png.png",
    ]
