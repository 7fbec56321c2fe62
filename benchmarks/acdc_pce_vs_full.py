"""Scribbles vs dense masks on ACDC at one fixed budget (CPU-sized).

Trains ``pce`` (partial cross-entropy on the real human scribbles) and ``full`` (cross-entropy on the
dense masks) with EfficientNet-lite0 + DeepLabV3+ for the same number of steps and batch size on the
train split of ``../shared/data/acdc-scribble`` (patients 021-090), evaluates each on val (patients
091-100) with per-volume 3-D Dice, and prints Dice per structure and training throughput side by side.

    .venv/bin/python benchmarks/acdc_pce_vs_full.py --steps 600 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from weakseg.config import load_config
from weakseg.engine.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "acdc-scribble"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_acdc"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["pce", "full"])
    args = parser.parse_args()

    rows = {}
    for method in args.methods:
        cfg = load_config(
            ROOT / "configs" / method / "acdc_effnetlite0.yaml",
            [
                f"data.root={args.data}",
                f"train.steps={args.steps}",
                f"train.batch_size={args.batch_size}",
                f"train.val_every={args.steps}",
                f"train.ckpt_every={args.steps}",
                f"data.num_workers={args.workers}",
                f"out_dir={Path(args.out) / method}",
                "train.num_overlays=4",
            ],
        )
        start = time.perf_counter()
        result = train(cfg, device="cpu", progress=False)
        wall = time.perf_counter() - start
        log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        speeds = [r["images_per_s"] for r in log if "images_per_s" in r][1:]  # first window includes warm-up
        vd = result.metrics["volume_Dice"]
        rows[method] = {
            "per_class": vd["per_class_Dice"],
            "mean": vd["mean_Dice"],
            "images_per_s": sum(speeds) / max(1, len(speeds)),
            "wall_s": wall,
            "mIoU": result.metrics["mIoU"],
        }

    classes = [c for c in rows[args.methods[0]]["per_class"]]
    print(
        f"\nACDC val, per-volume Dice, {args.steps} steps x batch {args.batch_size}, "
        "EfficientNet-lite0 + DeepLabV3+, CPU"
    )
    header = (
        f"{'method':8s}"
        + "".join(f"{c[:12]:>14s}" for c in classes)
        + f"{'mean':>8s}{'mIoU':>8s}{'img/s':>8s}{'wall s':>8s}"
    )
    print(header)
    for method, r in rows.items():
        cells = "".join(f"{r['per_class'][c]:14.4f}" for c in classes)
        print(f"{method:8s}{cells}{r['mean']:8.4f}{r['mIoU']:8.4f}{r['images_per_s']:8.1f}{r['wall_s']:8.0f}")
    if {"pce", "full"} <= set(rows):
        print(f"pce / full mean Dice: {rows['pce']['mean'] / rows['full']['mean']:.3f}")


if __name__ == "__main__":
    main()
