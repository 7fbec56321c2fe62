"""Writing a CAM folder: the CAMs of every image of a dataset (``weakseg cam``).

:func:`make_cams` restores an image-level checkpoint and its dataset; :func:`infer_cams` runs any network
over a dataset, batching images of one size, and stores each image's multi-scale + flip CAMs
(:mod:`weakseg.cam.inference`) in the folder format of :mod:`weakseg.tools.cam_store`, skipping images
whose file exists (an interrupted run resumes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from weakseg.cam.inference import (
    BG_SUFFIX,
    DEFAULT_SCALES,
    MapsFn,
    multiscale_cams,
    present_foreground,
    tagged_cams,
)
from weakseg.cam.seeds import RULES
from weakseg.data.collate import group_by_shape, keep_as_list
from weakseg.engine.distributed import default_device
from weakseg.io import DataError
from weakseg.ops.class_maps import foreground_indices
from weakseg.tools.cam_store import cam_file, load_cam_meta, load_cams, save_cams, write_cam_meta

__all__ = ["infer_cams", "make_cams"]


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _stored_keys(out: Path, ids: Sequence[str]) -> list[str]:
    """The CAM types of the first stored file (when a resumed run had nothing left to compute), with
    ``"<name>@background"`` for those stored with a background of their own."""
    record = load_cams(cam_file(out, ids[0]))
    return [*record.cams, *(name + BG_SUFFIX for name in record.backgrounds)]


def infer_cams(
    model: nn.Module,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    *,
    num_classes: int,
    background: int | None,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    keys: Sequence[str] | None = None,
    maps_fn: MapsFn | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Compute and store the CAMs of every sample of ``dataset`` (see the module doc).

    Args:
        model: an image-level network in eval mode (see :func:`multiscale_cams`).
        dataset: samples with "image" float ``[3, H, W]``, "tags" ``[K]`` and "id" (no augmentation).
        out_dir: the CAM folder: ``{id}.npz`` per image (:func:`weakseg.tools.cam_store.save_cams`) and
            ``cams.json`` (``meta`` plus the inference settings; ``"backgrounds"`` lists the maps
            stored with a background of their own).
        num_classes, background: the dataset's K and background index (None when every class is
            a foreground class): the model's CAMs have one channel per non-background class.
        keys, maps_fn: which maps, from which function (see :func:`multiscale_cams`).
        batch_size: images per forward pass (images of one size are batched together).
        overwrite: recompute images whose file exists (otherwise they are skipped, so an
            interrupted run resumes).

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _model_device(model)
    fg = foreground_indices(num_classes, background)
    ids = getattr(dataset, "ids", None)
    todo = list(range(len(dataset)))  # type: ignore[arg-type]
    if ids is not None and not overwrite:
        todo = [i for i in todo if not cam_file(out, ids[i]).is_file()]
    loader = DataLoader(
        Subset(dataset, todo),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=keep_as_list,
    )
    found_keys: list[str] | None = list(keys) if keys else None
    bar = tqdm(total=len(todo), desc="cams", unit="img", disable=not progress, dynamic_ncols=True)
    for samples in loader:
        for group in group_by_shape(samples, lambda sample: tuple(sample["image"].shape)):
            for sample in group:
                if "tags" not in sample:
                    raise ValueError(f"sample {sample.get('id')!r} has no 'tags': CAM inference needs tags")
            images = torch.stack([s["image"] for s in group]).to(device)
            tags = torch.stack([torch.as_tensor(s["tags"]).float() for s in group]).to(device)
            maps = multiscale_cams(
                model,
                images,
                scales=scales,
                flip=flip,
                keys=found_keys,
                maps_fn=maps_fn,
                tags=tags,
                foreground=fg,
                autocast_dtype=autocast_dtype,
            )
            found_keys = list(maps)
            for name, value in maps.items():
                if not name.endswith(BG_SUFFIX) and value.shape[1] != len(fg):
                    raise ValueError(
                        f"CAM {name!r} has {value.shape[1]} channels but the dataset has {len(fg)} "
                        f"foreground classes ({num_classes} classes, background {background})"
                    )
            for b, sample in enumerate(group):
                present = present_foreground(sample["tags"], num_classes, background)
                kept, own_bg = tagged_cams(maps, b, present, fg)
                save_cams(cam_file(out, str(sample["id"])), present, kept, backgrounds=own_bg)
            bar.update(len(group))
    bar.close()
    if found_keys is None:  # nothing computed now: every file existed already
        found_keys = _stored_keys(out, ids) if ids else ["cam"]
    write_cam_meta(
        out,
        {
            "classes": list(getattr(dataset, "classes", [])) or None,
            "background": background,
            **dict(meta or {}),
            "cam_keys": [k for k in found_keys if not k.endswith(BG_SUFFIX)],
            "backgrounds": [k[: -len(BG_SUFFIX)] for k in found_keys if k.endswith(BG_SUFFIX)],
            "scales": [float(s) for s in scales],
            "flip": bool(flip),
            "num_images": len(dataset),  # type: ignore[arg-type]
            "dtype": "float16",
        },
    )
    return out


# ----------------------------------------------------------------------------------- from a checkpoint
def _method_maps(checkpoint: str, cfg: Any, dataset: Any, device: str) -> Any:
    """The trained method's ``class_maps(outputs, tags)`` hook (its state restored from the
    checkpoint), or None when the method has none (then the network's ``"cam"`` outputs are used)."""
    from weakseg.builders import build_method_for
    from weakseg.engine.checkpoint import load_checkpoint

    method = build_method_for(cfg, dataset)
    if not hasattr(method, "class_maps"):
        return None
    state = load_checkpoint(checkpoint, map_location="cpu").get("method") or {}
    method.load_state_dict(state, strict=False)
    method.to(device).eval()
    return method.class_maps


def make_cams(
    checkpoint: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    data_root: str | None = None,
    overrides: Sequence[str] = (),
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    keys: Sequence[str] | None = None,
    batch_size: int = 4,
    num_workers: int | None = None,
    amp: str = "none",
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    rule: str = "irn",
) -> tuple[Path, Any]:
    """``weakseg cam`` as a function: the CAMs of a split of the checkpoint's dataset (``data_root``
    and dotted ``overrides`` change its config) in ``out``. Returns ``(out, dataset)``.

    Maps with a background channel of their own (SFC's ``M_W``, ``M_P``) are stored with it. ``rule``
    ("irn" or "sfc") becomes the folder's default rule for ``cam evaluate`` and ``pseudo-labels``;
    "sfc" needs those own backgrounds (an ``sfc`` checkpoint) on a dataset with a background class.
    """
    from weakseg.builders import build_dataset
    from weakseg.config import apply_overrides
    from weakseg.engine.trainer import load_trained_model

    if rule not in RULES:
        raise DataError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    device = default_device(device)
    model, cfg, meta = load_trained_model(checkpoint, device)
    overrides = list(overrides)
    if data_root:
        overrides.append(f"data.root={data_root}")
    cfg = apply_overrides(cfg, overrides)
    split = split or cfg.data.train_split
    dataset = build_dataset(cfg, split, train=False, requires=("tags",))
    if list(dataset.classes) != list(meta["classes"]):
        raise DataError(
            f"the checkpoint was trained on classes {meta['classes']}, {cfg.data.root} has {dataset.classes}"
        )
    method_spec = dict(cfg.method)
    cam_weights = method_spec.get("cam_weights")
    infer_cams(
        model,
        dataset,
        out,
        num_classes=dataset.num_classes,
        background=dataset.background,
        scales=scales,
        flip=flip,
        keys=keys,
        maps_fn=_method_maps(str(checkpoint), cfg, dataset, device),
        batch_size=batch_size,
        num_workers=num_workers if num_workers is not None else cfg.data.num_workers,
        autocast_dtype=torch.bfloat16 if amp == "bf16" else None,
        overwrite=overwrite,
        progress=progress,
        meta={
            "classes": list(dataset.classes),
            "background": dataset.background,
            "weights": dict(cam_weights) if cam_weights else None,
            "rule": rule,
            "checkpoint": str(Path(checkpoint).resolve()),
            "method": method_spec.get("name"),
            "step": meta.get("step"),
            "data": {
                "format": cfg.data.format,
                "root": str(Path(cfg.data.root).resolve()),
                "split": split,
                "tags": cfg.data.tags,
            },
        },
    )
    if rule == "sfc" and dataset.background is not None:
        if not load_cam_meta(out).get("backgrounds"):
            raise DataError(
                f"rule 'sfc' needs maps with their own background channel (SFC's M_W, M_P), but the "
                f"'{method_spec.get('name')}' checkpoint gives none; its CAMs in {out} can be scored with "
                "rule 'irn'"
            )
    return Path(out), dataset
