"""CAM folders: compact per-image CAM files, the folder's ``cams.json`` and the dataset they belong to.

A CAM folder holds one ``{id}.npz`` per image and a ``cams.json`` describing them::

    cams.json       {"format_version": 2, "classes": [...], "background": 0 | null,
                     "cam_keys": ["cam", "M_W", "M_P"], "backgrounds": ["M_W", "M_P"],
                     "rule": "irn" | "sfc", "scales": [...], "flip": true, "checkpoint": ..., ...}
    <id>.npz        "keys"   int64 [n]        dataset class indices of the image's foreground tags
                    <cam key> float16 [n, H, W] one per CAM type (e.g. "cam" = the raw classifier CAM,
                                               "M_W" / "M_P" = SFC's maps), at the image's size, each
                                               channel divided by its max
                    <cam key>@background float16 [H, W]  the map's own background channel, for maps that
                                               have one (SFC's M_W and M_P), divided by its max

Only the tagged foreground classes are stored (absent classes are zero by construction), in
float16, uncompressed: zlib saves ~25% on smooth CAMs but costs ~20× the write time. Every file
is written atomically (temporary file + rename). Format 1 (no background arrays) is still read.

A folder remembers its dataset (``cams.json``'s ``"data"``): :func:`open_cam_dataset` reopens it (or
another one) for ``weakseg cam evaluate`` and ``weakseg pseudo-labels``, and
:func:`check_dataset_matches` refuses a dataset with other classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from weakseg.cam.inference import BG_SUFFIX, CamRecord
from weakseg.io import DataError, atomic_write, atomic_write_json, read_json

__all__ = [
    "CAM_META",
    "SamplesWithCams",
    "cam_file",
    "check_dataset_matches",
    "load_cam_meta",
    "load_cams",
    "open_cam_dataset",
    "save_cams",
    "write_cam_meta",
]

CAM_META = "cams.json"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def cam_file(cam_dir: str | os.PathLike, sample_id: str) -> Path:
    """Where the CAMs of ``sample_id`` live: ``cam_dir / f"{id}.npz"``."""
    return Path(cam_dir) / f"{sample_id}.npz"


def save_cams(
    path: str | os.PathLike,
    keys: Sequence[int] | np.ndarray,
    cams: Mapping[str, Any],
    *,
    backgrounds: Mapping[str, Any] | None = None,
    dtype: str = "float16",
) -> Path:
    """Write one image's CAMs atomically.

    Args:
        path: destination ``.npz``.
        keys: ``[n]`` class indices of the stored channels.
        cams: CAM type -> ``[n, H, W]`` array or tensor (all of one shape).
        backgrounds: CAM type (one of ``cams``) -> ``[H, W]`` background channel of its own.
        dtype: storage dtype ("float16" or "float32").
    """
    keys_arr = np.asarray(keys, dtype=np.int64).reshape(-1)
    if not cams:
        raise ValueError("save_cams: no CAM arrays given")
    arrays: dict[str, np.ndarray] = {"keys": keys_arr}
    shape = None
    for name, value in cams.items():
        if name == "keys" or name.endswith(BG_SUFFIX):
            raise ValueError(f"{name!r} cannot name a CAM type ('keys' and '*{BG_SUFFIX}' are reserved)")
        arr = _numpy(value)
        if arr.ndim != 3 or arr.shape[0] != keys_arr.size:
            raise ValueError(
                f"CAM {name!r} must be [n={keys_arr.size}, H, W] (one channel per key), got {arr.shape}"
            )
        if shape is not None and arr.shape != shape:
            raise ValueError(f"CAM {name!r} has shape {arr.shape}, the others {shape}")
        shape = arr.shape
        arrays[name] = arr.astype(dtype, copy=False)
    for name, value in (backgrounds or {}).items():
        arr = _numpy(value)
        if name not in cams:
            raise ValueError(f"background of {name!r} given, but there is no CAM {name!r}")
        if shape is not None and arr.shape != shape[1:]:
            raise ValueError(f"background of {name!r} must be [H, W] = {shape[1:]}, got {arr.shape}")
        arrays[name + BG_SUFFIX] = arr.astype(dtype, copy=False)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            # numpy's stub checks the unpacked arrays against savez's allow_pickle: bool as well
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    return atomic_write(path, write)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def load_cams(path: str | os.PathLike) -> CamRecord:
    """Read a file written by :func:`save_cams` (maps as float32); :class:`DataError` names the file
    when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CAM file not found: {path} (run `weakseg cam` for this split first)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read CAM file {path}: {err}") from err
    if "keys" not in arrays or len(arrays) < 2:
        raise DataError(f"CAM file {path} must hold 'keys' and at least one CAM array, has {sorted(arrays)}")
    keys = arrays.pop("keys").astype(np.int64).reshape(-1)
    cams, backgrounds = {}, {}
    for name, arr in arrays.items():
        if name.endswith(BG_SUFFIX):
            backgrounds[name[: -len(BG_SUFFIX)]] = arr.astype(np.float32)
            continue
        if arr.ndim != 3 or arr.shape[0] != keys.size:
            raise DataError(f"CAM file {path}: {name!r} has shape {arr.shape}, expected [{keys.size}, H, W]")
        cams[name] = arr.astype(np.float32)
    if not cams:
        raise DataError(f"CAM file {path} holds no CAM array, only {sorted(arrays)}")
    for name, arr in backgrounds.items():
        size = next(iter(cams.values())).shape[1:]
        if name not in cams or arr.shape != size:
            raise DataError(f"CAM file {path}: background of {name!r} has shape {arr.shape}, expected {size}")
    return CamRecord(keys=keys, cams=cams, backgrounds=backgrounds)


def write_cam_meta(cam_dir: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Write ``cam_dir/cams.json`` atomically (``format_version`` is added)."""
    return atomic_write_json(Path(cam_dir) / CAM_META, {"format_version": FORMAT_VERSION, **dict(meta)})


def load_cam_meta(cam_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``cam_dir/cams.json``."""
    path = Path(cam_dir) / CAM_META
    meta = read_json(
        path, f"not a CAM folder: {path} not found (write one with `weakseg cam CKPT --out DIR`)"
    )
    for key in ("classes", "background", "cam_keys"):
        if key not in meta:
            raise DataError(f"{path} has no {key!r} entry")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise DataError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
    return meta


class SamplesWithCams(Dataset):
    """(id, raw sample dict, :class:`CamRecord`) per sample of ``dataset``, for a DataLoader.

    The raw dict is the dataset's untransformed ``load_raw`` output (image uint8 [H, W, 3], mask
    uint8 [H, W] when the dataset has masks, ...), so CAMs and labels stay at image resolution.
    """

    def __init__(self, dataset: Any, cam_dir: str | os.PathLike) -> None:
        self.dataset = dataset
        self.cam_dir = Path(cam_dir)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[str, dict[str, np.ndarray], CamRecord]:
        sid = self.dataset.ids[index]
        return sid, self.dataset.load_raw(index), load_cams(cam_file(self.cam_dir, sid))


def check_dataset_matches(meta: Mapping[str, Any], dataset: Any, cam_dir: str | os.PathLike) -> None:
    """Raise :class:`DataError` when ``dataset``'s classes or background differ from the CAM folder's."""
    if list(meta["classes"] or []) != list(dataset.classes):
        raise DataError(
            f"{cam_dir}: the CAMs were made for classes {meta['classes']}, the dataset has {dataset.classes}"
        )
    if meta["background"] != dataset.background:
        raise DataError(
            f"{cam_dir}: the CAMs were made with background {meta['background']!r}, "
            f"the dataset has background {dataset.background!r}"
        )


def open_cam_dataset(
    meta: Mapping[str, Any],
    root: str | None = None,
    split: str | None = None,
    fmt: str | None = None,
    load_masks: bool = True,
) -> Any:
    """The dataset of a CAM folder (``meta`` = its ``cams.json``), raw (no transforms, no tags read):
    ``root``, ``split`` and ``fmt`` (a registered format of :mod:`weakseg.data.formats`) when given, else
    the folder's own (split "train" and format "folder" when it names none)."""
    from weakseg.data.formats import create_dataset

    data = meta.get("data") or {}
    root = root or data.get("root")
    if not root:
        raise DataError("no dataset given: pass --data ROOT (the CAM folder does not name one)")
    split = split or data.get("split") or "train"
    fmt = fmt or data.get("format") or "folder"
    return create_dataset(
        fmt, root, split, load_masks=load_masks, scribbles="off", pseudo=False, tags_source="none"
    )
