"""The command line end to end, in subprocesses, on a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_weakseg as weakseg

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # ~15 subprocesses, each importing torch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    weakseg("data", "synthetic", "syn", "--num-train", "6", "--num-val", "2", "--size", "48", "48", cwd=work)
    weakseg(
        "train",
        str(ROOT / "configs/pce/synthetic_effnetlite0-v3p_96x96_300.yaml"),
        "data.root=syn",
        "data.crop_size=[48,48]",
        "data.num_workers=0",
        "model.head=deeplabv2",
        "model.head_channels=null",
        "train.steps=2",
        "train.batch_size=2",
        "train.val_every=2",
        "train.log_every=1",
        "train.num_overlays=1",
        "--out",
        "run",
        "--quiet",
        cwd=work,
    )
    return work


def test_train_writes_run_folder(trained):
    run = trained / "run"
    assert (run / "last.ckpt").is_file() and (run / "training_curves.png").is_file()
    assert "method:\n  name: pce" in (run / "config.yaml").read_text()


def test_evaluate_writes_metrics_and_predictions(trained):
    proc = weakseg(
        "evaluate",
        "run/last.ckpt",
        "--scales",
        "1",
        "1.25",
        "--flip",
        "--save-predictions",
        "--out",
        "ev",
        "--quiet",
        cwd=trained,
    )
    assert "mIoU" in proc.stdout
    metrics = json.loads((trained / "ev" / "metrics.json").read_text())
    assert metrics["inference"]["scales"] == [1.0, 1.25] and metrics["inference"]["flip"] is True
    pred = np.asarray(Image.open(trained / "ev" / "predictions" / "val_0000.png"))
    assert pred.shape == (48, 48) and pred.max() < 4


def test_predict_writes_masks_and_overlays(trained):
    weakseg("predict", "run/last.ckpt", "syn/images/val_0001.png", "--out", "pred", "--quiet", cwd=trained)
    mask = Image.open(trained / "pred" / "val_0001.png")
    assert mask.mode == "P" and mask.size == (48, 48)
    assert (trained / "pred" / "val_0001_overlay.jpg").is_file()


def test_scribble_variants_and_verify(trained):
    weakseg("data", "shrink", "syn", "shrunk", "--ratio", "1.0", "--quiet", cwd=trained)
    weakseg("data", "drop", "syn", "dropped", "--ratio", "0.5", "--seed", "3", "--quiet", cwd=trained)
    weakseg("data", "simulate", "syn", "simulated", "--seed", "1", "--quiet", cwd=trained)
    for name in ("shrunk", "dropped", "simulated"):
        proc = weakseg("data", "verify", name, "--split", "train", "--quiet", cwd=trained)
        assert "6 samples" in proc.stdout
    full = np.asarray(Image.open(trained / "syn/scribbles/train_0000.png"))
    shrunk = np.asarray(Image.open(trained / "shrunk/scribbles/train_0000.png"))
    assert (shrunk != 255).sum() < (full != 255).sum()
    weakseg("data", "tags", "syn", "--source", "masks", "--out", "tags.csv", cwd=trained)
    assert (trained / "tags.csv").read_text().startswith("id,background")


def test_bad_config_key_exits_with_the_key_named(trained):
    proc = weakseg(
        "train",
        str(ROOT / "configs/pce/synthetic_effnetlite0-v3p_96x96_300.yaml"),
        "train.bach_size=2",
        cwd=trained,
        ok=False,
    )
    assert proc.returncode == 2
    assert "unknown config key 'train.bach_size'" in proc.stderr


def test_missing_data_exits_with_the_file_named(trained):
    proc = weakseg(
        "train",
        str(ROOT / "configs/pce/synthetic_effnetlite0-v3p_96x96_300.yaml"),
        "data.root=nowhere",
        cwd=trained,
        ok=False,
    )
    assert proc.returncode == 2 and "nowhere" in proc.stderr
    proc = weakseg("evaluate", "run/missing.ckpt", cwd=trained, ok=False)
    assert proc.returncode == 2 and "missing.ckpt" in proc.stderr


def test_every_command_has_help(trained):
    for args in (
        ["--help"],
        ["train", "--help"],
        ["evaluate", "--help"],
        ["predict", "--help"],
        ["data", "--help"],
        ["data", "shrink", "--help"],
        ["methods"],
    ):
        assert weakseg(*args, cwd=trained).stdout
