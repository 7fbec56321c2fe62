"""The AAL ladder on CamVid or the synthetic shapes: baseline, + AA, + LR, + both, at one budget.

``aal`` is designed from the paper's abstract (docs/aal.md), so this ladder is our own ablation, not the
paper's. Every variant is ``configs/aal/camvid_effnetlite0-v3p_256x256_3k.yaml`` (EfficientNet-lite0 +
DeepLabV3+, image tags taken from the CamVid masks with ``data.tags=masks``) plus the switches below,
trained for the same steps, batch size and seed:

=========  ==========================================  ==========================================
variant    overrides                                   losses
=========  ==========================================  ==========================================
baseline   ``method.use_aa=false method.use_lr=false``  cls + CE on the on-the-fly pseudo masks
aa         ``method.use_lr=false``                      + adaptive affinity loss
lr         ``method.use_aa=false``                      + label reassign loss
both       (defaults)                                   + both
=========  ==========================================  ==========================================

``--dataset synthetic`` uses ``configs/aal/synthetic_effnetlite0-v3p_96x96_300.yaml`` on the demo's
synthetic shapes, whose image tags vary from image to image. CamVid's barely do (sky, pole and road are
in every train image, building and car in 98-99 %), which leaves a classifier little reason to localise
them.

Reported per variant: segmentation mIoU on val (the engine's final validation of the
segmentation logits), and the **step time** of the joint phase (classification + pseudo masks +
segmentation terms; the classification warm-up is the same for every variant): after training, the
trained network and method time ``--time-steps`` forward + loss + backward passes on training batches
with every term switched on (median ms, device-synchronised), relative to the baseline. The training
throughput of the joint phase from the run's log (images/s, data loading included) and the wall time
are printed too.

    .venv/bin/python benchmarks/aal_ladder.py --steps 1500 --device cuda
    .venv/bin/python benchmarks/aal_ladder.py --steps 2 --time-steps 2 --batch-size 2 --workers 0 \\
        --set data.resize=[64,80] data.crop_size=[64,80] eval.resize=[64,80]   # smoke run on a CPU

Everything is written under ``--out`` (default ``runs/bench_aal_ladder``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from image_level_ladder import AAL_VARIANTS

ROOT = Path(__file__).resolve().parents[1]

#: --dataset -> its config in configs/aal/
CONFIG_FILES: dict[str, str] = {
    "camvid": "camvid_effnetlite0-v3p_256x256_3k.yaml",
    "synthetic": "synthetic_effnetlite0-v3p_96x96_300.yaml",
}

#: variant -> method overrides: the image-level ladder's AAL variants (one definition for both ladders)
VARIANTS: dict[str, list[str]] = {name: overrides for name, (_, overrides) in AAL_VARIANTS.items()}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dataset",
        choices=sorted(CONFIG_FILES),
        default="camvid",
        help=f"camvid: configs/aal/{CONFIG_FILES['camvid']}; synthetic: configs/aal/"
        f"{CONFIG_FILES['synthetic']} on the demo's shapes (made if missing)",
    )
    p.add_argument(
        "--data", default=None, help="dataset folder (default: ../shared/data/camvid or demo_data/synthetic)"
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/bench_aal_ladder[_synthetic])")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=1500, help="training steps of every variant (equal budget)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--time-steps", type=int, default=10, help="timed joint-phase steps per variant")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every variant"
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.data is None:
        args.data = str(
            ROOT / ".." / "shared" / "data" / "camvid"
            if args.dataset == "camvid"
            else ROOT / "demo_data" / "synthetic"
        )
        if args.dataset == "synthetic" and not (Path(args.data) / "dataset.json").is_file():
            from weakseg.data.synthetic import make_synthetic_dataset

            make_synthetic_dataset(args.data, num_train=400, num_val=60, seed=0)  # as `make demo`
    suffix = "" if args.dataset == "camvid" else f"_{args.dataset}"
    args.out = args.out or str(ROOT / "runs" / f"bench_aal_ladder{suffix}")
    return args


def config_for(variant: str, args: argparse.Namespace, out: Path):
    from weakseg.config import load_config

    return load_config(
        ROOT / "configs" / "aal" / CONFIG_FILES[args.dataset],
        [
            *VARIANTS[variant],
            f"data.root={args.data}",
            "data.tags=masks",
            f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            f"train.val_every={args.steps}",
            f"train.ckpt_every={args.steps}",
            f"train.seed={args.seed}",
            f"data.num_workers={args.workers}",
            "train.log_every=1" if args.steps < 50 else "train.log_every=10",
            "train.num_overlays=0",
            f"out_dir={out / variant}",
            *args.set,
        ],
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_joint_steps(cfg, run_dir: Path, device: torch.device, count: int) -> float:
    """Median seconds of forward + method + backward of the trained network, every term switched on."""
    from torch.utils.data import DataLoader

    from weakseg.builders import build_dataset, build_method_for, method_requires
    from weakseg.engine.trainer import load_trained_model, move_batch
    from weakseg.methods import run_model

    dataset = build_dataset(cfg, cfg.data.train_split, train=True, requires=method_requires(cfg))
    model, _, _ = load_trained_model(run_dir / "last.ckpt", device)
    model.train()
    method = build_method_for(cfg, dataset).to(device)
    method.set_progress(cfg.train.steps, cfg.train.steps)  # past both warm-ups
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True, num_workers=0)
    times = []
    batches = iter(loader)
    for i in range(count + 1):  # the first pass warms up kernels and allocators
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        batch = move_batch(batch, device)
        model.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        batch, outputs = run_model(method, model, batch)
        losses = method(outputs, batch)
        torch.stack([v.float() for v in losses.values()]).sum().backward()
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from weakseg.engine.trainer import train

    args = parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    rows: dict[str, dict] = {}
    for variant in args.variants:
        cfg = config_for(variant, args, out)
        started = time.perf_counter()
        result = train(cfg, device=str(device), progress=not args.quiet, overwrite=True)
        wall = time.perf_counter() - started
        log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        joint_from = cfg.method["cls_warmup"] * cfg.train.steps
        speeds = [r["images_per_s"] for r in log if "images_per_s" in r and r["step"] > joint_from]
        rows[variant] = {
            "mIoU": result.metrics["mIoU"],
            "step_s": time_joint_steps(cfg, result.run_dir, device, args.time_steps),
            "img_s": statistics.mean(speeds[1:] or speeds) if speeds else float("nan"),
            "wall_s": wall,
            "per_class_IoU": result.metrics.get("per_class_IoU"),
        }
        print(f"{variant}: {json.dumps(rows[variant])}", flush=True)

    first = args.variants[0]
    ref = rows[first]
    print(
        f"\n{args.dataset} val, {args.steps} steps x batch {args.batch_size}, seed {args.seed}, "
        f"segmentation mIoU of aal (designed from the abstract), EfficientNet-lite0 + DeepLabV3+, "
        f"tags from masks, {device}; "
        f"overrides: {' '.join(args.set) or '-'}\nstep = forward + losses + backward of the joint phase "
        f"(median of {args.time_steps}); img/s = logged training throughput of the joint phase"
    )
    print(f"{'variant':10s}{'mIoU':>8s}{'rel':>7s}{'step ms':>9s}{'rel':>7s}{'img/s':>8s}{'wall s':>8s}")
    for variant, r in rows.items():
        rel_q = r["mIoU"] / ref["mIoU"] if ref["mIoU"] else float("nan")
        print(
            f"{variant:10s}{r['mIoU']:8.4f}{rel_q:7.3f}{1000 * r['step_s']:9.1f}"
            f"{r['step_s'] / ref['step_s']:7.2f}{r['img_s']:8.1f}{r['wall_s']:8.0f}"
        )
    summary = out / "summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps({"args": vars(args), "device": str(device), "rows": rows}, indent=2))
    print(f"written: {summary}")


if __name__ == "__main__":
    main()
