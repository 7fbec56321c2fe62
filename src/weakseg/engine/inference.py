"""Test-time inference: multi-scale, horizontal flip, fixed-size resize and sliding window.

A model maps images ``[B, 3, H, W]`` in [0, 1] to a dict whose ``"logits"`` are ``[B, K, h, w]`` at
the network's stride. For each scale s (and, with ``flip``, for the mirrored image too):

1. the image is resized to ``round(s * H), round(s * W)`` (or to ``s * resize`` when ``resize`` is
   given) and mirrored if needed;
2. logits are computed on it (whole image, or tile by tile with a sliding window) and upsampled
   bilinearly to that scaled input size;
3. softmax over classes, un-mirror, bilinear resize to the output size;

and the probabilities of all passes are averaged. With a ``crf`` setting, the averaged probabilities
are then refined by the dense CRF of :func:`weakseg.postprocess.crf.refine_probs_with_crf` (at the
output size, on the image resized to it) before any arg-max.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.ops.multiscale import multiscale_flip_sum
from weakseg.ops.resize import resize_bilinear

if TYPE_CHECKING:
    from weakseg.postprocess.crf import CRFParams

__all__ = [
    "crf_params",
    "inference_options",
    "predict_labels",
    "predict_probs",
    "sliding_window_logits",
    "window_positions",
]

Size2 = tuple[int, int]


def _pair(value: int | Sequence[int], name: str) -> Size2:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _logits_of(output: Any) -> torch.Tensor:
    """The ``"logits"`` of a model's output dict (a bare tensor is accepted as the logits)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    raise TypeError(f"model output must be a dict with 'logits' (or a tensor), got {type(output).__name__}")


def _full_logits(
    model: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Logits of ``x`` ``[B, 3, h, w]`` upsampled to ``[B, K, h, w]``, as float32.

    Only the model runs under autocast; resizing and averaging stay in float32.
    """
    with torch.autocast(device_type=x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = _logits_of(model(x))
    return resize_bilinear(logits.float(), x.shape[-2:])


def window_positions(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``0..length``; the last window is shifted to end at ``length``.

    ``length`` must be at least ``window`` (pad first otherwise).
    """
    if length <= window:
        return [0]
    steps = math.ceil((length - window) / stride)
    return [min(i * stride, length - window) for i in range(steps + 1)]


def sliding_window_logits(
    model: nn.Module,
    x: torch.Tensor,
    window: int | Sequence[int],
    window_stride: float = 2 / 3,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits ``[B, K, H, W]`` (float32) of ``x`` ``[B, 3, H, W]`` from overlapping tiles.

    Tiles of ``window`` size are placed every ``window * window_stride`` pixels, the last row and
    column of tiles shifted back to end at the border, so every tile lies inside the image. A side
    shorter than the window is zero-padded (bottom/right) up to the window and cropped back after.
    Each tile's logits are upsampled to the tile size; overlapping logits are averaged using a
    count map. An image no larger than the window is run whole.
    """
    wh, ww = _pair(window, "window")
    height, width = x.shape[-2:]
    if height <= wh and width <= ww:
        return _full_logits(model, x, autocast_dtype)
    if not 0.0 < window_stride <= 1.0:
        raise ValueError(f"window_stride must lie in (0, 1], got {window_stride}")
    sh, sw = max(1, int(round(wh * window_stride))), max(1, int(round(ww * window_stride)))
    pad_h, pad_w = max(wh - height, 0), max(ww - width, 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
    ph, pw = x.shape[-2:]
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, ph, pw, device=x.device, dtype=torch.float32)
    for top, left in _grid(ph, pw, wh, ww, sh, sw):
        tile_logits = _full_logits(model, x[..., top : top + wh, left : left + ww], autocast_dtype)
        if total is None:
            total = x.new_zeros((x.shape[0], tile_logits.shape[1], ph, pw), dtype=torch.float32)
        total[..., top : top + wh, left : left + ww] += tile_logits
        count[..., top : top + wh, left : left + ww] += 1.0
    assert total is not None  # the grid always has at least one tile
    return (total / count)[..., :height, :width]


def _grid(ph: int, pw: int, wh: int, ww: int, sh: int, sw: int) -> Iterator[Size2]:
    for top in window_positions(ph, wh, sh):
        for left in window_positions(pw, ww, sw):
            yield top, left


def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    *,
    num_classes: int | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | Sequence[int] | None = None,
    window_stride: float = 2 / 3,
    resize: Sequence[int] | None = None,
    out_size: Sequence[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    crf: CRFParams | None = None,
) -> torch.Tensor:
    """Softmax probabilities averaged over scales and flips, optionally refined by a dense CRF.

    Args:
        model: maps ``[B, 3, h, w]`` to a dict with ``"logits"`` ``[B, K, h', w']``. Its train/eval
            mode is left as it is (call ``model.eval()`` first).
        images: float ``[B, 3, H, W]`` in [0, 1], on the model's device.
        num_classes: when given, the logits must have this many channels.
        scales: image scale factors; each is one forward pass (two with ``flip``).
        flip: also run the horizontally mirrored image and un-mirror its probabilities.
        window: sliding-window tile size (int or (h, w)) in the scaled space; ``None`` runs whole images.
        window_stride: tile step as a fraction of the window (2/3 -> one third overlap).
        resize: run the network on the image resized to this (h, w) (times each scale), e.g. 256x256.
        out_size: (H', W') of the result; default the input's (H, W).
        autocast_dtype: run the model under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``).
        crf: when given, the averaged probabilities go through
            :func:`~weakseg.postprocess.crf.refine_probs_with_crf` with these settings, on ``images``
            bilinearly resized to ``out_size`` (so the CRF runs at the output resolution).

    Returns:
        float32 ``[B, K, H', W']`` probabilities (each pixel sums to 1).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if not scales:
        raise ValueError("scales must name at least one scale")

    def probs_of(x: torch.Tensor) -> dict[str, torch.Tensor]:
        if window is None:
            logits = _full_logits(model, x, autocast_dtype)
        else:
            logits = sliding_window_logits(model, x, window, window_stride, autocast_dtype)
        if num_classes is not None and logits.shape[1] != num_classes:
            raise ValueError(f"model returned {logits.shape[1]} classes, expected num_classes={num_classes}")
        return {"probs": torch.softmax(logits.float(), dim=1)}

    with torch.no_grad():
        total = multiscale_flip_sum(
            images,
            probs_of,
            scales=scales,
            flip=flip,
            base_size=_pair(resize, "resize") if resize is not None else None,
            out_size=_pair(out_size, "out_size") if out_size is not None else None,
        )["probs"]
    probs = total / float(len(scales) * (2 if flip else 1))
    if crf is not None:
        probs = _refine_with_crf(probs, images, crf)
    return probs


def _refine_with_crf(probs: torch.Tensor, images: torch.Tensor, params: CRFParams) -> torch.Tensor:
    """Dense-CRF marginals ``[B, K, H', W']`` of ``probs`` ``[B, K, H', W']`` with ``images`` as guide."""
    from weakseg.postprocess.crf import refine_probs_with_crf

    guide = resize_bilinear(images.float(), probs.shape[-2:]).clamp(0.0, 1.0)
    return refine_probs_with_crf(probs, guide.to(probs.device), params)


def predict_labels(model: nn.Module, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Arg-max of :func:`predict_probs` (same keyword arguments) -> int64 ``[B, H', W']``."""
    return predict_probs(model, images, **kwargs).argmax(dim=1)


def crf_params(eval_cfg: Any) -> CRFParams | None:
    """The test-time CRF of an ``EvalConfig``: ``None`` when ``eval.crf`` is off, else
    :meth:`CRFParams.postprocess` (DeepLab-style settings) on a grid scaled by ``eval.crf_scale``."""
    if not getattr(eval_cfg, "crf", False):
        return None
    from weakseg.config import ConfigError
    from weakseg.postprocess.crf import CRFParams

    scale = float(getattr(eval_cfg, "crf_scale", 1.0))
    if not 0.0 < scale <= 1.0:
        raise ConfigError(f"config key 'eval.crf_scale' is {scale}; expected a grid scale in (0, 1]")
    return CRFParams.postprocess(scale=scale)


def inference_options(eval_cfg: Any) -> dict[str, Any]:
    """The :func:`predict_probs` keyword arguments set by an ``EvalConfig``
    (scales, flip, window, resize and the optional dense CRF)."""
    return {
        "scales": tuple(eval_cfg.scales),
        "flip": eval_cfg.flip,
        "window": eval_cfg.window,
        "window_stride": eval_cfg.window_stride,
        "resize": tuple(eval_cfg.resize) if eval_cfg.resize else None,
        "crf": crf_params(eval_cfg),
    }
