"""Multi-scale + flip class activation maps of a network, on tensors (written to files by
:mod:`weakseg.tools.cam_folder`).

Works for every image-level network. The maps of one forward pass come from a *maps function*
``maps_fn(outputs, tags) -> {name: [B, C or K, h, w]}``: by default (:func:`output_maps`) the
network's ``"cam"`` (raw class maps over the foreground classes, dataset class order, background
left out) and any other 4-D ``"cam_*"`` output; ``weakseg cam`` passes the training method's
``class_maps`` hook instead when it has one (``cam``: ``{"cam"}``; ``sfc``: ``{"cam", "M_W",
"M_P"}``, the raw classifier CAM, the PCM-refined classifier CAM and the prototype CAM, which needs
the image's tags). Maps over all K classes have a background channel of their own (SFC's
``M_W`` = ``1 - max_c M_c`` refined by the PCM, ``M_P`` = similarity to the background prototype): it
goes through the same steps and is kept under ``"<name>@background"`` (:data:`BG_SUFFIX`).

For each image and map (SFC §4 "CAM inference", as the SFC / IRN code computes it):

1. for every scale s, the image resized bilinearly to ``round(s·H) × round(s·W)`` goes through the
   network, with its horizontal mirror in the same batch when ``flip``;
2. ReLU at the network's resolution (the reference networks return ReLU'd maps); the mirrored
   map is flipped back and added;
3. each scale's map is upsampled bilinearly to the image size (H, W) and the scales are summed;
4. every channel is divided by its spatial maximum (+1e-5), so maps lie in [0, 1]
   (:func:`~weakseg.ops.class_maps.max_normalize`);
5. only the channels of the image's foreground tags are kept (and the own background, if any).

Steps 1-3 are :func:`multiscale_cams` (a batch), steps 4-5 :func:`tagged_cams` (one image of it); a
:class:`CamRecord` holds the result of one image as the CAM folders store it.

Reading chosen: the issue text lists "upsample, ReLU"; the SFC / IRN code applies the ReLU before
upsampling (bilinear interpolation of a ReLU'd map stays ≥ 0, so no second ReLU is needed), and
that order is used here. SFC's make_cam sums an image and its mirror inside the network (raw CAMs
and features, before the normalisation and the PCM); here each of the two passes makes its own maps
and the maps are summed, as for every other network. SFC's inference bias (background +0.4,
foreground doubled) is not applied here: it is a rule of the later steps (``rule="sfc"`` in
:mod:`weakseg.cam.seeds` and :mod:`weakseg.cam.pseudo_labels`), which read the stored backgrounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from weakseg.ops.class_maps import foreground_indices, max_normalize
from weakseg.ops.multiscale import multiscale_flip_sum

__all__ = [
    "BG_SUFFIX",
    "DEFAULT_SCALES",
    "CamRecord",
    "find_cam_keys",
    "multiscale_cams",
    "output_maps",
    "present_foreground",
    "tagged_cams",
]

DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
#: Suffix of a map's own background channel, in map dicts of the inference and in the CAM files.
BG_SUFFIX = "@background"


@dataclass
class CamRecord:
    """The CAMs of one image.

    Attributes:
        keys: int64 ``[n]`` dataset class indices (foreground classes the image is tagged with).
        cams: CAM type -> float32 ``[n, H, W]`` normalised maps (channel i belongs to ``keys[i]``).
        backgrounds: CAM type -> float32 ``[H, W]`` normalised background channel of its own, for the
            types that have one (SFC's ``M_W`` and ``M_P``; a plain CAM has none).
    """

    keys: np.ndarray
    cams: dict[str, np.ndarray]
    backgrounds: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the maps."""
        first = next(iter(self.cams.values()))
        return int(first.shape[-2]), int(first.shape[-1])


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


def tagged_cams(
    maps: Mapping[str, torch.Tensor], index: int, present: Sequence[int], foreground: Sequence[int]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Steps 4-5 for image ``index`` of :func:`multiscale_cams`'s sums: the channels of the ``present``
    foreground classes (dataset indices, among ``foreground``), each divided by its maximum, and the own
    backgrounds likewise.

    Returns:
        ``(cams, backgrounds)``: name -> ``[n, H, W]`` (n = ``len(present)``) and name (without the
        suffix) -> ``[H, W]``.
    """
    first = next(iter(maps.values()))
    fg = list(foreground)
    channels = torch.as_tensor([fg.index(int(c)) for c in present], dtype=torch.long, device=first.device)
    cams = {
        name: max_normalize(value[index].index_select(0, channels))
        for name, value in maps.items()
        if not name.endswith(BG_SUFFIX)
    }
    backgrounds = {
        name[: -len(BG_SUFFIX)]: max_normalize(value[index, 0])
        for name, value in maps.items()
        if name.endswith(BG_SUFFIX)
    }
    return cams, backgrounds
