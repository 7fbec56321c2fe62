"""The ``weakseg`` command line: ``weakseg <command> --help`` documents each command.

Errors in what the user gave (:class:`~weakseg.config.ConfigError` and every
:class:`~weakseg.io.UserError`: data, checkpoints, run folders, a diverged run, a full disk) are
printed as one line ``weakseg <command>: error: <message>`` and exit with status 2; warnings are
printed as ``weakseg: warning: <message>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from weakseg.config import ConfigError, apply_overrides
from weakseg.io import DataError, UserError, WeaksegWarning, disk_full_error, is_disk_full

# What exits with status 2 and a one-line message (anything else is a bug: traceback, status 1).
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, UserError)


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None,
        help="test scales, e.g. 0.75 1 1.25 (default: the run's eval.scales)",
    )
    p.add_argument(
        "--flip", action="store_true", default=None, help="average with the horizontally flipped image"
    )
    p.add_argument("--window", type=int, default=None, help="sliding-window size in pixels for large images")
    p.add_argument(
        "--resize",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="run the network at H x W and map back",
    )
    p.add_argument(
        "--crf",
        action="store_true",
        default=None,
        help="refine the probabilities with a dense CRF before the arg-max (slow on CPU; see --crf-scale)",
    )
    p.add_argument(
        "--crf-scale",
        type=float,
        default=None,
        help="run the CRF on a grid resized by this factor in (0, 1], e.g. 0.5 (default: eval.crf_scale)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def _inference_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    if args.scales:
        out.append(f"eval.scales=[{','.join(str(s) for s in args.scales)}]")
    if args.flip:
        out.append("eval.flip=true")
    if args.window:
        out.append(f"eval.window={args.window}")
    if args.resize:
        out.append(f"eval.resize=[{args.resize[0]},{args.resize[1]}]")
    if args.crf:
        out.append("eval.crf=true")
    if args.crf_scale is not None:
        out.append(f"eval.crf_scale={args.crf_scale}")
    return out


def _output_folder(path: str | Path, option: str = "--out") -> Path:
    """``path`` as an output folder: an existing file there is a one-line error, not a traceback."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{option} {path} is an existing file; expected a folder (new or existing)")
    return path


# ---------------------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from weakseg.config import load_config
    from weakseg.engine.trainer import train

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    cfg = load_config(args.config, overrides)
    _output_folder(cfg.run_dir)
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or start it again")
    resume = args.resume
    if resume == "auto":
        last = cfg.run_dir / "last.ckpt"
        resume = str(last) if last.is_file() else None
        if resume is None:
            from weakseg.engine.run_folder import RunFolderError, existing_run_files

            if existing_run_files(cfg.run_dir):
                raise RunFolderError(
                    f"--resume: run folder {cfg.run_dir} holds a run but no {last.name} to resume from; "
                    "start it again with --overwrite, or train into another folder with --out DIR"
                )
            warnings.warn(
                f"--resume: no checkpoint {last} to resume from; starting a new run at step 0",
                WeaksegWarning,
                stacklevel=2,
            )
    result = train(cfg, resume=resume, overwrite=args.overwrite, device=args.device, progress=not args.quiet)
    if result.metrics:
        _print_summary(result.metrics, result.run_dir)
    return 0


def _print_summary(metrics: dict, run_dir: Path) -> None:
    line = f"mIoU {100 * metrics['mIoU']:.2f}"
    if "volume_Dice" in metrics:
        line += f"  per-volume mean Dice {metrics['volume_Dice']['mean_Dice']:.4f}"
    print(f"{line}\nrun folder: {run_dir}")


# ---------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from weakseg.builders import build_dataset
    from weakseg.engine.checkpoint import check_classes
    from weakseg.engine.distributed import default_device
    from weakseg.engine.evaluation import evaluate, write_evaluation_report
    from weakseg.engine.inference import inference_options
    from weakseg.engine.trainer import load_trained_model
    from weakseg.io import clean_stale_temp_files

    if args.out:
        _output_folder(args.out)  # before the (slow) model load
    device = default_device(args.device)
    model, cfg, meta = load_trained_model(args.checkpoint, device)
    cfg = apply_overrides(cfg, _inference_overrides(args) + list(args.overrides))
    split = args.split or cfg.data.val_split
    dataset = build_dataset(cfg, split, train=False, requires=("mask",))
    check_classes(meta.get("classes"), dataset, args.checkpoint)
    out = _output_folder(args.out if args.out else Path(args.checkpoint).parent / f"eval_{split}")
    clean_stale_temp_files(out, recursive=True)
    metrics = evaluate(
        model,
        dataset,
        device=device,
        **inference_options(cfg.eval),
        volume_dice=cfg.eval.volume_dice,
        batch_size=cfg.eval.batch_size,
        save_dir=out / "predictions" if args.save_predictions else None,
        progress=not args.quiet,
    )
    write_evaluation_report(metrics, out, list(dataset.classes))
    _print_summary(metrics, out)
    return 0


# ---------------------------------------------------------------------------------------------- predict
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _collect_images(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"input not found: {path}")
    if not files:
        raise DataError(
            f"no images found in {', '.join(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    from weakseg.engine.distributed import default_device
    from weakseg.engine.predict import predict_files
    from weakseg.engine.trainer import load_trained_model
    from weakseg.io import clean_stale_temp_files

    out = _output_folder(args.out)
    files = _collect_images(args.inputs)
    device = default_device(args.device)
    model, cfg, meta = load_trained_model(args.checkpoint, device)
    cfg = apply_overrides(cfg, _inference_overrides(args))
    clean_stale_temp_files(out, recursive=True)
    written = predict_files(
        model,
        files,
        out,
        cfg.eval,
        device=device,
        progress=not args.quiet,
        image_mode=args.image_mode or meta.get("image_mode"),
    )
    print(f"wrote {len(written)} masks and overlays to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- convert
def cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    from weakseg.engine.checkpoint import convert_checkpoint

    convert_checkpoint(args.src, args.dst)
    print(f"converted {args.src} -> {args.dst} (loads without running code)")
    return 0


# ---------------------------------------------------------------------------------------------- methods
def _default_of(field: dataclasses.Field) -> object:
    """A dataclass field's default, calling its ``default_factory`` (lists, dicts)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _print_listing(descriptions: dict[str, str]) -> None:
    """One line a name: the name, padded, and its one-line description."""
    width = max(map(len, descriptions), default=0)
    for name, description in descriptions.items():
        print(f"  {name:{width}s}  {description}")


def cmd_methods(args: argparse.Namespace) -> int:
    from weakseg.methods import METHODS

    for name, description in METHODS.descriptions().items():
        cls = METHODS[name]
        params = ", ".join(f"{f.name}={_default_of(f)!r}" for f in dataclasses.fields(cls.Params)) or "-"
        print(f"{name:10s} {description}\n{'':10s} needs: {', '.join(cls.requires) or '-'}; params: {params}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from weakseg.models import BACKBONES, HEADS

    print("backbones (model.backbone):")
    _print_listing(BACKBONES.descriptions())
    print("heads (model.head):")
    _print_listing(HEADS.descriptions())
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from weakseg.data.formats import DATASETS

    print("dataset formats (data.format):")
    _print_listing(DATASETS.descriptions())
    return 0


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from weakseg import __version__

    parser = argparse.ArgumentParser(
        prog="weakseg",
        description="Weakly supervised semantic segmentation from scribbles and image-level tags.",
    )
    parser.add_argument("--version", action="version", version=f"weakseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a segmenter from one YAML experiment file",
        description="Train from a YAML config; KEY=VALUE overrides use dotted keys "
        "(e.g. train.batch_size=8 data.root=/data/VOC2012). Works unchanged under torchrun.",
    )
    p.add_argument(
        "config", help="experiment YAML, e.g. configs/pce/synthetic_effnetlite0-v3p_96x96_300.yaml"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="resume from CKPT, or (no value) from the run folder's last.ckpt",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="the run folder holds a run: delete its outputs (checkpoints, logs, plots, overlays) and "
        "start again (without --resume or --overwrite such a folder is refused)",
    )
    p.add_argument("--out", default=None, help="run folder (default: runs/<name>)")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="mIoU / Dice of a checkpoint on a split",
        description="Evaluate a checkpoint: writes metrics.json and per-class bar charts.",
    )
    p.add_argument("checkpoint")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.root=/data/VOC2012"
    )
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's data.val_split)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/eval_<split>)")
    p.add_argument(
        "--save-predictions", action="store_true", help="also write palette PNG predictions and overlays"
    )
    p.add_argument("--quiet", action="store_true")
    _add_inference_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict",
        help="segment image files: palette PNG masks + overlays",
        description="Segment images (files or folders) with a checkpoint.",
    )
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--image-mode",
        default=None,
        choices=["RGB", "L"],
        help="how to read the images (default: as the training data)",
    )
    p.add_argument("--quiet", action="store_true")
    _add_inference_options(p)
    p.set_defaults(func=cmd_predict)

    from weakseg.cli_data import add_data_parser

    add_data_parser(sub)

    from weakseg.cli_cam import add_cam_parsers

    add_cam_parsers(sub)

    from weakseg.cli_robustness import add_robustness_parser

    add_robustness_parser(sub)

    from weakseg.cli_annotate import add_annotate_parser

    add_annotate_parser(sub)

    p = sub.add_parser("methods", help="list the training methods and their parameters")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("models", help="list the backbones and segmentation heads")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("datasets", help="list the dataset formats")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser(
        "convert-checkpoint",
        help="rewrite a trusted older checkpoint in the safe format",
        description="Rewrite a checkpoint that the safe loader refuses (an older format) in the current "
        "format, which loads without running code. Reading SRC runs whatever it contains: use this only "
        "on checkpoints you made yourself or otherwise trust.",
    )
    p.add_argument("src", help="the trusted old checkpoint")
    p.add_argument("dst", help="where to write the converted checkpoint")
    p.set_defaults(func=cmd_convert_checkpoint)
    return parser


_default_showwarning = warnings.showwarning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """weakseg's own warnings as one line ``weakseg: warning: ...`` on stderr; others as Python shows them."""
    if issubclass(category, WeaksegWarning):
        print(f"weakseg: warning: {message}", file=file or sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        print(f"weakseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if not is_disk_full(err):
            raise
        print(f"weakseg {args.command}: error: {disk_full_error(err.filename or '?', err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
