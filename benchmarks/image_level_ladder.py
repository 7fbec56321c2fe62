"""The image-level ladder on real images whose tags vary: ``--dataset voc-real`` or ``msrc-real``.

Five stages, each recorded as ``benchmarks/results/<dataset>-image/<variant>_seed<N>.json``
(:mod:`results_io`) and skipped when that file exists; every training resumes from its run folder's
``last.ckpt`` (``weakseg train --resume``) and adds the new wall time, CAM inference skips the images
whose file exists. Every step runs as a ``weakseg`` command (recorded in the result's ``command``).

1. **Seeds** (variants ``cam_seeds``, ``sfc_seeds``; ``--seed-variants sfc_pre_pcm_seeds`` adds ``sfc``
   with its prototype seeds taken before the PCM): ``cam`` and ``sfc`` trained at one budget
   (``configs/<method>/<vocreal|msrcreal>_effnetlite0-cls_224x224_800.yaml``: same steps, batch, crops
   and optimiser rules; SFC's bank adds 4 samples a step), multi-scale + flip CAMs of every train image,
   and the seed sweep on train by **the same rule for both**: the raw classifier CAM with IRN's constant
   background score. ``score`` = the oracle best threshold's mIoU (chosen on the train masks, labelled
   so); ``score_fixed`` = the rule's own entry (IRN's 0.15 with a background class, also stored as
   ``score_at_0.15``; the plain arg-max without one, as on MSRC). ``sfc_seeds`` also stores SFC's own
   rule (``make_cam`` biases on the maps' own background: ``M_W + M_P`` and ``M_P`` alone) and its
   collapse diagnostics (share of images with an empty background prototype, background-seed share).
2. **Pseudo-labels** (``pseudo_labels``): IR labels with the dense CRF (pydensecrf on a CPU, the torch
   mean field on a GPU) from the classifier and rule with the best seed score on train: IRN's
   thresholds on the raw classifier CAM (``--rule irn``, either classifier) or, for ``sfc``, its own
   rule (``cam2ir``'s ``M_W + 0.7 M_P`` with the maps' own background, ``--rule sfc``) when its seeds
   score higher; ``score`` = mIoU on the labelled pixels, with ``coverage`` and the mIoU counting
   ignored pixels as misses.
3. **Two stages** (``two_stage``): ``full`` with ``method.label=pseudo`` trained on those pseudo-labels
   (``configs/full/synthetic_effnetlite0-v3p_96x96_300.yaml`` with this dataset's crops and steps); val
   mIoU.
4. **Ceiling** (``full_masks``): the same segmenter, protocol and budget trained on the true train masks;
   val mIoU. It bounds what the two-stage segmenter can reach under this protocol. ``--segmenter-steps K``
   sets the steps of stages 3 and 4 only (run folders ``<variant>_steps<K>_seed<N>``), for a longer
   two-stage schedule on the classifiers and pseudo-labels already made.
5. **AAL** (``aal_baseline``, ``aal_aa``, ``aal_lr``, ``aal``): the single-stage network with CE on its
   on-the-fly pseudo masks, + adaptive affinity, + label reassignment, + both, at one budget
   (``configs/aal/<vocreal|msrcreal>_effnetlite0-v3p_224x224_500.yaml``); val mIoU and the joint-phase
   step time from the run's log (``joint_step_time_rel_baseline`` divides it by ``aal_baseline``'s: a
   ratio that means something only when the two ran side by side under one load).

Each training's validation curve (step -> score) and whether its last fifth is flat
(:func:`results_io.plateau`) are stored with it. MSRC has no background class: seeds, pseudo-labels and
validation then use the no-background rules (arg-max over the tagged classes, uncertain pixels ignored).

CPU protocol (one thread per run; the configs' values): crops 224, batch 8; ``cam``/``sfc`` 800 steps
(~7 epochs of voc-real's 880 images; IRN and SFC train 5-6), ``full`` 800, ``aal`` 500 with its CRF on a
1/8 grid; validation every 100 steps. Step times measured on voc-real with ``nice -n 19`` on a 2-core
machine under load (load average 6-9), so upper bounds: cam 1.8 s, sfc 2.5 s, full ~2.1 s (2.7 s at crop
256), aal 5.3 s in its joint phase (23 s with the CRF on a 1/4 grid at crop 256); validation ~0.4 s (cam)
to ~0.5 s (segmenters) per val image. CAM inference of the train split costs ~2 s per image at scales
0.5/1/1.5 with flips (the default here) and ~6.6 s with the reference's 2.0 added; pydensecrf
pseudo-labels ~0.7 s per image.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/image_level_ladder.py --dataset voc-real --stages seeds
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/image_level_ladder.py --dataset msrc-real --limit 8 \\
        --steps 5 --cam-scales 1.0 --results /tmp/ladder_results --runs /tmp/ladder_runs   # smoke test
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
from typing import Any

from results_io import RESULTS, plateau, result_path, unshadow_site_packages, write_result

unshadow_site_packages()

ROOT = Path(__file__).resolve().parents[1]
SHARED = "../shared/data"  # relative to the repository root, where every command runs

#: --dataset -> (config file name of the classifiers in configs/cam/ and configs/sfc/, of AAL in
#: configs/aal/; data root; result dataset name)
DATASETS: dict[str, tuple[str, str, str, str]] = {
    "voc-real": (
        "vocreal_effnetlite0-cls_224x224_800.yaml",
        "vocreal_effnetlite0-v3p_224x224_500.yaml",
        f"{SHARED}/voc-real",
        "voc-real-image",
    ),
    "msrc-real": (
        "msrcreal_effnetlite0-cls_224x224_800.yaml",
        "msrcreal_effnetlite0-v3p_224x224_500.yaml",
        f"{SHARED}/msrc-real",
        "msrc-real-image",
    ),
}
STAGES = ("seeds", "pseudo", "two_stage", "ceiling", "aal")
#: seed variant -> (method, overrides); the seeds stage runs ``--seed-variants`` (default: the first two,
#: whose better one feeds the pseudo-labels). ``sfc_pre_pcm_seeds`` is ``sfc`` with its prototype seeds
#: taken before the PCM (``method.seed_source=cam``, an option of weakseg, not of the paper).
SEED_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "cam_seeds": ("cam", []),
    "sfc_seeds": ("sfc", []),
    "sfc_pre_pcm_seeds": ("sfc", ["method.seed_source=cam"]),
}
#: AAL variant -> (result variant, overrides)
AAL_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("aal_baseline", ["method.use_aa=false", "method.use_lr=false"]),
    "aa": ("aal_aa", ["method.use_lr=false"]),
    "lr": ("aal_lr", ["method.use_aa=false"]),
    "both": ("aal", []),
}


# ---------------------------------------------------------------------------------------------- commands


def weakseg_command(*args: str) -> list[str]:
    """``python -m weakseg ARGS`` with this interpreter."""
    return [sys.executable, "-m", "weakseg", *args]


def shown(command: list[str]) -> str:
    """The command line as recorded in the results (``.venv/bin/weakseg ...``, with OMP_NUM_THREADS)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = [f"OMP_NUM_THREADS={threads}"] if threads else []
    return shlex.join([*prefix, ".venv/bin/weakseg", *command[3:]])


def run(command: list[str]) -> float:
    """Run a command (from the repository root), fail loudly; returns its wall time in seconds."""
    print("+ " + shown(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - started


class Ladder:
    """The stages of one dataset and seed; paths relative to the repository root."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cls_config, self.aal_config, source_root, self.name = DATASETS[args.dataset]
        self.work = Path(args.runs) / args.dataset
        self.results = Path(args.results)
        self.seed = args.seed
        self.root = self.subset(source_root, args.limit) if args.limit else source_root
        self.device = ["--device", args.device] if args.device else []

    # ------------------------------------------------------------------ data

    def subset(self, source: str, limit: int) -> str:
        """A folder-format dataset of the first ``limit`` train and val images of ``source`` (files point
        back at the source), for smoke tests."""
        from weakseg.data.folder import read_dataset_json, write_dataset_json, write_split

        out = self.work / f"data_limit{limit}"
        spec = read_dataset_json(Path(source))
        layout = {
            k: str((Path(source) / v).resolve()) for k, v in spec.layout.items() if k in ("images", "masks")
        }
        write_dataset_json(
            out, spec.classes, name=f"{spec.name}-limit{limit}", layout=layout,
            image_mode=spec.image_mode, background=spec.background, ignore_index=spec.ignore_index,
        )  # fmt: skip
        for split in ("train", "val"):
            ids = (Path(source) / "splits" / f"{split}.txt").read_text().split()
            write_split(out, split, ids[:limit])
        return str(out)

    # ------------------------------------------------------------------ trainings

    def training_overrides(self, run_dir: Path, steps: int | None = None) -> list[str]:
        """Overrides every training shares: seed, workers, run folder, ``steps`` (default ``--steps``),
        ``--set``."""
        out = [
            f"train.seed={self.seed}",
            f"data.num_workers={self.args.workers}",
            "train.num_overlays=0",
            f"out_dir={run_dir}",
        ]
        steps = steps or self.args.steps
        if steps:
            every = max(1, steps // 10)  # three validations in the last fifth
            out += [f"train.steps={steps}", f"train.val_every={every}", f"train.ckpt_every={every}"]
        return [*out, *self.args.set]

    def train(
        self, config: str, overrides: list[str], run_dir: Path, steps: int | None = None
    ) -> tuple[dict[str, Any], float, str]:
        """Train (or resume, or reuse a finished run) for ``steps`` (default ``--steps``, else the
        config's); returns (final metrics, total wall s, command)."""
        command = weakseg_command(
            "train", config, *overrides, *self.training_overrides(run_dir, steps), "--quiet", *self.device
        )
        wall_file = run_dir / "ladder_wall_s.json"
        wall = json.loads(wall_file.read_text())["wall_s"] if wall_file.is_file() else 0.0
        if not (run_dir / "metrics.json").is_file():
            resume: list[str] = []
            if (run_dir / "last.ckpt").is_file():
                resume = ["--resume", str(run_dir / "last.ckpt")]
            elif run_dir.exists():  # stopped before its first checkpoint: start again
                shutil.rmtree(run_dir)
            started = time.perf_counter()
            try:
                run(command + resume)
            finally:
                if run_dir.is_dir():
                    wall += time.perf_counter() - started
                    wall_file.write_text(json.dumps({"wall_s": wall}))
        return json.loads((run_dir / "metrics.json").read_text()), wall, shown(command)

    @staticmethod
    def log_rows(run_dir: Path) -> list[dict[str, Any]]:
        return [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
        ]

    def curve(self, run_dir: Path) -> list[tuple[int, float]]:
        """The validation curve ``[(step, val mIoU)]`` of a run (the method's own validation score)."""
        return [(r["step"], r["val/mIoU"]) for r in self.log_rows(run_dir) if "val/mIoU" in r]

    def record(self, variant: str, **fields: Any) -> Path:
        path = write_result(self.name, variant, self.seed, root=self.results, **fields)
        print(f"{variant}: score {fields['score']:.4f} ({fields['metric']}) -> {path}", flush=True)
        return path

    def done(self, variant: str) -> bool:
        if result_path(self.name, variant, self.seed, self.results).is_file():
            print(f"{variant}: result exists, skipped", flush=True)
            return True
        return False

    # ------------------------------------------------------------------ stage 1: seeds

    def seeds(self) -> None:
        for variant in self.args.seed_variants:
            if not self.done(variant):
                self.seeds_of(variant)

    def seeds_of(self, variant: str) -> None:
        method, switches = SEED_VARIANTS[variant]
        mdir = self.work / f"{variant.removesuffix('_seeds')}_seed{self.seed}"
        run_dir, cam_dir = mdir / "run", mdir / "cams"
        config = f"configs/{method}/{self.cls_config}"
        metrics, train_wall, train_cmd = self.train(config, [f"data.root={self.root}", *switches], run_dir)
        scales = [str(s) for s in self.args.cam_scales]
        rule = "sfc" if method == "sfc" else "irn"
        cam_cmd = weakseg_command(
            "cam", str(run_dir / "last.ckpt"), "--split", "train", "--out", str(cam_dir),
            "--scales", *scales, "--rule", rule, "--quiet", *self.device,
        )  # fmt: skip
        wall = train_wall + run(cam_cmd)
        commands = [train_cmd, shown(cam_cmd)]

        def evaluate(out: str, *extra: str) -> dict[str, Any]:
            nonlocal wall
            cmd = weakseg_command(
                "cam", "evaluate", str(cam_dir), "--split", "train", "--out", str(mdir / out), "--quiet",
                *extra, *self.device,
            )  # fmt: skip
            wall += run(cmd)
            commands.append(shown(cmd))
            return json.loads((mdir / out / "seeds.json").read_text())

        irn = evaluate("seeds_irn", "--rule", "irn", "--weights", "cam=1")  # the same rule for both methods
        extra: dict[str, Any] = {}
        if irn["threshold_kind"] == "background":
            extra["score_at_0.15"] = irn["fixed_mIoU"]
        if method == "sfc":
            own = evaluate("seeds_sfc", "--rule", "sfc")  # M_W + M_P (the paper)
            only_p = evaluate("seeds_sfc_mp", "--rule", "sfc", "--weights", "M_P=1")  # eval_cam.py
            extra["sfc_rule"] = {
                "rule": own["rule_description"],
                "M_W+M_P": own["fixed_mIoU"],
                "M_P": only_p["fixed_mIoU"],
                "per_class_M_W+M_P": own["fixed_per_class_IoU"],
            }
            extra["sfc_collapse"] = collapse_summary(metrics.get("sfc_train_statistics"))
        curve = self.curve(run_dir)
        steps = int(metrics["step"])
        self.record(
            variant,
            method=method,
            steps=steps,
            wall_time_s=round(wall, 1),
            metric="seed mIoU on train: raw classifier CAM, IRN rule, oracle-best background threshold",
            score=irn["best_mIoU"],
            per_class=irn["per_class_IoU"],
            command=" && ".join(commands),
            oracle_threshold=irn["best_threshold"],
            score_fixed=irn["fixed_mIoU"],
            fixed_threshold=irn["fixed_threshold"],
            per_class_fixed=irn["fixed_per_class_IoU"],
            threshold_kind=irn["threshold_kind"],
            cam_scales=[float(s) for s in scales],
            val_seed_mIoU=metrics["mIoU"],
            val_seed_mIoU_cam=metrics.get("mIoU_cam"),
            curve=curve,
            plateau=plateau(curve, steps),
            train_wall_time_s=round(train_wall, 1),
            **extra,
        )

    # ------------------------------------------------------------------ stage 2: pseudo-labels

    def read(self, variant: str) -> dict[str, Any]:
        path = result_path(self.name, variant, self.seed, self.results)
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run the stage that makes it first (--stages seeds ...)")
        return json.loads(path.read_text())

    def pseudo_dir(self) -> Path:
        return self.work / f"pseudo_seed{self.seed}"

    def pseudo(self) -> None:
        if self.done("pseudo_labels"):
            return
        seeds = {m: self.read(f"{m}_seeds") for m in ("cam", "sfc")}
        # (seed score on train, classifier, rule): the raw classifier CAM under IRN's rule for both, and
        # SFC's own rule (M_W + M_P, its own background) for sfc; the labels come from the best of them
        candidates = [(seeds[m]["score"], m, "irn") for m in seeds]
        sfc_rule = seeds["sfc"].get("sfc_rule") or {}
        if sfc_rule.get("M_W+M_P") is not None:
            candidates.append((sfc_rule["M_W+M_P"], "sfc", "sfc"))
        _, method, rule = max(candidates)
        crf = self.args.crf or ("torch" if (self.args.device or "cpu").startswith("cuda") else "pydensecrf")
        out = self.pseudo_dir()
        cmd = weakseg_command(
            "pseudo-labels", str(self.work / f"{method}_seed{self.seed}" / "cams"), "--out", str(out),
            "--split", "train", "--rule", rule, "--crf", crf, "--quiet", *self.device,
        )  # fmt: skip
        wall = run(cmd)
        summary = json.loads((out / "pseudo_labels.json").read_text())
        quality = summary["quality"]
        self.record(
            "pseudo_labels",
            method=method,
            steps=seeds[method]["steps"],
            wall_time_s=round(wall, 1),
            metric="pseudo-label mIoU on train, labelled pixels",
            score=quality["mIoU_labelled"],
            per_class=quality["per_class_IoU_labelled"],
            command=shown(cmd),
            coverage=quality["coverage"],
            mIoU_ignore_as_miss=quality["mIoU_ignore_as_miss"],
            rule=summary["rule"],
            weights=summary["weights"],
            crf=crf,
            seed_scores={f"{m} ({r} rule)": score for score, m, r in candidates},
            plateau={**seeds[method]["plateau"], "of": f"the {method} classifier"},
        )

    # ------------------------------------------------------------------ stage 3: two stages

    def segmenter_overrides(self) -> list[str]:
        """The segmenter protocol of stages 3 and 4 (``two_stage``, ``full_masks``): the classifiers'
        crops, scales, flips, batch and (without ``--steps``) budget."""
        from weakseg.config import load_config

        base = load_config(ROOT / "configs" / "cam" / self.cls_config)  # the ladder's crops and budget
        d, t = base.data, base.train
        overrides = [
            "data.val_split=val",
            f"data.crop_size=[{d.crop_size[0]},{d.crop_size[1]}]",
            f"data.scale_range=[{d.scale_range[0]},{d.scale_range[1]}]",
            f"data.hflip={d.hflip}",
            f"train.batch_size={t.batch_size}",
        ]
        if not (self.args.steps or self.args.segmenter_steps):  # else training_overrides sets them
            overrides += [
                f"train.steps={t.steps}",
                f"train.val_every={t.val_every}",
                f"train.ckpt_every={t.ckpt_every}",
            ]
        return overrides

    def segmenter(self, variant: str, overrides: list[str], **fields: Any) -> None:
        """Train ``full`` under :meth:`segmenter_overrides` plus ``overrides``; record its val mIoU."""
        budget = self.args.segmenter_steps
        # its own run folder at other steps: the pseudo-labels stay where they are, the runs apart
        run_dir = self.work / (
            f"{variant}_steps{budget}_seed{self.seed}" if budget else f"{variant}_seed{self.seed}"
        )
        config = "configs/full/synthetic_effnetlite0-v3p_96x96_300.yaml"
        metrics, wall, command = self.train(
            config, [*overrides, *self.segmenter_overrides()], run_dir, budget
        )
        curve = self.curve(run_dir)
        steps = int(metrics["step"])
        self.record(
            variant,
            method="full",
            steps=steps,
            wall_time_s=round(wall, 1),
            metric="val mIoU",
            score=metrics["mIoU"],
            per_class=metrics["per_class_IoU"],
            command=command,
            curve=curve,
            plateau=plateau(curve, steps),
            **fields,
        )

    def two_stage(self) -> None:
        if self.done("two_stage"):
            return
        if not (self.pseudo_dir() / "pseudo_labels.json").is_file():
            raise SystemExit(f"no pseudo-labels in {self.pseudo_dir()}: run --stages pseudo first")
        self.segmenter(
            "two_stage",
            [f"data.root={self.pseudo_dir()}", "method.label=pseudo"],
            pseudo_labels_from=self.read("pseudo_labels")["method"],
        )

    def ceiling(self) -> None:
        """The same segmenter on the true train masks: what the two-stage segmenter could reach with
        perfect pseudo-labels under this protocol (the bound on its ``two_stage >= pseudo-labels`` target)."""
        if self.done("full_masks"):
            return
        self.segmenter("full_masks", [f"data.root={self.root}", "method.label=mask"])

    # ------------------------------------------------------------------ stage 4: AAL

    def aal(self) -> None:
        for variant in self.args.aal_variants:
            name, switches = AAL_VARIANTS[variant]
            if self.done(name):
                continue
            run_dir = self.work / f"aal_{variant}_seed{self.seed}"
            config = f"configs/aal/{self.aal_config}"
            metrics, wall, command = self.train(config, [f"data.root={self.root}", *switches], run_dir)
            cfg = _yaml(run_dir / "config.yaml")
            rows = self.log_rows(run_dir)
            steps = int(metrics["step"])
            joint_from = cfg["method"]["cls_warmup"] * cfg["train"]["steps"]
            speeds = [r["images_per_s"] for r in rows if "images_per_s" in r and r["step"] > joint_from]
            step_s = cfg["train"]["batch_size"] / (sum(speeds) / len(speeds)) if speeds else None
            extra: dict[str, Any] = {"joint_step_time_s": step_s}
            base = result_path(self.name, "aal_baseline", self.seed, self.results)
            if step_s and base.is_file() and name != "aal_baseline":
                base_s = json.loads(base.read_text()).get("joint_step_time_s")
                extra["joint_step_time_rel_baseline"] = step_s / base_s if base_s else None
            curve = self.curve(run_dir)
            self.record(
                name,
                method="aal",
                steps=steps,
                wall_time_s=round(wall, 1),
                metric="val mIoU",
                score=metrics["mIoU"],
                per_class=metrics["per_class_IoU"],
                command=command,
                use_aa=cfg["method"]["use_aa"],
                use_lr=cfg["method"]["use_lr"],
                curve=curve,
                plateau=plateau(curve, steps),
                **extra,
            )


def _yaml(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]


def collapse_summary(history: dict[str, list] | None) -> dict[str, Any] | None:
    """SFC's per-step collapse diagnostics summarised: means over the first and the last tenth of the
    logged steps (None without a background class or history)."""
    if not history or not history.get("step"):
        return None
    n = len(history["step"])
    k = max(1, n // 10)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    return {
        key: {"first_tenth": mean(history[key][:k]), "last_tenth": mean(history[key][-k:])}
        for key in ("empty_bg_prototype", "bg_seed_share")
    } | {"steps_logged": n}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    p.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run, in order"
    )
    p.add_argument(
        "--seed-variants",
        nargs="+",
        choices=list(SEED_VARIANTS),
        default=["cam_seeds", "sfc_seeds"],
        help="classifiers of the seeds stage (sfc_pre_pcm_seeds: sfc with method.seed_source=cam)",
    )
    p.add_argument(
        "--aal-variants",
        nargs="+",
        choices=list(AAL_VARIANTS),
        default=list(AAL_VARIANTS),
        help="AAL runs of the aal stage, in order (baseline: CE on the pseudo masks; both: AA + LR)",
    )
    p.add_argument("--seed", type=int, default=0, help="train.seed of every training")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="override every training's steps (smoke tests, a longer AAL schedule)",
    )
    p.add_argument(
        "--segmenter-steps",
        type=int,
        default=None,
        help="steps of the two_stage and ceiling trainings only: a longer two-stage schedule on the "
        "pseudo-labels already made (run folders <variant>_steps<K>_seed<N>; give it its own --results)",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="only the first N train and val images (smoke tests)"
    )
    p.add_argument(
        "--cam-scales",
        type=float,
        nargs="+",
        default=[1.0, 0.5, 1.5],
        help="CAM inference scales, each with its flip (default 1 0.5 1.5: the reference adds 2.0, which "
        "triples the CPU time)",
    )
    p.add_argument("--crf", choices=["torch", "pydensecrf", "none"], default=None,
                   help="pseudo-label CRF (default: pydensecrf on a CPU, torch on a GPU)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="data-loading processes of every training")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the commands' own default)")
    p.add_argument("--runs", default="runs/image_ladder", help="parent of the run folders")
    p.add_argument("--results", default=str(RESULTS), help="where the result JSON files go")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every training")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    os.chdir(ROOT)  # data roots, run folders and the recorded commands are relative to the repository
    for name in ("runs", "results"):
        path = Path(getattr(args, name))
        if path.is_absolute() and path.is_relative_to(ROOT):
            setattr(args, name, str(path.relative_to(ROOT)))
    ladder = Ladder(args)
    for stage in STAGES:
        if stage in args.stages:
            getattr(ladder, stage)()


if __name__ == "__main__":
    main()
