"""Multi-scale + flip class activation maps, batched, written as compact per-image files.

Works for every image-level network. The maps of one forward pass come from a *maps function*
``maps_fn(outputs, tags) -> {name: [B, C or K, h, w]}``: by default (:func:`output_maps`) the
network's ``"cam"`` (raw class maps over the foreground classes, dataset class order, background
left out) and any other 4-D ``"cam_*"`` output; the CLI passes the training method's
``class_maps`` hook instead when it has one (``cam``: ``{"cam"}``; ``sfc``: ``{"cam", "M_W",
"M_P"}``, the raw classifier CAM, the PCM-refined classifier CAM and the prototype CAM, which needs
the image's tags). Maps over all K classes have a background channel of their own (SFC's
``M_W`` = ``1 - max_c M_c`` refined by the PCM, ``M_P`` = similarity to the background prototype): it
goes through the same steps and is kept under ``"<name>@background"`` (:data:`~weakseg.cam.store.BG_SUFFIX`).

For each image and map (SFC §4 "CAM inference", as the SFC / IRN code computes it):

1. for every scale s, the image resized bilinearly to ``round(s·H) × round(s·W)`` goes through the
   network, with its horizontal mirror in the same batch when ``flip``;
2. ReLU at the network's resolution (the reference networks return ReLU'd maps); the mirrored
   map is flipped back and added;
3. each scale's map is upsampled bilinearly to the image size (H, W) and the scales are summed;
4. every channel is divided by its spatial maximum (+1e-5), so maps lie in [0, 1]
   (:func:`~weakseg.ops.class_maps.max_normalize`);
5. only the channels of the image's foreground tags are kept (and the own background, if any).

Reading chosen: the issue text lists "upsample, ReLU"; the SFC / IRN code applies the ReLU before
upsampling (bilinear interpolation of a ReLU'd map stays ≥ 0, so no second ReLU is needed), and
that order is used here. SFC's make_cam sums an image and its mirror inside the network (raw CAMs
and features, before the normalisation and the PCM); here each of the two passes makes its own maps
and the maps are summed, as for every other network. SFC's inference bias (background +0.4,
foreground doubled) is not applied here: it is a rule of the later steps (``rule="sfc"`` in
:mod:`weakseg.cam.seeds` and :mod:`weakseg.cam.pseudo_labels`), which read the stored backgrounds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from weakseg.cam.store import BG_SUFFIX, cam_file, save_cams, write_cam_meta
from weakseg.data.collate import group_by_shape, keep_as_list
from weakseg.ops.class_maps import foreground_indices, max_normalize
from weakseg.ops.multiscale import multiscale_flip_sum

__all__ = [
    "DEFAULT_SCALES",
    "find_cam_keys",
    "infer_cams",
    "multiscale_cams",
    "output_maps",
    "present_foreground",
]

DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)


def present_foreground(
    tags: torch.Tensor | np.ndarray, num_classes: int, background: int | None
) -> np.ndarray:
    """int64 ``[n]`` class indices of the foreground classes whose tag (``[K]`` multi-hot) is set."""
    tags = np.asarray(tags.detach().cpu() if isinstance(tags, torch.Tensor) else tags).reshape(-1)
    if tags.size != num_classes:
        raise ValueError(f"tags have {tags.size} entries, expected one per class ({num_classes})")
    fg = foreground_indices(num_classes, background)
    return np.asarray([c for c in fg if tags[c] > 0.5], dtype=np.int64)


MapsFn = Callable[[Mapping[str, Any], torch.Tensor | None], Mapping[str, torch.Tensor]]


def find_cam_keys(outputs: Mapping[str, Any], requested: Sequence[str] | None = None) -> list[str]:
    """The CAM types of a model's output dict: ``"cam"`` first, then any other 4-D ``"cam_*"``
    tensor in name order; ``requested`` picks (and checks) an explicit list instead."""
    if requested:
        missing = [k for k in requested if k not in outputs]
        if missing:
            raise KeyError(f"no CAM key(s) {missing}; the maps are {sorted(outputs)}")
        return list(requested)
    if "cam" not in outputs:
        raise KeyError(
            f"model output has no 'cam' (keys: {sorted(outputs)}); CAM inference needs an image-level "
            "network (a method whose model_kind is 'classifier')"
        )
    extra = sorted(
        k for k, v in outputs.items() if k.startswith("cam_") and isinstance(v, torch.Tensor) and v.ndim == 4
    )
    return ["cam", *extra]


def output_maps(outputs: Mapping[str, Any], tags: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The default maps function: the network's ``"cam"`` and other ``"cam_*"`` outputs, ReLU'd."""
    return {name: torch.relu(outputs[name].float()) for name in find_cam_keys(outputs)}


def _split_channels(
    maps: torch.Tensor, fg: Sequence[int] | None, name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``maps`` over the foreground classes ``[B, len(fg), h, w]`` and its own background ``[B, 1, h, w]``
    (None when it has none): as given when it has ``len(fg)`` channels; with one channel per class
    (K = len(fg) + 1) the ``fg`` channels and the remaining one, the background."""
    if fg is None or maps.shape[1] == len(fg):
        return maps, None
    if maps.shape[1] == len(fg) + 1:
        background = next(c for c in range(len(fg) + 1) if c not in set(fg))
        fg_maps = maps.index_select(1, torch.as_tensor(list(fg), device=maps.device))
        return fg_maps, maps[:, background : background + 1]
    raise ValueError(
        f"map {name!r} has {maps.shape[1]} channels; expected {len(fg)} (foreground classes) or "
        f"{len(fg) + 1} (all classes)"
    )


def multiscale_cams(
    model: nn.Module,
    images: torch.Tensor,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    keys: Sequence[str] | None = None,
    maps_fn: MapsFn | None = None,
    tags: torch.Tensor | None = None,
    foreground: Sequence[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Sum over scales (and flips) of the ReLU'd CAMs, upsampled to the input size (steps 1-3).

    Args:
        model: maps ``[B, 3, h, w]`` in [0, 1] to an output dict; its train/eval mode is left as
            it is (call ``model.eval()`` first).
        images: float ``[B, 3, H, W]`` in [0, 1] on the model's device.
        scales: image scale factors; one forward pass each (of 2B images with ``flip``).
        keys: which maps to keep (default: all that ``maps_fn`` returns).
        maps_fn: ``(outputs, tags) -> {name: [B', C or K, h', w']}`` non-negative maps of one pass
            (default :func:`output_maps`); called with the tags repeated for the mirrored half.
        tags: ``[B, K]`` multi-hot tags, passed to ``maps_fn`` (SFC's prototypes need them).
        foreground: the foreground class indices; maps with one channel per class (K =
            ``len(foreground) + 1``) are reduced to these channels, and their remaining channel (their
            own background) is returned under ``name + "@background"``.
        autocast_dtype: run the network under ``torch.autocast`` with this dtype; the sums stay float32.

    Returns:
        name -> float32 ``[B, C, H, W]`` (``[B, 1, H, W]`` for backgrounds), not yet normalised.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if not scales:
        raise ValueError("scales must name at least one scale")
    maps_fn = maps_fn or output_maps
    pass_tags = None if tags is None else (torch.cat([tags, tags]) if flip else tags)
    chosen = list(keys) if keys else None

    def cams_of(x: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal chosen
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outputs = model(x)
        maps = maps_fn(outputs, pass_tags)
        if chosen:  # backgrounds come with their map
            chosen = find_cam_keys(maps, [k for k in chosen if not k.endswith(BG_SUFFIX)])
        else:
            chosen = list(maps)  # every scale gives the same maps
        out = {}
        for name in chosen:
            fg_maps, bg_map = _split_channels(torch.relu(maps[name].float()), foreground, name)
            out[name] = fg_maps
            if bg_map is not None:
                out[name + BG_SUFFIX] = bg_map
        return out

    with torch.no_grad():
        return multiscale_flip_sum(images, cams_of, scales=scales, flip=flip, flip_in_batch=True)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _stored_keys(out: Path, ids: Sequence[str]) -> list[str]:
    """The CAM types of the first stored file (when a resumed run had nothing left to compute), with
    ``"<name>@background"`` for those stored with a background of their own."""
    from weakseg.cam.store import load_cams

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
        out_dir: the CAM folder: ``{id}.npz`` per image (:func:`weakseg.cam.store.save_cams`) and
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
                channels = torch.as_tensor(
                    [fg.index(int(c)) for c in present], dtype=torch.long, device=device
                )
                kept = {
                    name: max_normalize(value[b].index_select(0, channels))
                    for name, value in maps.items()
                    if not name.endswith(BG_SUFFIX)
                }
                own_bg = {
                    name[: -len(BG_SUFFIX)]: max_normalize(value[b, 0])
                    for name, value in maps.items()
                    if name.endswith(BG_SUFFIX)
                }
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
