"""Segment image files: palette PNG masks and overlays for ``weakseg predict``.

Every input gets its own outputs: ``<stem>.png`` and ``<stem>_overlay.jpg`` when the stems are
distinct; when two inputs share a stem (``a/x.png`` and ``b/x.png``, or ``y.png`` and ``y.jpg``) the
outputs mirror the inputs' paths relative to their common folder (``a/x.png``, ``b/x.png``) and keep
the suffix where a folder holds both (``y_png.png``, ``y_jpg.png``). Names that would still clash
are refused before anything is written; every output lies inside the output folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from weakseg.config import EvalConfig
from weakseg.data.base import to_tensors
from weakseg.engine.inference import inference_options, predict_labels
from weakseg.io import DataError, atomic_save_label_png, read_image_rgb, safe_join


def unique_inputs(files: Sequence[Path]) -> list[Path]:
    """``files`` without repeats of the same file (e.g. given both as a file and inside a folder)."""
    seen: set[Path] = set()
    out = []
    for path in files:
        key = Path(path).resolve()
        if key not in seen:
            seen.add(key)
            out.append(Path(path))
    return out


def output_stems(files: Sequence[Path]) -> list[Path]:
    """The output name (relative path without suffix) of every input, distinct for distinct inputs
    (see the module doc). Raises :class:`~weakseg.io.DataError` naming two inputs whose outputs
    would still be the same file."""
    files = [Path(f) for f in files]
    if len({f.stem.casefold() for f in files}) == len(files):
        return [Path(f.stem) for f in files]
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    relative = [r.relative_to(common) for r in resolved]
    by_stem: dict[tuple[str, str], int] = {}
    for rel in relative:
        key = (str(rel.parent).casefold(), rel.stem.casefold())
        by_stem[key] = by_stem.get(key, 0) + 1
    stems = []
    for rel in relative:
        shared = by_stem[(str(rel.parent).casefold(), rel.stem.casefold())] > 1
        name = f"{rel.stem}_{rel.suffix.lstrip('.')}" if shared and rel.suffix else rel.stem
        stems.append(rel.parent / name)
    owner: dict[str, Path] = {}
    for src, stem in zip(files, stems):
        out_key = str(stem).casefold()
        if out_key in owner:
            raise DataError(
                f"inputs {owner[out_key]} and {src} would both be written as {stem}.png; rename one of them "
                "or predict them in separate runs with different --out folders"
            )
        owner[out_key] = src
    return stems


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

    Returns the mask paths, one per distinct input file (names as in the module doc). Images are
    read as ``image_mode`` ("RGB" or "L"; default RGB).
    """
    from weakseg.viz import make_palette, save_overlay

    files = unique_inputs(files)
    stems = output_stems(files)
    targets = [
        (safe_join(out_dir, f"{stem}.png"), safe_join(out_dir, f"{stem}_overlay.jpg")) for stem in stems
    ]
    palette = make_palette()
    written = []
    for path, (mask_path, overlay_path) in tqdm(
        list(zip(files, targets)), desc="predict", disable=not progress
    ):
        image = read_image_rgb(path, image_mode or "RGB")
        x = to_tensors({"image": image})["image"][None].to(device)
        pred = predict_labels(model, x, **inference_options(eval_cfg))[0].cpu().numpy().astype(np.uint8)
        atomic_save_label_png(mask_path, pred, palette)
        save_overlay(overlay_path, image, pred)
        written.append(mask_path)
    return written
