"""Scribble tools: simulate scribbles from dense masks, shrink or drop them, rasterize ScribbleSup XML.

Every label map here is a ``uint8`` array ``[H, W]`` of class ids in which ``ignore_index`` (255 by
default) marks unlabelled pixels. A *scribble* is one connected component (8-connectivity) of the
pixels of one class.

Skeletons come from Zhang–Suen thinning, vectorised in numpy over all regions of an image at once
(each pixel only sees neighbours of its own region), and paths along a skeleton from Dijkstra on
its 8-neighbour pixel graph (edge length 1 or √2), so "arc length" below is a geodesic length in
pixels.

The robustness sets of URSS (scribble-shrink and scribble-drop) are :func:`shrink_scribbles` and
:func:`drop_scribbles`; :func:`write_scribble_variant` turns a whole folder-format dataset into a
variant that only holds the new scribble PNGs and points back at the source for everything else.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import dijkstra
from tqdm import tqdm

from weakseg.io import (
    DataError,
    atomic_save_label_png,
    atomic_write_json,
    atomic_write_text,
    path_as_written_in,
    read_label,
)

__all__ = [
    "drop_count",
    "drop_scribbles",
    "read_scribble_xml",
    "rasterize_polylines",
    "scribble_components",
    "shrink_scribbles",
    "simulate_scribbles",
    "skeletonize",
    "write_scribble_variant",
]

_EIGHT = np.ones((3, 3), dtype=bool)
# Neighbours P2..P9 of Zhang–Suen (clockwise from north) as (dy, dx).
_NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


# ----------------------------------------------------------------------------------------------
# Components, skeletons and paths
# ----------------------------------------------------------------------------------------------


def _component_map(labels: np.ndarray, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Number the 8-connected components of every class.

    Returns ``regions`` (int32 [H, W], 0 = ignore, k ≥ 1 = component k) and ``classes`` (int64
    [K + 1], ``classes[k]`` is the class of component k; ``classes[0]`` is unused). Components are
    numbered by class, then in raster order of their first pixel.
    """
    regions = np.zeros(labels.shape, dtype=np.int32)
    classes = [0]
    for cls in np.unique(labels):
        if cls == ignore_index:
            continue
        comp, n = ndimage.label(labels == cls, structure=_EIGHT)
        regions[comp > 0] = comp[comp > 0] + (len(classes) - 1)
        classes.extend([int(cls)] * n)
    return regions, np.asarray(classes, dtype=np.int64)


def scribble_components(scribble: np.ndarray, ignore_index: int = 255) -> list[tuple[int, np.ndarray]]:
    """Split a scribble map into its scribbles.

    Args:
        scribble: uint8 [H, W] class ids, ``ignore_index`` = unlabelled.

    Returns:
        One ``(class_id, mask)`` per 8-connected component of one class, ``mask`` bool [H, W];
        ordered by class id, then by the raster position of the component's first pixel.
    """
    regions, classes = _component_map(_as_label_map(scribble, "scribble"), ignore_index)
    return [(int(classes[k]), regions == k) for k in range(1, len(classes))]


def _zhang_suen_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion look-up tables (bool [256]) of the two Zhang–Suen sub-iterations.

    The code of a pixel has bit k set when neighbour P(k+2) is a live pixel of the same region.
    """
    codes = np.arange(256)
    bits = (codes[:, None] >> np.arange(8)) & 1  # [256, 8]: P2..P9
    count = bits.sum(axis=1)  # B(P1): live neighbours
    transitions = ((bits == 0) & (np.roll(bits, -1, axis=1) == 1)).sum(axis=1)  # A(P1) on P2..P9,P2
    p2, _, p4, _, p6, _, p8, _ = bits.T
    base = (count >= 2) & (count <= 6) & (transitions == 1)
    first = base & (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
    second = base & (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
    return first, second


_ZS_TABLES = _zhang_suen_tables()
# _CLEAR_OPPOSITE[k] clears bit (k + 4) mod 8: the neighbour in direction k sees us in direction k + 4
_CLEAR_OPPOSITE = np.array([~(1 << ((k + 4) % 8)) & 0xFF for k in range(8)], dtype=np.uint8)


def skeletonize(regions: np.ndarray) -> np.ndarray:
    """Zhang–Suen skeletons of all labelled regions of an image at once.

    Args:
        regions: integer [H, W]; 0 = outside every region, k > 0 = region k. Regions with
            different ids never interact, even where they touch.

    Returns:
        bool [H, W]: the skeleton pixels, a subset of ``regions > 0``. Every region keeps at least
        one pixel (Zhang–Suen erases 2×2 blocks and some 2-pixel-thick diagonals completely; such a
        region gets its deepest pixel, the maximum of its distance transform, instead).
    """
    regions = np.asarray(regions)
    h, w = regions.shape
    padded = np.pad(regions.astype(np.int64, copy=False), 1)
    alive = padded > 0
    centre = (slice(1, h + 1), slice(1, w + 1))
    # code[p]: bit k set when neighbour P(k+2) of p is a live pixel of p's region
    code2d = np.zeros(padded.shape, dtype=np.uint8)
    for k, (dy, dx) in enumerate(_NEIGHBOURS):
        shifted = (slice(1 + dy, h + 1 + dy), slice(1 + dx, w + 1 + dx))
        same = alive[shifted] & (padded[shifted] == padded[centre])
        code2d[centre] |= same.astype(np.uint8) << k
    ids, live, code = padded.ravel(), alive.ravel(), code2d.ravel()  # views: updates reach ``alive``
    offsets = np.array([dy * (w + 2) + dx for dy, dx in _NEIGHBOURS], dtype=np.int64)

    # Only pixels whose neighbourhood changed since their last test in a sub-iteration can become
    # deletable in it; at the start those are the live pixels with a non-live neighbour.
    border = np.flatnonzero(live & (code != 255))
    pending: list[list[np.ndarray]] = [[border], [border]]
    slot = np.empty(ids.shape, dtype=np.int64)
    while True:
        changed = False
        for step, table in enumerate(_ZS_TABLES):
            if not pending[step]:
                continue
            cand = np.concatenate(pending[step])
            pending[step] = []
            # drop duplicates without sorting: keep each index where its last write landed
            order = np.arange(len(cand))
            slot[cand] = order
            cand = cand[slot[cand] == order]
            cand = cand[live[cand]]
            gone = cand[table[code[cand]]]  # judged in parallel, deleted together
            if gone.size == 0:
                continue
            changed = True
            live[gone] = False
            # every live same-region neighbour q of a deleted pixel loses the bit pointing back at it
            q = gone[:, None] + offsets  # [G, 8]
            rows, cols = np.nonzero(live[q] & (ids[q] == ids[gone, None]))
            touched = q[rows, cols]
            np.bitwise_and.at(code, touched, _CLEAR_OPPOSITE[cols])
            pending[0].append(touched)
            pending[1].append(touched)
        if not changed:
            break

    skeleton = alive[1:-1, 1:-1].copy()
    _restore_vanished(regions, skeleton)
    return skeleton


def _depth(inside: np.ndarray) -> np.ndarray:
    """Euclidean distance (float32 [h, w]) of each pixel of ``inside`` (bool) to the nearest pixel outside
    it, the crop's border counting as outside; 0 outside."""
    padded = np.pad(inside, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def _restore_vanished(regions: np.ndarray, skeleton: np.ndarray) -> None:
    """Give every region that thinning erased its deepest pixel (in place)."""
    n = int(regions.max(initial=0)) + 1
    missing = np.flatnonzero(
        (np.bincount(regions.ravel(), minlength=n) > 0) & (np.bincount(regions[skeleton], minlength=n) == 0)
    )
    missing = missing[missing > 0]
    if missing.size == 0:
        return
    boxes = ndimage.find_objects(regions)
    for rid in missing:
        box = boxes[rid - 1]
        inside = regions[box] == rid
        depth = _depth(inside)
        r, c = np.unravel_index(int(np.argmax(depth)), depth.shape)
        skeleton[box][r, c] = True


def _pixel_graph(coords: np.ndarray) -> csr_matrix:
    """Undirected 8-neighbour graph of pixels ``coords`` (int [P, 2] rows/cols), edge length 1 or √2."""
    origin = coords.min(axis=0)
    local = coords - origin
    grid = np.full(tuple(local.max(axis=0) + 1), -1, dtype=np.int64)
    grid[local[:, 0], local[:, 1]] = np.arange(len(coords))
    rows, cols, lengths = [], [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each undirected edge once
        r, c = local[:, 0] + dy, local[:, 1] + dx
        ok = (r < grid.shape[0]) & (c >= 0) & (c < grid.shape[1])
        src = np.flatnonzero(ok)
        dst = grid[r[ok], c[ok]]
        hit = dst >= 0
        rows.append(src[hit])
        cols.append(dst[hit])
        lengths.append(np.full(int(hit.sum()), math.sqrt(2.0) if dy and dx else 1.0))
    r_all, c_all, l_all = np.concatenate(rows), np.concatenate(cols), np.concatenate(lengths)
    n = len(coords)
    graph = coo_matrix((np.r_[l_all, l_all], (np.r_[r_all, c_all], np.r_[c_all, r_all])), shape=(n, n))
    return graph.tocsr()


def _distances(graph: csr_matrix, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic distances (float [P], inf = unreachable) and predecessors (int [P]) from ``start``."""
    dist, pred = dijkstra(graph, directed=False, indices=start, return_predecessors=True)
    return dist, pred


def _farthest(dist: np.ndarray) -> int:
    """Index of the farthest reachable node (ties: lowest index)."""
    return int(np.argmax(np.where(np.isfinite(dist), dist, -1.0)))


def _backtrack(pred: np.ndarray, end: int) -> np.ndarray:
    """Node indices of the shortest path that ends at ``end``, from its start."""
    path = [end]
    while pred[path[-1]] >= 0:
        path.append(int(pred[path[-1]]))
    return np.asarray(path[::-1], dtype=np.int64)


def _arc_length(coords: np.ndarray) -> np.ndarray:
    """Cumulative length (float [P]) along a pixel chain ``coords`` (int [P, 2])."""
    steps = np.sqrt((np.diff(coords, axis=0) ** 2).sum(axis=1))
    return np.concatenate([[0.0], np.cumsum(steps)])


def _disk(width: int) -> np.ndarray:
    """uint8 [width, width] disk: the pen of a stroke ``width`` pixels wide (3 → a 3×3 square)."""
    c = np.arange(width) - (width - 1) / 2.0
    return ((c[:, None] ** 2 + c[None, :] ** 2) <= (width / 2.0) ** 2 + 1e-9).astype(np.uint8)


def _thicken(line: np.ndarray, width: int) -> np.ndarray:
    """Dilate a 1-pixel bool mask [h, w] with a ``width``-pixel disk."""
    if width <= 1:
        return line.copy()
    return cv2.dilate(line.astype(np.uint8), _disk(width)).astype(bool)


# ----------------------------------------------------------------------------------------------
# Simulation
# ----------------------------------------------------------------------------------------------


def _sub_path(chain: np.ndarray, fraction_range: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """A random piece of a pixel chain (int [P, 2]) whose length is a random fraction of the chain's."""
    s = _arc_length(chain)
    total = s[-1]
    if total == 0.0:
        return chain
    length = rng.uniform(*fraction_range) * total
    start = rng.uniform(0.0, total - length)
    keep = (s >= start - 1e-9) & (s <= start + length + 1e-9)
    if not keep.any():  # the piece fell between two pixels: take the pixel nearest its middle
        keep[int(np.argmin(np.abs(s - (start + length / 2))))] = True
    return chain[keep]


def _extend_chain(
    chain: np.ndarray, depth: np.ndarray, min_depth: float, rng: np.random.Generator, look_back: int = 6
) -> np.ndarray:
    """Prolong both ends of a pixel chain (int [P, 2]) straight on while the depth stays >= ``min_depth``.

    The skeleton of a compact region is short (a disc's is about one point), while an annotator
    would draw across it; so each end keeps going in the direction of its last ``look_back`` pixels
    (a random line for a one-pixel chain) until it comes within ``min_depth`` of the region's edge.
    ``depth`` is the region's distance transform (float [h, w], 0 outside).
    """
    if len(chain) == 1:
        angle = rng.uniform(0.0, np.pi)
        heads = [
            (chain[0], np.array([np.sin(angle), np.cos(angle)])),
            (chain[0], -np.array([np.sin(angle), np.cos(angle)])),
        ]
    else:
        k = min(look_back, len(chain) - 1)
        heads = [
            (chain[0], (chain[0] - chain[k]).astype(float)),
            (chain[-1], (chain[-1] - chain[-1 - k]).astype(float)),
        ]
    h, w = depth.shape
    steps = np.arange(1, h + w, dtype=np.float64)[:, None]
    pieces = []
    for origin, direction in heads:
        ray = np.rint(origin + steps * (direction / np.hypot(*direction))).astype(np.int64)  # [S, 2]
        ok = (ray[:, 0] >= 0) & (ray[:, 0] < h) & (ray[:, 1] >= 0) & (ray[:, 1] < w)
        ok[ok] = depth[ray[ok, 0], ray[ok, 1]] >= min_depth
        ray = ray[: len(ok) if ok.all() else int(np.argmin(ok))]  # up to the first pixel too near the edge
        fresh = np.ones(len(ray), dtype=bool)
        fresh[1:] = (np.diff(ray, axis=0) != 0).any(axis=1)  # rounding can repeat a pixel
        pieces.append(ray[fresh])
    return np.concatenate([pieces[0][::-1], chain, pieces[1]])


def _region_strokes(
    inside: np.ndarray,
    coords: np.ndarray,
    n_strokes: int,
    fraction_range: tuple[float, float],
    rng: np.random.Generator,
    edge_margin: float,
) -> list[np.ndarray]:
    """Stroke paths (int [P_i, 2] pixel chains) in one region.

    Args:
        inside: bool [h, w], the region (in its bounding box).
        coords: int [P, 2], the region's skeleton pixels.
        n_strokes: 1 → a piece of the longest geodesic skeleton path (double sweep); more → each
            stroke runs along the skeleton from a random pixel to a random pixel at least half the
            largest geodesic distance away from it, so strokes in large regions (a background) spread.
        edge_margin: paths are prolonged (:func:`_extend_chain`) until their depth falls below
            this fraction of the region's largest depth.
    """
    depth = _depth(inside)
    min_depth = max(1.0, edge_margin * float(depth.max()))
    if len(coords) == 1:
        chains = [coords] * n_strokes
    else:
        graph = _pixel_graph(coords)
        if n_strokes == 1:
            dist, _ = _distances(graph, 0)
            dist, pred = _distances(graph, _farthest(dist))
            chains = [coords[_backtrack(pred, _farthest(dist))]]
        else:
            chains = []
            for start in rng.integers(0, len(coords), size=n_strokes):
                dist, pred = _distances(graph, int(start))
                reach = np.where(np.isfinite(dist), dist, -1.0)
                far = np.flatnonzero(reach >= 0.5 * reach.max())
                chains.append(coords[_backtrack(pred, int(rng.choice(far)))])
    return [_sub_path(_extend_chain(chain, depth, min_depth, rng), fraction_range, rng) for chain in chains]


def simulate_scribbles(
    mask: np.ndarray,
    num_classes: int,
    *,
    ignore_index: int = 255,
    rng: np.random.Generator | None = None,
    seed: int | Sequence[int] | None = None,
    width: int = 3,
    background_class: int | None = 0,
    min_region_area: int = 20,
    bg_strokes: int = 2,
    length_fraction: tuple[float, float] = (0.5, 0.9),
    edge_margin: float = 0.3,
) -> np.ndarray:
    """Simulate annotator scribbles from a dense mask.

    Every connected region (8-connectivity) of every class with at least ``min_region_area`` pixels
    gets a stroke along its Zhang–Suen skeleton: the region's longest geodesic skeleton path,
    prolonged straight on at both ends until it comes within ``edge_margin`` × (the region's
    largest depth) of the region's edge (a disc's skeleton is about one point; an annotator draws
    across it), of which a random piece of ``length_fraction`` of its length is kept. Regions of
    ``background_class`` get ``bg_strokes`` strokes each, every one along the skeleton from a
    random pixel to a random pixel at least half the largest geodesic distance away. With
    ``background_class=None`` (datasets without a background, e.g. CamVid) every class is treated
    as a region class. Strokes are dilated to ``width`` pixels (a disk pen) and clipped to their
    region, so a scribble pixel always carries the mask's label at that pixel and ignore pixels are
    never labelled. Regions smaller than ``min_region_area`` get no scribble (nothing, not a dot);
    every other region gets at least one pixel.

    Args:
        mask: uint8 [H, W] dense class ids in ``[0, num_classes)``, ``ignore_index`` = void.
        num_classes: number of classes; other values (besides ``ignore_index``) raise DataError.
        rng / seed: the random source, ``rng`` if given, else ``numpy.random.default_rng(seed)``;
            the same seed gives the same output.
        width: stroke width in pixels (≥ 1).
        background_class: class id drawn with ``bg_strokes`` strokes per region, or None.
        min_region_area: smallest region (pixels) that gets a scribble.
        length_fraction: (low, high) range of the uniform fraction of the path kept per stroke.
        edge_margin: where prolonged paths stop, as a fraction of the region's largest depth.

    Returns:
        uint8 [H, W] scribble map, ``ignore_index`` where unlabelled.
    """
    mask = _as_label_map(mask, "mask")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if not 0.0 < length_fraction[0] <= length_fraction[1] <= 1.0:
        raise ValueError(f"length_fraction must satisfy 0 < low <= high <= 1, got {length_fraction}")
    if background_class is not None and not 0 <= background_class < num_classes:
        raise ValueError(f"background_class {background_class} is not a class id in [0, {num_classes})")
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(num_classes), ignore_index])
    if bad.size:
        raise DataError(
            f"mask has values {bad.tolist()}; expected class ids 0..{num_classes - 1} or {ignore_index}"
        )
    if rng is None:
        rng = np.random.default_rng(seed)

    out = np.full(mask.shape, ignore_index, dtype=np.uint8)
    regions, classes = _component_map(mask, ignore_index)
    skeleton = skeletonize(regions)
    boxes = ndimage.find_objects(regions)
    areas = np.bincount(regions.ravel(), minlength=len(classes))
    for rid in range(1, len(classes)):
        if areas[rid] < min_region_area:
            continue
        box = boxes[rid - 1]
        inside = regions[box] == rid
        coords = np.argwhere(skeleton[box] & inside)
        n_strokes = bg_strokes if classes[rid] == background_class else 1
        line = np.zeros(inside.shape, dtype=bool)
        for chain in _region_strokes(inside, coords, max(n_strokes, 1), length_fraction, rng, edge_margin):
            line[chain[:, 0], chain[:, 1]] = True
        out[box][_thicken(line, width) & inside] = classes[rid]
    return out


# ----------------------------------------------------------------------------------------------
# Shrink and drop (URSS robustness sets)
# ----------------------------------------------------------------------------------------------


def _check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
    return ratio


def _arc_positions(coords: np.ndarray) -> np.ndarray:
    """Normalised position (float [P] in [0, 1]) of each skeleton pixel along its scribble.

    Position = geodesic distance from one end (the pixel farthest from the first pixel) divided by
    the largest such distance. Pixels unreachable from that end (a broken skeleton) count as 1, the
    far end, so they go first when shrinking.
    """
    if len(coords) == 1:
        return np.array([0.5])
    graph = _pixel_graph(coords)
    dist, _ = _distances(graph, 0)
    dist, _ = _distances(graph, _farthest(dist))
    finite = np.isfinite(dist)
    length = dist[finite].max()
    if length == 0.0:
        return np.full(len(coords), 0.5)
    return np.where(finite, dist / length, 1.0)


def shrink_scribbles(scribble: np.ndarray, ratio: float, *, ignore_index: int = 255) -> np.ndarray:
    """Shorten every scribble to a fraction ``1 - ratio`` of its length, keeping its middle part.

    Each scribble (8-connected component of one class) is thinned to its skeleton; skeleton pixels
    get a normalised arc position ``t`` in [0, 1] (geodesic distance from one end). Skeleton pixels
    with ``|t - 0.5| <= (1 - ratio) / 2`` are kept, plus always the centre pixel (``t`` nearest to
    0.5). A scribble pixel is kept when its nearest skeleton pixel (Euclidean, ties broken the same
    way at every ratio) is kept, so the stroke keeps its width.

    * ``ratio = 0`` returns the input unchanged.
    * ``ratio = 1`` leaves one dot per scribble, as wide as the stroke, not a single pixel: the
      pixels whose nearest skeleton pixel is the centre pixel and which lie closer to it than the
      centre pixel's distance to the scribble's edge, restricted to their 8-connected piece that
      holds the centre (a width-3 stroke keeps its 3-pixel cross-section, a width-1 stroke one pixel).
    * Results are nested: the result at a larger ratio is a subset of the result at a smaller one.

    Args:
        scribble: uint8 [H, W] class ids, ``ignore_index`` = unlabelled.
        ratio: fraction of each scribble's length to remove, in [0, 1].

    Returns:
        uint8 [H, W], a subset of ``scribble`` (other pixels set to ``ignore_index``).
    """
    scribble = _as_label_map(scribble, "scribble")
    ratio = _check_ratio(ratio)
    if ratio == 0.0:
        return scribble.copy()
    out = np.full(scribble.shape, ignore_index, dtype=np.uint8)
    regions, classes = _component_map(scribble, ignore_index)
    skeleton = skeletonize(regions)
    for rid, box in enumerate(ndimage.find_objects(regions), start=1):
        inside = regions[box] == rid
        skel = skeleton[box] & inside
        coords = np.argwhere(skel)
        t = _arc_positions(coords)
        keep = np.abs(t - 0.5) <= (1.0 - ratio) / 2.0 + 1e-12 if ratio < 1.0 else np.zeros(len(t), bool)
        centre = int(np.argmin(np.abs(t - 0.5)))
        keep[centre] = True
        kept_skel = np.zeros_like(skel)
        kept_skel[coords[keep, 0], coords[keep, 1]] = True
        # index of the nearest skeleton pixel of this scribble, for every pixel of the box
        _, (near_r, near_c) = ndimage.distance_transform_edt(~skel, return_indices=True)
        kept = inside & kept_skel[near_r, near_c]
        if ratio == 1.0:  # a dot as wide as the stroke at its centre pixel
            rc, cc = coords[centre]
            radius = float(_depth(inside)[rc, cc])
            yy, xx = np.ogrid[: inside.shape[0], : inside.shape[1]]
            kept &= (yy - rc) ** 2 + (xx - cc) ** 2 < radius**2
            pieces, _ = ndimage.label(kept, structure=_EIGHT)
            kept = pieces == pieces[rc, cc]
        out[box][kept] = classes[rid]
    return out


def drop_scribbles(
    scribble: np.ndarray,
    ratio: float,
    *,
    seed: int | Sequence[int],
    ignore_index: int = 255,
    keep_at_least_one: bool = True,
) -> np.ndarray:
    """Remove a fraction ``ratio`` of the scribbles of one image, whole scribbles at a time.

    Definition: the scribbles are the 8-connected components of each class
    (:func:`scribble_components` order), ``n`` of them in this image. ``k = floor(ratio * n + 0.5)``
    of them (round half up) are removed; with ``keep_at_least_one`` (default) ``k`` is capped at
    ``n - 1`` so an image that had scribbles never becomes unlabelled. The removed ones are the
    first ``k`` of ``numpy.random.default_rng(seed).permutation(n)``, so for a fixed seed the set
    removed at a larger ratio contains the set removed at a smaller one (nested, monotone).

    Args:
        scribble: uint8 [H, W] class ids, ``ignore_index`` = unlabelled.
        ratio: fraction of scribbles to remove, in [0, 1].
        seed: seed of the permutation (an int or a sequence of ints, as numpy accepts).

    Returns:
        uint8 [H, W]: ``scribble`` with the removed scribbles set to ``ignore_index``.
    """
    scribble = _as_label_map(scribble, "scribble")
    ratio = _check_ratio(ratio)
    regions, classes = _component_map(scribble, ignore_index)
    n = len(classes) - 1
    k = drop_count(n, ratio, keep_at_least_one=keep_at_least_one)
    order = np.random.default_rng(seed).permutation(n)
    out = scribble.copy()
    if k:
        dropped = np.zeros(n + 1, dtype=bool)
        dropped[order[:k] + 1] = True
        out[dropped[regions]] = ignore_index
    return out


def drop_count(n: int, ratio: float, *, keep_at_least_one: bool = True) -> int:
    """How many of ``n`` scribbles :func:`drop_scribbles` removes.

    ``floor(ratio * n + 0.5)`` (round half up), capped at ``n - 1`` when ``keep_at_least_one`` and ``n > 0``.
    """
    k = int(math.floor(_check_ratio(ratio) * n + 0.5 + 1e-9))
    if keep_at_least_one and n > 0:
        k = min(k, n - 1)
    return k


# ----------------------------------------------------------------------------------------------
# Rasterising polylines and ScribbleSup XML
# ----------------------------------------------------------------------------------------------


def rasterize_polylines(
    polylines: Sequence[tuple[int, np.ndarray]],
    size: tuple[int, int],
    width: int = 3,
    ignore_index: int = 255,
) -> np.ndarray:
    """Draw class-labelled polylines into a scribble map.

    Each polyline is drawn as a 1-pixel 8-connected line through its points (``cv2.polylines``,
    points rounded to the nearest pixel; a single point is a dot) and dilated with a ``width``-pixel
    disk. Later strokes overwrite earlier ones; points outside the image are clipped.

    Args:
        polylines: ``(class_id, points)`` pairs, ``points`` float [P, 2] as (x, y) pixel coordinates.
        size: (H, W) of the output.
        width: stroke width in pixels (≥ 1).

    Returns:
        uint8 [H, W], ``ignore_index`` where no stroke passes.
    """
    h, w = int(size[0]), int(size[1])
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    out = np.full((h, w), ignore_index, dtype=np.uint8)
    pad = width // 2 + 1
    for cls, points in polylines:
        if not 0 <= int(cls) <= 255 or int(cls) == ignore_index:
            raise ValueError(f"polyline class {cls} must lie in 0..255 and differ from ignore {ignore_index}")
        pts = np.rint(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
        if len(pts) == 0:
            continue
        x0, y0 = max(int(pts[:, 0].min()) - pad, 0), max(int(pts[:, 1].min()) - pad, 0)
        x1, y1 = min(int(pts[:, 0].max()) + pad + 1, w), min(int(pts[:, 1].max()) + pad + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue  # entirely outside the image
        line = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        local = (pts - [x0, y0]).astype(np.int32)
        if len(local) == 1:
            x, y = local[0]
            if 0 <= x < line.shape[1] and 0 <= y < line.shape[0]:
                line[y, x] = 1
        else:
            cv2.polylines(line, [local.reshape(-1, 1, 2)], isClosed=False, color=1, thickness=1)
        out[y0:y1, x0:x1][_thicken(line.astype(bool), width)] = int(cls)
    return out


def _norm_name(name: str) -> str:
    """Class-name key: lower case, letters and digits only ("TV/Monitor" → "tvmonitor")."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _local(tag: str) -> str:
    """Element name without namespace, lower case."""
    return tag.rsplit("}", 1)[-1].strip().lower()


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in elem if _local(c.tag) == name), None)


def _number(elem: ET.Element | None, what: str, path: Path) -> float:
    text = (elem.text or "").strip() if elem is not None else ""
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}: expected a number in <{what}>, got {text!r}") from None


def read_scribble_xml(
    path: str | os.PathLike,
    class_names: Sequence[str],
    size: tuple[int, int] | None = None,
    width: int = 3,
    ignore_index: int = 255,
) -> np.ndarray:
    """Read one ScribbleSup XML annotation into a scribble map.

    The format is PASCAL-like: ``<annotation><size><width/><height/></size>`` and one
    ``<polygon><tag>class name</tag><point><X/><Y/></point>…</polygon>`` per scribble (tag
    ``background`` for the background). Element names and class names are matched without regard
    to case, whitespace or punctuation ("TV/Monitor" = "tvmonitor"). Points are 0-based pixel
    coordinates, drawn with :func:`rasterize_polylines` in file order.

    Args:
        path: the XML file.
        class_names: class names; a polygon's class id is the index of its tag here.
        size: (H, W); when None it is read from ``<size>``.
        width: stroke width in pixels.

    Returns:
        uint8 [H, W] scribble map, ``ignore_index`` where unlabelled.

    Raises:
        DataError naming the file: unreadable or malformed XML, missing ``<size>`` when ``size`` is
        None, an unknown class name, or a point without numeric X/Y.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"scribble XML file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"cannot parse scribble XML {path}: {err}") from err
    if size is None:
        size_el = _child(root, "size")
        if size_el is None or _child(size_el, "width") is None or _child(size_el, "height") is None:
            raise DataError(f"{path}: no <size><width>..</width><height>..</height></size>; pass size=(H, W)")
        size = (int(_number(_child(size_el, "height"), "height", path)),
                int(_number(_child(size_el, "width"), "width", path)))  # fmt: skip
    lookup = {_norm_name(name): i for i, name in enumerate(class_names)}
    polylines = []
    for poly in (e for e in root.iter() if _local(e.tag) == "polygon"):
        tag = _child(poly, "tag")
        name = (tag.text or "").strip() if tag is not None else ""
        if _norm_name(name) not in lookup:
            raise DataError(
                f"{path}: unknown class name {name!r} in <tag>; expected one of {list(class_names)}"
            )
        points = [
            (_number(_child(p, "x"), "X", path), _number(_child(p, "y"), "Y", path))
            for p in poly
            if _local(p.tag) == "point"
        ]
        if points:
            polylines.append((lookup[_norm_name(name)], np.asarray(points, dtype=np.float64)))
    return rasterize_polylines(polylines, size, width=width, ignore_index=ignore_index)


# ----------------------------------------------------------------------------------------------
# Dataset-level variants
# ----------------------------------------------------------------------------------------------


def _as_label_map(labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DataError(f"{what} must be a 2-D label map [H, W], got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if (
            not np.issubdtype(labels.dtype, np.integer)
            or labels.min(initial=0) < 0
            or labels.max(initial=0) > 255
        ):
            raise DataError(f"{what} must hold integer class ids in 0..255, got dtype {labels.dtype}")
        labels = labels.astype(np.uint8)
    return labels


def _read_meta(root: Path) -> dict:
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: expected a folder-format dataset")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{meta_path} is not valid JSON: {err}") from err
    for key in ("classes", "layout"):
        if key not in meta:
            raise DataError(f"{meta_path} has no {key!r} entry")
    return meta


def _read_split(root: Path, split: str) -> list[str]:
    split_path = root / "splits" / f"{split}.txt"
    if not split_path.is_file():
        raise DataError(f"split file not found: {split_path}")
    lines = (line.strip() for line in split_path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]  # blank lines and comments skipped


def _background_of(meta: dict) -> int | None:
    """``meta["background"]`` when present, else 0 when the first class is called background."""
    if "background" in meta:
        return meta["background"]
    return 0 if str(meta["classes"][0]).strip().lower() == "background" else None


def _image_seed(seed: int, sample_id: str) -> list[int]:
    """Per-image seed: the run's seed and a stable hash of the sample id."""
    return [int(seed), zlib.crc32(sample_id.encode("utf-8"))]


def write_scribble_variant(
    src_root: str | os.PathLike,
    dst_root: str | os.PathLike,
    op: Literal["shrink", "drop", "simulate"],
    ratio: float = 0.0,
    seed: int = 0,
    splits: str | Sequence[str] | None = None,
    *,
    width: int = 3,
    progress: bool = True,
) -> Path:
    """Write a copy of a folder-format dataset whose scribbles are shrunk, dropped or simulated.

    Only the new scribble PNGs are written (``dst_root/scribbles/{id}.png``, atomically), with
    ``dst_root/splits/<split>.txt`` for the processed splits and a ``dst_root/dataset.json`` equal
    to the source's except that every other layout entry (images, masks, tags, …) points back at
    the source through a *relative* path (e.g. ``../camvid/images/{id}.jpg``), or an absolute one
    when the two folders share nothing below the filesystem root; absolute entries stay as they
    are. Nothing is copied, so move a variant together with its source (the usual
    ``data/<name>-<op>`` beside ``data/<name>``). ``derived_from`` records op, ratio, seed and
    that pointer to the source.

    Args:
        src_root: source dataset folder (with dataset.json and splits/).
        dst_root: output folder; must differ from ``src_root``.
        op: ``"shrink"`` (:func:`shrink_scribbles`), ``"drop"`` (:func:`drop_scribbles`, per-image
            seed ``[seed, crc32(id)]``) or ``"simulate"`` (:func:`simulate_scribbles` from the
            masks, same per-image seed; ``ratio`` is ignored; background class from
            ``dataset.json``'s ``background``, else 0 when class 0 is "background", else none).
        ratio: shrink or drop ratio in [0, 1].
        splits: split names; default all ``splits/*.txt`` of the source.

    Returns:
        ``dst_root`` as a Path.
    """
    src, dst = Path(src_root), Path(dst_root)
    if op not in ("shrink", "drop", "simulate"):
        raise ValueError(f"op must be 'shrink', 'drop' or 'simulate', got {op!r}")
    ratio = _check_ratio(ratio)
    if src.resolve() == dst.resolve():
        raise ValueError(
            f"dst_root must differ from src_root ({src}); the source scribbles would be replaced"
        )
    meta = _read_meta(src)
    layout = dict(meta["layout"])
    needed = "masks" if op == "simulate" else "scribbles"
    if needed not in layout:
        raise DataError(f"{src / 'dataset.json'}: op {op!r} needs a {needed!r} entry in 'layout'")
    if splits is None:
        splits = sorted(p.stem for p in (src / "splits").glob("*.txt"))
        if not splits:
            raise DataError(f"no split files in {src / 'splits'}")
    elif isinstance(splits, str):
        splits = [splits]
    ignore = int(meta.get("ignore_index", 255))
    num_classes = len(meta["classes"])
    background = _background_of(meta)

    for split in splits:
        ids = _read_split(src, split)
        for sample_id in tqdm(ids, desc=f"{op} {split}", disable=not progress, unit="img"):
            source = read_label(src / layout[needed].format(id=sample_id))
            if op == "shrink":
                new = shrink_scribbles(source, ratio, ignore_index=ignore)
            elif op == "drop":
                new = drop_scribbles(source, ratio, seed=_image_seed(seed, sample_id), ignore_index=ignore)
            else:
                new = simulate_scribbles(
                    source, num_classes, ignore_index=ignore, seed=_image_seed(seed, sample_id),
                    width=width, background_class=background,
                )  # fmt: skip
            atomic_save_label_png(dst / "scribbles" / f"{sample_id}.png", new)
        atomic_write_text(dst / "splits" / f"{split}.txt", "".join(f"{i}\n" for i in ids))

    back = path_as_written_in(src.resolve(), dst.resolve())
    new_layout = {
        key: pattern if posixpath.isabs(pattern) else posixpath.normpath(posixpath.join(back, pattern))
        for key, pattern in layout.items()
        if key != "scribbles"
    }
    new_layout["scribbles"] = "scribbles/{id}.png"
    new_meta = {
        **meta,
        "name": f"{meta.get('name', src.name)}-{op}" + ("" if op == "simulate" else f"{ratio:g}"),
        "layout": new_layout,
        "derived_from": {"root": back, "op": op, "ratio": ratio, "seed": seed, "splits": list(splits)},
    }
    atomic_write_json(dst / "dataset.json", new_meta)
    return dst
