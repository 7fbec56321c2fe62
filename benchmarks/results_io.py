"""One format for every finished benchmark run: ``benchmarks/results/<dataset>/<variant>_seed<N>.json``.

Each file holds at least ``dataset``, ``variant``, ``method``, ``seed``, ``steps``, ``wall_time_s``,
``metric``, ``score`` (a fraction in 0-1), ``per_class`` (name -> float) and ``command`` (the exact
command line), and for trainings the validation ``curve`` and whether it reached its ``plateau``.
``benchmarks/tabulate.py`` builds the README's tables from these files.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REQUIRED = (
    "dataset",
    "variant",
    "method",
    "seed",
    "steps",
    "wall_time_s",
    "metric",
    "score",
    "per_class",
    "command",
)


def unshadow_site_packages() -> None:
    """Take ``benchmarks/`` off ``sys.path`` once a script has imported its sibling modules.

    Python puts a script's folder first on the path, so ``benchmarks/tabulate.py`` shadows the ``tabulate``
    package that torch imports when it reports compile times at exit (a traceback after every ladder run).
    """
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]


#: A run has reached its plateau when its validation scores over the last ``PLATEAU_FRACTION`` of the
#: steps span at most ``PLATEAU_TOLERANCE`` (absolute, score units 0-1).
PLATEAU_FRACTION = 0.2
PLATEAU_TOLERANCE = 0.02


def plateau(
    curve: Sequence[tuple[int, float]],
    total_steps: int,
    fraction: float = PLATEAU_FRACTION,
    tolerance: float = PLATEAU_TOLERANCE,
) -> dict[str, Any]:
    """Whether the validation ``curve`` ``[(step, score), ...]`` is flat over the last ``fraction`` of
    ``total_steps``: ``{"reached", "window_start", "span", "points", "rule"}``. Fewer than two points in
    the window is not a plateau (nothing shows it is flat)."""
    start = total_steps * (1.0 - fraction)
    window = [score for step, score in curve if step >= start]
    span = max(window) - min(window) if window else float("nan")
    return {
        "reached": len(window) >= 2 and span <= tolerance,
        "window_start": int(start),
        "span": span,
        "points": len(window),
        "rule": f"val score spans <= {tolerance} over the last {fraction:.0%} of the steps",
    }


def result_path(dataset: str, variant: str, seed: int, root: Path = RESULTS) -> Path:
    return root / dataset / f"{variant}_seed{seed}.json"


def write_result(dataset: str, variant: str, seed: int, root: Path = RESULTS, **fields: Any) -> Path:
    """Write one run's summary atomically (temp file + rename) and return its path."""
    record = {"dataset": dataset, "variant": variant, "seed": seed, **fields}
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise ValueError(f"result {dataset}/{variant}_seed{seed} lacks {missing}")
    path = result_path(dataset, variant, seed, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_results(root: Path = RESULTS) -> list[dict[str, Any]]:
    """Every result file under ``root`` (sorted by path)."""
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/*_seed*.json"))]
