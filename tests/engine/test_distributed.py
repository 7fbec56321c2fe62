"""DDP through torchrun on CPU (Gloo): the same command trains with two processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def test_torchrun_two_processes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not found")
    make_synthetic_dataset(tmp_path / "syn", num_train=8, num_val=2, size=(48, 48), seed=2)
    cmd = [
        str(torchrun if torchrun.exists() else "torchrun"), "--standalone", "--nproc-per-node", "2",
        "-m", "weakseg", "train", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run"),
        str(Path(__file__).resolve().parents[2] / "configs/pce/synthetic_effnetlite0-v3p_96x96_300.yaml"),
        f"data.root={tmp_path / 'syn'}", "data.crop_size=[48,48]", "data.num_workers=0",
        "model.head=deeplabv2", "model.head_channels=null", "model.pretrained=null",
        "train.batch_size=2", "train.steps=3",
        "train.log_every=1", "train.val_every=2", "train.num_overlays=1",
    ]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    # one global batch per step: 2 processes x batch 2 images
    ckpt = load_checkpoint(run / "last.ckpt")
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert (run / "metrics.json").is_file()
