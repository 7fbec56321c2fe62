"""Segmentation metrics: a streaming confusion matrix and per-volume (3-D) Dice.

Conventions used throughout:

* A confusion matrix is int64 ``[K, K]``: **rows are ground truth, columns are prediction**.
* Pixels whose ground truth is ``ignore_index`` (or any value outside ``0..K-1``) are not counted.
  Pixels whose *prediction* lies outside ``0..K-1`` are not counted either: checking for them would
  need a device-to-host copy on every update (a prediction from ``argmax`` over K channels is always
  in range).
* A class absent from both the ground truth and the prediction has no defined IoU / Dice: its
  per-class value is NaN and it is left out of every mean (``mIoU``, ``mean_Dice``). A class that is
  absent from the ground truth but predicted somewhere scores 0 and counts.

The functions that turn a matrix into numbers (:func:`per_class_iou` and friends) are pure and
take a NumPy array or a tensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from weakseg.io import DataError

__all__ = [
    "ACDC_SLICE_RE",
    "ConfusionMatrix",
    "VolumeDice",
    "acdc_volume_id",
    "confusion_counts",
    "dice_from_counts",
    "frequency_weighted_iou",
    "is_volume_slice_id",
    "mean_accuracy",
    "metrics_from_matrix",
    "nanmean",
    "per_class_accuracy",
    "per_class_dice",
    "per_class_iou",
    "pixel_accuracy",
]

# ACDC slice ids: "patient001_frame01_slice_3" -> volume "patient001_frame01".
ACDC_SLICE_RE = re.compile(r"^(?P<volume>patient\d+_frame\d+)_slice_\d+$")


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------
def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """Count (ground truth, prediction) pairs on the tensors' device, without a host sync.

    Args:
        pred: integer tensor of any shape (class ids).
        target: integer tensor of the same shape (class ids, ``ignore_index`` for unlabelled).
        num_classes: K.
        ignore_index: ground-truth value that is skipped (values outside ``0..K-1`` are skipped too).

    Returns:
        int64 ``[K, K]`` on ``pred``'s device, rows = ground truth, columns = prediction.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}"
        )
    k = int(num_classes)
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).to(device=pred.device, dtype=torch.long)
    valid = (target >= 0) & (target < k) & (pred >= 0) & (pred < k)
    if ignore_index is not None:
        valid &= target != ignore_index
    # Invalid pixels go to an extra "dump" bin k*k, so no boolean indexing (which would sync) is needed.
    flat = torch.where(valid, target * k + pred, torch.full_like(target, k * k))
    if flat.device.type == "cpu":
        counts = torch.bincount(flat, minlength=k * k + 1)
    else:
        # torch.bincount on an accelerator reads max() back to the host; scatter_add_ does not.
        counts = torch.zeros(k * k + 1, dtype=torch.long, device=flat.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
    return counts[: k * k].view(k, k)


# --------------------------------------------------------------------------------------------------
# Pure functions of a confusion matrix
# --------------------------------------------------------------------------------------------------
def _as_float_matrix(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square [K, K], got shape {m.shape}")
    return m


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` with NaN where ``den == 0``."""
    out = np.full(np.shape(num), np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def nanmean(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (without a warning) when there are none."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def per_class_iou(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN) as float64 ``[K]``; NaN when class c is in neither gt nor pred."""
    m = _as_float_matrix(matrix)
    tp = np.diag(m)
    return _safe_divide(tp, m.sum(0) + m.sum(1) - tp)


def per_class_dice(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """Dice_c = 2 TP / (2 TP + FP + FN) as float64 ``[K]``; NaN when class c is in neither gt nor pred."""
    m = _as_float_matrix(matrix)
    tp = np.diag(m)
    return _safe_divide(2.0 * tp, m.sum(0) + m.sum(1))


def per_class_accuracy(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """Recall TP / (TP + FN) per class, float64 ``[K]``; NaN for classes absent from the ground truth."""
    m = _as_float_matrix(matrix)
    return _safe_divide(np.diag(m), m.sum(1))


def pixel_accuracy(matrix: np.ndarray | torch.Tensor) -> float:
    """Fraction of counted pixels predicted correctly; NaN when nothing was counted."""
    m = _as_float_matrix(matrix)
    total = m.sum()
    return float(np.trace(m) / total) if total > 0 else math.nan


def mean_accuracy(matrix: np.ndarray | torch.Tensor) -> float:
    """Mean of :func:`per_class_accuracy` over the classes present in the ground truth."""
    return nanmean(per_class_accuracy(matrix))


def frequency_weighted_iou(matrix: np.ndarray | torch.Tensor) -> float:
    """sum_c (gt pixels of c / all gt pixels) * IoU_c; NaN when nothing was counted."""
    m = _as_float_matrix(matrix)
    gt = m.sum(1)
    total = gt.sum()
    if total <= 0:
        return math.nan
    iou = np.nan_to_num(per_class_iou(m), nan=0.0)  # NaN only where gt is 0, i.e. weight 0
    return float((gt / total * iou).sum())


def metrics_from_matrix(matrix: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """All confusion-matrix metrics as plain Python numbers (per-class values as lists of length K)."""
    iou = per_class_iou(matrix)
    dice = per_class_dice(matrix)
    acc = per_class_accuracy(matrix)
    return {
        "mIoU": nanmean(iou),
        "per_class_IoU": iou.tolist(),
        "pixel_accuracy": pixel_accuracy(matrix),
        "mean_accuracy": nanmean(acc),
        "per_class_accuracy": acc.tolist(),
        "per_class_Dice": dice.tolist(),
        "mean_Dice": nanmean(dice),
        "fwIoU": frequency_weighted_iou(matrix),
    }


# --------------------------------------------------------------------------------------------------
# Streaming confusion matrix
# --------------------------------------------------------------------------------------------------
class ConfusionMatrix:
    """Accumulates a ``[K, K]`` int64 confusion matrix (rows = ground truth, columns = prediction).

    The matrix lives on ``device``; with ``device=None`` it follows the first update's device. Updates
    never copy to the host, so they can run inside a GPU loop; :meth:`compute` does the one copy.
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str | None = None
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._device_fixed = device is not None
        self._matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=device)
        self._updated = False

    @property
    def matrix(self) -> torch.Tensor:
        """int64 ``[K, K]``, rows = ground truth, columns = prediction."""
        return self._matrix

    def reset(self) -> None:
        """Set every count to zero (the device is kept)."""
        self._matrix.zero_()
        self._updated = False

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add the pixels of ``pred`` / ``target`` (integer tensors of one shape, e.g. ``[B, H, W]``)."""
        if not self._device_fixed and not self._updated and pred.device != self._matrix.device:
            self._matrix = self._matrix.to(pred.device)
        pred = pred.to(self._matrix.device)
        self._matrix += confusion_counts(pred, target, self.num_classes, self.ignore_index)
        self._updated = True

    def all_reduce(self) -> None:
        """Sum the matrix over all processes when ``torch.distributed`` is initialised (else a no-op)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self._matrix, op=torch.distributed.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """Metrics of the current matrix (see :func:`metrics_from_matrix`)."""
        return metrics_from_matrix(self._matrix)


# --------------------------------------------------------------------------------------------------
# Per-volume 3-D Dice (ACDC style)
# --------------------------------------------------------------------------------------------------
def acdc_volume_id(sample_id: str) -> str:
    """``"patient001_frame01_slice_3"`` -> ``"patient001_frame01"``; :class:`DataError` otherwise."""
    match = ACDC_SLICE_RE.match(sample_id)
    if match is None:
        raise DataError(
            f"sample id {sample_id!r} is not an ACDC slice id: expected 'patientNNN_frameFF_slice_S' "
            "(pass volume_of= to group other ids into volumes)"
        )
    return match.group("volume")


def is_volume_slice_id(sample_id: str) -> bool:
    """True when ``sample_id`` has the ACDC slice form ``patientNNN_frameFF_slice_S``."""
    return ACDC_SLICE_RE.match(sample_id) is not None


def dice_from_counts(intersection: np.ndarray, pred_size: np.ndarray, gt_size: np.ndarray) -> np.ndarray:
    """2|P∩G| / (|P| + |G|) element-wise; NaN where both P and G are empty."""
    inter = np.asarray(intersection, dtype=np.float64)
    return _safe_divide(
        2.0 * inter, np.asarray(pred_size, dtype=np.float64) + np.asarray(gt_size, np.float64)
    )


class VolumeDice:
    """Per-volume 3-D Dice: slices are grouped into volumes and counted together.

    For each volume and class c, Dice_c = 2|P∩G| / (|P| + |G|) where the sets are summed over all of
    the volume's slices (slices may arrive in any order, interleaved with other volumes, and
    volumes may have different slice sizes). Pixels whose ground truth is ``ignore_index`` are
    skipped.

    **Both empty.** When a class is in neither the prediction nor the ground truth of a volume its
    Dice is undefined: here it is NaN and the volume is left out of that class's mean (the per-class
    count of volumes used is reported). medpy's ``metric.binary.dc``, and the WSL4MIS evaluation
    behind published scribble-supervised ACDC numbers, score 0 in that case; other scripts score 1.
    On ACDC every volume contains RV, myocardium and LV in the ground truth, so the conventions
    agree there (an empty prediction against a non-empty ground truth scores 0 in all of them).

    ``mean_Dice`` is the mean over the included classes (all but ``background`` unless
    ``include_background``) of the per-class means over volumes, as ACDC results are reported.
    """

    def __init__(
        self,
        num_classes: int,
        volume_of: Callable[[str], str] = acdc_volume_id,
        include_background: bool = False,
        background: int | None = 0,
        ignore_index: int | None = 255,
    ):
        self.num_classes = int(num_classes)
        self.volume_of = volume_of
        self.include_background = include_background
        self.background = background
        self.ignore_index = ignore_index
        self._counts: dict[str, torch.Tensor] = {}  # volume -> int64 [K, K] confusion counts
        self._slices: dict[str, int] = {}

    def reset(self) -> None:
        self._counts.clear()
        self._slices.clear()

    @property
    def classes_in_mean(self) -> list[int]:
        """Class ids averaged into ``mean_Dice``."""
        skip = None if self.include_background else self.background
        return [c for c in range(self.num_classes) if c != skip]

    def add(self, sample_id: str, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one slice: ``pred`` and ``target`` are integer ``[H, W]`` (tensor or array)."""
        pred_t = torch.as_tensor(pred)
        target_t = torch.as_tensor(target)
        if pred_t.ndim != 2:
            raise ValueError(
                f"slice {sample_id!r}: expected a [H, W] prediction, got shape {tuple(pred_t.shape)}"
            )
        volume = self.volume_of(sample_id)
        counts = confusion_counts(pred_t, target_t, self.num_classes, self.ignore_index)
        if volume in self._counts:
            self._counts[volume] = self._counts[volume] + counts.to(self._counts[volume].device)
        else:
            self._counts[volume] = counts
        self._slices[volume] = self._slices.get(volume, 0) + 1

    def compute(self) -> dict[str, Any]:
        """Per-volume and summary Dice.

        Returns a dict with ``"per_volume"`` (list, sorted by volume id, of ``{"volume", "num_slices",
        "Dice": [K floats], "mean_Dice"}``), ``"per_class_Dice"`` (list of K means over volumes, NaN
        volumes excluded), ``"per_class_num_volumes"`` (how many volumes each mean used),
        ``"mean_Dice"`` (over :attr:`classes_in_mean`), ``"num_volumes"`` and ``"num_slices"``.
        """
        included = self.classes_in_mean
        per_volume = []
        rows = []
        for volume in sorted(self._counts):
            m = self._counts[volume].cpu().numpy().astype(np.float64)
            dice = dice_from_counts(np.diag(m), m.sum(0), m.sum(1))
            rows.append(dice)
            per_volume.append(
                {
                    "volume": volume,
                    "num_slices": self._slices[volume],
                    "Dice": dice.tolist(),
                    "mean_Dice": nanmean(dice[included]),
                }
            )
        table = np.stack(rows) if rows else np.full((0, self.num_classes), np.nan)
        per_class = [nanmean(table[:, c]) for c in range(self.num_classes)]
        return {
            "per_class_Dice": per_class,
            "per_class_num_volumes": [int((~np.isnan(table[:, c])).sum()) for c in range(self.num_classes)],
            "mean_Dice": nanmean([per_class[c] for c in included]),
            "per_volume": per_volume,
            "num_volumes": len(per_volume),
            "num_slices": int(sum(self._slices.values())),
        }
