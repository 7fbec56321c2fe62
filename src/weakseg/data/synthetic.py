"""A synthetic scribble/tag dataset for the demo and the tests: textured shapes on textured ground.

Every image shows one to ``max_shapes`` shapes (disc, square, triangle, cross, ring, in class order)
at random positions, sizes and rotations, drawn in a random occlusion order over a background.
Each class has its own texture family (smooth blotches, oriented stripes, a rotated checker board,
speckle, dot grid, wavy bands) mixing two class colours; the colours jitter per image and overlap
between classes, and an illumination ramp and pixel noise are added, so colour alone does not
separate the classes but texture and shape do — a small network learns it in minutes on a CPU.

:func:`make_synthetic_dataset` writes it in the folder format (dataset.json, splits/, images/,
masks/, scribbles/ simulated with :func:`weakseg.data.scribbles.simulate_scribbles`, tags.csv).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from weakseg.data.scribbles import simulate_scribbles
from weakseg.io import atomic_save_image, atomic_save_label_png, atomic_write_json, atomic_write_text

__all__ = ["SHAPE_NAMES", "make_synthetic_dataset", "make_synthetic_sample", "synthetic_class_names"]

#: Foreground shape classes, in class-id order (class 0 is the background).
SHAPE_NAMES = ("disc", "square", "triangle", "cross", "ring")

# Two colours (RGB) per class that its texture mixes; class 0 is the background. The second colour
# of every shape class lies near a background colour so that colour alone is ambiguous.
_COLOURS = np.array(
    [
        [[96, 112, 92], [150, 138, 112]],  # background: grey-green / sand
        [[196, 84, 64], [128, 120, 100]],  # disc: red / grey
        [[70, 96, 182], [148, 136, 116]],  # square: blue / sand
        [[200, 180, 70], [100, 114, 96]],  # triangle: yellow / grey-green
        [[92, 160, 84], [150, 70, 150]],  # cross: green / purple
        [[214, 208, 196], [70, 66, 74]],  # ring: white / dark
    ],
    dtype=np.float64,
)
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def synthetic_class_names(num_classes: int = 4) -> list[str]:
    """Class names of a synthetic dataset with ``num_classes`` classes: background, then shapes."""
    if not 2 <= num_classes <= len(SHAPE_NAMES) + 1:
        raise ValueError(f"num_classes must lie in 2..{len(SHAPE_NAMES) + 1}, got {num_classes}")
    return ["background", *SHAPE_NAMES[: num_classes - 1]]


# ----------------------------------------------------------------------------------------------
# Textures: each returns float [H, W] in [0, 1], the mixing weight between a class's two colours
# ----------------------------------------------------------------------------------------------


def _rotated_grid(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v), each float [H, W], rotated by a random angle."""
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    a = rng.uniform(0.0, np.pi)
    return xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)


def _squash(x: np.ndarray) -> np.ndarray:
    """Standardise and map into [0, 1] with a soft clip."""
    x = (x - x.mean()) / (x.std() + 1e-8)
    return 1.0 / (1.0 + np.exp(-1.5 * x))


def _blotches(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    return _squash(ndimage.gaussian_filter(rng.standard_normal(size), sigma=rng.uniform(3.0, 7.0)))


def _stripes(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    u, _ = _rotated_grid(rng, size)
    return 0.5 + 0.5 * np.sin(2 * np.pi * u / rng.uniform(4.0, 8.0) + rng.uniform(0, 2 * np.pi))


def _checker(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    u, v = _rotated_grid(rng, size)
    cell = rng.uniform(3.0, 6.0)
    return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float64)


def _speckle(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(size), sigma=1.0)
    return (field > rng.uniform(0.0, 0.2)).astype(np.float64)


def _dots(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    u, v = _rotated_grid(rng, size)
    period = rng.uniform(4.0, 7.0)
    return (np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period) > 0.3).astype(np.float64)


def _waves(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    u, v = _rotated_grid(rng, size)
    bend = rng.uniform(1.5, 3.0) * np.sin(2 * np.pi * v / rng.uniform(10.0, 20.0))
    return 0.5 + 0.5 * np.sin(2 * np.pi * (u + bend) / rng.uniform(5.0, 9.0))


_TEXTURES: tuple[Callable[[np.random.Generator, tuple[int, int]], np.ndarray], ...] = (
    _blotches,
    _stripes,
    _checker,
    _speckle,
    _dots,
    _waves,
)


def _paint(rng: np.random.Generator, cls: int, size: tuple[int, int]) -> np.ndarray:
    """A full-size RGB float [H, W, 3] patch of class ``cls``'s texture in jittered class colours."""
    colours = _COLOURS[cls] + rng.normal(0.0, 18.0, size=(2, 3))
    t = _TEXTURES[cls](rng, size)[..., None]
    return (1.0 - t) * colours[0] + t * colours[1]


# ----------------------------------------------------------------------------------------------
# Shapes: each returns a bool [H, W] mask
# ----------------------------------------------------------------------------------------------


def _polygon_mask(size: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Fill the polygon ``points`` (float [P, 2] as x, y) into a bool [H, W] mask."""
    canvas = np.zeros(size, dtype=np.uint8)
    cv2.fillPoly(canvas, [np.rint(points).astype(np.int32).reshape(-1, 1, 2)], 1)
    return canvas.astype(bool)


def _rotate(points: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    """Rotate (x, y) points [P, 2] given relative to the origin by ``angle`` and move them to ``centre``."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]]) + centre


def _shape_mask(
    name: str,
    size: tuple[int, int],
    centre: np.ndarray,
    radius: float,
    angle: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Mask (bool [H, W]) of one shape of about ``radius`` pixels, rotated by ``angle``."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xx - centre[0], yy - centre[1]
    if name == "disc":  # a slightly elliptical disc
        c, s = np.cos(angle), np.sin(angle)
        a, b = radius, radius * rng.uniform(0.75, 1.0)
        return ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2 <= 1.0
    if name == "ring":
        r2 = dx**2 + dy**2
        return (r2 <= radius**2) & (r2 >= (radius * rng.uniform(0.45, 0.6)) ** 2)
    if name == "square":  # a rectangle of aspect 0.7..1
        half = np.array([radius, radius * rng.uniform(0.7, 1.0)]) * 0.85
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        return _polygon_mask(size, _rotate(corners, angle, centre))
    if name == "triangle":  # vertices at jittered thirds of a turn
        turns = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.25, 0.25, size=3)
        corners = radius * 1.1 * np.stack([np.cos(turns), np.sin(turns)], axis=1)
        return _polygon_mask(size, _rotate(corners, angle, centre))
    if name == "cross":  # a plus sign with arms a third of the radius wide
        a, b = radius, radius * 0.33
        outline = [[b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b], [-b, -a], [b, -a], [b, -b]]
        outline += [[a, -b], [a, b]]
        return _polygon_mask(size, _rotate(np.array(outline, dtype=np.float64), angle, centre))
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPE_NAMES}")


# ----------------------------------------------------------------------------------------------
# Samples and datasets
# ----------------------------------------------------------------------------------------------


def make_synthetic_sample(
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 96),
    num_classes: int = 4,
    max_shapes: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its dense mask.

    Args:
        rng: the random source (the sample is a pure function of its state).
        size: (H, W).
        num_classes: background + ``num_classes - 1`` shape classes (2..6).
        max_shapes: shapes per image are drawn uniformly from 1..max_shapes.

    Returns:
        ``image`` uint8 [H, W, 3] RGB and ``mask`` uint8 [H, W] class ids (no ignore pixels).
    """
    names = synthetic_class_names(num_classes)
    h, w = size
    image = _paint(rng, 0, size)
    mask = np.zeros(size, dtype=np.uint8)
    short = min(h, w)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(1, num_classes))
        radius = rng.uniform(0.12, 0.28) * short
        centre = np.array([rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)])
        shape = _shape_mask(names[cls], size, centre, radius, rng.uniform(0.0, 2 * np.pi), rng)
        image[shape] = _paint(rng, cls, size)[shape]  # later shapes occlude earlier ones
        mask[shape] = cls
    # illumination ramp and sensor noise
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    ramp = rng.uniform(-30.0, 30.0) * (xx - 0.5) + rng.uniform(-30.0, 30.0) * (yy - 0.5)
    image = image + ramp[..., None] + rng.normal(0.0, 8.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _to_gray(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (PIL's ``convert("L")`` weights) of an RGB uint8 [H, W, 3] image, uint8 [H, W]."""
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


def make_synthetic_dataset(
    root: str | os.PathLike,
    *,
    num_train: int = 64,
    num_val: int = 16,
    num_test: int = 0,
    size: tuple[int, int] = (96, 96),
    num_classes: int = 4,
    seed: int = 0,
    image_mode: str = "RGB",
    max_shapes: int = 4,
    scribble_width: int = 3,
) -> Path:
    """Write a synthetic dataset in the folder format and return its root.

    Layout: ``dataset.json``; ``splits/{train,val[,test]}.txt``; ``images/{id}.png`` (RGB, or
    gray for ``image_mode="L"``); ``masks/{id}.png`` dense class ids; ``scribbles/{id}.png``
    simulated scribbles (255 = unlabelled); ``tags.csv`` with header ``id,<class 0>,<class 1>,…``
    (every class, background included) and a 0/1 column per class: 1 when the class occurs in the
    image's mask. Ids are ``<split>_<index:04d>``.

    Sample ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split code, i])``, so
    the output depends only on the arguments, and changing ``num_train`` leaves val/test alone.
    Every file is written atomically.

    Args:
        root: output folder (created; existing files of the same names are replaced).
        num_train / num_val / num_test: samples per split (a split with 0 samples is not written).
        size: (H, W) of every image.
        num_classes: background + ``num_classes - 1`` shapes, 2..6 (default: disc, square, triangle).
        seed: the dataset seed.
        image_mode: "RGB" or "L".
        max_shapes: at most this many shapes per image.
        scribble_width: stroke width of the simulated scribbles.
    """
    if image_mode not in ("RGB", "L"):
        raise ValueError(f"image_mode must be 'RGB' or 'L', got {image_mode!r}")
    if max_shapes < 1:
        raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
    names = synthetic_class_names(num_classes)
    root = Path(root)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    tag_rows = []
    for split, count in counts.items():
        if count <= 0:
            continue
        ids = [f"{split}_{i:04d}" for i in range(count)]
        for i, sample_id in enumerate(ids):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
            image, mask = make_synthetic_sample(rng, size, num_classes, max_shapes)
            scribble = simulate_scribbles(
                mask, num_classes, rng=rng, width=scribble_width, background_class=0
            )
            atomic_save_image(
                root / "images" / f"{sample_id}.png", image if image_mode == "RGB" else _to_gray(image)
            )
            atomic_save_label_png(root / "masks" / f"{sample_id}.png", mask)
            atomic_save_label_png(root / "scribbles" / f"{sample_id}.png", scribble)
            present = np.bincount(mask.ravel(), minlength=num_classes) > 0
            tag_rows.append(",".join([sample_id, *(str(int(p)) for p in present)]))
        atomic_write_text(root / "splits" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    atomic_write_text(root / "tags.csv", "\n".join([",".join(["id", *names]), *tag_rows]) + "\n")
    atomic_write_json(
        root / "dataset.json",
        {
            "name": "synthetic-shapes",
            "classes": names,
            "ignore_index": 255,
            "image_mode": image_mode,
            "layout": {
                "images": "images/{id}.png",
                "masks": "masks/{id}.png",
                "scribbles": "scribbles/{id}.png",
                "tags": "tags.csv",
            },
            "background": 0,
            "source": (
                f"weakseg.data.synthetic.make_synthetic_dataset(seed={seed}, size={list(size)}, "
                f"num_classes={num_classes}, max_shapes={max_shapes}, scribble_width={scribble_width})"
            ),
            "license": "generated; no restrictions",
        },
    )
    return root
