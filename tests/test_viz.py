"""Tests for weakseg.viz: palette, overlays and plots written to disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from weakseg.io import DataError, read_image
from weakseg.viz import (
    colorize,
    load_log_rows,
    make_palette,
    overlay,
    plot_metric_vs,
    plot_per_class_bar,
    plot_training_curves,
    save_overlay,
    side_by_side,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_palette_matches_known_voc_colours():
    pal = make_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]  # aeroplane
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[7].tolist() == [128, 128, 128]
    assert pal[8].tolist() == [64, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[20].tolist() == [0, 64, 128]  # tv/monitor
    assert pal[255].tolist() == [224, 224, 192]  # VOC boundary / ignore
    assert len({tuple(c) for c in pal}) == 256
    assert make_palette(21).shape == (21, 3)


def test_colorize_uses_palette_and_checks_range():
    label = torch.tensor([[0, 1], [15, 255]])
    rgb = colorize(label)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[1, 0].tolist() == [192, 128, 128]
    with pytest.raises(ValueError, match="0..255"):
        colorize(np.array([[0, 256]]))
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((1, 2, 2), dtype=np.int64))


def test_overlay_blends_and_leaves_ignore_pixels_untouched():
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    label = np.array([[0, 1, 255], [1, 1, 0]])
    out = overlay(image, label, alpha=0.5)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [50, 50, 50]  # black class 0
    assert out[0, 1].tolist() == [114, 50, 50]  # (100 + 128) / 2 = 114 in red
    assert out[0, 2].tolist() == [100, 100, 100]  # ignore: image unchanged


def test_overlay_accepts_float_chw_tensor():
    image = torch.full((3, 2, 2), 0.5)
    out = overlay(image, torch.zeros(2, 2, dtype=torch.long), alpha=0.0)
    assert out.shape == (2, 2, 3)
    assert (out == 128).all()
    with pytest.raises(ValueError, match="differs"):
        overlay(image, np.zeros((3, 2), dtype=np.int64))


def test_side_by_side_and_save_overlay(tmp_path):
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    pred = np.ones((4, 5), dtype=np.int64)
    assert side_by_side(image, pred).shape == (4, 10, 3)
    both = side_by_side(image, pred, gt=np.zeros((4, 5), dtype=np.int64))
    assert both.shape == (4, 15, 3)
    assert both[0, 5].tolist() == [64, 0, 0] and both[0, 10].tolist() == [0, 0, 0]
    path = save_overlay(tmp_path / "sub" / "a.png", image, pred, gt=pred)
    assert read_image(path).shape == (4, 15, 3)
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]  # no temp files left


def test_plot_training_curves_from_rows_csv_and_jsonl(tmp_path):
    rows = [
        {"step": 1, "loss": 2.0, "loss/pce": 1.5, "lr": 0.01},
        {"step": 2, "loss": 1.5, "loss/pce": 1.0, "lr": 0.009, "val/mIoU": 0.3},
        {"step": 3, "loss": 1.0, "loss/pce": 0.7, "lr": 0.008},
        {"step": 4, "loss": 0.8, "loss/pce": 0.5, "lr": 0.007, "val/mIoU": 0.5},
    ]
    out = plot_training_curves(rows, tmp_path / "curves.png")
    assert out.read_bytes().startswith(PNG_MAGIC)

    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_log_rows(jsonl)[3]["val/mIoU"] == 0.5
    assert plot_training_curves(jsonl, tmp_path / "from_jsonl.png").stat().st_size > 0

    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("step,loss,val/mIoU\n1,2.0,\n2,1.0,0.4\n")
    assert load_log_rows(csv_path)[0]["val/mIoU"] == ""
    assert plot_training_curves(str(csv_path), tmp_path / "from_csv.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_training_curves_errors(tmp_path):
    with pytest.raises(ValueError, match="step"):
        plot_training_curves([{"loss": 1.0}], tmp_path / "x.png")
    with pytest.raises(DataError, match="missing.jsonl"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        load_log_rows(bad)
    assert not (tmp_path / "x.png").exists()


def test_plot_per_class_bar_and_metric_vs(tmp_path):
    bar = plot_per_class_bar(
        ["bg", "cat", "dog"], [0.9, float("nan"), 0.4], tmp_path / "iou.png", "IoU", "IoU"
    )
    assert bar.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="3 class names but 2 values"):
        plot_per_class_bar(["a", "b", "c"], [1.0, 2.0], tmp_path / "bad.png")
    sweep = plot_metric_vs(
        [0.1, 0.2, 0.3],
        {"mIoU": [0.4, 0.5, 0.45], "precision": [0.9, 0.8, 0.7]},
        tmp_path / "sweep.png",
        "t",
        "v",
    )
    assert sweep.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="has 2 values"):
        plot_metric_vs([1, 2, 3], {"a": [1, 2]}, tmp_path / "bad.png")
