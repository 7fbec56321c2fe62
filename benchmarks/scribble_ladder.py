"""Train one scribble-method variant to its plateau on real data and record it as a result JSON.

One invocation = one (dataset, variant, seed) run, so two can run side by side (one thread each).
The run is resumable: invoked again, it continues from the run folder's ``last.ckpt`` (``weakseg train
--resume``) and adds the new wall time; a finished run is only re-summarised. The summary goes to
``benchmarks/results/<dataset>/<variant>_seed<N>.json`` (:mod:`results_io`), with the validation curve
and whether it reached its plateau.

Protocols (CPU, EfficientNet-lite0 ImageNet + DeepLabV3+ with 64 decoder channels, AdamW, warm-up +
cosine; validation every 100 steps unless stated):

- ``acdc-scribble``: real scribbles; slices resized to 128x128, crops 128, batch 8, 1500 steps;
  score = mean per-volume 3-D Dice (RV, Myo, LV) on val at 128x128 mapped back to the slice size.
  DFR's shallow kernel at scale 0.5 (a 64x64 grid).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scribble_ladder.py \\
        --dataset acdc-scribble --variant pce --seed 0

- ``camvid``: scribbles simulated from the masks (``weakseg data simulate``, seed 0, made once under
  ``runs/data``); images resized to 180x240, crops 160, scale 0.5-1.5, batch 8, 1500 steps (~33 epochs of
  the 367 train images); val mIoU at 180x240 mapped back. The DFR ladder's rungs run at DFR's default
  ``reg_weight`` 0.4 (``--set method.reg_weight=0.4``; their variants carry ACDC's 4.8, which collapses
  on natural images), so the top rung is ``dfr``.
- ``voc-real``: real VOC images, scribbles simulated the same way; the CamVid configs' natural-image
  settings with crops 192, scale 0.5-1.0, batch 8, 3000 steps (~27 epochs of the 880 train images;
  at 1500 steps ``full`` was still rising until the cosine decay ended it and tied ``pce``), validation
  every 200 steps; val mIoU at full size.

``cdsp`` first runs its stage 1 once per dataset and seed: a ``cam`` classifier on the scribbles' tags
(on voc-real the image-level ladder's classifier protocol,
``configs/cam/vocreal_effnetlite0-cls_224x224_800.yaml`` at its own crops for 800 steps; elsewhere the
dataset's CAM config on the segmenters' crops for 500 steps; ``--cdsp-cam-steps`` changes the steps),
multi-scale + flip CAMs of the train split and ``weakseg pseudo-labels`` with pydensecrf, in
``runs/ladder/<dataset>/cdsp_stage1_seed<N>``; the pseudo-labels' quality against the train masks and the
stage's settings are stored in the result.

Variants are those of ``quality_equal_budget.py`` (pce, full, rloss, gatedcrf, dfr_shallow, dfr_frozen,
dfr_dynamic, dfr, cdsp, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from quality_equal_budget import VARIANTS, scribble_tag_pseudo_labels
from results_io import RESULTS, plateau, unshadow_site_packages, write_result

unshadow_site_packages()

ROOT = Path(__file__).resolve().parents[1]
SHARED = "../shared/data"  # relative to the repository root, where the command runs

# dataset -> (config file name in each method's folder and in configs/cam/, data root, metric, overrides
# shared by every variant, extra per method)
PROTOCOLS: dict[str, dict] = {
    "acdc-scribble": {
        "config": "acdc_effnetlite0-v3p_256x256_2k.yaml",
        "cam_config": "acdc_effnetlite0-cls_256x256_1k.yaml",
        "root": f"{SHARED}/acdc-scribble",
        "metric": "mean_dice",
        "overrides": [
            "data.resize=[128,128]",
            "data.crop_size=[128,128]",
            "eval.resize=[128,128]",
            "train.batch_size=8",
            "train.steps=1500",
            "train.val_every=100",
            "train.ckpt_every=100",
        ],
        "method_overrides": {"dfr": ["method.shallow_scale=0.5"]},
    },
    "camvid": {
        "config": "camvid_effnetlite0-v3p_256x256_3k.yaml",
        "cam_config": "camvid_effnetlite0-cls_256x256_1500.yaml",
        "source": f"{SHARED}/camvid",
        "root": "runs/data/camvid-scribbles",
        "metric": "mIoU",
        "overrides": [
            "data.resize=[180,240]",
            "data.crop_size=[160,160]",
            "eval.resize=[180,240]",
            "train.batch_size=8",
            "train.steps=1500",
            "train.val_every=100",
            "train.ckpt_every=100",
        ],
        "method_overrides": {},
    },
    "voc-real": {
        "config": "camvid_effnetlite0-v3p_256x256_3k.yaml",
        # CDSP's classifier: the image-level ladder's voc-real protocol (its own crops, 800 steps)
        "cam_config": "vocreal_effnetlite0-cls_224x224_800.yaml",
        "cam_steps": 800,
        "cam_own_crops": True,
        "source": f"{SHARED}/voc-real",
        "root": "runs/data/voc-real-scribbles",
        "metric": "mIoU",
        "overrides": [
            "data.crop_size=[192,192]",
            "data.scale_range=[0.5,1.0]",
            "train.batch_size=8",
            "train.steps=3000",
            "train.val_every=200",
            "train.ckpt_every=200",
        ],
        "method_overrides": {},
    },
}


def ensure_data(dataset: str) -> None:
    """Simulate the scribbles of a dataset that has none (once; ``weakseg data simulate``, seed 0)."""
    proto = PROTOCOLS[dataset]
    if "source" in proto and not (Path(proto["root"]) / "dataset.json").is_file():
        command = [
            sys.executable,
            "-m",
            "weakseg",
            "data",
            "simulate",
            proto["source"],
            proto["root"],
            "--seed",
            "0",
        ]
        if Path(proto["root"]).exists():  # an interrupted simulation: its dataset.json is written last
            command.append("--overwrite")
        subprocess.run(command, check=True)


def cdsp_stage1(
    dataset: str, seed: int, runs: Path, workers: int, cam_steps: int | None
) -> tuple[Path, dict, dict]:
    """CDSP's pseudo-labels from the scribbles' tags (see the module doc).

    Returns (label folder, their quality, the stage's settings: classifier config and steps). A stage
    folder made with other settings is not reused silently: move it away to make it again.
    """
    from types import SimpleNamespace

    proto = PROTOCOLS[dataset]
    stage = runs / dataset / f"cdsp_stage1_seed{seed}"
    settings = {
        "cam_config": f"configs/cam/{proto['cam_config']}",
        "cam_steps": cam_steps or proto.get("cam_steps", 500),
    }
    shared = []
    if not proto.get("cam_own_crops"):  # the classifier trains on the segmenters' crops
        skip = ("train.steps", "train.val_every", "train.ckpt")
        shared = [o for o in proto["overrides"] if not o.startswith(skip)]
    args = SimpleNamespace(
        cdsp_cam_steps=settings["cam_steps"], batch_size=8, seed=seed, workers=workers, set=shared,
        cdsp_cam_scales=[0.5, 1.0, 1.5], cdsp_crf="pydensecrf",
    )  # fmt: skip
    quality_file = stage / "pseudo_label_quality.json"
    if not quality_file.is_file():
        labels, quality = scribble_tag_pseudo_labels(settings["cam_config"], Path(proto["root"]), args, stage)
        record = {"labels": str(labels), "quality": quality, **settings}
        quality_file.write_text(json.dumps(record))
    record = json.loads(quality_file.read_text())
    made_with = {key: record.get(key) for key in settings}
    if made_with != settings:
        raise SystemExit(
            f"{stage} holds CDSP stage-1 labels made with {made_with}, not {settings}: move it away "
            "(or pass the --cdsp-cam-steps it was made with) to make them again"
        )
    return Path(record["labels"]), record["quality"], settings


def run_command(
    dataset: str, variant: str, seed: int, run_dir: Path, workers: int, extra: list[str]
) -> list[str]:
    """The ``weakseg train`` command line of this run (without ``--resume``)."""
    proto = PROTOCOLS[dataset]
    method, variant_overrides = VARIANTS[variant]
    config = ROOT / "configs" / method / proto["config"]
    switch = []
    if (
        not config.is_file()
    ):  # e.g. a method without its own config for this dataset: pce's with the method swapped
        config = ROOT / "configs" / "pce" / proto["config"]
        switch = [f"method.name={method}"]
    overrides = [
        *switch,
        f"data.root={proto['root']}",
        *proto["overrides"],
        *proto["method_overrides"].get(method, []),
        *variant_overrides,
        f"train.seed={seed}",
        f"data.num_workers={workers}",
        "train.num_overlays=4",
        f"out_dir={run_dir}",
        *extra,
    ]
    return [sys.executable, "-m", "weakseg", "train", str(config.relative_to(ROOT)), *overrides, "--quiet"]


def git_commit() -> str:
    """The commit of the code that trained the run (the checkout this script runs from)."""
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def summarise(
    dataset: str,
    variant: str,
    seed: int,
    run_dir: Path,
    command: list[str],
    wall: float,
    results: Path,
    extra: dict,
) -> Path:
    """Read the finished run folder and write its result JSON."""
    proto = PROTOCOLS[dataset]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = (run_dir / "config.yaml").read_text()
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    key = "val/volume_mean_Dice" if proto["metric"] == "mean_dice" else "val/mIoU"
    curve = [(r["step"], r[key]) for r in log if key in r]
    speeds = [r["images_per_s"] for r in log if "images_per_s" in r][1:]
    if proto["metric"] == "mean_dice":
        score, per_class = metrics["volume_Dice"]["mean_Dice"], metrics["volume_Dice"]["per_class"]
    else:
        score, per_class = metrics["mIoU"], metrics["per_class_IoU"]
    steps = int(metrics["step"])
    return write_result(
        dataset,
        variant,
        seed,
        root=results,
        method=VARIANTS[variant][0],
        steps=steps,
        wall_time_s=round(wall, 1),
        metric=proto["metric"],
        score=score,
        per_class=per_class,
        command=" ".join(shlex.quote(c) for c in ["OMP_NUM_THREADS=1", ".venv/bin/weakseg", *command[3:]]),
        curve=curve,
        plateau=plateau(curve, steps),
        images_per_s=sum(speeds) / max(1, len(speeds)),
        mIoU=metrics["mIoU"],
        config_yaml=config,
        code_commit=git_commit(),
        **extra,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(PROTOCOLS), required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", default="runs/ladder", help="parent of the run folders")
    parser.add_argument("--results", default=str(RESULTS), help="where the result JSON goes")
    parser.add_argument(
        "--cdsp-cam-steps",
        type=int,
        default=None,
        help="cdsp stage 1: classifier steps (default: the protocol's)",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = parser.parse_args()
    os.chdir(ROOT)  # data roots, run folders and the recorded command are relative to the repository

    ensure_data(args.dataset)
    extra, stage1 = list(args.set), {}
    if VARIANTS[args.variant][0] == "cdsp":
        labels, quality, settings = cdsp_stage1(
            args.dataset, args.seed, Path(args.runs), args.workers, args.cdsp_cam_steps
        )
        extra.append(f"data.pseudo_dir={labels}")
        stage1 = {"cdsp_stage1": {**settings, "pseudo_label_quality": quality}}
    run_dir = Path(args.runs) / args.dataset / f"{args.variant}_seed{args.seed}"
    if run_dir.is_absolute() and run_dir.is_relative_to(ROOT):
        run_dir = run_dir.relative_to(ROOT)
    command = run_command(args.dataset, args.variant, args.seed, run_dir, args.workers, extra)
    wall_file = run_dir / "ladder_wall_s.json"
    wall = json.loads(wall_file.read_text())["wall_s"] if wall_file.is_file() else 0.0
    if not (run_dir / "metrics.json").is_file():
        resume = []
        if (run_dir / "last.ckpt").is_file():
            resume = ["--resume", str(run_dir / "last.ckpt")]
        elif run_dir.exists():  # stopped before its first checkpoint: start again
            shutil.rmtree(run_dir)
        print(" ".join(shlex.quote(c) for c in command + resume), flush=True)
        start = time.perf_counter()
        try:
            subprocess.run(command + resume, check=True)
        finally:
            if run_dir.is_dir():
                wall += time.perf_counter() - start
                wall_file.write_text(json.dumps({"wall_s": wall}))
    print(
        summarise(args.dataset, args.variant, args.seed, run_dir, command, wall, Path(args.results), stage1)
    )


if __name__ == "__main__":
    main()
