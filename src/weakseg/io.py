"""File I/O with clear errors and atomic writes.

Every file weakseg produces (checkpoints, label PNGs, metrics JSON, plots) goes through one of the
``atomic_*`` helpers: the content is written to a temporary file in the destination folder and
moved into place with :func:`os.replace`, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


class DataError(ValueError):
    """Bad input data: the message names the file and what was expected."""


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def json_safe(value: Any) -> Any:
    """Strict-JSON form of ``value``, recursively: NaN / inf -> None, tuples -> lists, mapping keys ->
    str, numpy scalars -> Python numbers (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


def atomic_save_label_png(
    path: str | os.PathLike, label: np.ndarray, palette: np.ndarray | None = None
) -> Path:
    """Write a uint8 label map [H, W] as a (palette) PNG, atomically."""
    if label.ndim != 2:
        raise ValueError(f"{path}: a label map must be 2-D [H, W], got shape {label.shape}")
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f"{path}: label values must lie in 0..255, got {label.min()}..{label.max()}")
    img = Image.fromarray(label.astype(np.uint8), mode="P" if palette is not None else "L")
    if palette is not None:
        img.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
    return atomic_write(path, lambda p: img.save(p, format="PNG"))


def atomic_save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 image [H, W, 3] or [H, W] in the format the suffix names, atomically."""
    img = Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)))
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}.get(
        Path(path).suffix.lower(), "PNG"
    )
    return atomic_write(path, lambda p: img.save(p, format=fmt))


def read_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Read an image file as uint8 [H, W, 3] (mode "RGB") or [H, W] (mode "L").

    Raises :class:`DataError` naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def read_image_rgb(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Read an image as writable uint8 [H, W, 3]; with mode "L" the gray channel is replicated ×3
    (the models' input is always three channels)."""
    img = read_image(path, mode=mode)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return np.array(img)  # a writable copy (PIL's buffer is read-only)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as uint8 [H, W] of class ids (palette indices, or gray values).

    A 3-channel PNG whose channels are identical (as some tools write) is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode in ("P", "L", "I", "I;16"):
                arr = np.asarray(img)
            else:
                arr = np.asarray(img.convert("RGB"))
                if not (
                    np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
                ):
                    raise DataError(
                        f"label file {path} is a colour image; expected one channel of class ids "
                        "(mode L or P), or three identical channels"
                    )
                arr = arr[..., 0]
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read label map {path}: {err}") from err
    if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
        raise DataError(f"label file {path} has values outside 0..255")
    return arr.astype(np.uint8)
