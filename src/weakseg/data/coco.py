"""MS COCO 2014 semantic segmentation through label PNGs (81 classes: background + 80).

Expected layout under ``root``::

    images/train2014/COCO_train2014_000000000009.jpg    (and images/val2014/...)
    labels/train2014/COCO_train2014_000000000009.png    uint8: 0 background, 1..80, 255 ignore
    splits/train2014.txt, splits/val2014.txt             optional; else every PNG in labels/<split>

Making the label PNGs from the official instance annotations
(``annotations/instances_train2014.json``): every annotation is rasterised to a binary mask
(with pycocotools this is ``coco.annToMask(ann)``; polygons and RLE alike), its category id
(1..90, with gaps) is mapped to a contiguous class 1..80 with :func:`coco_category_to_index`
and painted into a map that starts as 0 (background). Where instances overlap, either the later
annotation wins or the pixel becomes 255 (ignore) when the classes disagree; crowd regions
(``iscrowd`` = 1) are usually set to 255 where no other instance covers them.

:func:`write_coco_label_pngs` does all of this without pycocotools::

    from weakseg.data.coco import write_coco_label_pngs
    write_coco_label_pngs("annotations/instances_train2014.json", "coco/labels/train2014")

A polygon covers the pixels whose centre lies inside it (pycocotools samples at nearly the same
points, so edges may differ by a pixel at most); uncompressed RLE (``counts`` a list, as the
official crowd annotations are stored) is run-length decoded in column-major order; compressed
RLE (``counts`` a string, as in result files) is decoded from COCO's 6-bit character encoding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from weakseg.data.base import (
    PathPattern,
    SegDataset,
    TagsSource,
    check_split_ids,
    pattern_source,
    read_split_file,
)
from weakseg.data.formats import DatasetOptions, register_dataset
from weakseg.io import DataError, atomic_save_label_png

COCO_CLASSES: tuple[str, ...] = (
    "background",
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# The official category ids 1..90 that are unused in the 2014/2017 instance annotations.
_UNUSED_CATEGORY_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
COCO_SPLITS = ("train2014", "val2014")


def coco_category_to_index() -> dict[int, int]:
    """Map the 80 official COCO category ids (1..90, non-contiguous) to class indices 1..80."""
    used = [c for c in range(1, 91) if c not in _UNUSED_CATEGORY_IDS]
    return {cat: i for i, cat in enumerate(used, start=1)}


def coco_splits(root: str | os.PathLike) -> list[str]:
    """Split names with a list file in ``root/splits`` or a folder in ``root/labels``."""
    root = Path(root)
    names = {p.stem for p in (root / "splits").glob("*.txt")} if (root / "splits").is_dir() else set()
    if (root / "labels").is_dir():
        names |= {p.name for p in (root / "labels").iterdir() if p.is_dir()}
    return sorted(names)


@register_dataset("coco", description="COCO 2014 from label PNGs (weakseg data coco-labels), 81 classes")
class COCODataset(SegDataset):
    """COCO 2014 semantic segmentation from label PNGs (see the module doc); background = 0.

    Args:
        root: the folder holding ``images/`` and ``labels/``.
        split: "train2014" or "val2014" (any name with ``splits/<split>.txt`` or ``labels/<split>/``).
        load_masks: include the label PNGs as "mask" (they remain the tags source otherwise).
        tags_source: "auto"/"masks" (from the label PNGs), a ``.npy`` / ``.csv`` path, or "none".
    """

    @classmethod
    def from_options(cls, root: str | os.PathLike, split: str, options: DatasetOptions) -> COCODataset:
        """COCO (:class:`~weakseg.data.formats.DatasetFormat`): masks and tags only."""
        return cls(root, split, load_masks=options.load_masks, tags_source=options.tags_source)

    splits = staticmethod(coco_splits)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train2014",
        transform: Any = None,
        load_masks: bool = True,
        tags_source: TagsSource = "auto",
        seed: int = 0,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"COCO root folder not found: {root}")
        label_dir = root / "labels" / split
        split_file = root / "splits" / f"{split}.txt"
        if split_file.is_file() or not label_dir.is_dir():
            ids = read_split_file(split_file, split, coco_splits(root))
        else:
            ids = sorted(p.stem for p in label_dir.glob("*.png"))
            if not ids:
                raise DataError(
                    f"split {split!r} is empty: no split file {split_file} and no PNG in {label_dir}"
                )
            check_split_ids(ids, label_dir)
        super().__init__(
            name="coco2014",
            root=root,
            split=split,
            classes=COCO_CLASSES,
            ids=ids,
            image_path=PathPattern(root / "images" / split, "{id}.jpg"),
            image_mode="RGB",
            background=0,
            transform=transform,
            seed=seed,
        )
        if label_dir.is_dir():
            self._add_source(pattern_source("mask", label_dir, "{id}.png", emit=load_masks))
        elif load_masks:
            raise DataError(f"label folder not found: {label_dir}; pass load_masks=False for images only")
        self._setup_tags(tags_source)


# ---------------------------------------------------------------------- label PNG writer
def decode_rle_counts(counts: Sequence[int] | str, height: int, width: int) -> np.ndarray:
    """Decode COCO RLE into a bool mask [H, W].

    ``counts`` alternates runs of 0s and 1s (starting with 0s) over the pixels in column-major
    order; as a string it is COCO's compressed form (6-bit characters offset by 48, 5 data bits
    plus a continuation bit, and from the third run on, deltas to the run two places before).
    """
    runs = _decode_rle_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE counts sum to {sum(runs)} (or are negative); expected {height}x{width}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T


def _decode_rle_string(s: str) -> list[int]:
    runs: list[int] = []
    pos = 0
    while pos < len(s):
        value, shift, more = 0, 0, True
        while more:
            c = ord(s[pos]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:  # sign bit of the last chunk: negative number
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _fill_polygon(mask: np.ndarray, xy: np.ndarray) -> None:
    """OR into ``mask`` (bool [H, W]) the pixels whose centre (c + 0.5, r + 0.5) lies inside the
    polygon ``xy`` [N, 2] (even-odd rule), scanning one row of pixel centres at a time."""
    h, w = mask.shape
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    r_lo, r_hi = max(0, int(np.floor(y0.min()))), min(h, int(np.ceil(y0.max())) + 1)
    if r_lo >= r_hi:
        return
    yc = np.arange(r_lo, r_hi, dtype=np.float64)[:, None] + 0.5  # [R, 1]
    # Half-open crossing rule: a vertex exactly on a scan line is counted once.
    crosses = ((y0 <= yc) & (yc < y1)) | ((y1 <= yc) & (yc < y0))  # [R, E]
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.where(crosses, x0 + (yc - y0) * (x1 - x0) / (y1 - y0), np.inf)
    xs.sort(axis=1)
    starts, ends = xs[:, 0::2], xs[:, 1::2]
    starts = starts[:, : ends.shape[1]]
    ok = np.isfinite(ends)
    # Columns c with start <= c + 0.5 < end.
    c0 = np.clip(np.ceil(starts[ok] - 0.5), 0, w).astype(np.int64)
    c1 = np.clip(np.ceil(ends[ok] - 0.5), 0, w).astype(np.int64)
    rows = np.broadcast_to(np.arange(r_hi - r_lo)[:, None], ok.shape)[ok]
    diff = np.zeros((r_hi - r_lo, w + 1), dtype=np.int32)
    np.add.at(diff, (rows, c0), 1)
    np.add.at(diff, (rows, c1), -1)
    mask[r_lo:r_hi] |= np.cumsum(diff, axis=1)[:, :w] > 0


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ([x1, y1, x2, y2, ...]; pixel i spans [i, i + 1)) into a bool
    mask [H, W]: a pixel is inside when its centre is (the union over the polygons)."""
    mask = np.zeros((height, width), dtype=bool)
    for poly in polygons:
        flat = np.asarray(poly, dtype=np.float64).reshape(-1)
        if flat.size % 2:
            raise ValueError(f"a polygon needs an even number of coordinates, got {flat.size}")
        if flat.size >= 6:
            _fill_polygon(mask, flat.reshape(-1, 2))
    return mask


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The bool mask [H, W] of one annotation's ``segmentation`` (polygons or RLE)."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        h, w = segmentation.get("size", (height, width))
        if (h, w) != (height, width):
            raise ValueError(f"RLE size {h}x{w} differs from the image size {height}x{width}")
        return decode_rle_counts(segmentation["counts"], height, width)
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def coco_label_map(
    annotations: Iterable[dict[str, Any]],
    height: int,
    width: int,
    overlap: Literal["later", "ignore"] = "later",
    crowd: Literal["ignore", "label"] = "ignore",
) -> np.ndarray:
    """Paint one image's instance annotations into a uint8 [H, W] class map (0 bg, 1..80, 255).

    ``overlap``: "later" lets a later annotation overwrite earlier ones; "ignore" marks pixels
    claimed by two different classes 255. ``crowd``: "ignore" sets crowd regions not covered by
    another instance to 255; "label" paints them like any instance.
    """
    cat_to_index = coco_category_to_index()
    label = np.zeros((height, width), dtype=np.uint8)
    crowd_masks = []
    for ann in annotations:
        cls = cat_to_index.get(int(ann["category_id"]))
        if cls is None:
            raise ValueError(f"unknown COCO category id {ann['category_id']}")
        m = annotation_mask(ann["segmentation"], height, width)
        if ann.get("iscrowd", 0) and crowd == "ignore":
            crowd_masks.append(m)
        elif overlap == "later":
            label[m] = cls
        else:
            conflict = m & (label != 0) & (label != cls)
            label[m & (label == 0)] = cls
            label[conflict] = 255
    for m in crowd_masks:
        label[m & (label == 0)] = 255
    return label


def write_coco_label_pngs(
    annotation_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    overlap: Literal["later", "ignore"] = "later",
    crowd: Literal["ignore", "label"] = "ignore",
    progress: bool = False,
) -> list[str]:
    """Write ``out_dir/<image stem>.png`` for every image of a COCO instances JSON.

    Images without annotations become all background. Returns the written ids (file stems) in
    the JSON's image order. Raises :class:`DataError` naming the JSON file on malformed entries.
    """
    path = Path(annotation_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(img["id"]): img for img in data["images"]}
        anns: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        for ann in data.get("annotations", []):
            anns[int(ann["image_id"])].append(ann)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"cannot read COCO annotations {path}: {err!r}") from err
    items: Iterable[tuple[int, dict[str, Any]]] = images.items()
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(images), desc="COCO labels", unit="image")
    written = []
    for image_id, img in items:
        sid = Path(img["file_name"]).stem
        try:
            label = coco_label_map(anns[image_id], int(img["height"]), int(img["width"]), overlap, crowd)
        except (KeyError, ValueError) as err:
            raise DataError(f"{path}: image {image_id} ({img.get('file_name')}): {err}") from err
        atomic_save_label_png(Path(out_dir) / f"{sid}.png", label)
        written.append(sid)
    return written
