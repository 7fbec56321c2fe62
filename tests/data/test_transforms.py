"""Joint transforms: image and every map stay aligned; padding values; determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from weakseg.data.transforms import (
    IMAGENET_MEAN_RGB,
    ColorJitter,
    Compose,
    PadToSize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomRotate,
    RandomScale,
    Resize,
    build_eval_transform,
    build_train_transform,
)

# Colour of each class (index 255 = unlabelled gets its own colour too).
PALETTE = {0: (10, 200, 30), 1: (240, 20, 60), 2: (30, 60, 250), 3: (200, 200, 20), 255: (90, 250, 250)}


def encoded_sample(h: int = 64, w: int = 80, block: int = 16) -> dict[str, np.ndarray]:
    """A sample whose image colour, mask and float map all encode the same block label."""
    yy, xx = np.mgrid[:h, :w]
    label = ((yy // block) + 2 * (xx // block)) % 4
    label[(yy // block == 1) & (xx // block == 1)] = 255
    label = label.astype(np.uint8)
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for cls, colour in PALETTE.items():
        image[label == cls] = colour
    dist = np.where(label == 255, 7.0, label.astype(np.float32) * 10.0).astype(np.float32)
    return {"image": image, "mask": label, "scribble": label.copy(), "dist": dist, "id": "x"}


def interior(label: np.ndarray, valid: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood lies inside the array, has one label and no padding.

    The array edge is excluded too: after a crop, an edge pixel's interpolation may have used
    pixels that were cropped away."""
    size = 2 * radius + 1
    lab = label.astype(np.int32)
    same = ndimage.maximum_filter(lab, size, mode="nearest") == ndimage.minimum_filter(
        lab, size, mode="nearest"
    )
    return same & ndimage.binary_erosion(valid, np.ones((size, size)), border_value=0)


def assert_aligned(out: dict[str, np.ndarray]) -> int:
    """Every interior pixel's colour and float value match its mask label; returns their count."""
    keep = interior(out["mask"], out["valid"])
    np.testing.assert_array_equal(out["mask"], out["scribble"])
    for cls, colour in PALETTE.items():
        sel = keep & (out["mask"] == cls)
        if sel.any():
            assert np.abs(out["image"][sel].astype(int) - np.array(colour)).max() <= 1, cls
            expected = 7.0 if cls == 255 else cls * 10.0
            np.testing.assert_allclose(out["dist"][sel], expected, atol=1e-4)
    return int(keep.sum())


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_keeps_image_and_labels_aligned(seed: int) -> None:
    t = build_train_transform((48, 56), scale_range=(0.5, 2.0), hflip=0.5, rotate=30.0)
    out = t(encoded_sample(), rng=np.random.default_rng(seed))
    assert out["image"].shape == (48, 56, 3) and out["image"].dtype == np.uint8
    for key in ("mask", "scribble", "valid"):
        assert out[key].shape == (48, 56)
    assert out["dist"].dtype == np.float32 and out["valid"].dtype == np.bool_
    assert out["id"] == "x"
    # Nearest interpolation never invents label values.
    assert set(np.unique(out["mask"])) <= set(PALETTE)
    assert assert_aligned(out) > 100


@pytest.mark.parametrize(
    "transform",
    [
        Resize((37, 53)),
        Resize((130, 170)),
        RandomScale(0.3, 0.6),
        RandomRotate(45, p=1.0),
        RandomHorizontalFlip(p=1.0),
        RandomCrop((30, 30)),
    ],
    ids=lambda t: type(t).__name__,
)
def test_each_geometric_transform_keeps_alignment(transform) -> None:
    out = Compose([transform])(encoded_sample(), rng=np.random.default_rng(1))
    assert assert_aligned(out) > 50


def test_resize_sizes_and_nearest_labels() -> None:
    out = Resize((32, 40))(encoded_sample())
    assert out["image"].shape == (32, 40, 3) and out["mask"].shape == (32, 40)
    # Exact 2x downscale of 16-pixel blocks: labels are the blocks at 8 pixels.
    np.testing.assert_array_equal(out["mask"], encoded_sample(32, 40, 8)["mask"])
    assert out["valid"].all()


def test_crop_pads_with_ignore_zero_and_invalid() -> None:
    sample = encoded_sample(20, 24, 4)
    out = RandomCrop((32, 40))(sample, rng=np.random.default_rng(0))
    # Smaller than the crop in both dimensions: the image sits at the top-left.
    np.testing.assert_array_equal(out["image"][:20, :24], sample["image"])
    np.testing.assert_array_equal(out["mask"][:20, :24], sample["mask"])
    np.testing.assert_array_equal(out["dist"][:20, :24], sample["dist"])
    pad = np.ones((32, 40), dtype=bool)
    pad[:20, :24] = False
    np.testing.assert_array_equal(out["valid"], ~pad)
    assert (out["mask"][pad] == 255).all() and (out["scribble"][pad] == 255).all()
    assert (out["dist"][pad] == 0).all()
    assert (out["image"][pad] == np.array(IMAGENET_MEAN_RGB)).all()


def test_pad_to_size_custom_value_and_larger_input_kept() -> None:
    sample = encoded_sample(20, 24, 4)
    out = PadToSize((22, 24), pad_value=(1, 2, 3))(sample)
    assert out["image"].shape == (22, 24, 3)
    assert (out["image"][20:] == np.array([1, 2, 3])).all()
    assert (out["mask"][20:] == 255).all() and not out["valid"][20:].any() and out["valid"][:20].all()
    same = PadToSize((10, 10))(sample)
    np.testing.assert_array_equal(same["image"], sample["image"])


def test_rotation_fills_corners_as_padding() -> None:
    sample = encoded_sample()
    out = RandomRotate(40, p=1.0)(sample, rng=np.random.default_rng(3))
    assert not out["valid"][0, 0] and not out["valid"][-1, -1]
    corners = ~out["valid"]
    assert corners.sum() > 50
    assert (out["mask"][corners] == 255).all()
    # Bilinear maps blend with the padding along the edge; well inside the corners they are pure padding.
    deep = ndimage.binary_erosion(corners, np.ones((5, 5)))
    assert deep.sum() > 20
    assert (out["dist"][deep] == 0).all() and (out["image"][deep] == np.array(IMAGENET_MEAN_RGB)).all()
    assert out["valid"][32, 40]
    unrotated = RandomRotate(40, p=0.0)(sample, rng=np.random.default_rng(3))
    assert unrotated["valid"].all()
    np.testing.assert_array_equal(unrotated["mask"], sample["mask"])


def test_flip_is_exact_mirror() -> None:
    sample = encoded_sample()
    out = RandomHorizontalFlip(p=1.0)(sample)
    np.testing.assert_array_equal(out["image"], sample["image"][:, ::-1])
    np.testing.assert_array_equal(out["mask"], sample["mask"][:, ::-1])
    kept = RandomHorizontalFlip(p=0.0)(sample)
    np.testing.assert_array_equal(kept["mask"], sample["mask"])


def test_color_jitter_changes_image_only() -> None:
    sample = encoded_sample()
    out = ColorJitter(0.4, 0.4, 0.4, p=1.0)(sample, rng=np.random.default_rng(0))
    assert out["image"].dtype == np.uint8 and not np.array_equal(out["image"], sample["image"])
    np.testing.assert_array_equal(out["mask"], sample["mask"])
    np.testing.assert_array_equal(out["dist"], sample["dist"])
    with pytest.raises(ValueError, match="brightness"):
        ColorJitter(brightness=1.5)


def test_same_rng_seed_gives_same_output_and_seed_method() -> None:
    t = build_train_transform(40, rotate=20, color_jitter=0.3)
    a = t(encoded_sample(), rng=np.random.default_rng(7))
    b = t(encoded_sample(), rng=np.random.default_rng(7))
    c = t(encoded_sample(), rng=np.random.default_rng(8))
    for key in ("image", "mask", "dist", "valid"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])
    d = t.seed(5)(encoded_sample())
    e = t.seed(5)(encoded_sample())
    np.testing.assert_array_equal(d["image"], e["image"])


def test_eval_transform_is_identity_plus_valid() -> None:
    sample = encoded_sample()
    out = build_eval_transform()(sample)
    np.testing.assert_array_equal(out["image"], sample["image"])
    assert out["valid"].all() and "valid" not in sample
    assert build_eval_transform((32, 32))(sample)["mask"].shape == (32, 32)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        Resize((0, 4))
    with pytest.raises(ValueError, match="min_scale"):
        RandomScale(2.0, 1.0)
