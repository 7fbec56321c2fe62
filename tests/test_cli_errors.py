"""Every user error of the command line is one line on stderr and exit status 2 (in-process, fast)."""

from __future__ import annotations

import errno
import os
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakseg.builders import build_model
from weakseg.cli import main
from weakseg.config import config_to_dict, load_config
from weakseg.data.folder import write_split
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.engine.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/pce/synthetic_effnetlite0-v3p_96x96_300.yaml")
SMALL = [
    "data.crop_size=[32,32]",
    "data.num_workers=0",
    "model.pretrained=null",
    "model.head=deeplabv2",
    "model.head_channels=null",
    "train.batch_size=2",
    "train.steps=1",
    "train.num_overlays=0",
]


@pytest.fixture(autouse=True)
def restore_warning_display(monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() installs its own


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_err") / "syn"
    make_synthetic_dataset(root, num_train=4, num_val=2, size=(32, 32), seed=0)
    return root


def fails(capsys, *argv: str, match: str) -> str:
    """Run ``weakseg ARGV``; assert exit 2 and one line on stderr containing ``match``; return it."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.splitlines()[-1]
    assert last.startswith(f"weakseg {argv[0]}: error: "), err
    assert match in last, last
    assert "Traceback" not in err
    return last


def fake_checkpoint(path: Path, classes: int = 4, method: str = "pce", **overrides) -> Path:
    """A loadable checkpoint of the small model (random weights)."""
    cfg = load_config(None, ["model.pretrained=null", "model.head=deeplabv2", f"method.name={method}"])
    model = build_model(cfg, classes, pretrained=False)
    return save_checkpoint(
        path,
        model=model.state_dict(),
        config=config_to_dict(cfg),
        classes=["background", *(f"c{i}" for i in range(1, classes))],
        step=1,
        **overrides,
    )


def test_unknown_backbone_and_head(capsys, data, tmp_path):
    out = tmp_path / "run"
    fails(
        capsys,
        "train",
        CONFIG,
        f"data.root={data}",
        "model.backbone=resnet9000",
        "--out",
        out,
        match="config key 'model.backbone' is 'resnet9000'; expected one of",
    )
    fails(
        capsys,
        "train",
        CONFIG,
        f"data.root={data}",
        "model.head=unet9",
        "--out",
        out,
        match="config key 'model.head' is 'unet9'; expected one of",
    )
    assert not out.exists()


def test_batch_size_larger_than_the_split(capsys, data, tmp_path):
    fails(
        capsys,
        "train",
        CONFIG,
        f"data.root={data}",
        *SMALL,
        "train.batch_size=8",
        "--out",
        tmp_path / "r",
        match="train.batch_size=8 needs at least 8 training samples, but split 'train'",
    )


def test_out_that_is_an_existing_file(capsys, data, tmp_path):
    (tmp_path / "f").write_text("x")
    fails(capsys, "train", CONFIG, f"data.root={data}", "--out", tmp_path / "f", match="is an existing file")
    ckpt = fake_checkpoint(tmp_path / "m.ckpt")
    fails(
        capsys, "predict", ckpt, data / "images/val_0000.png", "--out", tmp_path / "f", match="existing file"
    )
    fails(capsys, "evaluate", ckpt, f"data.root={data}", "--out", tmp_path / "f", match="existing file")


def test_second_train_into_a_run_offers_resume_and_overwrite(capsys, data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    (run / "last.ckpt").write_text("x")
    fails(
        capsys,
        "train",
        CONFIG,
        f"data.root={data}",
        "--out",
        run,
        match="--resume, start it again with --overwrite",
    )
    fails(
        capsys,
        "train",
        CONFIG,
        f"data.root={data}",
        "--out",
        run,
        "--resume",
        "--overwrite",
        match="exclude each other",
    )


def test_resume_without_a_checkpoint_says_so(capsys, data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")  # a run killed before its first checkpoint
    fails(
        capsys,
        "train",
        CONFIG,
        f"data.root={data}",
        "--out",
        run,
        "--resume",
        match="no last.ckpt to resume from",
    )
    assert (
        main(
            [
                "train",
                CONFIG,
                f"data.root={data}",
                *SMALL,
                "--out",
                str(tmp_path / "new"),
                "--resume",
                "--quiet",
            ]
        )
        == 0
    )
    assert "weakseg: warning: --resume: no checkpoint" in capsys.readouterr().err


def test_resume_from_another_methods_checkpoint(capsys, data, tmp_path):
    ckpt = fake_checkpoint(tmp_path / "cam.ckpt", method="cam")
    fails(
        capsys,
        "train",
        CONFIG,
        f"data.root={data}",
        *SMALL,
        "--out",
        tmp_path / "r",
        "--resume",
        ckpt,
        match="trained with method 'cam' but the config trains 'pce'",
    )


def test_class_count_mismatch_between_checkpoint_and_dataset(capsys, data, tmp_path):
    ckpt = fake_checkpoint(tmp_path / "m.ckpt", classes=21)
    fails(
        capsys,
        "evaluate",
        ckpt,
        f"data.root={data}",
        "--out",
        tmp_path / "ev",
        match="was trained on 21 classes (background, c1, c2, c3, ...) but the dataset at",
    )


def test_crafted_checkpoint_is_refused_by_evaluate_without_running(capsys, tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    torch.save({"model": {}, "config": {}, "x": Payload()}, tmp_path / "evil.ckpt")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")
    fails(capsys, "evaluate", tmp_path / "evil.ckpt", match="refused to load checkpoint")
    fails(
        capsys,
        "predict",
        tmp_path / "evil.ckpt",
        tmp_path / "photo.png",
        "--out",
        tmp_path / "o",
        match="refused to load",
    )
    assert not marker.exists()


def test_disk_full_names_the_file(capsys, tmp_path, monkeypatch):
    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("weakseg.io.os.replace", no_space)
    fails(
        capsys,
        "data",
        "synthetic",
        tmp_path / "d",
        "--num-train",
        "2",
        "--num-val",
        "1",
        "--size",
        "16",
        "16",
        match="disk full: cannot write",
    )
    assert not list((tmp_path / "d").rglob(".*weakseg-tmp*"))


def test_data_synthetic_refuses_an_existing_dataset(capsys, data):
    fails(capsys, "data", "synthetic", data, match="already holds a dataset")
    fails(capsys, "data", "simulate", data, data, match="already holds a dataset")


def test_data_verify_checks_every_split_and_duplicate_ids(capsys, tmp_path):
    root = tmp_path / "d"
    make_synthetic_dataset(root, num_train=3, num_val=2, size=(16, 16), seed=0)
    assert main(["data", "verify", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "split 'train': 3 samples" in out and "split 'val': 2 samples" in out
    write_split(root, "val", ["val_0000", "val_0001", "val_0000"])
    (root / "images" / "train_0002.png").unlink()
    code = main(["data", "verify", str(root), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().endswith("2 problem(s) in " + str(root) + " (splits checked: train, val)")
    assert (
        "train_0002.png" in captured.out and "split 'val' lists sample id 'val_0000' 2 times" in captured.out
    )
