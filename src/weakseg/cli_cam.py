"""``weakseg cam``, ``weakseg cam evaluate`` and ``weakseg pseudo-labels``: the CAM side of
image-level methods. The commands parse their arguments and call :mod:`weakseg.tools` (CAM folders,
seed reports, pseudo-label datasets), which builds on the tensor operations of :mod:`weakseg.cam`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from weakseg.io import DataError

__all__ = ["add_cam_parsers"]


class _DefaultSubcommand(argparse._SubParsersAction):
    """Subcommands where an unknown first word selects ``make``: ``weakseg cam CKPT ...`` is
    ``weakseg cam make CKPT ...``, while ``weakseg cam evaluate CAM_DIR ...`` stays a subcommand."""

    class _AnyWord:
        """Accepts every first word (argparse checks ``choices`` before calling the action)."""

        def __contains__(self, item: object) -> bool:
            return True

        def __iter__(self):
            return iter(())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # typeshed types a subparsers action's choices as its name -> parser dict; argparse only tests
        # membership and iterates
        self.choices = self._AnyWord()  # type: ignore[assignment]

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        if values and values[0] not in self._name_parser_map:
            values = ["make", *values]
        super().__call__(parser, namespace, values, option_string)


def _device(name: str | None) -> str:
    from weakseg.engine.distributed import default_device

    return default_device(name)


def _parse_weights(items: list[str] | None) -> dict[str, float] | None:
    """``["M_W=1", "M_P=0.7"]`` -> ``{"M_W": 1.0, "M_P": 0.7}``."""
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise DataError(f"--weights entry {item!r}: expected CAM_KEY=WEIGHT, e.g. M_P=0.7")
    return out


def _rule_of(args: argparse.Namespace, meta: dict[str, Any]) -> str:
    """``--rule``, else the CAM folder's default (``weakseg cam --rule``), else "irn"."""
    return args.rule or meta.get("rule") or "irn"


def _dataset_of(args: argparse.Namespace, meta: dict[str, Any]) -> Any:
    """The dataset named by ``--data/--format/--split``, defaulting to the CAM folder's."""
    from weakseg.tools.cam_store import open_cam_dataset

    return open_cam_dataset(meta, root=args.data, split=args.split, fmt=args.format)


# ---------------------------------------------------------------------------------------------- cam
def cmd_cam(args: argparse.Namespace) -> int:
    from weakseg.tools.cam_folder import make_cams

    out, dataset = make_cams(
        args.checkpoint,
        args.out,
        split=args.split,
        data_root=args.data,
        overrides=args.overrides,
        scales=args.scales,
        flip=not args.no_flip,
        keys=args.keys,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        amp=args.amp,
        overwrite=args.overwrite,
        device=args.device,
        progress=not args.quiet,
        rule=args.rule,
    )
    print(f"CAMs of {len(dataset)} images ({dataset.root}, split '{dataset.split}') in {out}")
    return 0


def cmd_cam_evaluate(args: argparse.Namespace) -> int:
    from weakseg.tools.cam_store import load_cam_meta
    from weakseg.tools.seed_report import evaluate_seeds, write_seed_report

    meta = load_cam_meta(args.cam_dir)
    dataset = _dataset_of(args, meta)
    rule = _rule_of(args, meta)
    result = evaluate_seeds(
        args.cam_dir,
        dataset,
        rule=rule,
        weights=_parse_weights(args.weights),
        thresholds=args.thresholds,
        fixed_threshold=args.fixed_threshold,
        num_workers=args.num_workers,
        device=_device(args.device),
        progress=not args.quiet,
    )
    out = Path(args.out) if args.out else Path(args.cam_dir) / f"seeds_{dataset.split}_{rule}"
    write_seed_report(result, out)
    kind = result["threshold_kind"]
    print(
        f"rule {rule}: {result['rule_description']}\n"
        f"seed mIoU {100 * result['fixed_mIoU']:.2f} at the rule's {kind} threshold "
        f"{result['fixed_threshold']:g}; oracle best {100 * result['best_mIoU']:.2f} at "
        f"{result['best_threshold']:g} (threshold chosen on these masks)\n"
        f"{result['num_images']} images, weights {result['weights']}\nreport: {out}"
    )
    return 0


# ---------------------------------------------------------------------------------------------- pseudo-labels
def cmd_pseudo_labels(args: argparse.Namespace) -> int:
    from weakseg.cam.pseudo_labels import PseudoLabelParams
    from weakseg.postprocess.crf import CRFParams
    from weakseg.tools.cam_store import load_cam_meta
    from weakseg.tools.pseudo_dataset import make_pseudo_labels

    meta = load_cam_meta(args.cam_dir)
    dataset = _dataset_of(args, meta)
    crf_overrides: dict[str, Any] = {"scale": args.crf_scale, "backend": args.crf_backend}
    if args.crf_iters is not None:
        crf_overrides["num_iters"] = args.crf_iters
    params = PseudoLabelParams(
        fg_threshold=args.fg_threshold,
        bg_threshold=args.bg_threshold,
        uncertain_threshold=args.uncertain_threshold,
        crf=args.crf,
        crf_params=CRFParams.pseudo_label(**crf_overrides),
        rule=_rule_of(args, meta),
        bg_scale=args.bg_scale,
    )
    summary = make_pseudo_labels(
        args.cam_dir,
        dataset,
        args.out,
        weights=_parse_weights(args.weights),
        params=params,
        device=_device(args.device),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.quiet,
    )
    line = (
        f"pseudo-labels of {summary['num_images']} images in {args.out} (rule {summary['rule']}, weights "
        f"{summary['weights']}; train with data.root={args.out})"
    )
    quality = summary.get("quality")
    if quality:
        line += (
            f"\nagainst the masks: mIoU {100 * quality['mIoU_labelled']:.2f} on labelled pixels, "
            f"coverage {100 * quality['coverage']:.1f}%, "
            f"mIoU {100 * quality['mIoU_ignore_as_miss']:.2f} counting ignored pixels as misses"
        )
    print(line)
    return 0


# ---------------------------------------------------------------------------------------------- parsers
def _add_dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", default=None, metavar="ROOT", help="dataset root (default: the one the CAMs were made from)"
    )
    p.add_argument(
        "--format",
        default=None,
        choices=["folder", "voc", "coco"],
        help="dataset format (default: the CAMs')",
    )
    p.add_argument("--split", default=None, help="split (default: the CAMs')")
    p.add_argument(
        "--rule",
        choices=["irn", "sfc"],
        default=None,
        help="irn: constant background score (IRN; the same for every method) | sfc: the maps' own "
        "background, +0.4 / foreground x2 (SFC's make_cam; cam2ir halves the background for the "
        "confident-background map). Default: the CAM folder's (`weakseg cam --rule`), else irn",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        default=None,
        metavar="KEY=W",
        help="CAM-type weights of the combined map, e.g. M_W=1 M_P=0.7 (SFC's maps) or cam=1 (the raw "
        "classifier CAM); default per rule: irn cam=1, sfc M_W=1 M_P=1 for seeds and M_W=1 M_P=0.7 for "
        "pseudo-labels (each when the folder holds them, else 1 each); thresholds apply to the weighted mean",
    )
    p.add_argument("--num-workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_cam_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``cam`` (with ``cam evaluate``) and ``pseudo-labels`` to the top-level subcommands."""
    cam = sub.add_parser(
        "cam",
        help="multi-scale CAMs of an image-level checkpoint; `cam evaluate` sweeps seed thresholds",
        description="weakseg cam CKPT --split train --out DIR   (same as `weakseg cam make CKPT ...`)\n"
        "weakseg cam evaluate CAM_DIR --data ROOT --split train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csub = cam.add_subparsers(
        dest="cam_command", required=True, metavar="{CKPT,evaluate}", action=_DefaultSubcommand
    )

    p = csub.add_parser(
        "make",
        help="write the CAMs of a split (the default: `weakseg cam CKPT ...`)",
        description="Multi-scale + flip CAMs of every image of a split, one float16 .npz per image "
        "(tagged classes only) plus cams.json. Images whose file exists are skipped (resume).",
    )
    p.add_argument("checkpoint", help="a checkpoint of an image-level method (cam, sfc, ...)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.tags=masks")
    p.add_argument("--out", required=True, help="CAM folder to write")
    p.add_argument("--split", default=None, help="split (default: the run's data.train_split)")
    p.add_argument("--data", default=None, metavar="ROOT", help="dataset root (default: the run's data.root)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0], help="image scales")
    p.add_argument("--no-flip", action="store_true", help="do not add the horizontally mirrored image")
    p.add_argument(
        "--keys", nargs="+", default=None, help="CAM outputs to store (default: cam and every cam_*)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument(
        "--num-workers", type=int, default=None, help="data-loading processes (default: the run's)"
    )
    p.add_argument(
        "--amp", choices=["none", "bf16"], default="none", help="run the network under bf16 autocast"
    )
    p.add_argument("--overwrite", action="store_true", help="recompute images whose CAM file exists")
    p.add_argument(
        "--rule",
        choices=["irn", "sfc"],
        default="irn",
        help="the folder's default rule for `cam evaluate` and `pseudo-labels`; sfc (SFC's make_cam / "
        "cam2ir: the maps' own background +0.4, foreground x2) needs an sfc checkpoint, whose M_W and M_P "
        "are stored with their own background channel",
    )
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cam)

    p = csub.add_parser(
        "evaluate",
        help="seed mIoU against the masks over a sweep of background thresholds",
        description="Seed mIoU under a rule (--rule irn: constant background score t, reported at IRN's "
        "fixed 0.15 and at the oracle best t chosen on these masks; --rule sfc: SFC's make_cam/eval_cam "
        "biases on the maps' own background, t = an extra background offset, 0 = SFC's rule). Without "
        "a background class t is an uncertainty threshold (unlabelled pixels count as misses; fixed "
        "entry 0 = plain arg-max). Writes seeds.json (mIoU per threshold, fixed and oracle entries, "
        "per-class IoU) and plots.",
    )
    p.add_argument("cam_dir", help="a folder written by `weakseg cam`")
    _add_dataset_options(p)
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=None,
        help="thresholds (default: irn 0, 0.05, ..., 0.95; sfc 0)",
    )
    p.add_argument(
        "--fixed-threshold",
        type=float,
        default=None,
        help="the rule's own entry (default: irn 0.15 with a background class, else 0)",
    )
    p.add_argument("--out", default=None, help="report folder (default: CAM_DIR/seeds_<split>_<rule>)")
    p.set_defaults(func=cmd_cam_evaluate)

    p = sub.add_parser(
        "pseudo-labels",
        help="pseudo-label PNGs from CAMs (IR-label rule + dense CRF) as a trainable dataset",
        description="IR labels: confident foreground and confident background maps, each refined by a "
        "dense CRF, ignore (255) where they disagree. --rule irn (IRN): constant background scores "
        "--fg-threshold / --bg-threshold; --rule sfc (SFC's cam2ir): the maps' own background +0.4 "
        "beside the doubled foreground, then x --bg-scale; without a background class, pixels no tagged "
        "class scores above "
        "--uncertain-threshold are ignored. Writes OUT/pseudo/{id}.png and a dataset.json pointing at "
        "the source images: train `full` with data.root=OUT method.label=pseudo, or a scribble method "
        "with data.pseudo_dir=OUT/pseudo.",
    )
    p.add_argument("cam_dir", help="a folder written by `weakseg cam`")
    p.add_argument("--out", required=True, help="output dataset folder")
    _add_dataset_options(p)
    p.add_argument(
        "--fg-threshold", type=float, default=0.30, help="rule irn: background score of the confident-fg map"
    )
    p.add_argument(
        "--bg-threshold", type=float, default=0.05, help="rule irn: background score of the confident-bg map"
    )
    p.add_argument(
        "--bg-scale",
        type=float,
        default=0.5,
        help="rule sfc: the own background x this for the confident-background map (cam2ir's 0.5)",
    )
    p.add_argument(
        "--uncertain-threshold",
        type=float,
        default=0.30,
        help="no-background datasets: ignore pixels scoring <= this",
    )
    p.add_argument(
        "--crf",
        choices=["torch", "pydensecrf", "none"],
        default="torch",
        help="refinement: batched torch dense CRF (default; pydensecrf2's permutohedral lattice in torch at "
        "full size, CPU or GPU, see --crf-backend), the pydensecrf reference (CPU), or none",
    )
    p.add_argument(
        "--crf-backend",
        choices=["auto", "lattice", "exact"],
        default="auto",
        help="kernels of --crf torch: permutohedral lattice, exact O(N^2) kernels, or auto (lattice from a "
        "few thousand pixels per image on CPU)",
    )
    p.add_argument(
        "--crf-scale",
        type=float,
        default=1.0,
        help="run the CRF on a grid resized by this factor (faster)",
    )
    p.add_argument("--crf-iters", type=int, default=None, help="mean-field iterations (default 12)")
    p.add_argument("--batch-size", type=int, default=4, help="images per CRF batch")
    p.set_defaults(func=cmd_pseudo_labels)
