"""Evaluate a segmentation model on a dataset: IoU / accuracy / Dice, optional per-volume Dice.

Predictions are made with :func:`weakseg.engine.inference.predict_labels` and compared to each
sample's ``"mask"`` at the mask's own resolution (the probabilities are resized to the mask size
before the arg-max). ACDC-style slice ids (``patientNNN_frameFF_slice_S``) also get per-volume 3-D
Dice, as ACDC results are published.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from weakseg.data.collate import group_by_shape, keep_as_list
from weakseg.engine.guards import reraise_worker_errors
from weakseg.engine.inference import predict_labels
from weakseg.io import DataError, atomic_save_label_png, atomic_write_json, json_safe, safe_join
from weakseg.metrics import ConfusionMatrix, VolumeDice, is_volume_slice_id
from weakseg.viz import make_palette, plot_per_class_bar, save_overlay

if TYPE_CHECKING:
    from weakseg.postprocess.crf import CRFParams

__all__ = ["evaluate", "write_evaluation_report"]

Sample = dict[str, Any]


def _image_and_mask_shape(sample: Sample) -> tuple:
    return tuple(sample["image"].shape), tuple(sample["mask"].shape)


def _check_sample(sample: Sample) -> None:
    sid = sample.get("id", "?")
    if "mask" not in sample:
        raise DataError(f"sample {sid!r} has no 'mask': evaluation needs dense ground truth")
    image, mask = sample["image"], sample["mask"]
    if image.ndim != 3 or image.shape[0] != 3:
        raise DataError(f"sample {sid!r}: expected image [3, H, W], got shape {tuple(image.shape)}")
    if mask.ndim != 2:
        raise DataError(f"sample {sid!r}: expected mask [H, W], got shape {tuple(mask.shape)}")


def _model_device(model: nn.Module) -> torch.device | None:
    param = next(model.parameters(), None)
    if param is None:
        param = next(model.buffers(), None)
    return None if param is None else param.device


def _save_prediction(
    save_dir: Path, sample: Sample, pred: torch.Tensor, palette: np.ndarray, ignore: int
) -> None:
    """``{id}.png`` (palette PNG of ``pred`` [H, W]) and ``overlays/{id}.jpg`` over the image, both
    refused (:class:`DataError`) if the id would place them outside ``save_dir``."""
    sid = str(sample["id"])
    mask_path = safe_join(save_dir, f"{sid}.png")
    overlay_path = safe_join(save_dir / "overlays", f"{sid}.jpg")
    label = pred.to("cpu", torch.uint8).numpy()
    atomic_save_label_png(mask_path, label, palette=palette)
    image = torch.as_tensor(sample["image"]).float()
    if tuple(image.shape[-2:]) != tuple(label.shape):
        image = F.interpolate(image[None], size=label.shape, mode="bilinear", align_corners=False)[0]
    save_overlay(overlay_path, image.clamp(0, 1), label, ignore_index=ignore)


def _named(
    values: Sequence[float], class_names: Sequence[str], keep: Sequence[int] | None = None
) -> dict[str, float]:
    ids = range(len(class_names)) if keep is None else keep
    return {class_names[c]: float(values[c]) for c in ids}


def _volume_report(result: Mapping[str, Any], vd: VolumeDice, class_names: Sequence[str]) -> dict[str, Any]:
    keep = vd.classes_in_mean
    return {
        "per_class": _named(result["per_class_Dice"], class_names, keep),
        "per_class_num_volumes": {class_names[c]: int(result["per_class_num_volumes"][c]) for c in keep},
        "mean_Dice": result["mean_Dice"],
        "num_volumes": result["num_volumes"],
        "num_slices": result["num_slices"],
        "per_volume": [
            {
                "volume": row["volume"],
                "num_slices": row["num_slices"],
                "Dice": _named(row["Dice"], class_names, keep),
                "mean_Dice": row["mean_Dice"],
            }
            for row in result["per_volume"]
        ],
    }


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | Sequence[int] | None = None,
    window_stride: float = 2 / 3,
    resize: Sequence[int] | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    volume_dice: bool | None = None,
    save_dir: str | os.PathLike | None = None,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
    crf: CRFParams | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` and score its predictions against each sample's ``"mask"``.

    Args:
        model: ``model(images [B, 3, H, W]) -> {"logits": [B, K, h, w]}``. It is moved to ``device``
            and put in eval mode for the run; its previous mode and device are restored afterwards.
        dataset: samples with ``"image"`` float32 ``[3, H, W]``, ``"mask"`` int64 ``[H', W']``
            (``ignore_index`` skipped) and ``"id"``; attributes ``classes``, ``num_classes``,
            ``ignore_index`` and optionally ``background``.
        scales, flip, window, window_stride, resize, autocast_dtype, crf: test-time options of
            :func:`~weakseg.engine.inference.predict_probs` (``crf``: dense-CRF refinement of the
            probabilities at the mask resolution, ``None`` for none).
        batch_size, num_workers: data loading; samples of different sizes are run in separate batches.
        volume_dice: add per-volume 3-D Dice. ``None`` (auto) turns it on when every id has the ACDC
            slice form ``patientNNN_frameFF_slice_S``.
        save_dir: when given, write ``{id}.png`` (VOC-palette label PNG of the prediction) and
            ``overlays/{id}.jpg`` there.
        progress: show a tqdm progress bar.

    Returns:
        ``mIoU``, ``pixel_accuracy``, ``mean_accuracy``, ``mean_Dice``, ``fwIoU`` (floats),
        ``per_class_IoU`` / ``per_class_accuracy`` / ``per_class_Dice`` as ``{class name: value}``
        (NaN for classes in neither ground truth nor prediction, left out of the means),
        ``confusion_matrix`` (K x K nested list, rows = ground truth), ``num_samples``, ``inference``
        (the test-time settings) and, with volume Dice, ``volume_Dice`` = ``{"per_class",
        "per_class_num_volumes", "mean_Dice", "num_volumes", "num_slices", "per_volume"}`` over the
        foreground classes (see :class:`~weakseg.metrics.VolumeDice`).
    """
    class_names = [str(c) for c in dataset.classes]
    num_classes = int(dataset.num_classes)
    ignore = int(dataset.ignore_index)
    if len(class_names) != num_classes:
        raise ValueError(f"dataset has {len(class_names)} class names but num_classes={num_classes}")
    device = torch.device(device)
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore, device=device)
    volumes = None
    if volume_dice is not False:
        volumes = VolumeDice(
            num_classes, background=getattr(dataset, "background", None), ignore_index=ignore
        )
    palette = make_palette(256)
    out_dir = Path(save_dir) if save_dir is not None else None
    options = dict(
        num_classes=num_classes,
        scales=tuple(scales),
        flip=flip,
        window=window,
        window_stride=window_stride,
        resize=resize,
        autocast_dtype=autocast_dtype,
        crf=crf,
    )
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=keep_as_list
    )

    was_training = model.training
    original_device = _model_device(model)
    model.to(device).eval()
    num_samples = 0
    try:
        with tqdm(total=len(dataset), desc="evaluate", unit="img", disable=not progress) as bar:
            for batch in reraise_worker_errors(loader):
                for sample in batch:
                    _check_sample(sample)
                for group in group_by_shape(batch, _image_and_mask_shape):
                    images = torch.stack([torch.as_tensor(s["image"]) for s in group]).float().to(device)
                    masks = torch.stack([torch.as_tensor(s["mask"]) for s in group]).long().to(device)
                    preds = predict_labels(model, images, out_size=tuple(masks.shape[-2:]), **options)
                    confusion.update(preds, masks)
                    for sample, pred, mask in zip(group, preds, masks):
                        sid = str(sample["id"])
                        if volumes is not None and volume_dice is None and not is_volume_slice_id(sid):
                            volumes = None  # auto mode: not ACDC-style slices
                        if volumes is not None:
                            volumes.add(sid, pred, mask)
                        if out_dir is not None:
                            _save_prediction(out_dir, sample, pred, palette, ignore)
                num_samples += len(batch)
                bar.update(len(batch))
    finally:
        model.train(was_training)
        if original_device is not None:
            model.to(original_device)

    scores = confusion.compute()
    result: dict[str, Any] = {
        "mIoU": scores["mIoU"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "mean_accuracy": scores["mean_accuracy"],
        "mean_Dice": scores["mean_Dice"],
        "fwIoU": scores["fwIoU"],
        "per_class_IoU": _named(scores["per_class_IoU"], class_names),
        "per_class_accuracy": _named(scores["per_class_accuracy"], class_names),
        "per_class_Dice": _named(scores["per_class_Dice"], class_names),
        "confusion_matrix": confusion.matrix.cpu().tolist(),
        "num_samples": num_samples,
        "inference": {
            "scales": list(options["scales"]),
            "flip": flip,
            "window": list(window) if isinstance(window, Sequence) else window,
            "window_stride": window_stride,
            "resize": list(resize) if resize is not None else None,
            "crf": dataclasses.asdict(crf) if crf is not None else None,
        },
    }
    if volumes is not None and num_samples > 0:
        result["volume_Dice"] = _volume_report(volumes.compute(), volumes, class_names)
    return result


def _values_in_order(
    per_class: Mapping[str, float] | Sequence[float], class_names: Sequence[str]
) -> list[float]:
    if isinstance(per_class, Mapping):
        return [per_class.get(name, math.nan) for name in class_names]
    return list(per_class)


def write_evaluation_report(
    metrics: Mapping[str, Any], out_dir: str | os.PathLike, class_names: Sequence[str]
) -> dict[str, Path]:
    """Write ``metrics.json`` (NaN as null), ``per_class_IoU.png`` and, with volume Dice, ``volume_Dice.png``.

    Returns the paths written, keyed ``"json"``, ``"iou_plot"`` and ``"dice_plot"``.
    """
    out = Path(out_dir)
    written = {"json": atomic_write_json(out / "metrics.json", json_safe(dict(metrics)))}
    if "per_class_IoU" in metrics:
        written["iou_plot"] = plot_per_class_bar(
            list(class_names),
            _values_in_order(metrics["per_class_IoU"], class_names),
            out / "per_class_IoU.png",
            title=f"per-class IoU (mIoU {metrics.get('mIoU', math.nan):.3f})",
            ylabel="IoU",
        )
    volume = metrics.get("volume_Dice")
    if volume:
        per_class = volume["per_class"]
        names = list(per_class) if isinstance(per_class, Mapping) else list(class_names)
        written["dice_plot"] = plot_per_class_bar(
            names,
            _values_in_order(per_class, names),
            out / "volume_Dice.png",
            title=f"per-volume 3-D Dice (mean {volume.get('mean_Dice', math.nan):.3f})",
            ylabel="Dice",
        )
    return written
