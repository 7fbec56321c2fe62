"""Scribble robustness sweeps: rows, statistics and plots on hand-made results; tiny end-to-end runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_weakseg
from weakseg.config import ConfigError, load_config
from weakseg.data.folder import write_dataset_json, write_split
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.engine.robustness import (
    check_ratios,
    load_robustness,
    plot_robustness,
    ratio_tag,
    robustness_row,
    robustness_series,
    run_robustness,
    scribble_statistics,
    write_robustness,
)
from weakseg.io import DataError, atomic_save_label_png, read_label

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = str(Path(__file__).resolve().parents[2] / "configs/pce/synthetic_effnetlite0-v3p_96x96_300.yaml")


def _row(kind: str, ratio: float, miou: float | None, dice: float | None = None) -> dict:
    return {"kind": kind, "ratio": ratio, "mIoU": miou, "volume_mean_Dice": dice, "run_dir": f"runs/{kind}"}


def _result(label: str, rows: list[dict]) -> dict:
    return {"label": label, "method": label, "rows": rows}


# --------------------------------------------------------------------------------------------------
# fast: ratios, statistics, rows
# --------------------------------------------------------------------------------------------------
def test_check_ratios_sorts_and_rejects_bad_lists():
    assert check_ratios([0.5, 0, 1, 0.25]) == [0.0, 0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="at least one"):
        check_ratios([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_ratios([0.5, 1.5])
    with pytest.raises(ValueError, match="repeated"):
        check_ratios([0.5, 0.50])
    assert [ratio_tag(r) for r in (0.0, 0.25, 1.0)] == ["0", "0.25", "1"]


def test_scribble_statistics_counts_labelled_pixels(tmp_path):
    write_dataset_json(
        tmp_path, ["background", "a"], layout={"images": "images/{id}.png", "scribbles": "scribbles/{id}.png"}
    )
    write_split(tmp_path, "train", ["x", "y"])
    x = np.full((4, 5), 255, np.uint8)
    x[0, :3] = 1  # 3 labelled
    y = np.full((2, 5), 255, np.uint8)
    y[1, 1] = 0  # 1 labelled, class 0 counts too
    atomic_save_label_png(tmp_path / "scribbles" / "x.png", x)
    atomic_save_label_png(tmp_path / "scribbles" / "y.png", y)
    stats = scribble_statistics(tmp_path, "train")
    assert stats == {"num_images": 2, "scribble_pixels": 4, "total_pixels": 30, "labelled_fraction": 4 / 30}


def test_scribble_statistics_needs_scribbles_in_the_layout(tmp_path):
    write_dataset_json(tmp_path, ["background", "a"])
    write_split(tmp_path, "train", ["x"])
    with pytest.raises(DataError, match="scribbles"):
        scribble_statistics(tmp_path, "train")


def test_robustness_row_from_hand_made_metrics():
    stats = {"scribble_pixels": 30, "labelled_fraction": 0.01}
    plain = robustness_row("shrink", 0.5, {"mIoU": 0.625, "step": 7}, stats, 120, "runs/shrink_0.5")
    assert plain == {
        "kind": "shrink",
        "ratio": 0.5,
        "mIoU": 0.625,
        "volume_mean_Dice": None,
        "step": 7,
        "scribble_pixels": 30,
        "labelled_fraction": 0.01,
        "kept_fraction": 0.25,
        "run_dir": "runs/shrink_0.5",
    }
    acdc = robustness_row("drop", 1, {"mIoU": 0.5, "volume_Dice": {"mean_Dice": 0.8}}, stats, 30, "r")
    assert acdc["volume_mean_Dice"] == 0.8 and acdc["kept_fraction"] == 1.0 and acdc["ratio"] == 1.0
    nan = robustness_row("drop", 0, {"mIoU": math.nan, "volume_Dice": {"mean_Dice": None}}, stats, 0, "r")
    assert nan["mIoU"] is None and nan["volume_mean_Dice"] is None and nan["kept_fraction"] is None
    with pytest.raises(DataError, match="mIoU"):
        robustness_row("drop", 0, {}, stats, 1, "runs/drop_0")


# --------------------------------------------------------------------------------------------------
# fast: series, plots and result files
# --------------------------------------------------------------------------------------------------
def test_series_sort_by_ratio_split_by_kind_and_use_percent():
    a = _result("pce", [_row("shrink", 1.0, 0.4), _row("shrink", 0.0, 0.8), _row("drop", 0.5, 0.6)])
    b = _result("rloss", [_row("shrink", 0.5, None), _row("shrink", 0.0, 0.9)])
    metric, series = robustness_series([a, b])
    assert metric == "mIoU"
    assert list(series) == ["shrink", "drop"]
    assert series["shrink"]["pce"] == ([0.0, 1.0], [80.0, 40.0])
    xs, ys = series["shrink"]["rloss"]
    assert (
        xs == [0.0, 0.5] and math.isnan(ys[0]) is False and ys[0] == pytest.approx(90.0) and math.isnan(ys[1])
    )
    assert series["drop"] == {"pce": ([0.5], [60.0])}


def test_series_pick_volume_dice_only_when_every_row_has_it():
    with_dice = _result("pce", [_row("shrink", 0.0, 0.5, 0.9), _row("shrink", 1.0, 0.4, 0.7)])
    metric, series = robustness_series([with_dice])
    assert metric == "volume_mean_Dice" and series["shrink"]["pce"][1] == pytest.approx([90.0, 70.0])
    partly = _result("x", [_row("shrink", 0.0, 0.5, None)])
    assert robustness_series([with_dice, partly])[0] == "mIoU"
    assert robustness_series([with_dice], metric="mIoU")[1]["shrink"]["pce"][1] == pytest.approx([50.0, 40.0])
    with pytest.raises(ValueError, match="metric"):
        robustness_series([with_dice], metric="dice")


def test_series_labels_repeat_and_override():
    a, b = _result("pce", [_row("drop", 0.0, 0.5)]), _result("pce", [_row("drop", 0.0, 0.6)])
    assert list(robustness_series([a, b])[1]["drop"]) == ["pce", "pce #2"]
    assert list(robustness_series([a, b], labels=["A", "B"])[1]["drop"]) == ["A", "B"]
    with pytest.raises(ValueError, match="2 result files"):
        robustness_series([a, b], labels=["A"])
    with pytest.raises(ValueError, match="no rows"):
        robustness_series([_result("e", [])])


def test_write_and_plot_result_files(tmp_path):
    a = _result("pce", [_row("shrink", 0.0, 0.8), _row("shrink", 0.5, 0.7)])
    a["metric"] = "mIoU"
    b = _result("rloss", [_row("drop", 0.0, 0.9), _row("drop", 0.5, 0.85)])
    written = write_robustness(tmp_path / "a", a)
    write_robustness(tmp_path / "b", b)
    assert written["json"].read_text().startswith("{")
    assert written["plot"].read_bytes()[:8] == PNG_MAGIC
    assert load_robustness(tmp_path / "a") == a  # a folder holding robustness.json is accepted
    fig = plot_robustness(
        [tmp_path / "a" / "robustness.json", tmp_path / "b"], tmp_path / "fig.png", title="t"
    )
    assert fig.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "fig.png"]  # no temporary files left
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["robustness.json", "robustness.png"]


def test_load_robustness_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_robustness(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_robustness(bad)
    bad.write_text(json.dumps({"rows": [{"kind": "shrink"}]}))
    with pytest.raises(DataError, match="row 0 lacks ratio, mIoU"):
        load_robustness(bad)


# --------------------------------------------------------------------------------------------------
# fast: configs that cannot be swept
# --------------------------------------------------------------------------------------------------
def test_non_folder_data_and_non_scribble_methods_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="folder-format"):
        run_robustness(load_config(None, ["data.format=voc"]), "shrink", [0.5], tmp_path)
    with pytest.raises(ConfigError, match="does not train from scribbles"):
        run_robustness(load_config(None, ["method=full"]), "drop", [0.5], tmp_path)
    with pytest.raises(ValueError, match="kind"):
        run_robustness(load_config(None), "thin", [0.5], tmp_path)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# slow: tiny end-to-end sweeps
# --------------------------------------------------------------------------------------------------
TINY = [
    "data.crop_size=[40,40]",
    "data.num_workers=0",
    "model.backbone=efficientnet_lite0",
    "model.head=deeplabv2",
    "model.head_channels=null",
    "model.pretrained=null",
    "train.batch_size=2",
    "train.steps=2",
    "train.log_every=1",
    "train.val_every=100",
    "train.ckpt_every=100",
    "train.num_overlays=0",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, num_train=6, num_val=2, size=(40, 40), seed=3)
    return root


@pytest.mark.slow
def test_sweep_trains_each_ratio_on_its_variant_and_reuses_finished_runs(tiny_data, tmp_path):
    out = tmp_path / "sweep"
    cfg = load_config(None, [f"data.root={tiny_data}", *TINY])
    summary = run_robustness(
        cfg, "drop", [0.5, 0], out, ["train.seed=5"], device="cpu", progress=False, seed=2
    )
    assert [r["ratio"] for r in summary["rows"]] == [0.0, 0.5]
    assert summary["kind"] == "drop" and summary["method"] == "pce" and summary["train_seed"] == 5
    assert (out / "robustness.png").read_bytes()[:8] == PNG_MAGIC
    assert load_robustness(out) == json.loads(json.dumps(summary))
    original, dropped = summary["rows"]
    assert original["kept_fraction"] == 1.0 and original["run_dir"] == "runs/drop_0"
    assert 0 < dropped["scribble_pixels"] < original["scribble_pixels"]
    assert dropped["kept_fraction"] == pytest.approx(dropped["scribble_pixels"] / original["scribble_pixels"])
    for row in summary["rows"]:
        metrics = json.loads((out / row["run_dir"] / "metrics.json").read_text())
        assert row["mIoU"] == metrics["mIoU"] and row["step"] == 2 and row["volume_mean_Dice"] is None
    # each run trained on its own data with the same training seed
    ratio0 = load_config(out / "runs/drop_0/config.yaml")
    ratio5 = load_config(out / "runs/drop_0.5/config.yaml")
    assert Path(ratio0.data.root) == tiny_data and Path(ratio5.data.root) == out / "data/drop_0.5"
    assert ratio0.train.seed == ratio5.train.seed == 5
    # the variant only removes scribble pixels, and holds the validation split too
    variant = out / "data/drop_0.5"
    for sid in (variant / "splits/train.txt").read_text().split():
        new, old = (
            read_label(variant / f"scribbles/{sid}.png"),
            read_label(tiny_data / f"scribbles/{sid}.png"),
        )
        assert np.all((new == 255) | (new == old))
    assert (variant / "splits/val.txt").is_file()

    # reuse: finished runs are read back, not retrained; an unfinished one resumes from last.ckpt
    stamp = (out / "runs/drop_0/last.ckpt").stat().st_mtime_ns
    (out / "runs/drop_0.5/metrics.json").unlink()
    again = run_robustness(
        cfg, "drop", [0, 0.5], out, ["train.seed=5"], device="cpu", progress=False, reuse=True, seed=2
    )
    assert (out / "runs/drop_0/last.ckpt").stat().st_mtime_ns == stamp
    assert (out / "runs/drop_0.5/metrics.json").is_file()
    assert again["rows"][0] == summary["rows"][0]
    assert again["rows"][1]["step"] == 2


@pytest.mark.slow
def test_cli_run_and_plot(tiny_data, tmp_path):
    args = ["--kind", "shrink", "--ratios", "0", "1", "--out", "sweep", "--device", "cpu", "--quiet"]
    proc = run_weakseg("robustness", "run", CONFIG, *args,
                       f"data.root={tiny_data}", *TINY, cwd=tmp_path)  # fmt: skip
    assert "shrink 1" in proc.stdout and "robustness.json" in proc.stdout
    result = load_robustness(tmp_path / "sweep")
    assert [r["ratio"] for r in result["rows"]] == [0.0, 1.0]
    assert result["rows"][1]["kept_fraction"] < 0.5  # ratio 1 leaves one dot per scribble
    other = dict(result, label="other")
    (tmp_path / "other.json").write_text(json.dumps(other))
    run_weakseg("robustness", "plot", "sweep/robustness.json", "other.json", "--out", "fig.png", cwd=tmp_path)
    assert (tmp_path / "fig.png").read_bytes()[:8] == PNG_MAGIC
    bad = run_weakseg("robustness", "run", CONFIG, "data.format=voc",
                      "--kind", "drop", "--ratios", "0.5", "--out", "x", cwd=tmp_path, ok=False)  # fmt: skip
    assert bad.returncode == 2 and "folder-format" in bad.stderr
    bad = run_weakseg("robustness", "run", "c.yaml", "--kind", "drop", "--ratios", "2", "--out", "x",
                      cwd=tmp_path, ok=False)  # fmt: skip
    assert bad.returncode == 2 and "outside [0, 1]" in bad.stderr
