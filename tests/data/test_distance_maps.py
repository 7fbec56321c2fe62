"""CDSP distance maps: against the CDSP authors' reference PNGs and a brute-force minimum."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.data.distance_maps import (
    BoundaryDistanceMap,
    ScribbleDistanceMap,
    boundary_distance_map,
    boundary_sources,
    scribble_distance_map,
    scribble_sources,
)
from weakseg.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomScale

VOC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "voc-samples" / "VOC2012"
SAMPLE = "2007_000032"


def brute_force_levels(sources: np.ndarray, lam: float) -> np.ndarray:
    """min over every source point of the Euclidean distance, as the authors' loop does."""
    ys, xs = np.nonzero(sources)
    gy, gx = np.mgrid[: sources.shape[0], : sources.shape[1]]
    dist = np.sqrt((gy[..., None] - ys) ** 2 + (gx[..., None] - xs) ** 2).min(axis=-1)
    return np.floor(np.minimum(255.0, math.sqrt(math.exp(lam)) * dist))


def test_scribble_map_matches_brute_force_and_excludes_background_scribbles() -> None:
    scribble = np.full((12, 15), 255, np.uint8)
    scribble[2, 3:9] = 1
    scribble[9, 10] = 2
    scribble[5:8, 0] = 0  # background scribble: not a source
    got = scribble_distance_map(scribble, lam=1.0, background=0)
    sources = scribble_sources(scribble, background=0)
    assert not sources[5:8, 0].any() and sources[2, 3:9].all()
    np.testing.assert_allclose(got, (255 - brute_force_levels(sources, 1.0)) / 255, atol=1e-6)
    assert got[2, 5] == 1.0 and got.dtype == np.float32
    # without a background class every scribble is a source
    assert scribble_distance_map(scribble, 1.0, background=None)[6, 0] == 1.0


def test_boundary_map_is_zero_on_the_inner_contour_and_matches_brute_force() -> None:
    pseudo = np.zeros((10, 12), np.uint8)
    pseudo[3:7, 4:9] = 5
    pseudo[0, 0] = 255  # ignored pixels are not foreground
    sources = boundary_sources(pseudo, background=0)
    expected = np.zeros_like(sources)
    expected[3:7, 4:9] = True
    expected[4:6, 5:8] = False  # interior
    np.testing.assert_array_equal(sources, expected)
    got = boundary_distance_map(pseudo, lam=6.0, background=0)
    np.testing.assert_allclose(got, brute_force_levels(sources, 6.0) / 255, atol=1e-6)
    assert got[3, 4] == 0 and got[0, 11] == pytest.approx(math.floor(math.exp(3) * math.sqrt(18)) / 255)


def test_maps_without_sources_follow_the_truncation() -> None:
    empty = np.full((4, 5), 255, np.uint8)
    assert not scribble_distance_map(empty, 1.0).any()  # d_s = 0: no weight
    assert (boundary_distance_map(np.zeros((4, 5), np.uint8), 6.0) == 1).all()  # no boundary: d_c = 1


def test_class_boundaries_without_background() -> None:
    pseudo = np.zeros((4, 6), np.uint8)
    pseudo[:, 3:] = 1
    pseudo[0, 0] = 255
    sources = boundary_sources(pseudo, background=None)
    assert sources[:, 2].all() and sources[:, 3].all()
    assert not sources[1:, [1, 4, 5]].any() and not sources[0, 0] and sources[0, 1]
    assert sources[1, 0]  # next to the ignored pixel (another value), like (0, 1)


@pytest.mark.skipif(not (VOC / "distance_map").is_dir(), reason="shared VOC samples not available")
def test_maps_equal_the_cdsp_reference_pngs() -> None:
    """The authors' uint8 maps (scribble λ_s = 1, pseudo-label boundary λ_c = 6) on every pixel."""
    scribble = np.array(Image.open(VOC / "pascal_2012_scribble" / f"{SAMPLE}.png"))
    pseudo = np.array(Image.open(VOC / "bmp_pseudolabel" / f"{SAMPLE}.png"))
    ref_s = np.array(Image.open(VOC / "distance_map" / f"{SAMPLE}.png"))[..., 0].astype(np.float32)
    ref_c = np.array(Image.open(VOC / "distance_pseudo" / f"{SAMPLE}.png"))[..., 0].astype(np.float32)
    ours_s = np.round(scribble_distance_map(scribble, 1.0, background=0) * 255)
    ours_c = np.round(boundary_distance_map(pseudo, 6.0, background=0) * 255)
    assert (ours_s == ref_s).mean() == 1.0
    assert (ours_c == ref_c).mean() == 1.0
    # a wrong reading (background scribbles as sources) visibly disagrees: the test can fail
    wrong = np.round(scribble_distance_map(scribble, 1.0, background=None) * 255)
    assert (wrong == ref_s).mean() < 0.9


def test_maps_follow_the_augmentations_of_their_sample() -> None:
    """Maps are computed on the raw sample and then move with it: after a flip and a crop every map
    pixel holds the raw map's value at the source position (read back from a position-coded image);
    after scaling, the scribble map is still ~1 on the scaled scribble."""
    scribble = np.full((40, 50), 255, np.uint8)
    scribble[10, 5:40] = 1
    pseudo = np.zeros((40, 50), np.uint8)
    pseudo[15:30, 10:35] = 1
    gy, gx = np.mgrid[:40, :50]
    image = np.stack([gx * 5, gy * 6, np.zeros_like(gx)], axis=-1).astype(np.uint8)  # position code
    sample = {"image": image, "scribble": scribble, "pseudo": pseudo}
    raw_s = ScribbleDistanceMap(1.0)(sample)
    raw_c = BoundaryDistanceMap(6.0)(sample)
    sample.update(dist_scribble=raw_s, dist_pseudo=raw_c)
    out = Compose([RandomHorizontalFlip(1.0), RandomCrop((32, 32))])(dict(sample), np.random.default_rng(3))
    src_x = out["image"][..., 0].astype(int) // 5
    src_y = out["image"][..., 1].astype(int) // 6
    assert src_x[0, 0] > src_x[0, -1]  # flipped
    np.testing.assert_allclose(out["dist_scribble"], raw_s[src_y, src_x])
    np.testing.assert_allclose(out["dist_pseudo"], raw_c[src_y, src_x])
    scaled = RandomScale(2.0, 2.0)(dict(sample), np.random.default_rng(0))
    on = scaled["scribble"] == 1
    assert on.any() and np.all(scaled["dist_scribble"][on] > 0.9)
