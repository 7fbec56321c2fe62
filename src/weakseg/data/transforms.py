"""Joint augmentation of a raw sample dict (numpy arrays, before conversion to tensors).

Every transform takes the dict that :meth:`weakseg.data.base.SegDataset.load_raw` returns and
applies the same geometric change to the image and to every spatial map in it. The array's dtype
says how it is treated:

========================  =========================  ==============================================
entry                     interpolation              padding / area outside the image
========================  =========================  ==============================================
``"image"`` uint8 [H,W,3]  bilinear                   ``pad_value`` (RGB; ImageNet mean x 255)
uint8 [H,W] (label maps:   nearest                    255 (ignore / unlabelled)
``mask``, ``scribble``,
``pseudo``, ...)
float [H,W] (e.g.          bilinear                   0
distance maps)
bool [H,W] (``"valid"``)   nearest                    False
========================  =========================  ==============================================

Other entries (strings, 1-D arrays such as tags) pass through unchanged. The first transform adds
``"valid"`` (True on every real image pixel) when it is missing, so padding added by crops and
rotations can be told apart from image content.

Randomness: every ``__call__`` takes an optional ``rng`` (:class:`numpy.random.Generator`). The
dataset passes one seeded from ``(seed, epoch, index)`` so that a sample's augmentation is a pure
function of those three numbers, whichever DataLoader worker draws it, and a resumed run repeats
it exactly. Without ``rng`` a transform uses its own generator, reseedable with :meth:`seed`.

Nearest-neighbour resizing uses ``cv2.INTER_NEAREST_EXACT``: it samples at pixel centres exactly
like ``INTER_LINEAR`` does, whereas ``cv2.INTER_NEAREST`` is shifted by half a source pixel and
would misalign labels and image after a downscale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

Sample = dict[str, Any]

# ImageNet mean (0.485, 0.456, 0.406) x 255, rounded: padding that becomes ~0 after normalisation.
IMAGENET_MEAN_RGB: tuple[int, int, int] = (124, 116, 104)
LABEL_PAD = 255
FLOAT_PAD = 0.0

_IMAGE, _LABEL, _FLOAT, _BOOL = "image", "label", "float", "bool"


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as (height, width); an int means a square."""
    if isinstance(size, int):
        h = w = size
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {(h, w)}")
    return h, w


def _kind(key: str, value: Any) -> str | None:
    """How an entry is transformed: image, label, float, bool map, or None (passed through)."""
    if not isinstance(value, np.ndarray):
        return None
    if key == "image":
        return _IMAGE
    if value.ndim != 2:
        return None
    if value.dtype == np.bool_:
        return _BOOL
    if value.dtype == np.uint8:
        return _LABEL
    if np.issubdtype(value.dtype, np.floating):
        return _FLOAT
    return None


def _spatial_size(sample: Sample) -> tuple[int, int]:
    image = sample.get("image")
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise ValueError("a sample needs an 'image' array [H, W, 3] or [H, W] to be transformed")
    return int(image.shape[0]), int(image.shape[1])


def ensure_valid(sample: Sample) -> Sample:
    """Return ``sample`` with a ``"valid"`` bool [H, W] map (all True when it was missing)."""
    if "valid" in sample:
        return sample
    out = dict(sample)
    out["valid"] = np.ones(_spatial_size(sample), dtype=bool)
    return out


def _map_spatial(sample: Sample, fn: Callable[[str, np.ndarray], np.ndarray]) -> Sample:
    """Apply ``fn(kind, array)`` to every spatial entry of a (shallow-copied) sample."""
    sample = ensure_valid(sample)
    out = dict(sample)
    for key, value in sample.items():
        kind = _kind(key, value)
        if kind is not None:
            out[key] = fn(kind, value)
    return out


def _pad_scalar(kind: str, array: np.ndarray, pad_value: Sequence[int]) -> float | tuple[float, ...]:
    """The fill value for ``array`` of ``kind`` (a per-channel tuple for colour images)."""
    if kind == _IMAGE:
        if array.ndim == 3:
            return tuple(float(v) for v in pad_value[: array.shape[2]])
        return float(round(sum(pad_value) / len(pad_value)))
    if kind == _LABEL:
        return float(LABEL_PAD)
    return 0.0


def _resize(kind: str, array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    if kind == _BOOL:
        return cv2.resize(array.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    interp = cv2.INTER_NEAREST_EXACT if kind == _LABEL else cv2.INTER_LINEAR
    out = cv2.resize(array, (w, h), interpolation=interp)
    return out.reshape(h, w, *array.shape[2:])


def _pad(kind: str, array: np.ndarray, bottom: int, right: int, pad_value: Sequence[int]) -> np.ndarray:
    if bottom == 0 and right == 0:
        return array
    widths = [(0, bottom), (0, right)] + [(0, 0)] * (array.ndim - 2)
    if kind == _IMAGE and array.ndim == 3:
        out = np.empty((array.shape[0] + bottom, array.shape[1] + right, array.shape[2]), dtype=array.dtype)
        out[...] = np.asarray(_pad_scalar(kind, array, pad_value), dtype=array.dtype)
        out[: array.shape[0], : array.shape[1]] = array
        return out
    fill = False if kind == _BOOL else _pad_scalar(kind, array, pad_value)
    return np.pad(array, widths, mode="constant", constant_values=fill)


class Transform:
    """Base class: holds a fallback random generator used when ``__call__`` gets no ``rng``."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng()

    def seed(self, seed: int) -> Transform:
        """Reseed the fallback generator; returns ``self``."""
        self.rng = np.random.default_rng(seed)
        return self

    def _rng(self, rng: np.random.Generator | None) -> np.random.Generator:
        return self.rng if rng is None else rng

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "rng")
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        super().__init__()
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        sample = ensure_valid(sample)
        for t in self.transforms:
            sample = t(sample, rng=rng)
        return sample


class Resize(Transform):
    """Resize every spatial entry to ``size`` = (height, width) (an int means a square)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = _as_size(size)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return _map_spatial(sample, lambda kind, a: _resize(kind, a, self.size))


class RandomScale(Transform):
    """Rescale by a factor drawn uniformly from [``min_scale``, ``max_scale``]."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0) -> None:
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"RandomScale needs 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        s = self._rng(rng).uniform(self.min_scale, self.max_scale)
        h, w = _spatial_size(sample)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        return _map_spatial(sample, lambda kind, a: _resize(kind, a, size))


class RandomRotate(Transform):
    """With probability ``p``, rotate about the centre by an angle uniform in [-max_deg, max_deg].

    The output keeps the input size; corners that leave the image get the padding values
    (``valid`` False).
    """

    def __init__(self, max_deg: float, p: float = 0.5, pad_value: Sequence[int] = IMAGENET_MEAN_RGB) -> None:
        super().__init__()
        self.max_deg, self.p, self.pad_value = float(max_deg), float(p), tuple(pad_value)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        apply = rng.random() < self.p
        angle = rng.uniform(-self.max_deg, self.max_deg)
        if not apply or self.max_deg == 0:
            return ensure_valid(sample)
        h, w = _spatial_size(sample)
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)

        def rotate(kind: str, a: np.ndarray) -> np.ndarray:
            src = a.astype(np.uint8) if kind == _BOOL else a
            interp = cv2.INTER_NEAREST if kind in (_LABEL, _BOOL) else cv2.INTER_LINEAR
            fill = 0.0 if kind == _BOOL else _pad_scalar(kind, a, self.pad_value)
            out = cv2.warpAffine(
                src, matrix, (w, h), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
            )
            out = out.reshape(a.shape)
            return out.astype(bool) if kind == _BOOL else out

        return _map_spatial(sample, rotate)


class PadToSize(Transform):
    """Pad at the bottom and right to at least ``size`` = (height, width); larger inputs are kept."""

    def __init__(self, size: int | Sequence[int], pad_value: Sequence[int] = IMAGENET_MEAN_RGB) -> None:
        super().__init__()
        self.size, self.pad_value = _as_size(size), tuple(pad_value)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        h, w = _spatial_size(sample)
        bottom, right = max(0, self.size[0] - h), max(0, self.size[1] - w)
        return _map_spatial(sample, lambda kind, a: _pad(kind, a, bottom, right, self.pad_value))


class RandomCrop(Transform):
    """Crop a random window of exactly ``size`` = (height, width), padding first when smaller.

    Gives every sample the same shape, so the default collate function can batch them.
    """

    def __init__(self, size: int | Sequence[int], pad_value: Sequence[int] = IMAGENET_MEAN_RGB) -> None:
        super().__init__()
        self.size, self.pad_value = _as_size(size), tuple(pad_value)
        self._pad = PadToSize(self.size, self.pad_value)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        sample = self._pad(sample)
        h, w = _spatial_size(sample)
        ch, cw = self.size
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return _map_spatial(sample, lambda kind, a: a[top : top + ch, left : left + cw].copy())

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size!r}, pad_value={self.pad_value!r})"


class RandomHorizontalFlip(Transform):
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = float(p)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if self._rng(rng).random() >= self.p:
            return ensure_valid(sample)
        return _map_spatial(sample, lambda kind, a: np.ascontiguousarray(a[:, ::-1]))


class ColorJitter(Transform):
    """With probability ``p``, jitter brightness, contrast and saturation of the image only.

    Each factor is drawn uniformly from [1 - x, 1 + x]: brightness scales the pixel values,
    contrast blends with the mean grey level, saturation blends with the grey image.
    """

    def __init__(
        self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, p: float = 1.0
    ) -> None:
        super().__init__()
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0 <= value <= 1:
                raise ValueError(f"ColorJitter {name} must lie in [0, 1], got {value}")
        self.brightness, self.contrast, self.saturation, self.p = brightness, contrast, saturation, p

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        apply = rng.random() < self.p
        factors = [rng.uniform(1 - x, 1 + x) for x in (self.brightness, self.contrast, self.saturation)]
        sample = ensure_valid(sample)
        if not apply:
            return sample
        img = sample["image"].astype(np.float32)
        b, c, s = factors
        img *= b
        grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32) if img.ndim == 3 else img
        img = (img - grey.mean()) * c + grey.mean()
        if img.ndim == 3:
            grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            img = (img - grey[..., None]) * s + grey[..., None]
        out = dict(sample)
        out["image"] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return out


def build_train_transform(
    crop_size: int | Sequence[int],
    scale_range: Sequence[float] | None = (0.5, 2.0),
    hflip: float = 0.5,
    rotate: float = 0.0,
    color_jitter: float = 0.0,
    resize: int | Sequence[int] | None = None,
    pad_value: Sequence[int] = IMAGENET_MEAN_RGB,
) -> Compose:
    """The usual training pipeline, giving samples of shape ``crop_size``.

    Order: colour jitter (``color_jitter`` > 0: brightness/contrast/saturation strength) →
    resize (optional) → random scale in ``scale_range`` = ``(min, max)`` (``None``: none) → random
    rotation up to ``rotate`` degrees (p = 0.5, when > 0) → random crop (padding first) → horizontal
    flip with probability ``hflip``.
    """
    steps: list[Transform] = []
    if color_jitter > 0:
        steps.append(ColorJitter(color_jitter, color_jitter, color_jitter, p=0.8))
    if resize is not None:
        steps.append(Resize(resize))
    if scale_range is not None and tuple(scale_range) != (1.0, 1.0):
        steps.append(RandomScale(*scale_range))
    if rotate > 0:
        steps.append(RandomRotate(rotate, p=0.5, pad_value=pad_value))
    steps.append(RandomCrop(crop_size, pad_value=pad_value))
    if hflip > 0:
        steps.append(RandomHorizontalFlip(hflip))
    return Compose(steps)


def build_eval_transform(resize: int | Sequence[int] | None = None) -> Compose:
    """Deterministic evaluation pipeline: an optional resize (and the ``valid`` map)."""
    return Compose([Resize(resize)] if resize is not None else [])
