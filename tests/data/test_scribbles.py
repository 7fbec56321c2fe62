"""Tests of weakseg.data.scribbles: skeletons, simulation, shrink, drop, rasterizing, XML, variants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from weakseg.data.scribbles import (
    drop_count,
    drop_scribbles,
    rasterize_polylines,
    read_scribble_xml,
    scribble_components,
    shrink_scribbles,
    simulate_scribbles,
    skeletonize,
    write_scribble_variant,
)
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.io import DataError, read_label

EIGHT = np.ones((3, 3), dtype=bool)
RATIOS = [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.99, 1.0]


def naive_zhang_suen(binary: np.ndarray) -> np.ndarray:
    """Textbook Zhang–Suen thinning, pixel by pixel (the reference for the vectorised one)."""
    img = np.pad(binary.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            marked = []
            for r, c in zip(*np.nonzero(img)):
                p = [img[r - 1, c], img[r - 1, c + 1], img[r, c + 1], img[r + 1, c + 1],
                     img[r + 1, c], img[r + 1, c - 1], img[r, c - 1], img[r - 1, c - 1]]  # fmt: skip
                b = sum(p)
                a = sum(1 for i in range(8) if p[i] == 0 and p[(i + 1) % 8] == 1)
                if step == 0:
                    cond = p[0] * p[2] * p[4] == 0 and p[2] * p[4] * p[6] == 0
                else:
                    cond = p[0] * p[2] * p[6] == 0 and p[0] * p[4] * p[6] == 0
                if 2 <= b <= 6 and a == 1 and cond:
                    marked.append((r, c))
            for r, c in marked:
                img[r, c] = 0
            changed |= bool(marked)
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def blob_labels(seed: int, size: int = 40, num_classes: int = 3) -> np.ndarray:
    """A random label map of smooth blobs, uint8 [size, size] in [0, num_classes)."""
    noise = np.random.default_rng(seed).standard_normal((num_classes, size, size))
    field = ndimage.gaussian_filter(noise, (0.0, 3.0, 3.0))  # smooth in space, not across classes
    return field.argmax(axis=0).astype(np.uint8)


def components(labels: np.ndarray, ignore: int = 255) -> list[tuple[int, np.ndarray]]:
    out = []
    for cls in np.unique(labels):
        if cls == ignore:
            continue
        lab, n = ndimage.label(labels == cls, structure=EIGHT)
        out += [(int(cls), lab == k) for k in range(1, n + 1)]
    return out


# ----------------------------------------------------------------------------------------------
# skeletons
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skeletonize_matches_textbook_zhang_suen_per_region(seed: int) -> None:
    labels = blob_labels(seed, size=32)
    regions, _ = ndimage.label(labels == 0, structure=EIGHT)
    # every 8-connected region of every class gets its own id; touching regions must not interact
    offset = regions.max()
    for cls in (1, 2):
        lab, n = ndimage.label(labels == cls, structure=EIGHT)
        regions[lab > 0] = lab[lab > 0] + offset
        offset += n
    skeleton = skeletonize(regions)
    for rid in range(1, offset + 1):
        region = regions == rid
        expected = naive_zhang_suen(region)
        if expected.any():
            np.testing.assert_array_equal(skeleton & region, expected)
        else:  # erased by thinning: the deepest pixel stands in
            assert (skeleton & region).sum() == 1


def test_skeleton_of_bar_is_its_midline_and_tiny_regions_keep_a_pixel() -> None:
    regions = np.zeros((20, 40), dtype=np.int32)
    regions[5:10, 3:37] = 1  # a 5-pixel-thick bar
    regions[15:17, 10:12] = 2  # a 2x2 block, erased by Zhang–Suen itself
    skeleton = skeletonize(regions)
    rows, cols = np.nonzero(skeleton & (regions == 1))
    assert set(rows.tolist()) == {7}  # the middle row
    assert cols.max() - cols.min() >= 25
    assert (skeleton & (regions == 2)).sum() == 1
    assert not (skeleton & (regions == 0)).any()


# ----------------------------------------------------------------------------------------------
# simulation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_simulated_scribbles_agree_with_mask_and_skip_ignore(seed: int) -> None:
    mask = blob_labels(seed, size=64, num_classes=4)
    mask[20:26, :] = 255  # a void band
    scribble = simulate_scribbles(mask, 4, seed=seed, width=3, min_region_area=20)
    assert scribble.dtype == np.uint8 and scribble.shape == mask.shape
    labelled = scribble != 255
    assert labelled.any()
    np.testing.assert_array_equal(scribble[labelled], mask[labelled])
    assert not labelled[20:26].any()
    for cls, region in components(mask):
        has = (scribble[region] == cls).any()
        assert has == (region.sum() >= 20), (cls, int(region.sum()))


def test_simulation_is_reproducible_and_seed_dependent() -> None:
    mask = blob_labels(5, size=64, num_classes=4)
    a = simulate_scribbles(mask, 4, seed=7)
    np.testing.assert_array_equal(a, simulate_scribbles(mask, 4, seed=7))
    np.testing.assert_array_equal(a, simulate_scribbles(mask, 4, rng=np.random.default_rng(7)))
    assert not np.array_equal(a, simulate_scribbles(mask, 4, seed=8))


def test_simulated_stroke_crosses_a_disc_and_has_the_requested_width() -> None:
    yy, xx = np.mgrid[0:80, 0:80]
    mask = np.where((yy - 40) ** 2 + (xx - 40) ** 2 <= 25**2, 1, 0).astype(np.uint8)
    thin = simulate_scribbles(mask, 2, seed=0, width=1, length_fraction=(1.0, 1.0), background_class=None)
    disc_stroke = thin == 1
    # a disc's skeleton is about a point; the stroke is prolonged to 0.3 x radius from the edge
    assert disc_stroke.sum() >= 25
    # width 1 is a one-pixel chain: removing the stroke's own 8-neighbourhood skeleton changes nothing
    assert (skeletonize(disc_stroke.astype(np.int32)) == disc_stroke).all()
    wide = simulate_scribbles(mask, 2, seed=0, width=5, length_fraction=(1.0, 1.0), background_class=None)
    assert (wide == 1).sum() > 3 * disc_stroke.sum()


def test_background_class_gets_several_strokes_and_none_means_every_class_is_a_region() -> None:
    mask = np.zeros((60, 60), dtype=np.uint8)
    mask[20:40, 20:40] = 1
    with_bg = simulate_scribbles(mask, 2, seed=3, bg_strokes=4, width=1)
    single = simulate_scribbles(mask, 2, seed=3, background_class=None, width=1)
    assert (with_bg == 0).sum() > (single == 0).sum() > 0
    assert (single == 1).any() and (with_bg == 1).any()


def test_simulate_rejects_out_of_range_labels() -> None:
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[0, 0] = 7
    with pytest.raises(DataError, match="7"):
        simulate_scribbles(mask, 4, seed=0)
    with pytest.raises(ValueError):
        simulate_scribbles(np.zeros((10, 10), np.uint8), 4, seed=0, width=0)


# ----------------------------------------------------------------------------------------------
# shrink
# ----------------------------------------------------------------------------------------------


def sample_scribbles() -> np.ndarray:
    """A scribble map with straight, bent, looping, touching and one-pixel scribbles."""
    s = rasterize_polylines(
        [
            (0, np.array([[5.0, 5.0], [60.0, 5.0]])),
            (1, np.array([[5.0, 15.0], [30.0, 40.0], [60.0, 20.0]])),
            (2, np.array([[40.0, 50.0], [55.0, 50.0], [55.0, 60.0], [40.0, 60.0], [40.0, 50.0]])),
            (3, np.array([[10.0, 50.0], [25.0, 50.0]])),
            (0, np.array([[10.0, 53.0], [25.0, 53.0]])),  # touches the class-3 scribble
        ],
        (64, 64),
        width=3,
    )
    s[62, 62] = 1  # a one-pixel scribble
    return s


@pytest.mark.parametrize(
    "make", [sample_scribbles, lambda: simulate_scribbles(blob_labels(4, 64, 4), 4, seed=1)]
)
def test_shrink_is_nested_and_stays_inside_the_original(make) -> None:
    scribble = make()
    np.testing.assert_array_equal(shrink_scribbles(scribble, 0.0), scribble)
    previous, count = scribble, int((scribble != 255).sum())
    for ratio in RATIOS[1:]:
        shrunk = shrink_scribbles(scribble, ratio)
        kept = shrunk != 255
        np.testing.assert_array_equal(shrunk[kept], scribble[kept])  # same labels, original pixels only
        assert not (kept & (previous == 255)).any(), ratio  # subset of the result at the smaller ratio
        assert kept.sum() <= count
        previous, count = shrunk, int(kept.sum())


@pytest.mark.parametrize(
    "make", [sample_scribbles, lambda: simulate_scribbles(blob_labels(4, 64, 4), 4, seed=1)]
)
def test_shrink_ratio_one_leaves_one_small_blob_per_scribble(make) -> None:
    scribble = make()
    shrunk = shrink_scribbles(scribble, 1.0)
    for cls, comp in scribble_components(scribble):
        kept = comp & (shrunk == cls)
        _, n = ndimage.label(kept, structure=EIGHT)
        assert n == 1
        assert kept.sum() <= 3 * 3  # about one stroke-width cross-section (width 3)


def test_shrink_ratio_one_is_a_cross_section_or_a_pixel() -> None:
    for width, expected in ((1, 1), (3, 3), (5, 5)):
        scribble = rasterize_polylines([(2, np.array([[5.0, 10.0], [40.0, 10.0]]))], (20, 50), width=width)
        shrunk = shrink_scribbles(scribble, 1.0)
        rows, cols = np.nonzero(shrunk == 2)
        assert len(rows) == expected and len(set(cols.tolist())) == 1, width
        assert abs(cols[0] - 22.5) <= 1.0  # at the middle of the stroke


def test_shrink_keeps_the_middle_of_a_straight_stroke() -> None:
    scribble = rasterize_polylines([(1, np.array([[10.0, 4.0], [89.0, 4.0]]))], (9, 100), width=1)
    shrunk = shrink_scribbles(scribble, 0.5)
    cols = np.nonzero(shrunk[4] == 1)[0]
    assert (shrunk != 255).sum() == len(cols)
    assert abs(len(cols) - 40) <= 2  # half of 80 pixels
    assert abs((cols.min() + cols.max()) / 2 - 49.5) <= 1.0  # centred


def test_shrink_rejects_bad_ratio() -> None:
    with pytest.raises(ValueError, match="ratio"):
        shrink_scribbles(sample_scribbles(), 1.5)


# ----------------------------------------------------------------------------------------------
# drop
# ----------------------------------------------------------------------------------------------


def many_scribbles(n: int = 13) -> np.ndarray:
    lines = [(i % 4, np.array([[4.0, 4.0 + 6 * i], [50.0, 4.0 + 6 * i]])) for i in range(n)]
    return rasterize_polylines(lines, (6 * n + 8, 60), width=3)


def test_drop_count_rule() -> None:
    assert drop_count(10, 0.25) == 3  # 2.5 rounds half up
    assert drop_count(10, 0.24) == 2
    assert drop_count(13, 0.5) == 7
    assert drop_count(4, 1.0) == 3  # at least one scribble stays
    assert drop_count(4, 1.0, keep_at_least_one=False) == 4
    assert drop_count(0, 0.7) == 0
    assert drop_count(10, 0.35) == 4  # 3.5 despite 0.35 * 10 = 3.4999… in floating point


def test_drop_is_nested_whole_scribbles_and_reproducible() -> None:
    scribble = many_scribbles(13)
    comps = scribble_components(scribble)
    assert len(comps) == 13
    previous_kept = np.ones(13, dtype=bool)
    for ratio in RATIOS:
        dropped = drop_scribbles(scribble, ratio, seed=11)
        kept = np.array([(dropped[m] == c).all() for c, m in comps])
        gone = np.array([(dropped[m] == 255).all() for c, m in comps])
        assert (kept ^ gone).all()  # every scribble is kept or dropped whole
        assert (13 - kept.sum()) == drop_count(13, ratio)
        assert not (kept & ~previous_kept).any()  # nested: once dropped, stays dropped
        previous_kept = kept
        np.testing.assert_array_equal(dropped, drop_scribbles(scribble, ratio, seed=11))
    assert not np.array_equal(drop_scribbles(scribble, 0.5, seed=11), drop_scribbles(scribble, 0.5, seed=12))
    np.testing.assert_array_equal(drop_scribbles(scribble, 0.0, seed=1), scribble)
    assert (drop_scribbles(scribble, 1.0, seed=1, keep_at_least_one=False) == 255).all()


def test_scribble_components_order_and_classes() -> None:
    scribble = np.full((10, 10), 255, dtype=np.uint8)
    scribble[1, 1:4] = 2
    scribble[5, 5:9] = 0
    scribble[8, 0:3] = 2
    comps = scribble_components(scribble)
    assert [c for c, _ in comps] == [0, 2, 2]
    assert [int(m.sum()) for _, m in comps] == [4, 3, 3]
    assert comps[1][1][1, 1] and comps[2][1][8, 0]


# ----------------------------------------------------------------------------------------------
# rasterizing and XML
# ----------------------------------------------------------------------------------------------


def test_rasterize_polylines_width_overwrite_dot_and_clipping() -> None:
    out = rasterize_polylines([(3, np.array([[2.0, 5.0], [10.0, 5.0]]))], (12, 14), width=1)
    expected = np.full((12, 14), 255, np.uint8)
    expected[5, 2:11] = 3
    np.testing.assert_array_equal(out, expected)

    wide = rasterize_polylines([(3, np.array([[2.0, 5.0], [10.0, 5.0]]))], (12, 14), width=3)
    assert set(np.unique(np.nonzero(wide == 3)[0]).tolist()) == {4, 5, 6}
    assert (wide == 3).sum() == 3 * 11  # 3x3 pen: one extra column at each end

    both = rasterize_polylines(
        [(1, np.array([[0.0, 5.0], [13.0, 5.0]])), (2, np.array([[6.0, 0.0], [6.0, 11.0]]))],
        (12, 14),
        width=1,
    )
    assert both[5, 6] == 2 and both[5, 5] == 1  # later strokes overwrite earlier ones

    dot = rasterize_polylines([(4, np.array([[7.2, 3.8]]))], (12, 14), width=3)
    assert (dot == 4).sum() == 9 and dot[4, 7] == 4

    clipped = rasterize_polylines(
        [(1, np.array([[-20.0, 2.0], [5.0, 2.0]])), (2, np.array([[50.0, 50.0]]))], (12, 14), 1
    )
    np.testing.assert_array_equal(np.nonzero(clipped == 1)[1], np.arange(6))
    assert not (clipped == 2).any()
    with pytest.raises(ValueError):
        rasterize_polylines([(255, np.array([[1.0, 1.0]]))], (4, 4))


VOC_NAMES = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
    "motorbike person pottedplant sheep sofa train tvmonitor"
).split()

XML = """<?xml version="1.0"?>
<annotation>
  <filename>2007_000032.jpg</filename>
  <size><width> 40 </width><height>30</height></size>
  <polygon>
    <tag> Background </tag>
    <point><X>1</X><Y>1</Y></point>
    <point><X>38</X><Y>1</Y></point>
  </polygon>
  <Polygon>
    <Tag>AEROPLANE</Tag>
    <Point><x>5</x><y>10</y></Point>
    <Point><x>20</x><y>25</y></Point>
    <Point><x>35</x><y>12</y></Point>
  </Polygon>
  <polygon><tag>TV/Monitor</tag><point><X>30.4</X><Y>20.6</Y></point></polygon>
</annotation>
"""


def test_read_scribble_xml(tmp_path: Path) -> None:
    path = tmp_path / "2007_000032.xml"
    path.write_text(XML)
    out = read_scribble_xml(path, VOC_NAMES, width=3)
    expected = rasterize_polylines(
        [
            (0, np.array([[1, 1], [38, 1]], float)),
            (1, np.array([[5, 10], [20, 25], [35, 12]], float)),
            (20, np.array([[30.4, 20.6]])),
        ],
        (30, 40),
        width=3,
    )
    np.testing.assert_array_equal(out, expected)
    assert set(np.unique(out).tolist()) == {0, 1, 20, 255}
    assert read_scribble_xml(path, VOC_NAMES, size=(50, 60)).shape == (50, 60)


def test_read_scribble_xml_errors_name_the_file(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.xml"
    unknown.write_text(XML.replace("AEROPLANE", "spaceship"))
    with pytest.raises(DataError, match=r"unknown\.xml.*spaceship"):
        read_scribble_xml(unknown, VOC_NAMES)
    no_size = tmp_path / "nosize.xml"
    no_size.write_text(XML.replace("<size><width> 40 </width><height>30</height></size>", ""))
    with pytest.raises(DataError, match=r"nosize\.xml.*size"):
        read_scribble_xml(no_size, VOC_NAMES)
    assert read_scribble_xml(no_size, VOC_NAMES, size=(30, 40)).shape == (30, 40)
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><polygon>")
    with pytest.raises(DataError, match=r"broken\.xml"):
        read_scribble_xml(broken, VOC_NAMES)
    bad_point = tmp_path / "badpoint.xml"
    bad_point.write_text(XML.replace("<X>38</X>", "<X>abc</X>"))
    with pytest.raises(DataError, match=r"badpoint\.xml.*abc"):
        read_scribble_xml(bad_point, VOC_NAMES)
    with pytest.raises(DataError, match="missing"):
        read_scribble_xml(tmp_path / "missing.xml", VOC_NAMES)


# ----------------------------------------------------------------------------------------------
# dataset variants
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_synthetic_dataset(tmp_path / "src", num_train=3, num_val=2, size=(48, 48), seed=2)


@pytest.mark.parametrize("op", ["shrink", "drop", "simulate"])
def test_write_scribble_variant(tiny_dataset: Path, tmp_path: Path, op: str) -> None:
    dst = write_scribble_variant(
        tiny_dataset, tmp_path / "variants" / op, op, ratio=0.5, seed=4, progress=False
    )
    meta = json.loads((dst / "dataset.json").read_text())
    src_meta = json.loads((tiny_dataset / "dataset.json").read_text())
    assert meta["classes"] == src_meta["classes"]
    assert meta["layout"]["scribbles"] == "scribbles/{id}.png"
    assert meta["layout"]["images"] == "../../src/images/{id}.png"
    assert meta["derived_from"]["op"] == op
    assert (dst / meta["layout"]["tags"]).is_file()
    for split in ("train", "val"):
        ids = (dst / "splits" / f"{split}.txt").read_text().split()
        assert ids == (tiny_dataset / "splits" / f"{split}.txt").read_text().split()
        for sample_id in ids:
            assert (dst / meta["layout"]["images"].format(id=sample_id)).is_file()
            mask = read_label(dst / meta["layout"]["masks"].format(id=sample_id))
            source = read_label(tiny_dataset / "scribbles" / f"{sample_id}.png")
            new = read_label(dst / "scribbles" / f"{sample_id}.png")
            if op == "shrink":
                np.testing.assert_array_equal(new, shrink_scribbles(source, 0.5))
            elif op == "drop":
                assert not ((new != 255) & (new != source)).any()
                n = len(scribble_components(source))
                assert len(scribble_components(new)) == n - drop_count(n, 0.5)
            labelled = new != 255
            np.testing.assert_array_equal(new[labelled], mask[labelled])
    # re-running gives the same files (per-image seeds are stable)
    again = write_scribble_variant(tiny_dataset, tmp_path / "again", op, ratio=0.5, seed=4, progress=False)
    for path in sorted((dst / "scribbles").iterdir()):
        np.testing.assert_array_equal(read_label(path), read_label(again / "scribbles" / path.name))


def test_write_scribble_variant_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ"):
        write_scribble_variant(tiny_dataset, tiny_dataset, "shrink", 0.5)
    with pytest.raises(ValueError, match="op"):
        write_scribble_variant(tiny_dataset, tmp_path / "x", "grow", 0.5)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="dataset.json"):
        write_scribble_variant(tmp_path / "nowhere", tmp_path / "y", "shrink", 0.5)
    with pytest.raises(DataError, match="nosuchsplit"):
        write_scribble_variant(
            tiny_dataset, tmp_path / "z", "drop", 0.5, splits="nosuchsplit", progress=False
        )


def test_variant_only_processes_requested_split(tiny_dataset: Path, tmp_path: Path) -> None:
    dst = write_scribble_variant(tiny_dataset, tmp_path / "v", "drop", 0.3, splits="val", progress=False)
    assert sorted(p.name for p in (dst / "splits").iterdir()) == ["val.txt"]
    assert len(list((dst / "scribbles").iterdir())) == 2


# ----------------------------------------------------------------------------------------------
# real data
# ----------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_data_simulation_and_shrink(shared_data: Path) -> None:
    camvid = shared_data / "camvid"
    sample_id = (camvid / "splits" / "train.txt").read_text().split()[0]
    mask = read_label(camvid / "masks" / f"{sample_id}.png")
    scribble = simulate_scribbles(mask, 11, seed=0, background_class=None)
    labelled = scribble != 255
    np.testing.assert_array_equal(scribble[labelled], mask[labelled])
    for cls, region in components(mask):
        if region.sum() >= 20:
            assert (scribble[region] == cls).any()

    acdc = shared_data / "acdc-scribble"
    sample_id = (acdc / "splits" / "train.txt").read_text().split()[3]
    real = read_label(acdc / "scribbles" / f"{sample_id}.png")
    half, none = shrink_scribbles(real, 0.5), shrink_scribbles(real, 1.0)
    assert not ((half != 255) & (half != real)).any()
    assert not ((none != 255) & (half == 255)).any()
    assert (none != 255).sum() < (half != 255).sum() < (real != 255).sum()
