"""Where SFC's background seeds go: the seeds before and after the PCM, from trained checkpoints.

SFC takes its prototype seeds from ``M_W``, the classifier CAM ``[1 - max_c M_c; M_c]`` after two
propagations through the PCM affinity (:func:`weakseg.ops.class_maps.pcm_propagate`), with the
background channel x 0.3 before the arg-max (:func:`weakseg.ops.class_maps.seed_masks`). This probe
loads checkpoints of ``cam`` or ``sfc`` runs and, on ``--images`` training crops (the run's own training
transform, fixed per image), reports means of:

- ``pcm_reach``: how far one PCM propagation averages, the effective number of pixels each pixel draws
  from (``1 / sum_i A_ij^2`` for column ``j`` of the normalised affinity) as a share of the grid: near
  1/N for a sharp affinity, 1 for a plain mean over the crop (``sfc`` only);
- ``empty_bg_before`` / ``empty_bg_after``: the share of crops without a single background seed, with
  the seeds taken from the map before the PCM and after it (the reference's rule); for ``cam``, only
  before;
- ``bg_share_before`` / ``bg_share_after``: the share of valid grid cells seeded as background;
- ``true_bg_share``: the background share of the crops' labelled pixels in the masks (for scale).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sfc_collapse_probe.py \\
        runs/image_ladder/voc-real/sfc_seed0/run/best.ckpt \\
        runs/image_ladder/voc-real/sfc_seed0/run/last.ckpt \\
        runs/image_ladder/voc-real/cam_seed0/run/last.ckpt --images 48

It needs datasets with a background class and masks (for ``true_bg_share``); ``--json PATH`` writes the
rows with the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.builders import build_dataset
from weakseg.engine.trainer import load_trained_model
from weakseg.ops.class_maps import (
    background_from_foreground,
    insert_background,
    max_normalize,
    pcm_affinity,
    pcm_propagate,
    seed_masks,
)

BG_SEED_SCALE = 0.3  # SFC's background factor before the seed arg-max
PCM_ITERATIONS = 2


def pcm_reach(embedding: Tensor) -> float:
    """Mean effective neighbourhood of one PCM propagation as a share of the grid (``[1, D, h, w]``)."""
    affinity = pcm_affinity(embedding.float())
    effective = 1.0 / affinity.pow(2).sum(dim=1).clamp_min(1e-12)  # [1, N], per column
    return float(effective.mean()) / affinity.shape[-1]


def seed_statistics(seeds: Tensor, valid: Tensor) -> tuple[float, float]:
    """(1 if no background seed else 0, background share of the valid cells) of ``[1, K, h, w]`` seeds."""
    bg = seeds[0, 0]
    return float(bg.sum() == 0), float(bg.sum() / valid.sum().clamp_min(1.0))


@torch.no_grad()
def probe(path: Path, images: int) -> dict[str, Any]:
    model, cfg, meta = load_trained_model(path)
    if meta.get("background") != 0:
        raise SystemExit(f"{path}: the probe needs a dataset whose background class is 0")
    dataset = build_dataset(cfg, cfg.data.train_split, train=True, requires=("mask", "tags"))
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    stride = max(1, len(dataset) // images)
    for index in range(0, stride * images, stride):
        sample = dataset[index % len(dataset)]
        outputs = model(sample["image"][None])
        cam = outputs["cam"].float()
        grid = cam.shape[-2:]
        valid = sample.get("valid")
        valid_grid = (
            torch.ones(1, 1, *grid)
            if valid is None
            else F.interpolate(valid[None, None].float(), size=grid, mode="nearest")
        )
        labels = sample["tags"][None].float().clone()
        labels[:, 0] = 1.0  # the background channel is always allowed
        region = labels[:, :, None, None] * valid_grid
        fg = max_normalize(F.relu(cam))
        before = insert_background(fg, background_from_foreground(fg), 0) * region
        empty, share = seed_statistics(seed_masks(before, region, 0, BG_SEED_SCALE), valid_grid)
        add("empty_bg_before", empty)
        add("bg_share_before", share)
        if "pcm_embedding" in outputs:
            after = pcm_propagate(before, outputs["pcm_embedding"].float(), PCM_ITERATIONS)
            empty, share = seed_statistics(seed_masks(after, region, 0, BG_SEED_SCALE), valid_grid)
            add("empty_bg_after", empty)
            add("bg_share_after", share)
            add("pcm_reach", pcm_reach(outputs["pcm_embedding"]))
        mask = sample["mask"]
        labelled = mask[mask != dataset.ignore_index]
        add("true_bg_share", float((labelled == 0).float().mean()) if labelled.numel() else 0.0)
    return {
        "checkpoint": str(path),
        "method": cfg.method["name"],
        "step": meta.get("step"),
        "images": images,
        **{key: round(statistics.mean(values), 4) for key, values in rows.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--images", type=int, default=48, help="training crops per checkpoint")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = p.parse_args()
    results = []
    for path in args.checkpoints:
        row = probe(path, args.images)
        print(json.dumps(row))
        results.append(row)
    if args.json:
        command = "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
