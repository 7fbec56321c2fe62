"""Pseudo-labels of a CAM folder written as a trainable dataset (``weakseg pseudo-labels``).

The labelling rule (IR labels, dense-CRF refinement) is :mod:`weakseg.cam.pseudo_labels`; this module reads
the CAM files of a split, writes ``pseudo/{id}.png``, the split files and a ``dataset.json`` that points
back at the source's images, masks and scribbles, and scores the labels against the masks when there are
masks.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from weakseg.cam.pseudo_labels import IGNORE_INDEX, PseudoLabelParams, ir_labels
from weakseg.cam.seeds import check_rule_inputs, choose_weights, combine_cams, sfc_scores
from weakseg.data.collate import group_by_shape, keep_as_list
from weakseg.data.folder import list_splits, write_dataset_json, write_split
from weakseg.io import DataError, atomic_save_label_png, atomic_write_json, json_safe, path_as_written_in
from weakseg.metrics import ConfusionMatrix, nanmean, per_class_iou
from weakseg.tools.cam_store import SamplesWithCams, check_dataset_matches, load_cam_meta
from weakseg.viz import make_palette

__all__ = ["derived_dataset_json", "make_pseudo_labels"]


# --------------------------------------------------------------------------------------------------
# A derived dataset folder
# --------------------------------------------------------------------------------------------------
def _pattern_from_paths(path: Path, sample_id: str) -> Path:
    """An absolute ``{id}`` pattern from one file path of a sample (its last occurrence of the id)."""
    text = str(path.resolve())
    at = text.rfind(sample_id)
    if at < 0:
        raise DataError(f"cannot derive a file pattern: {text} does not contain the sample id {sample_id!r}")
    return Path(text[:at] + "{id}" + text[at + len(sample_id) :])


def _source_layout(dataset: Any) -> dict[str, Path]:
    """Absolute file patterns of the dataset's images, masks, scribbles (and tags file)."""
    spec = getattr(dataset, "spec", None)
    root = Path(dataset.root).resolve()
    if spec is not None:  # folder format: its own layout
        return {
            key: Path(pattern) if posixpath.isabs(pattern) else root / pattern
            for key, pattern in spec.layout.items()
            if key != "pseudo"
        }
    first = dataset.ids[0]
    layout = {"images": _pattern_from_paths(dataset.image_path(0), first)}
    for key, layout_key in (("mask", "masks"), ("scribble", "scribbles")):
        if key in getattr(dataset, "keys", []):
            layout[layout_key] = _pattern_from_paths(dataset.label_path(key, 0), first)
    return layout


def derived_dataset_json(
    dataset: Any,
    dst_root: str | os.PathLike,
    new_entries: Mapping[str, str],
    *,
    name: str,
    derived_from: Mapping[str, Any],
) -> Path:
    """Write ``dst_root/dataset.json`` for a dataset derived from ``dataset``.

    The source's layout entries point back at the source files (relative paths when possible),
    ``new_entries`` (e.g. ``{"pseudo": "pseudo/{id}.png"}``) are relative to ``dst_root``; classes,
    background, ignore index and image mode are the source's. Works for any
    :class:`~weakseg.data.SegDataset` (folder, VOC, COCO): for non-folder formats the patterns are
    read off the first sample's file paths.
    """
    dst = Path(dst_root).resolve()
    layout = {key: path_as_written_in(path, dst) for key, path in _source_layout(dataset).items()}
    layout.update(new_entries)
    return write_dataset_json(
        dst,
        dataset.classes,
        name=name,
        layout=layout,
        image_mode=dataset.image_mode,
        background=dataset.background,
        extra={"derived_from": dict(derived_from)},
    )


# --------------------------------------------------------------------------------------------------
# A whole split
# --------------------------------------------------------------------------------------------------
def _stats(matrix: ConfusionMatrix, num_classes: int, class_names: Sequence[str]) -> dict[str, Any]:
    """Quality of pseudo-labels against the masks from a (K+1)-class matrix whose last column
    counts ignored pixels (its last row is zero)."""
    m = matrix.matrix.cpu().numpy()
    k = num_classes
    labelled = m[:k, :k]
    iou_labelled = per_class_iou(labelled)
    iou_full = per_class_iou(m)[:k]
    total = m.sum()
    return {
        "mIoU_labelled": nanmean(iou_labelled),
        "mIoU_ignore_as_miss": nanmean(iou_full),
        "coverage": float(labelled.sum() / total) if total else math.nan,
        "per_class_IoU_labelled": {n: float(v) for n, v in zip(class_names, iou_labelled)},
    }


def make_pseudo_labels(
    cam_dir: str | os.PathLike,
    dataset: Any,
    out_root: str | os.PathLike,
    *,
    weights: Mapping[str, float] | None = None,
    params: PseudoLabelParams | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the pseudo-labels of ``dataset``'s split as a folder-format dataset.

    ``out_root`` receives ``pseudo/{id}.png`` (palette PNG, 255 = uncertain), ``splits/<split>.txt``
    (and the source's other split files for a folder-format source), ``dataset.json`` (layout
    pointing back at the source's images / masks / scribbles, plus ``"pseudo": "pseudo/{id}.png"``)
    and ``pseudo_labels.json`` (settings, and the quality against the masks when there are masks:
    mIoU over the labelled pixels, mIoU counting ignored pixels as misses, coverage). All files
    are written atomically.

    ``params`` default to :class:`~weakseg.cam.pseudo_labels.PseudoLabelParams` (IRN's thresholds, the
    torch CRF); ``weights`` default per rule (``params.rule``; :func:`~weakseg.cam.seeds.choose_weights`).

    Returns:
        The ``pseudo_labels.json`` content.
    """
    cam_dir, out = Path(cam_dir), Path(out_root)
    params = params if params is not None else PseudoLabelParams()
    if out.resolve() == Path(dataset.root).resolve():
        raise ValueError(f"out_root must differ from the dataset root {dataset.root}")
    meta = load_cam_meta(cam_dir)
    check_dataset_matches(meta, dataset, cam_dir)
    chosen = choose_weights(meta, params.rule, weights, "pseudo")
    check_rule_inputs(meta, params.rule, chosen, dataset.background)
    own_background = params.rule == "sfc" and dataset.background is not None
    k = dataset.num_classes
    palette = make_palette()
    matrix = ConfusionMatrix(k + 1, ignore_index=IGNORE_INDEX)
    has_masks = "mask" in getattr(dataset, "keys", [])
    loader = DataLoader(
        SamplesWithCams(dataset, cam_dir),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=keep_as_list,
    )
    bar = tqdm(total=len(dataset), desc=f"pseudo-labels ({params.crf} crf)", unit="img", disable=not progress)
    for items in loader:
        for group in group_by_shape(items, lambda item: item[1]["image"].shape):
            images = torch.stack(
                [torch.from_numpy(np.ascontiguousarray(it[1]["image"])).permute(2, 0, 1) for it in group]
            )
            if own_background:
                scored = [sfc_scores(it[2], chosen) for it in group]
                combined = [fg.to(device) for fg, _ in scored]
                bg_scores: list[torch.Tensor] | None = [bg.to(device) for _, bg in scored]
            else:
                combined = [combine_cams(it[2].cams, chosen).to(device) for it in group]
                bg_scores = None
            labels = ir_labels(
                combined,
                [it[2].keys for it in group],
                images.to(device),
                background=dataset.background,
                params=params,
                bg_scores=bg_scores,
            ).cpu()
            for (sid, raw, _record), label in zip(group, labels):
                mask = raw.get("mask")
                atomic_save_label_png(out / "pseudo" / f"{sid}.png", label.numpy().astype(np.uint8), palette)
                if has_masks and mask is not None:
                    pred = torch.where(label == IGNORE_INDEX, torch.full_like(label, k), label)
                    matrix.update(pred, torch.from_numpy(np.asarray(mask)).long())
            bar.update(len(group))
    bar.close()
    _write_splits(dataset, out)
    derived_dataset_json(
        dataset,
        out,
        {"pseudo": "pseudo/{id}.png"},
        name=f"{dataset.name}-pseudo",
        derived_from={"cams": str(cam_dir.resolve()), "split": dataset.split, "op": "pseudo-labels"},
    )
    summary: dict[str, Any] = {
        "cams": str(cam_dir.resolve()),
        "split": dataset.split,
        "num_images": len(dataset),
        "rule": params.rule,
        "weights": chosen,
        "background": dataset.background,
        "params": {**asdict(params), "crf_params": asdict(params.crf_params)},
    }
    if has_masks:
        summary["quality"] = _stats(matrix, k, dataset.classes)
    atomic_write_json(out / "pseudo_labels.json", json_safe(summary))
    return summary


def _write_splits(dataset: Any, out: Path) -> None:
    """``splits/<split>.txt`` of the processed split, and the source's other split files (folder
    format) so the derived dataset can be validated on them."""
    spec = getattr(dataset, "spec", None)
    if spec is not None:
        for split in list_splits(dataset.root):
            if split != dataset.split and not (out / "splits" / f"{split}.txt").is_file():
                text = (Path(dataset.root) / "splits" / f"{split}.txt").read_text(encoding="utf-8")
                write_split(
                    out,
                    split,
                    [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")],
                )
    write_split(out, dataset.split, dataset.ids)
