"""Multi-scale + flip evaluation of a per-pixel function: the one loop behind test-time augmentation.

Both test-time prediction (:func:`weakseg.engine.inference.predict_probs`: softmax probabilities) and CAM
inference (:func:`weakseg.cam.inference.multiscale_cams`: class activation maps) evaluate a network on an
image resized by each of several factors, optionally together with its horizontal mirror, and add up the
per-pixel maps brought back to one grid. :func:`multiscale_flip_sum` is that loop; the caller's
``forward`` turns an input batch into named maps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from weakseg.ops.resize import resize_bilinear, scaled_size

__all__ = ["multiscale_flip_sum"]

MapsOf = Callable[[Tensor], Mapping[str, Tensor]]


def _accumulate(totals: dict[str, Tensor], maps: Mapping[str, Tensor], size: tuple[int, int]) -> None:
    for name, value in maps.items():
        value = resize_bilinear(value, size)
        totals[name] = value if name not in totals else totals[name] + value


def multiscale_flip_sum(
    images: Tensor,
    forward: MapsOf,
    *,
    scales: Sequence[float],
    flip: bool,
    base_size: Sequence[int] | None = None,
    out_size: Sequence[int] | None = None,
    flip_in_batch: bool = False,
) -> dict[str, Tensor]:
    """``Σ_s Σ_mirror resize(unmirror(forward(mirror(resize(images, s · base_size)))), out_size)``.

    Args:
        images: ``[B, C, H, W]``.
        forward: input batch ``[B', C, h, w]`` -> named maps ``[B', K, h', w']`` (any grid; each map is
            resized bilinearly to ``out_size`` after un-mirroring).
        scales: the factors; the image is resized bilinearly to ``round(s · base_size)``.
        flip: also evaluate the horizontally mirrored image and mirror its maps back.
        base_size: the size the scales refer to (default the images' ``(H, W)``).
        out_size: the grid of the sums (default the images' ``(H, W)``).
        flip_in_batch: with ``flip``, one call of ``forward`` on ``[image; mirror]`` (2B) per scale, the
            two halves added at the maps' own grid before the resize (CAM inference); otherwise two calls,
            each resized on its own (prediction).

    Returns:
        name -> the sum over ``len(scales)`` (times 2 with ``flip``) evaluations, ``[B, K, *out_size]``, in
        the order ``forward`` first returned the names. Gradients flow unless the caller disables them.
    """
    in_size = (int(images.shape[-2]), int(images.shape[-1]))
    base = in_size if base_size is None else (int(base_size[0]), int(base_size[1]))
    target = in_size if out_size is None else (int(out_size[0]), int(out_size[1]))
    batch = images.shape[0]
    totals: dict[str, Tensor] = {}
    for scale in scales:
        x = resize_bilinear(images, scaled_size(base, float(scale)))
        if flip and flip_in_batch:
            maps = forward(torch.cat([x, x.flip(-1)]))
            _accumulate(totals, {k: v[:batch] + v[batch:].flip(-1) for k, v in maps.items()}, target)
            continue
        _accumulate(totals, forward(x), target)
        if flip:
            mirrored = forward(x.flip(-1))
            _accumulate(totals, {k: v.flip(-1) for k, v in mirrored.items()}, target)
    return totals
