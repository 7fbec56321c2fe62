"""A tiny training config shared by the engine tests (EfficientNet-lite0 + DeepLabV2, random init, CPU)."""

from __future__ import annotations

from pathlib import Path

from weakseg.config import Config, load_config


def tiny_train_config(data: Path, out: Path, *extra: str, crop: int = 48, overlays: int = 2) -> Config:
    """4 steps of batch 2 on ``data`` into ``out``: log every step, validate and save every 2; ``extra``
    dotted overrides come last."""
    return load_config(
        None,
        [
            f"data.root={data}",
            f"out_dir={out}",
            f"data.crop_size=[{crop},{crop}]",
            "data.num_workers=0",
            "model.backbone=efficientnet_lite0",
            "model.head=deeplabv2",
            "model.pretrained=null",
            "optim.name=sgd",
            "optim.lr=0.01",
            "train.batch_size=2",
            "train.steps=4",
            "train.log_every=1",
            "train.val_every=2",
            "train.ckpt_every=2",
            f"train.num_overlays={overlays}",
            *extra,
        ],
    )
