"""Scoring a CAM folder's seeds against the masks: the threshold sweep of a rule, and its report.

The rules, the combination of CAM types and the one-pass sweep are :mod:`weakseg.cam.seeds`; this module
reads the CAM files of a dataset (``weakseg cam evaluate``) and writes ``seeds.json`` and two plots.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from weakseg.cam.seeds import (
    DEFAULT_THRESHOLDS,
    SeedSweep,
    check_rule_inputs,
    choose_weights,
    describe_rule,
    fixed_threshold_of,
    rule_scores,
)
from weakseg.data.collate import keep_as_list
from weakseg.io import DataError, atomic_write_json, json_safe
from weakseg.tools.cam_store import SamplesWithCams, check_dataset_matches, load_cam_meta
from weakseg.viz import plot_metric_vs, plot_per_class_bar

__all__ = ["evaluate_seeds", "write_seed_report"]


def evaluate_seeds(
    cam_dir: str | os.PathLike,
    dataset: Any,
    *,
    rule: str = "irn",
    weights: Mapping[str, float] | None = None,
    thresholds: Sequence[float] | None = None,
    fixed_threshold: float | None = None,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Sweep the seed threshold over a CAM folder against ``dataset``'s masks (see the module doc).

    Args:
        cam_dir: a folder written by :func:`weakseg.tools.cam_folder.infer_cams`.
        dataset: a :class:`~weakseg.data.SegDataset` with masks, the same classes and background.
        rule: "irn" (constant background score) or "sfc" (the maps' own backgrounds, SFC's biases).
        weights: CAM-type weights (default: :func:`choose_weights`; "irn": the raw classifier CAM
            ``cam``, "sfc": ``M_W + M_P``).
        thresholds: the sweep (default: 0, 0.05, …, 0.95 for "irn"; 0 alone for "sfc").
        fixed_threshold: the rule's own entry, added to the sweep when missing (default: 0.15 for
            "irn" with a background class, else 0).

    Returns:
        :meth:`SeedSweep.compute`'s dict (with the fixed entry) plus "rule", "rule_description",
        "weights" and "num_images".
    """
    cam_dir = Path(cam_dir)
    meta = load_cam_meta(cam_dir)
    check_dataset_matches(meta, dataset, cam_dir)
    chosen = choose_weights(meta, rule, weights, "seeds")
    check_rule_inputs(meta, rule, chosen, dataset.background)
    fixed = (
        fixed_threshold_of(rule, dataset.background) if fixed_threshold is None else float(fixed_threshold)
    )
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLDS if rule == "irn" else (0.0,)
    swept = sorted({float(t) for t in thresholds} | {fixed})
    sweep = SeedSweep(dataset.num_classes, dataset.background, swept, device=device)
    loader = DataLoader(
        SamplesWithCams(dataset, cam_dir),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=keep_as_list,
    )
    for sid, raw, record in tqdm(loader, desc="seeds", unit="img", disable=not progress, dynamic_ncols=True):
        if "mask" not in raw:
            raise DataError(f"sample {sid!r} has no mask: seed evaluation needs dense ground truth")
        scores = rule_scores(record, chosen, rule, dataset.background)
        sweep.update(scores, record.keys, torch.as_tensor(np.asarray(raw["mask"])))
    result = sweep.compute(dataset.classes, fixed_threshold=fixed)
    if rule == "sfc" and dataset.background is not None:
        result["threshold_kind"] = "extra background offset"
    result["rule"] = rule
    result["rule_description"] = describe_rule(rule, dataset.background)
    result["weights"] = chosen
    result["num_images"] = len(dataset)
    return result


def _report_title(result: Mapping[str, Any]) -> str:
    title = f"CAM seeds ({result.get('rule', 'irn')} rule)"
    if "fixed_mIoU" in result:
        title += f": mIoU {result['fixed_mIoU']:.3f} at {result['fixed_threshold']:g}"
    return title + f", oracle best {result['best_mIoU']:.3f} at {result['best_threshold']:g}"


def write_seed_report(result: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``seeds.json``, ``seed_mIoU_vs_threshold.png`` and ``seed_per_class_IoU.png``."""
    out = Path(out_dir)
    written = {"json": atomic_write_json(out / "seeds.json", json_safe(dict(result)))}
    series = {"mIoU": result["mIoU"]}
    if "precision_mIoU" in result:
        series["mIoU of labelled pixels"] = result["precision_mIoU"]
        series["coverage"] = result["coverage"]
    kind = result["threshold_kind"]
    written["plot"] = plot_metric_vs(
        result["thresholds"],
        series,
        out / "seed_mIoU_vs_threshold.png",
        xlabel=f"{kind} threshold",
        ylabel="mIoU" if len(series) == 1 else "value",
        title=_report_title(result),
    )
    per_class = result["per_class_IoU"]
    if isinstance(per_class, Mapping):
        names, values = list(per_class), list(per_class.values())
    else:
        names, values = [str(i) for i in range(len(per_class))], list(per_class)
    written["per_class"] = plot_per_class_bar(
        names,
        values,
        out / "seed_per_class_IoU.png",
        title=f"seed IoU at threshold {result['best_threshold']:g}",
        ylabel="IoU",
    )
    return written
