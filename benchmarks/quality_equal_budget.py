"""Methods side by side at one fixed training budget, on real data, CPU-sized.

Each variant is a method config (``configs/<method>/<dataset>_effnetlite0-v3p_256x256_<steps>.yaml``, see
``CONFIG_FILES``; EfficientNet-lite0 + DeepLabV3+) plus overrides; every variant trains for the same number
of steps at the same batch size and seed, then is evaluated on the val split. Datasets:

- ``acdc``: ``../shared/data/acdc-scribble`` (real human scribbles), per-volume 3-D Dice for RV, Myo, LV;
- ``camvid``: ``../shared/data/camvid`` with scribbles simulated from the masks (made once, seed 0), mIoU.

    .venv/bin/python benchmarks/quality_equal_budget.py --dataset acdc --variants pce full --steps 400
    .venv/bin/python benchmarks/quality_equal_budget.py --dataset acdc --variants pce full --steps 600 \
        --set data.resize=[128,128] data.crop_size=[128,128] eval.resize=[128,128]
    .venv/bin/python benchmarks/quality_equal_budget.py --dataset camvid \\
        --variants pce rloss gatedcrf dfr_shallow dfr_frozen dfr_dynamic dfr --steps 300

CDSP variants (``cdsp``, ``cdsp_no_lorm``, ``cdsp_no_de``, ``cdsp_no_segc``, ``cdsp_uncertain_bg``,
``cdsp_pseudo_only``) train on CAM pseudo-labels
made first from the scribbles' class tags, with the same overrides: a ``cam`` classifier
(``configs/cam/<dataset>_effnetlite0-cls_256x256_<steps>.yaml``, ``data.tags=scribbles``) trained for
``--cdsp-cam-steps``, multi-scale + flip CAMs of the train split, then ``weakseg pseudo-labels``
(``--cdsp-crf``); their quality against the train masks is printed too.

    .venv/bin/python benchmarks/quality_equal_budget.py --dataset camvid --variants pce cdsp cdsp_no_lorm \
        cdsp_no_de --steps 150 --cdsp-cam-steps 150

Prints one row per variant (quality, training images/s, wall time) and each variant's quality and
throughput relative to the first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from weakseg.config import load_config
from weakseg.engine.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"

# dataset -> the file names of its EfficientNet-lite0 CPU configs: (the segmentation methods' config, in
# every method's folder under configs/ that has one; the cam classifier's, in configs/cam/)
CONFIG_FILES: dict[str, tuple[str, str]] = {
    "acdc": ("acdc_effnetlite0-v3p_256x256_2k.yaml", "acdc_effnetlite0-cls_256x256_1k.yaml"),
    "camvid": ("camvid_effnetlite0-v3p_256x256_3k.yaml", "camvid_effnetlite0-cls_256x256_1500.yaml"),
}

# name -> (method whose config folder is used, extra overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "pce": ("pce", []),
    "full": ("full", []),
    "rloss": ("rloss", []),
    "gatedcrf": ("gatedcrf", []),
    # rloss without the release's batch-12 factor: the CRF at the per-image balance that DFR's default
    # reg_weight 0.4 matches (12x weaker than published)
    "rloss_per_image": ("rloss", ["method.reference_batch=1"]),
    "dfr": ("dfr", []),
    # DFR at rloss's batch-12 balance (reg_weight 4.8, the default until it collapsed on voc-real)
    "dfr_reg48": ("dfr", ["method.reg_weight=4.8"]),
    # the DFR ablation ladder (docs/dfr.md), as measured on ACDC: at reg_weight 4.8, so its top rung is
    # dfr_reg48
    "dfr_shallow": (
        "dfr",
        ["method.deep_kernel=none", "method.consistency_head=false", "method.reg_weight=4.8"],
    ),
    "dfr_frozen": (
        "dfr",
        ["method.deep_kernel=frozen", "method.consistency_head=false", "method.reg_weight=4.8"],
    ),
    "dfr_dynamic": ("dfr", ["method.consistency_head=false", "method.reg_weight=4.8"]),
    # CDSP and its ablations (need pseudo-labels: --cdsp-cam-steps makes them from the scribbles' tags)
    "cdsp": ("cdsp", []),
    "cdsp_no_lorm": ("cdsp", ["method.lorm=false"]),
    # LoRM's MSE over the foreground rows only (the authors' code also pulls background features to 0)
    "cdsp_lorm_fg": ("cdsp", ["method.lorm_reduction=foreground"]),
    "cdsp_no_de": ("cdsp", ["method.distance_entropy=false"]),
    # without L_segc (LoRM still reads the pseudo-labels' foreground): do the pseudo-labels help or hurt?
    "cdsp_no_segc": ("cdsp", ["method.pseudo_weight=0"]),
    # uncertain pseudo-label pixels trained as background, as the authors' runs do
    "cdsp_uncertain_bg": ("cdsp", ["method.uncertain=background"]),
    "cdsp_pseudo_only": (
        "cdsp",
        ["method.scribble_weight=0", "method.lorm=false", "method.distance_entropy=false"],
    ),
}


def dataset_root(name: str, work: Path) -> Path:
    if name == "acdc":
        return SHARED / "acdc-scribble"
    simulated = work / "data" / "camvid-scribbles"
    if not (simulated / "dataset.json").is_file():
        from weakseg.data.scribbles import write_scribble_variant

        write_scribble_variant(SHARED / "camvid", simulated, "simulate", seed=0, progress=True)
    return simulated


def config_for(variant: str, dataset: str, root: Path, args: argparse.Namespace, out: Path):
    method, extra = VARIANTS[variant]
    path = ROOT / "configs" / method / CONFIG_FILES[dataset][0]
    switch = []
    if not path.is_file():  # e.g. `full` on CamVid: the pce config with the method swapped
        path = ROOT / "configs" / "pce" / CONFIG_FILES[dataset][0]
        switch = [f"method.name={method}"]
    overrides = [
        *switch,
        *extra,
        f"data.root={root}",
        f"train.steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.val_every={args.steps}",
        f"train.ckpt_every={args.steps}",
        f"train.seed={args.seed}",
        f"data.num_workers={args.workers}",
        "train.num_overlays=4",
        f"out_dir={out / variant}",
        *args.set,
    ]
    return load_config(path, overrides)


def scribble_tag_pseudo_labels(
    cam_config: str | Path, root: Path, args: argparse.Namespace, stage: Path
) -> tuple[Path, dict]:
    """CDSP's first stage in ``stage``: CAM pseudo-labels from the tags of the scribbles.

    Returns the label folder and the labels' quality against the train masks (mIoU, coverage, ...).
    """
    from weakseg.cam.pseudo_labels import PseudoLabelParams
    from weakseg.data import FolderDataset
    from weakseg.tools.cam_folder import make_cams
    from weakseg.tools.pseudo_dataset import make_pseudo_labels

    cfg = load_config(
        cam_config,
        [
            f"data.root={root}",
            "data.tags=scribbles",
            f"train.steps={args.cdsp_cam_steps}",
            f"train.batch_size={args.batch_size}",
            f"train.val_every={args.cdsp_cam_steps}",
            f"train.ckpt_every={args.cdsp_cam_steps}",
            f"train.seed={args.seed}",
            f"data.num_workers={args.workers}",
            "train.num_overlays=0",
            f"out_dir={stage / 'cam'}",
            *args.set,
        ],
    )
    start = time.perf_counter()
    if not (stage / "cam" / "last.ckpt").is_file():  # a finished classifier is reused
        train(cfg, device="cpu", progress=False, overwrite=True)  # a classifier that never finished
    scales = "_".join(f"{s:g}" for s in args.cdsp_cam_scales)
    cams, _ = make_cams(
        stage / "cam" / "last.ckpt", stage / f"cams_{scales}", split="train", scales=args.cdsp_cam_scales,
        num_workers=args.workers, overwrite=True, device="cpu", progress=False,
    )  # fmt: skip
    train_set = FolderDataset(root, "train", load_scribbles=False, tags_source="none")
    summary = make_pseudo_labels(
        cams, train_set, stage / "pseudo_labels", params=PseudoLabelParams(crf=args.cdsp_crf), device="cpu",
        num_workers=args.workers, progress=False,
    )  # fmt: skip
    quality = {k: v for k, v in summary["quality"].items() if not k.startswith("per_class")}
    print(
        f"cdsp stage 1 ({time.perf_counter() - start:.0f} s): pseudo-labels vs train masks {quality}",
        flush=True,
    )
    return stage / "pseudo_labels" / "pseudo", quality


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=["acdc", "camvid"], default="acdc")
    parser.add_argument("--variants", nargs="+", default=["pce", "full"], choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_quality"))
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every variant"
    )
    parser.add_argument(
        "--cdsp-cam-steps", type=int, default=None, help="CAM classifier steps for CDSP (default: --steps)"
    )
    parser.add_argument(
        "--cdsp-cam-scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0], help="CAM scales (+ flip)"
    )
    parser.add_argument("--cdsp-crf", choices=["pydensecrf", "torch", "none"], default="pydensecrf")
    args = parser.parse_args()
    args.cdsp_cam_steps = args.cdsp_cam_steps or args.steps

    out = Path(args.out) / args.dataset
    root = dataset_root(args.dataset, Path(args.out))
    rows = {}
    pseudo_dir = None
    if any(VARIANTS[v][0] == "cdsp" for v in args.variants):
        cam_config = ROOT / "configs" / "cam" / CONFIG_FILES[args.dataset][1]
        pseudo_dir, _ = scribble_tag_pseudo_labels(cam_config, root, args, out / "cdsp_stage1")
    for variant in args.variants:
        cfg = config_for(variant, args.dataset, root, args, out)
        if VARIANTS[variant][0] == "cdsp":
            cfg.data.pseudo_dir = str(pseudo_dir)
        start = time.perf_counter()
        result = train(cfg, device="cpu", progress=False, overwrite=True)
        wall = time.perf_counter() - start
        log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        speeds = [r["images_per_s"] for r in log if "images_per_s" in r][1:]  # first window has warm-up
        m = result.metrics
        row = {"mIoU": m["mIoU"], "img_s": sum(speeds) / max(1, len(speeds)), "wall_s": wall}
        if "volume_Dice" in m:
            row["per_class"] = m["volume_Dice"]["per_class"]
            row["score"] = m["volume_Dice"]["mean_Dice"]
        else:
            row["per_class"] = m["per_class_IoU"]
            row["score"] = m["mIoU"]
        rows[variant] = row
        print(f"{variant}: {json.dumps({k: v for k, v in row.items()})}", flush=True)

    metric = "mean per-volume Dice" if args.dataset == "acdc" else "mIoU"
    print(
        f"\n{args.dataset} val, {metric}; {args.steps} steps x batch {args.batch_size}, seed {args.seed}, "
        f"EfficientNet-lite0 + DeepLabV3+, CPU; overrides: {' '.join(args.set) or '-'}"
    )
    first = args.variants[0]
    names = list(rows[first]["per_class"])
    print(f"{'variant':12s}" + "".join(f"{n[:10]:>11s}" for n in names) + f"{'score':>8s}{'rel':>7s}"
          f"{'img/s':>8s}{'rel':>7s}{'wall s':>8s}")  # fmt: skip
    for variant, r in rows.items():
        cells = "".join(f"{r['per_class'][n]:11.4f}" for n in names)
        print(
            f"{variant:12s}{cells}{r['score']:8.4f}{r['score'] / rows[first]['score']:7.3f}"
            f"{r['img_s']:8.1f}{r['img_s'] / rows[first]['img_s']:7.2f}{r['wall_s']:8.0f}"
        )


if __name__ == "__main__":
    main()
