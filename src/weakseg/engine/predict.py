"""Segment image files: palette PNG masks and overlays for ``weakseg predict``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from weakseg.config import EvalConfig
from weakseg.data.base import to_tensors
from weakseg.engine.inference import inference_options, predict_labels
from weakseg.io import atomic_save_label_png, read_image_rgb


def predict_files(
    model: nn.Module,
    files: Sequence[Path],
    out_dir: Path,
    eval_cfg: EvalConfig,
    *,
    device: str | torch.device = "cpu",
    image_mode: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write ``<stem>.png`` (palette label map) and ``<stem>_overlay.jpg`` for every image.

    Returns the mask paths. Images are read as ``image_mode`` ("RGB" or "L"; default RGB).
    """
    from weakseg.viz import make_palette, save_overlay

    palette = make_palette()
    written = []
    for path in tqdm(files, desc="predict", disable=not progress):
        image = read_image_rgb(path, image_mode or "RGB")
        x = to_tensors({"image": image})["image"][None].to(device)
        pred = predict_labels(model, x, **inference_options(eval_cfg))[0].cpu().numpy().astype(np.uint8)
        mask_path = out_dir / f"{path.stem}.png"
        atomic_save_label_png(mask_path, pred, palette)
        save_overlay(out_dir / f"{path.stem}_overlay.jpg", image, pred)
        written.append(mask_path)
    return written
