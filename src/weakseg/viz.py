"""Colour maps, overlays and plots.

Label maps are coloured with the PASCAL VOC colour map. Plots use matplotlib's Agg canvas directly
(no ``pyplot``, so no global figure state and no display is needed). Every file is written
atomically through :mod:`weakseg.io`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from weakseg.io import DataError, atomic_save_image, atomic_write

__all__ = [
    "colorize",
    "load_log_rows",
    "make_palette",
    "new_figure",
    "overlay",
    "plot_metric_vs",
    "plot_per_class_bar",
    "plot_training_curves",
    "save_figure",
    "save_overlay",
    "side_by_side",
]

ArrayLike = np.ndarray | torch.Tensor

# Columns that can serve as the x axis of training curves, in order of preference.
_STEP_KEYS = ("step", "iteration", "iter", "global_step", "epoch")
# Substrings marking a column as a validation metric (case-insensitive).
_METRIC_HINTS = ("val", "iou", "dice", "acc")


# --------------------------------------------------------------------------------------------------
# Colours and overlays
# --------------------------------------------------------------------------------------------------
def make_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map as uint8 ``[n, 3]``.

    Bits 0, 1, 2 of the class id go to the top bit of R, G, B; bits 3, 4, 5 to the next bit; and so
    on. Class 255 (ignore) comes out as (224, 224, 192), the VOC boundary colour.
    """
    palette = np.zeros((n, 3), dtype=np.uint8)
    for idx in range(n):
        rgb = [0, 0, 0]
        code = idx
        for bit in range(7, -1, -1):  # most significant output bit first
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << bit
            code >>= 3
        palette[idx] = rgb
    return palette


_PALETTE = make_palette(256)


def _to_numpy(array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _label_array(label: ArrayLike) -> np.ndarray:
    """Integer ``[H, W]`` label map as int64, checked to lie in 0..255."""
    lab = _to_numpy(label)
    if lab.ndim != 2:
        raise ValueError(f"a label map must be 2-D [H, W], got shape {lab.shape}")
    lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() > 255):
        raise ValueError(f"label values must lie in 0..255, got {lab.min()}..{lab.max()}")
    return lab


def _image_uint8(image: ArrayLike) -> np.ndarray:
    """Any accepted image as uint8 ``[H, W, 3]``.

    Accepted: uint8 ``[H, W, 3]`` / ``[H, W]``, or float ``[3, H, W]`` / ``[H, W, 3]`` in [0, 1].
    """
    img = _to_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # [C, H, W] -> [H, W, C]
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image [H, W, 3] or [3, H, W], got shape {img.shape}")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def colorize(label: ArrayLike, palette: np.ndarray | None = None) -> np.ndarray:
    """Colour a label map ``[H, W]`` (ints in 0..255) with the VOC palette -> uint8 ``[H, W, 3]``."""
    pal = _PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)
    return pal[_label_array(label)]


def overlay(
    image: ArrayLike,
    label: ArrayLike,
    alpha: float = 0.5,
    ignore_index: int | None = 255,
    palette: np.ndarray | None = None,
) -> np.ndarray:
    """Blend the coloured label over the image -> uint8 ``[H, W, 3]``.

    ``image`` is uint8 ``[H, W, 3]`` or float ``[3, H, W]`` in [0, 1] (array or tensor); ``label`` is
    ``[H, W]`` of the same height and width. Pixels equal to ``ignore_index`` keep the image colour.
    """
    img = _image_uint8(image)
    lab = _label_array(label)
    if img.shape[:2] != lab.shape:
        raise ValueError(f"image size {img.shape[:2]} differs from label size {lab.shape}")
    colour = colorize(lab, palette).astype(np.float64)
    blended = (1.0 - alpha) * img.astype(np.float64) + alpha * colour
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if ignore_index is not None:
        keep = lab == ignore_index
        out[keep] = img[keep]
    return out


def side_by_side(
    image: ArrayLike,
    pred: ArrayLike,
    gt: ArrayLike | None = None,
    alpha: float = 0.5,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Image | prediction overlay [| ground-truth overlay] joined horizontally -> uint8 ``[H, n*W, 3]``."""
    img = _image_uint8(image)
    panels = [img, overlay(img, pred, alpha, ignore_index)]
    if gt is not None:
        panels.append(overlay(img, gt, alpha, ignore_index))
    return np.concatenate(panels, axis=1)


def save_overlay(
    path: str | os.PathLike,
    image: ArrayLike,
    pred: ArrayLike,
    gt: ArrayLike | None = None,
    alpha: float = 0.5,
    ignore_index: int | None = 255,
) -> Path:
    """Write :func:`overlay` (or :func:`side_by_side` when ``gt`` is given) to ``path`` atomically."""
    if gt is None:
        picture = overlay(image, pred, alpha, ignore_index)
    else:
        picture = side_by_side(image, pred, gt, alpha, ignore_index)
    return atomic_save_image(path, picture)


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas (no display needed), ``width x height`` inches at 100 dpi."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_png: str | os.PathLike) -> Path:
    """Tight layout, then write ``fig`` as a PNG atomically; returns the path."""
    fig.tight_layout()
    return atomic_write(out_png, lambda p: fig.savefig(p, format="png"))


def _as_float(value: Any) -> float | None:
    """A finite float, or None for blanks, text and non-finite values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def load_log_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a metrics log: ``.csv`` (header row) or ``.jsonl`` / ``.json`` lines (one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metrics log not found: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{line_no}: expected one JSON object per line ({err})") from err
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _series(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        x, y = _as_float(row.get(x_key)), _as_float(row.get(y_key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _split_columns(rows: Sequence[Mapping[str, Any]], x_key: str) -> tuple[list[str], list[str], list[str]]:
    """Numeric columns split into (losses, validation metrics, learning rates), in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns and k != x_key)
    numeric = [c for c in columns if any(_as_float(row.get(c)) is not None for row in rows)]
    losses = [c for c in numeric if "loss" in c.lower()]
    lrs = [c for c in numeric if c.lower() == "lr" or c.lower().endswith("/lr") or c.lower().startswith("lr")]
    metrics = [
        c for c in numeric if c not in losses and c not in lrs and any(h in c.lower() for h in _METRIC_HINTS)
    ]
    return losses, metrics, lrs


def plot_training_curves(
    log_rows: Sequence[Mapping[str, Any]] | str | os.PathLike, out_png: str | os.PathLike
) -> Path:
    """Plot losses, validation metrics and learning rate against the step, one subplot each.

    ``log_rows`` is a list of dicts or the path of a CSV / JSONL metrics log. The x axis is the first
    of ``step``, ``iteration``, ``iter``, ``global_step``, ``epoch`` present. Columns containing
    ``loss`` are losses; columns containing ``val``, ``iou``, ``dice`` or ``acc`` are validation
    metrics; ``lr`` columns go to a third panel. Rows may be sparse (validation every N steps):
    blanks are skipped per column. Panels with nothing to show are left out.
    """
    rows = load_log_rows(log_rows) if isinstance(log_rows, str | os.PathLike) else list(log_rows)
    if not rows:
        raise ValueError("plot_training_curves: the log has no rows")
    present = {k for row in rows for k in row}
    x_key = next((k for k in _STEP_KEYS if k in present), None)
    if x_key is None:
        raise ValueError(
            f"plot_training_curves: no step column; expected one of {_STEP_KEYS}, got {sorted(present)}"
        )
    groups = [
        (title, cols)
        for title, cols in zip(("loss", "validation", "learning rate"), _split_columns(rows, x_key))
        if cols
    ]
    if not groups:
        raise ValueError(f"plot_training_curves: no loss or metric columns among {sorted(present)}")
    fig = new_figure(6.0, 3.0 * len(groups))
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (title, cols) in zip(axes, groups):
        for col in cols:
            xs, ys = _series(rows, x_key, col)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=col)
        ax.set_title(title)
        ax.set_xlabel(x_key)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, out_png)


def plot_per_class_bar(
    class_names: Sequence[str],
    values: Sequence[float],
    out_png: str | os.PathLike,
    title: str = "",
    ylabel: str = "",
) -> Path:
    """Bar chart of one value per class; NaN values are drawn as an empty slot marked "n/a"."""
    if len(class_names) != len(values):
        raise ValueError(f"{len(class_names)} class names but {len(values)} values")
    vals = [_as_float(v) for v in values]
    fig = new_figure(max(4.0, 0.45 * len(class_names) + 1.5), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    positions = np.arange(len(class_names))
    heights = [v if v is not None else 0.0 for v in vals]
    bars = ax.bar(
        positions, heights, color=[_PALETTE[i % 255] / 255.0 for i in range(len(vals))], edgecolor="k"
    )
    for bar, value in zip(bars, vals):
        text = "n/a" if value is None else f"{value:.3g}"
        ax.annotate(
            text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7
        )
    ax.set_xticks(positions)
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    finite = [v for v in vals if v is not None]
    if finite and 0.0 <= min(finite) and max(finite) <= 1.0:
        ax.set_ylim(0.0, 1.08)
    return save_figure(fig, out_png)


def plot_metric_vs(
    x: Sequence[float],
    ys: Mapping[str, Sequence[float]],
    out_png: str | os.PathLike,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
) -> Path:
    """Line plot of several named series against one x (threshold sweeps, robustness ratios)."""
    if not ys:
        raise ValueError("plot_metric_vs: no series to plot")
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, series in ys.items():
        if len(series) != len(x):
            raise ValueError(f"series {name!r} has {len(series)} values but x has {len(x)}")
        ax.plot(
            list(x), [math.nan if _as_float(v) is None else float(v) for v in series], marker="o", label=name
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, out_png)
