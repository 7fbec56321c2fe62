"""``weakseg robustness ...``: train/evaluate on scribble-shrink or scribble-drop variants, plot the sweep."""

from __future__ import annotations

import argparse
from typing import Any


def _format_row(row: dict[str, Any]) -> str:
    dice = row.get("volume_mean_Dice")
    kept = row.get("kept_fraction")
    parts = [
        f"{row['kind']} {row['ratio']:<5g}",
        f"mIoU {100 * row['mIoU']:6.2f}" if row.get("mIoU") is not None else "mIoU    n/a",
    ]
    if dice is not None:
        parts.append(f"per-volume Dice {dice:.4f}")
    parts.append(
        f"scribble pixels {row['scribble_pixels']}" + (f" ({100 * kept:.1f}%)" if kept is not None else "")
    )
    parts.append(row["run_dir"])
    return "  ".join(parts)


class _IntermixedParser(argparse.ArgumentParser):
    """Lets KEY=VALUE overrides follow the options too (``run CONFIG --ratios 0 1 --out D k=v``)."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inside:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number: {text!r} (KEY=VALUE overrides go after CONFIG or after --out DIR)"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"ratio {text} is outside [0, 1]")
    return value


def cmd_robustness_run(args: argparse.Namespace) -> int:
    from weakseg.config import ConfigError
    from weakseg.engine.robustness import check_ratios, run_robustness

    try:
        ratios = check_ratios(args.ratios)
    except ValueError as err:
        raise ConfigError(f"--ratios: {err}") from None
    summary = run_robustness(
        args.config,
        args.kind,
        ratios,
        args.out,
        list(args.overrides),
        device=args.device,
        progress=not args.quiet,
        reuse=args.reuse,
        seed=args.seed,
        label=args.label,
    )
    for row in summary["rows"]:
        print(_format_row(row))
    print(f"wrote {args.out}/robustness.json and {args.out}/robustness.png")
    return 0


def cmd_robustness_plot(args: argparse.Namespace) -> int:
    from weakseg.engine.robustness import plot_robustness

    try:
        path = plot_robustness(
            args.results, args.out, metric=args.metric, labels=args.labels, title=args.title
        )
    except ValueError as err:
        from weakseg.io import DataError

        raise DataError(str(err)) from err
    print(f"wrote {path}")
    return 0


def add_robustness_parser(sub: argparse._SubParsersAction) -> None:
    rob = sub.add_parser(
        "robustness",
        help="scribble-shrink / scribble-drop robustness sweeps and their plots",
        description="Train a config on shrunk or dropped versions of its training scribbles at several "
        "ratios, evaluate each run on val, and plot the score against the ratio.",
    )
    rsub = rob.add_subparsers(
        dest="robustness_command", required=True, metavar="ROBUSTNESS_COMMAND", parser_class=_IntermixedParser
    )

    p = rsub.add_parser(
        "run",
        help="train + evaluate at each ratio; writes robustness.json and robustness.png",
        description="For each ratio, write the scribble variant of the config's training data "
        "(folder format; ratio 0 = the original scribbles), train the config on it with the same "
        "seed, and collect the final validation mIoU (and per-volume Dice on slice datasets). "
        "Writes OUT/robustness.json, OUT/robustness.png, OUT/data/<kind>_<ratio>/ and "
        "OUT/runs/<kind>_<ratio>/.",
    )
    p.add_argument("config", help="experiment YAML of a scribble method on a folder-format dataset")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--kind", choices=["shrink", "drop"], required=True, help="how the scribbles are degraded")
    p.add_argument(
        "--ratios",
        type=_ratio,
        nargs="+",
        required=True,
        metavar="R",
        help="ratios in [0, 1], e.g. 0 0.25 0.5 0.75 1",
    )
    p.add_argument("--out", required=True, help="output folder of the sweep")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep finished runs (metrics.json), resume interrupted ones (last.ckpt), keep written variants",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the drop variants (default 0)")
    p.add_argument("--label", default=None, help="legend name of this sweep (default: the method name)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_robustness_run)

    p = rsub.add_parser(
        "plot",
        help="plot several robustness.json files together (methods compared)",
        description="One line per result file, one panel per kind (shrink / drop).",
    )
    p.add_argument("results", nargs="+", help="robustness.json files (or the folders holding them)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument(
        "--metric",
        choices=["auto", "mIoU", "volume_mean_Dice"],
        default="auto",
        help="score to plot (auto: per-volume Dice when every run has it, else mIoU)",
    )
    p.add_argument("--labels", nargs="+", default=None, help="legend names, one per result file")
    p.add_argument("--title", default=None)
    p.set_defaults(func=cmd_robustness_plot)
