"""``weakseg cam``, ``weakseg cam evaluate`` and ``weakseg pseudo-labels`` end to end, in subprocesses,
on a tiny synthetic set with a 2-step ``cam`` checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_weakseg as weakseg

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # subprocesses, each importing torch, and a short training run


@pytest.fixture(scope="module")
def cams(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli_cam")
    weakseg("data", "synthetic", "syn", "--num-train", "4", "--num-val", "2", "--size", "48", "48", cwd=work)
    weakseg(
        "train",
        str(ROOT / "configs/pce/synthetic_effnetlite0-v3p_96x96_300.yaml"),
        "method=cam",
        "data.root=syn",
        "data.crop_size=[48,48]",
        "data.num_workers=0",
        "model.pretrained=null",
        "train.steps=2",
        "train.batch_size=2",
        "train.val_every=2",
        "train.num_overlays=0",
        "--out",
        "run",
        "--quiet",
        cwd=work,
    )
    weakseg(
        "cam",
        "run/last.ckpt",
        "--split",
        "train",
        "--out",
        "cams",
        "--scales",
        "1",
        "0.5",
        "--quiet",
        cwd=work,
    )
    return work


def test_cam_writes_one_file_per_image(cams):
    meta = json.loads((cams / "cams" / "cams.json").read_text())
    assert meta["cam_keys"] == ["cam"] and meta["scales"] == [1.0, 0.5] and meta["flip"] is True
    assert meta["method"] == "cam" and meta["background"] == 0 and meta["data"]["split"] == "train"
    files = sorted(p.name for p in (cams / "cams").glob("*.npz"))
    assert files == [f"train_{i:04d}.npz" for i in range(4)]
    with np.load(cams / "cams" / "train_0000.npz") as data:
        tags = (cams / "syn" / "tags.csv").read_text().splitlines()[1].split(",")[2:]  # fg columns
        assert data["keys"].tolist() == [i + 1 for i, t in enumerate(tags) if t == "1"]
        assert data["cam"].dtype == np.float16 and data["cam"].shape[1:] == (48, 48)


def test_cam_evaluate_reports_the_best_threshold(cams):
    proc = weakseg(
        "cam", "evaluate", "cams", "--data", "syn", "--split", "train", "--out", "seeds", "--quiet", cwd=cams
    )
    assert "seed mIoU" in proc.stdout and "oracle best" in proc.stdout and "threshold 0.15" in proc.stdout
    report = json.loads((cams / "seeds" / "seeds.json").read_text())
    assert len(report["mIoU"]) == 20 and report["best_threshold"] in report["thresholds"]
    assert report["rule"] == "irn" and report["fixed_threshold"] == 0.15 and report["weights"] == {"cam": 1.0}
    assert set(report["per_class_IoU"]) == {"background", "disc", "square", "triangle"}
    assert (cams / "seeds" / "seed_mIoU_vs_threshold.png").is_file()


def test_pseudo_labels_make_a_trainable_dataset(cams):
    proc = weakseg("pseudo-labels", "cams", "--out", "pl", "--crf", "torch", "--quiet", cwd=cams)
    assert "coverage" in proc.stdout
    label = Image.open(cams / "pl" / "pseudo" / "train_0001.png")
    assert label.mode == "P" and label.size == (48, 48)
    assert set(np.unique(np.asarray(label))) <= {0, 1, 2, 3, 255}
    verify = weakseg("data", "verify", "pl", "--split", "train", "--quiet", cwd=cams)
    assert "pseudo" in verify.stdout
    weakseg(
        "train",
        str(ROOT / "configs/full/synthetic_effnetlite0-v3p_96x96_300.yaml"),
        "data.root=pl",
        "data.val_split=train",
        "method.label=pseudo",
        "data.crop_size=[48,48]",
        "data.num_workers=0",
        "model.pretrained=null",
        "model.head=deeplabv2",
        "model.head_channels=null",
        "train.steps=1",
        "train.batch_size=2",
        "train.val_every=1",
        "train.num_overlays=0",
        "--out",
        "run_full",
        "--quiet",
        cwd=cams,
    )
    assert (cams / "run_full" / "last.ckpt").is_file()


def test_errors_and_help(cams):
    proc = weakseg("cam", "evaluate", "syn", cwd=cams, ok=False)
    assert proc.returncode == 2 and "cams.json" in proc.stderr
    proc = weakseg("pseudo-labels", "cams", "--out", "x", "--weights", "cam_proto=1", cwd=cams, ok=False)
    assert proc.returncode == 2 and "cam_proto" in proc.stderr
    # SFC's rules need maps with their own background: a cam checkpoint has none
    for args in (
        ["pseudo-labels", "cams", "--out", "x", "--rule", "sfc"],
        ["cam", "evaluate", "cams", "--rule", "sfc"],
        ["cam", "run/last.ckpt", "--out", "cams_sfc", "--scales", "1", "--rule", "sfc", "--quiet"],
    ):
        proc = weakseg(*args, cwd=cams, ok=False)
        assert proc.returncode == 2 and "own background" in proc.stderr, args
    for args in (
        ["cam", "--help"],
        ["cam", "make", "--help"],
        ["cam", "evaluate", "--help"],
        ["pseudo-labels", "--help"],
    ):
        assert weakseg(*args, cwd=cams).stdout
