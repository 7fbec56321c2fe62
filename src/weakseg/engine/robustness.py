"""Robustness to scribble quality: train and evaluate one config on shrunk or dropped scribbles.

For every ratio of a list, the training scribbles of a folder-format dataset are replaced by a
*shrink* or *drop* variant (:func:`weakseg.data.scribbles.write_scribble_variant`, nested in the
ratio and seeded), the config is trained on it with everything else unchanged (same training seed,
same validation data), and the final validation scores are collected into ``robustness.json`` with
a plot of the score against the ratio (``robustness.png``). Ratio 0 trains on the original
scribbles. :func:`plot_robustness` draws several such result files together, one line per method
and one panel per kind, to compare methods.

Layout of the output folder::

    robustness.json   summary (see :func:`run_robustness`)
    robustness.png    score vs ratio
    data/<kind>_<ratio>/   the scribble variant (only new scribble PNGs; points back at the source)
    runs/<kind>_<ratio>/   the training run (config.yaml, checkpoints, metrics.json, ...)
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weakseg.config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from weakseg.io import DataError, atomic_write_json, read_json, read_label

__all__ = [
    "KINDS",
    "METRICS",
    "check_ratios",
    "load_robustness",
    "plot_robustness",
    "ratio_tag",
    "robustness_row",
    "robustness_series",
    "run_robustness",
    "scribble_statistics",
    "write_robustness",
]

KINDS = ("shrink", "drop")
# metric key of a row -> axis label
METRICS = {"mIoU": "mIoU (%)", "volume_mean_Dice": "per-volume mean Dice (%)"}
ROBUSTNESS_JSON = "robustness.json"
ROBUSTNESS_PNG = "robustness.png"


# --------------------------------------------------------------------------------------------------
# ratios, statistics, rows
# --------------------------------------------------------------------------------------------------
def check_ratios(ratios: Sequence[float]) -> list[float]:
    """The ratios as floats in increasing order; each in [0, 1], none repeated."""
    values = [float(r) for r in ratios]
    if not values:
        raise ValueError("ratios: give at least one ratio in [0, 1], e.g. 0 0.25 0.5 0.75 1")
    bad = [r for r in values if not 0.0 <= r <= 1.0]
    if bad:
        raise ValueError(f"ratios must lie in [0, 1], got {bad}")
    if len({ratio_tag(r) for r in values}) != len(values):
        raise ValueError(f"ratios are repeated: {values}")
    return sorted(values)


def ratio_tag(ratio: float) -> str:
    """The ratio as it appears in folder names: ``0.25`` -> ``"0.25"``, ``1.0`` -> ``"1"``."""
    return f"{float(ratio):g}"


def scribble_statistics(root: str | os.PathLike, split: str) -> dict[str, Any]:
    """Labelled-pixel counts of the scribbles of ``split`` in a folder-format dataset.

    Returns:
        ``{"num_images", "scribble_pixels" (pixels != ignore_index), "total_pixels",
        "labelled_fraction" (scribble_pixels / total_pixels)}``.
    """
    from weakseg.data.base import read_split_file
    from weakseg.data.folder import SPLITS_DIR, list_splits, read_dataset_json

    root = Path(root)
    spec = read_dataset_json(root)
    if "scribbles" not in spec.layout:
        raise DataError(
            f"{root / 'dataset.json'}: no 'scribbles' entry in 'layout'; nothing to shrink or drop"
        )
    ids = read_split_file(root / SPLITS_DIR / f"{split}.txt", split, list_splits(root))
    labelled = total = 0
    for sample_id in ids:
        scribble = read_label(root / spec.layout["scribbles"].format(id=sample_id))
        labelled += int(np.count_nonzero(scribble != spec.ignore_index))
        total += int(scribble.size)
    return {
        "num_images": len(ids),
        "scribble_pixels": labelled,
        "total_pixels": total,
        "labelled_fraction": labelled / total if total else 0.0,
    }


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def robustness_row(
    kind: str,
    ratio: float,
    metrics: Mapping[str, Any],
    stats: Mapping[str, Any],
    original_pixels: int,
    run_dir: str,
) -> dict[str, Any]:
    """One row of ``robustness.json``.

    Args:
        kind: "shrink" or "drop".
        ratio: the shrink / drop ratio of this run.
        metrics: the run's ``metrics.json`` (``mIoU``; ``volume_Dice.mean_Dice`` for slice datasets).
        stats: :func:`scribble_statistics` of the variant's training split.
        original_pixels: scribble pixels of the original training split (ratio 0).
        run_dir: the run folder, as recorded (relative to the robustness folder).

    Returns:
        ``{"kind", "ratio", "mIoU", "volume_mean_Dice" (None without per-volume Dice), "step",
        "scribble_pixels", "labelled_fraction", "kept_fraction" (scribble pixels / original
        scribble pixels), "run_dir"}``.
    """
    if "mIoU" not in metrics:
        raise DataError(f"metrics of run {run_dir} have no 'mIoU'")
    volume = metrics.get("volume_Dice") or {}
    pixels = int(stats["scribble_pixels"])
    return {
        "kind": kind,
        "ratio": float(ratio),
        "mIoU": _finite(metrics["mIoU"]),
        "volume_mean_Dice": _finite(volume.get("mean_Dice")),
        "step": metrics.get("step"),
        "scribble_pixels": pixels,
        "labelled_fraction": float(stats["labelled_fraction"]),
        "kept_fraction": pixels / original_pixels if original_pixels else None,
        "run_dir": run_dir,
    }


def _primary_metric(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per-volume Dice when every row has it (slice datasets such as ACDC), else mIoU."""
    if rows and all(r.get("volume_mean_Dice") is not None for r in rows):
        return "volume_mean_Dice"
    return "mIoU"


# --------------------------------------------------------------------------------------------------
# result files and plots
# --------------------------------------------------------------------------------------------------
def load_robustness(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``robustness.json`` (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / ROBUSTNESS_JSON
    result = read_json(path, f"robustness result not found: {path}")
    _check_result(result, str(path))
    return result


def _check_result(result: Any, where: str) -> None:
    if not isinstance(result, Mapping) or not isinstance(result.get("rows"), list):
        raise DataError(f"{where}: expected a robustness result with a 'rows' list")
    for i, row in enumerate(result["rows"]):
        missing = [k for k in ("kind", "ratio", "mIoU") if not isinstance(row, Mapping) or k not in row]
        if missing:
            raise DataError(f"{where}: row {i} lacks {', '.join(missing)}")


def _labels(results: Sequence[Mapping[str, Any]], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(results):
            raise ValueError(f"{len(labels)} labels given for {len(results)} result files")
        return [str(s) for s in labels]
    out: list[str] = []
    for result in results:
        base = str(result.get("label") or result.get("method") or "run")
        name, n = base, 2
        while name in out:  # keep legend entries apart
            name, n = f"{base} #{n}", n + 1
        out.append(name)
    return out


def robustness_series(
    results: Sequence[str | os.PathLike | Mapping[str, Any]],
    *,
    metric: str = "auto",
    labels: Sequence[str] | None = None,
) -> tuple[str, dict[str, dict[str, tuple[list[float], list[float]]]]]:
    """The lines of a robustness plot: ``(metric, {kind: {label: (ratios, values in percent)}})``.

    ``results`` are ``robustness.json`` paths (or folders holding one) or loaded summaries; each
    gives one line per kind it has rows of, sorted by ratio, missing scores as NaN. ``metric`` is
    "mIoU", "volume_mean_Dice" or "auto" (per-volume Dice when every row of every result has it,
    else mIoU). Labels default to each result's ``label`` (repeats get " #2", " #3", ...). Kinds
    come in the order shrink, drop, then any other.
    """
    loaded = []
    for item in results:
        if isinstance(item, Mapping):
            _check_result(item, "robustness result")
            loaded.append(item)
        else:
            loaded.append(load_robustness(item))
    if not loaded:
        raise ValueError("no robustness results to plot")
    all_rows = [row for result in loaded for row in result["rows"]]
    if not all_rows:
        raise ValueError("the robustness results hold no rows")
    if metric == "auto":
        metric = _primary_metric(all_rows)
    if metric not in METRICS:
        raise ValueError(f"metric must be 'auto' or one of {', '.join(METRICS)}, got {metric!r}")
    names = _labels(loaded, labels)
    kinds = [k for k in KINDS if any(r["kind"] == k for r in all_rows)]
    kinds += sorted({str(r["kind"]) for r in all_rows} - set(kinds))
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for kind in kinds:
        lines = series.setdefault(kind, {})
        for name, result in zip(names, loaded):
            rows = sorted((r for r in result["rows"] if r["kind"] == kind), key=lambda r: float(r["ratio"]))
            if rows:
                xs = [float(r["ratio"]) for r in rows]
                ys = [math.nan if r.get(metric) is None else 100.0 * float(r[metric]) for r in rows]
                lines[name] = (xs, ys)
    return metric, series


def plot_robustness(
    results: Sequence[str | os.PathLike | Mapping[str, Any]],
    out_png: str | os.PathLike,
    *,
    metric: str = "auto",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Score (percent) against ratio for one or several robustness results (methods compared).

    One panel per kind present (shrink, drop), one line per result; see :func:`robustness_series`
    for ``results``, ``metric`` and ``labels``. Written atomically; returns ``out_png``.
    """
    from weakseg.viz import new_figure, save_figure

    metric, series = robustness_series(results, metric=metric, labels=labels)
    fig = new_figure(5.0 * len(series), 4.0)
    for i, (kind, lines) in enumerate(series.items()):
        ax = fig.add_subplot(1, len(series), i + 1)
        for name, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xlabel(f"scribble-{kind} ratio")
        ax.set_ylabel(METRICS[metric])
        ax.set_title(title if title and len(series) == 1 else f"scribble-{kind}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    if title and len(series) > 1:
        fig.suptitle(title)
    return save_figure(fig, out_png)


def write_robustness(out_dir: str | os.PathLike, summary: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``robustness.json`` and (when there are rows) ``robustness.png`` atomically."""
    out = Path(out_dir)
    written = {"json": atomic_write_json(out / ROBUSTNESS_JSON, dict(summary))}
    if summary["rows"]:
        written["plot"] = plot_robustness(
            [summary], out / ROBUSTNESS_PNG, metric=summary.get("metric", "auto")
        )
    return written


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------
def _base_config(config: str | os.PathLike | Config, overrides: Sequence[str]) -> Config:
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        if overrides:
            from omegaconf import OmegaConf

            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override '{item}': expected key=value")
            merged = OmegaConf.merge(
                OmegaConf.create(config_to_dict(cfg)), OmegaConf.from_dotlist(list(overrides))
            )
            cfg = config_from_dict(OmegaConf.to_container(merged))  # type: ignore[arg-type]
        return cfg
    return load_config(config, list(overrides))


def _check_config(cfg: Config) -> None:
    from weakseg.builders import method_requires

    if cfg.data.format != "folder":
        raise ConfigError(
            f"robustness runs write scribble variants of folder-format datasets, but data.format is "
            f"'{cfg.data.format}' (data.root={cfg.data.root}). Convert the data first: put a dataset.json "
            "(weakseg.data.write_dataset_json; README 'Your own data: the folder format') whose layout "
            "points at the images, masks and scribble PNGs, and splits/<split>.txt, in a folder, then "
            "pass data.format=folder data.root=<that folder>"
        )
    name = cfg.method.get("name", "?") if isinstance(cfg.method, Mapping) else "?"
    requires = method_requires(cfg)
    if "scribble" not in requires:
        raise ConfigError(
            f"method '{name}' does not train from scribbles (it reads {', '.join(requires) or 'nothing'}); "
            "robustness runs vary the training scribbles, so use a scribble method (e.g. pce, rloss)"
        )


def _variant_is_complete(root: Path, kind: str, ratio: float, seed: int, splits: Sequence[str]) -> bool:
    """Whether ``root`` holds a finished variant of these settings (dataset.json is written last)."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        return False
    try:
        derived = json.loads(meta_path.read_text(encoding="utf-8")).get("derived_from", {})
    except (OSError, json.JSONDecodeError):
        return False
    return (
        derived.get("op") == kind
        and derived.get("ratio") == float(ratio)
        and derived.get("seed") == seed
        and list(derived.get("splits", [])) == list(splits)
    )


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from err


def run_robustness(
    config: str | os.PathLike | Config,
    kind: str,
    ratios: Sequence[float],
    out_dir: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    device: str | None = None,
    progress: bool = True,
    reuse: bool = False,
    seed: int = 0,
    label: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``config`` on the ``kind`` variant of its training scribbles at each ratio.

    For each ratio (ascending): the variant of the config's ``data.train_split`` and
    ``data.val_split`` is written to ``out_dir/data/<kind>_<ratio>`` (ratio 0 uses ``data.root``
    itself), the config is trained with ``data.root`` pointing at it and ``out_dir`` set to
    ``out_dir/runs/<kind>_<ratio>`` (same training seed, same validation masks), and its final
    validation ``metrics.json`` (the engine's evaluation, with per-volume Dice on slice datasets
    such as ACDC) becomes one row. ``robustness.json`` / ``robustness.png`` are rewritten after
    every ratio, so an interrupted sweep still shows what is done.

    Args:
        config: a YAML experiment file or a :class:`~weakseg.config.Config`; it must use a
            folder-format dataset whose layout has ``scribbles`` and a method that reads them.
        kind: "shrink" (:func:`~weakseg.data.scribbles.shrink_scribbles`) or "drop"
            (:func:`~weakseg.data.scribbles.drop_scribbles`).
        ratios: values in [0, 1].
        out_dir: folder of the sweep (created).
        overrides: dotted ``key=value`` config overrides applied before the sweep.
        device: passed to :func:`~weakseg.engine.trainer.train`.
        progress: progress bars and one status line per ratio.
        reuse: keep finished work: a run folder with ``metrics.json`` is not retrained, one with
            only ``last.ckpt`` resumes from it, and a complete variant folder is not rewritten.
        seed: seed of the drop variants (per image ``[seed, crc32(id)]``); shrink is deterministic.
        label: legend name of this sweep (default: the method's name).

    Returns:
        The summary written to ``robustness.json``: ``{"label", "method", "config", "kind",
        "variant_seed", "train_seed", "source_root", "train_split", "val_split",
        "original_scribble_pixels", "metric", "rows"}`` with rows as :func:`robustness_row`
        (``run_dir`` relative to ``out_dir``).
    """
    from weakseg.data.scribbles import write_scribble_variant
    from weakseg.engine.trainer import train

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    ratios = check_ratios(ratios)
    base = _base_config(config, overrides)
    _check_config(base)
    out = Path(out_dir)
    source = Path(base.data.root)
    train_split, val_split = base.data.train_split, base.data.val_split
    splits = list(dict.fromkeys([train_split, val_split]))
    original = scribble_statistics(source, train_split)
    method_name = str(base.method.get("name", "?"))
    summary: dict[str, Any] = {
        "label": label or method_name,
        "method": method_name,
        "config": base.name,
        "kind": kind,
        "variant_seed": int(seed),
        "train_seed": int(base.train.seed),
        "source_root": str(source),
        "train_split": train_split,
        "val_split": val_split,
        "original_scribble_pixels": original["scribble_pixels"],
        "metric": "mIoU",
        "rows": [],
    }
    for ratio in ratios:
        tag = f"{kind}_{ratio_tag(ratio)}"
        if ratio == 0.0:
            root, stats = source, original
        else:
            root = out / "data" / tag
            if not (reuse and _variant_is_complete(root, kind, ratio, seed, splits)):
                write_scribble_variant(
                    source, root, kind, ratio=ratio, seed=seed, splits=splits, progress=progress
                )
            stats = scribble_statistics(root, train_split)
        run_dir = out / "runs" / tag
        metrics_path = run_dir / "metrics.json"
        if not (reuse and metrics_path.is_file()):
            cfg = copy.deepcopy(base)
            cfg.data.root = str(root)
            cfg.out_dir = str(run_dir)
            cfg.name = f"{base.name}_{tag}"
            last = run_dir / "last.ckpt"
            resume = last if reuse and last.is_file() else None
            if progress:
                print(f"robustness {tag}: {'resuming' if resume else 'training'} in {run_dir}", flush=True)
            train(cfg, resume=resume, overwrite=resume is None, device=device, progress=progress)
        elif progress:
            print(f"robustness {tag}: reusing {metrics_path}", flush=True)
        row = robustness_row(
            kind, ratio, _read_metrics(metrics_path), stats, original["scribble_pixels"], f"runs/{tag}"
        )
        summary["rows"].append(row)
        summary["metric"] = _primary_metric(summary["rows"])
        write_robustness(out, summary)
    return summary
