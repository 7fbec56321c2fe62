"""Print the README's result tables from ``benchmarks/results/<dataset>/<variant>_seed<N>.json``.

One markdown table per dataset: a row per variant (seeds averaged, with their spread when there are
several), per-class scores, the mean score, the ratio to the dataset's reference row (``full`` when
present), steps, wall time and whether every seed reached its plateau.

    .venv/bin/python benchmarks/tabulate.py                      # every dataset
    .venv/bin/python benchmarks/tabulate.py --dataset acdc-scribble
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from results_io import RESULTS, read_results

# the ladders' row order; other variants follow alphabetically
ORDER = [
    "full", "pce", "rloss", "gatedcrf", "dfr_shallow", "dfr_frozen", "dfr_dynamic", "dfr", "cdsp",
    "cam_seeds", "sfc_seeds", "pseudo_labels", "two_stage", "full_masks",
    "aal_baseline", "aal_aa", "aal_lr", "aal",
]  # fmt: skip


def _order(variant: str) -> tuple[int, str]:
    return (ORDER.index(variant) if variant in ORDER else len(ORDER), variant)


def _mean_cell(values: list[float | None]) -> str:
    """The mean of a class's scores over seeds; "–" for a class absent from the scored split (None)."""
    present = [v for v in values if v is not None]
    return f"{statistics.mean(present):.3f}" if present else "–"


def table(dataset: str, runs: list[dict]) -> str:
    """The markdown table of one dataset's runs."""
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_variant[run["variant"]].append(run)
    classes = list(next(iter(runs))["per_class"])
    reference = statistics.mean(r["score"] for r in by_variant["full"]) if "full" in by_variant else None
    metric = runs[0]["metric"]
    head = [
        "variant",
        "seeds",
        *classes,
        metric,
        "÷ full" if reference else "",
        "steps",
        "wall min",
        "plateau",
    ]
    lines = ["| " + " | ".join(h for h in head if h != "") + " |", "|" + "---|" * sum(h != "" for h in head)]
    for variant in sorted(by_variant, key=_order):
        group = sorted(by_variant[variant], key=lambda r: r["seed"])
        scores = [r["score"] for r in group]
        mean = statistics.mean(scores)
        score = f"{mean:.3f}" + (f" ± {statistics.stdev(scores):.3f}" if len(scores) > 1 else "")
        cells = [variant, ",".join(str(r["seed"]) for r in group)]
        cells += [_mean_cell([r["per_class"].get(c) for r in group]) for c in classes]
        cells.append(score)
        if reference:
            cells.append(f"{mean / reference:.2f}")
        cells.append(str(group[0]["steps"]))
        cells.append(f"{statistics.mean(r['wall_time_s'] for r in group) / 60:.0f}")
        reached = [r.get("plateau", {}).get("reached") for r in group]
        cells.append("yes" if all(reached) else "no" if not any(reached) else "partly")
        lines.append("| " + " | ".join(cells) + " |")
    return f"**{dataset}** ({metric})\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", help="only this dataset")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for run in read_results(Path(args.results)):
        by_dataset[run["dataset"]].append(run)
    for dataset in sorted(by_dataset):
        if args.dataset in (None, dataset):
            print(table(dataset, by_dataset[dataset]), end="\n\n")


if __name__ == "__main__":
    main()
