"""CamVid: the `cam` baseline vs `sfc` at one training budget, judged by their CAMs.

For each method: train on CamVid train with image-level tags taken from the masks
(``data.tags=masks``), same steps and batch size; multi-scale + flip CAMs of every train
image (``weakseg cam``); the seed sweep on train (``weakseg cam evaluate``; CamVid has no background
class, so the threshold marks uncertain pixels and those count as misses, see
:mod:`weakseg.cam.seeds`); pseudo-labels (``weakseg pseudo-labels``) without and with the dense
CRF, scored against the train masks on their labelled pixels, with their coverage.

SFC's maps are combined as the paper does for seeds (M_W + M_P) and as its IR-label code does for
pseudo-labels (M_W + 0.7·M_P); seeds of M_W and M_P alone are reported too.

    .venv/bin/python benchmarks/camvid_cam_seeds.py --steps 300
    .venv/bin/python benchmarks/camvid_cam_seeds.py --reuse          # re-score existing runs / CAMs

Everything is written under ``--work`` (default ``runs/bench_camvid_cam_seeds``). CPU-heavy: on
CPU the refined pseudo-labels use the pydensecrf reference (the exact torch mean field is the GPU
path), and ``--pseudo-every`` thins the images they are made for.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the CamVid config of cam and of sfc, in configs/cam/ and configs/sfc/
CONFIG_FILE = "camvid_effnetlite0-cls_256x256_1500.yaml"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "camvid"), help="CamVid folder")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_camvid_cam_seeds"), help="output folder")
    p.add_argument("--methods", nargs="+", default=["cam", "sfc"])
    p.add_argument("--steps", type=int, default=300, help="training steps of every method (equal budget)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0], help="CAM inference scales"
    )
    p.add_argument(
        "--crf",
        choices=["torch", "pydensecrf"],
        default=None,
        help="CRF of the refined pseudo-labels (default: torch on GPU, pydensecrf on CPU)",
    )
    p.add_argument(
        "--crf-scale", type=float, default=None, help="torch CRF grid scale (default: 1 on GPU, 0.25 on CPU)"
    )
    p.add_argument("--pseudo-every", type=int, default=1, help="pseudo-labels for every k-th train image")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--reuse", action="store_true", help="keep existing checkpoints and CAM files")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args()


def train_method(method: str, args: argparse.Namespace, run_dir: Path) -> dict:
    """Train ``configs/<method>/`` + :data:`CONFIG_FILE` for ``--steps``; returns timing."""
    from weakseg.config import load_config
    from weakseg.engine.trainer import train

    ckpt = run_dir / "last.ckpt"
    if args.reuse and ckpt.is_file():
        return {"train_s": None, "reused": True}
    cfg = load_config(
        ROOT / "configs" / method / CONFIG_FILE,
        [
            f"data.root={args.data}",
            "data.tags=masks",
            f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            f"train.val_every={args.steps}",
            f"train.ckpt_every={args.steps}",
            f"data.num_workers={args.num_workers}",
            "train.num_overlays=0",
            f"out_dir={run_dir}",
        ],
    )
    started = time.monotonic()
    result = train(cfg, device=args.device, progress=not args.quiet, overwrite=True)
    return {"train_s": time.monotonic() - started, "val_seed_mIoU_single_scale": result.metrics.get("mIoU")}


def main() -> int:
    import torch

    from weakseg.cam.pseudo_labels import PseudoLabelParams
    from weakseg.data import FolderDataset
    from weakseg.postprocess.crf import CRFParams
    from weakseg.tools.cam_folder import make_cams
    from weakseg.tools.cam_store import load_cam_meta
    from weakseg.tools.pseudo_dataset import make_pseudo_labels
    from weakseg.tools.seed_report import evaluate_seeds, write_seed_report

    args = parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    crf_kind = args.crf or ("torch" if device.startswith("cuda") else "pydensecrf")
    # the torch CRF is exact and O(N^2): a coarser grid on CPU; pydensecrf always runs at full size
    crf_scale = args.crf_scale or (1.0 if device.startswith("cuda") or crf_kind == "pydensecrf" else 0.25)
    work = Path(args.work)
    rows = {}
    for method in args.methods:
        mdir = work / method
        row = train_method(method, args, mdir / "run")
        cam_dir = mdir / "cams"
        started = time.monotonic()
        make_cams(
            mdir / "run" / "last.ckpt",
            cam_dir,
            split="train",
            data_root=args.data,
            overrides=["data.tags=masks"],
            scales=args.scales,
            num_workers=args.num_workers,
            overwrite=not args.reuse,
            device=device,
            progress=not args.quiet,
        )
        row["cam_s"] = time.monotonic() - started
        keys = load_cam_meta(cam_dir)["cam_keys"]
        train_set = FolderDataset(args.data, "train", load_scribbles=False, tags_source="none")

        seeds = {}
        combined = [k for k in keys if k != "cam"] or keys  # sfc: M_W + M_P (the raw "cam" apart); cam: cam
        for name in [None, *keys] if len(keys) > 1 else [None]:
            weights = {k: 1.0 for k in combined} if name is None else {name: 1.0}
            res = evaluate_seeds(
                cam_dir, train_set, weights=weights, num_workers=args.num_workers, progress=False
            )
            label = "+".join(combined) if name is None else name
            seeds[label] = {"mIoU": res["best_mIoU"], "threshold": res["best_threshold"]}
            if name is None:
                write_seed_report(res, mdir / "seeds")
                seeds[label]["mIoU_at_0"] = res["mIoU"][0]  # plain arg-max over the tagged classes
        row["seeds"] = seeds

        pl_weights = {"M_W": 1.0, "M_P": 0.7} if {"M_W", "M_P"} <= set(keys) else None
        subset = FolderDataset(args.data, "train", load_scribbles=False, tags_source="none")
        subset.ids = subset.ids[:: args.pseudo_every]
        row["pseudo"] = {}
        for crf in ("none", crf_kind):
            params = PseudoLabelParams(crf=crf, crf_params=CRFParams.pseudo_label(scale=crf_scale))
            started = time.monotonic()
            summary = make_pseudo_labels(
                cam_dir, subset, mdir / f"pseudo_{crf}", weights=pl_weights, params=params, device=device,
                num_workers=args.num_workers, progress=not args.quiet,
            )  # fmt: skip
            row["pseudo"][crf] = {**summary["quality"], "seconds": time.monotonic() - started}
            row["pseudo"][crf].pop("per_class_IoU_labelled")
        rows[method] = row

    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nCamVid train, {args.steps} steps x batch {args.batch_size} per method, device {device}")
    print(
        f"CAM scales {args.scales} + flip; pseudo-labels on {len(subset)} images, CRF grid scale {crf_scale}"
    )
    head = f"{'method':8s} {'train s':>8s} {'seed mIoU':>10s} {'thr':>5s} {'argmax':>7s}   per map"
    print(head)
    for method, row in rows.items():
        combined = next(iter(row["seeds"].values()))
        per_map = ", ".join(
            f"{k} {100 * v['mIoU']:.2f}@{v['threshold']:g}" for k, v in list(row["seeds"].items())[1:]
        )
        train_s = "reused" if row.get("train_s") is None else f"{row['train_s']:.0f}"
        print(
            f"{method:8s} {train_s:>8s} {100 * combined['mIoU']:10.2f} {combined['threshold']:5g} "
            f"{100 * combined['mIoU_at_0']:7.2f}   {per_map or '-'}"
        )
    print(f"\n{'method':8s} {'CRF':6s} {'mIoU(lab)':>10s} {'coverage':>9s} {'mIoU(miss)':>11s} {'s/img':>7s}")
    for method, row in rows.items():
        for crf, q in row["pseudo"].items():
            print(
                f"{method:8s} {crf:6s} {100 * q['mIoU_labelled']:10.2f} {100 * q['coverage']:8.1f}% "
                f"{100 * q['mIoU_ignore_as_miss']:11.2f} {q['seconds'] / len(subset):7.2f}"
            )
    if len(rows) == 2:
        a, b = rows.values()
        ratio = next(iter(b["seeds"].values()))["mIoU"] / max(next(iter(a["seeds"].values()))["mIoU"], 1e-9)
        print(f"\nseed mIoU ratio {args.methods[1]} / {args.methods[0]}: {ratio:.3f}")
    print(f"\nresults: {work / 'results.json'}\ncommand: {shlex.join([sys.executable, *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
