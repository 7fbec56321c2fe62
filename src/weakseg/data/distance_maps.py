"""CDSP's distance maps: how far each pixel lies from the scribbles and from the pseudo-label boundary.

Both maps are built from a Euclidean distance transform (``scipy.ndimage.distance_transform_edt``,
O(pixels)) of a *source* set, scaled by ``m = sqrt(e^λ)``, truncated at 255 and stored as the
integer level the CDSP authors' code writes to its uint8 PNGs, then divided by 255:

- scribble map   ``d_s = (255 − ⌊min(255, m_s · dist(i, S))⌋) / 255``: 1 on the scribble, → 0 far
  away; sources ``S`` = the scribbled pixels of foreground classes (background scribbles are not
  sources, as in the authors' code; a dataset without a background class uses every scribble);
- boundary map   ``d_c = ⌊min(255, m_c · dist(i, C))⌋ / 255``: 0 on the boundary, → 1 far from
  it; sources ``C`` = the 1-pixel inner contour of the pseudo-label's foreground (foreground pixels
  with a 4-neighbour that is not foreground, the image border counting as not foreground, which is
  what OpenCV's contour tracing marks). Without a background class the contour of every class
  region is used (labelled pixels with a 4-neighbour of another value).

Ignored pseudo-label pixels (255) are not foreground. With these readings the maps equal the
authors' reference PNGs for the shared PASCAL VOC sample on 100 % of pixels (see
``tests/data/test_distance_maps.py``). Without any source the distance is infinite and truncates
at 255: ``d_s`` is 0 everywhere (no weight) and ``d_c`` is 1 everywhere.

The maps are computed on the untransformed sample and then follow its augmentations like any float
map (``SegDataset.add_map``): distances stay in the source image's pixel units, as with the
authors' pre-computed maps, and padding is 0 (no weight), where the authors pad with 255.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "BoundaryDistanceMap",
    "ScribbleDistanceMap",
    "boundary_distance_map",
    "boundary_sources",
    "distance_levels",
    "scribble_distance_map",
    "scribble_sources",
]

_CROSS = ndimage.generate_binary_structure(2, 1)


def distance_multiplier(lam: float) -> float:
    """``sqrt(e^λ)``, the factor CDSP applies to pixel distances (λ_s = 1 → √e, λ_c = 6 → e³)."""
    return math.sqrt(math.exp(lam))


def distance_levels(sources: np.ndarray, lam: float) -> np.ndarray:
    """``⌊min(255, sqrt(e^λ) · dist)⌋`` as float32 ``[H, W]``, ``dist`` = Euclidean distance in
    pixels to the nearest ``True`` of ``sources`` (bool ``[H, W]``); all 255 when there is none."""
    if not sources.any():
        return np.full(sources.shape, 255.0, dtype=np.float32)
    dist = ndimage.distance_transform_edt(~sources)
    return np.floor(np.minimum(255.0, distance_multiplier(lam) * dist)).astype(np.float32)


def scribble_sources(scribble: np.ndarray, background: int | None, ignore_index: int = 255) -> np.ndarray:
    """Bool ``[H, W]``: scribbled pixels of foreground classes (every scribble without a background)."""
    labelled = scribble != ignore_index
    return labelled if background is None else labelled & (scribble != background)


def boundary_sources(pseudo: np.ndarray, background: int | None, ignore_index: int = 255) -> np.ndarray:
    """Bool ``[H, W]``: the inner contour of the pseudo-label foreground (see the module docstring)."""
    if background is not None:
        fg = (pseudo != background) & (pseudo != ignore_index)
        return fg & ~ndimage.binary_erosion(fg, structure=_CROSS, border_value=0)
    labelled = pseudo != ignore_index
    differs = np.zeros(pseudo.shape, dtype=bool)
    vertical = pseudo[1:] != pseudo[:-1]
    horizontal = pseudo[:, 1:] != pseudo[:, :-1]
    differs[1:] |= vertical
    differs[:-1] |= vertical
    differs[:, 1:] |= horizontal
    differs[:, :-1] |= horizontal
    return labelled & differs


def scribble_distance_map(
    scribble: np.ndarray, lam: float, background: int | None = 0, ignore_index: int = 255
) -> np.ndarray:
    """CDSP's scribble map ``d_s`` in [0, 1], float32 ``[H, W]`` (1 on foreground scribbles).

    Args:
        scribble: uint8 ``[H, W]`` class ids, ``ignore_index`` where unlabelled.
        lam: λ_s (the paper's ablation setting 1, its best setting 2).
    """
    sources = scribble_sources(scribble, background, ignore_index)
    return (255.0 - distance_levels(sources, lam)) / 255.0


def boundary_distance_map(
    pseudo: np.ndarray, lam: float, background: int | None = 0, ignore_index: int = 255
) -> np.ndarray:
    """CDSP's pseudo-label boundary map ``d_c`` in [0, 1], float32 ``[H, W]`` (0 on the boundary).

    Args:
        pseudo: uint8 ``[H, W]`` pseudo-label, ``ignore_index`` where uncertain.
        lam: λ_c (the paper's ablation setting 6, its best setting 7).
    """
    sources = boundary_sources(pseudo, background, ignore_index)
    return distance_levels(sources, lam) / 255.0


@dataclass(frozen=True)
class ScribbleDistanceMap:
    """Picklable map function for ``SegDataset.add_map``: ``d_s`` of the sample's ``"scribble"``."""

    lam: float
    background: int | None = 0
    ignore_index: int = 255

    def __call__(self, sample: dict[str, np.ndarray]) -> np.ndarray:
        return scribble_distance_map(sample["scribble"], self.lam, self.background, self.ignore_index)


@dataclass(frozen=True)
class BoundaryDistanceMap:
    """Picklable map function for ``SegDataset.add_map``: ``d_c`` of the sample's ``"pseudo"``."""

    lam: float
    background: int | None = 0
    ignore_index: int = 255

    def __call__(self, sample: dict[str, np.ndarray]) -> np.ndarray:
        return boundary_distance_map(sample["pseudo"], self.lam, self.background, self.ignore_index)
