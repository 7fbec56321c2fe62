"""PASCAL VOC 2012 with the SBD augmented masks and ScribbleSup scribbles.

Expected layout under ``root`` (the ``VOC2012`` folder)::

    JPEGImages/<id>.jpg
    SegmentationClassAug/<id>.png      dense masks: 0 background, 1..20, 255 ignore
    ImageSets/SegmentationAug/{train_aug,train,val}.txt    (or ImageSets/Segmentation/<split>.txt)
    pascal_2012_scribble/<id>.png      ScribbleSup scribbles as PNG (0, 1..20, 255 unlabelled)
    pascal_2012/<id>.xml               ScribbleSup scribbles as XML polylines
    cls_labels.npy                     optional IRN/SFC image tags (used by tags_source="auto")

``SegmentationClassAug`` is the usual "train_aug" set of 10,582 training masks: the VOC 2012
``SegmentationClass`` PNGs (palette images whose indices are the class ids, read as such) plus
the SBD masks (Hariharan et al. 2011) converted from ``.mat``. :func:`convert_sbd_to_png`
converts SBD's ``cls/*.mat`` files. Split files may hold one id per line or DeepLab's
``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` pairs; the id is taken from the first
field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from weakseg.data.base import (
    LabelSource,
    PathPattern,
    SegDataset,
    TagsSource,
    pattern_source,
    read_split_file,
)
from weakseg.data.formats import DatasetOptions, register_dataset
from weakseg.io import DataError, atomic_save_label_png

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
SPLIT_DIRS = ("ImageSets/SegmentationAug", "ImageSets/Segmentation")
SCRIBBLE_DIRS = {"png": "pascal_2012_scribble", "xml": "pascal_2012"}
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")


class XmlScribbleReader:
    """Rasterise a ScribbleSup XML file to uint8 [H, W] (255 unlabelled) at the image size.

    A class (not a closure) so datasets stay picklable for DataLoader workers.
    """

    def __init__(self, class_names: Iterable[str], width: int) -> None:
        self.class_names = list(class_names)
        self.width = int(width)

    def __call__(self, path: Path, size: tuple[int, int] | None) -> np.ndarray:
        from weakseg.data.scribbles import read_scribble_xml

        return read_scribble_xml(path, self.class_names, size, width=self.width)


def voc_splits(root: str | os.PathLike) -> list[str]:
    """Split names with a list file under ``root/ImageSets/{SegmentationAug,Segmentation}``."""
    root = Path(root)
    return sorted({p.stem for d in SPLIT_DIRS if (root / d).is_dir() for p in (root / d).glob("*.txt")})


def _split_file(root: Path, split: str) -> Path:
    for folder in SPLIT_DIRS:
        path = root / folder / f"{split}.txt"
        if path.is_file():
            return path
    return root / SPLIT_DIRS[0] / f"{split}.txt"


def _first_field_id(line: str) -> str:
    """The sample id of a split-file line: the first field, without folder and suffix."""
    return Path(line.split()[0]).stem


@register_dataset("voc", description="PASCAL VOC 2012 (+ SBD masks, + ScribbleSup scribbles), 21 classes")
class VOCDataset(SegDataset):
    """PASCAL VOC 2012 (+ SBD masks, + ScribbleSup scribbles); 21 classes, background = 0.

    Args:
        root: the ``VOC2012`` folder.
        split: e.g. "train_aug", "train", "val" (a file in ``ImageSets/SegmentationAug`` or
            ``ImageSets/Segmentation``).
        scribbles: "png" (``pascal_2012_scribble``), "xml" (ScribbleSup XML in ``pascal_2012``,
            rasterised with strokes ``scribble_width`` pixels wide) or None.
        load_masks: include the dense masks (``mask_dir``; default ``SegmentationClassAug``, else
            ``SegmentationClass``). They stay available as a tags source when not loaded.
        tags_source: "auto" (``root/cls_labels.npy`` when present → scribbles → masks), "masks",
            "scribbles", a ``.npy`` / ``.csv`` path, or "none".
        scribble_dir: override the scribble folder name.
    """

    @classmethod
    def from_options(cls, root: str | os.PathLike, split: str, options: DatasetOptions) -> VOCDataset:
        """VOC (:class:`~weakseg.data.formats.DatasetFormat`); scribbles in ``options.scribble_format``
        when asked to "load" them, or "if_present" and their folder exists (by default not)."""
        fmt = options.scribble_format
        load = options.scribbles == "load" or (
            options.scribbles == "if_present" and (Path(root) / SCRIBBLE_DIRS.get(fmt, fmt)).is_dir()
        )
        return cls(
            root,
            split,
            scribbles=fmt if load else None,  # type: ignore[arg-type]
            scribble_width=options.scribble_width,
            load_masks=options.load_masks,
            tags_source=options.tags_source,
        )

    splits = staticmethod(voc_splits)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train_aug",
        transform: Any = None,
        scribbles: Literal["png", "xml"] | None = "png",
        scribble_width: int = 3,
        load_masks: bool = True,
        tags_source: TagsSource = "auto",
        mask_dir: str | None = None,
        scribble_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"VOC root folder not found: {root}")
        if scribbles not in ("png", "xml", None):
            raise ValueError(f"scribbles must be 'png', 'xml' or None, got {scribbles!r}")
        ids = read_split_file(_split_file(root, split), split, voc_splits(root), parse=_first_field_id)
        super().__init__(
            name="voc2012",
            root=root,
            split=split,
            classes=VOC_CLASSES,
            ids=ids,
            image_path=PathPattern(root, "JPEGImages/{id}.jpg"),
            image_mode="RGB",
            background=0,
            transform=transform,
            seed=seed,
        )
        masks = self._find_mask_dir(mask_dir, required=load_masks)
        if masks is not None:
            self._add_source(pattern_source("mask", root, f"{masks}/{{id}}.png", emit=load_masks))
        if scribbles is not None:
            folder = root / (scribble_dir or SCRIBBLE_DIRS[scribbles])
            if not folder.is_dir():
                raise DataError(f"scribble folder not found: {folder} (scribbles={scribbles!r})")
            if scribbles == "png":
                self._add_source(pattern_source("scribble", folder, "{id}.png"))
            else:
                reader = XmlScribbleReader(VOC_CLASSES, scribble_width)
                self._add_source(LabelSource("scribble", PathPattern(folder, "{id}.xml"), reader))
        cls_labels = root / "cls_labels.npy"
        self._setup_tags(tags_source, cls_labels if cls_labels.is_file() else None)

    def _find_mask_dir(self, mask_dir: str | None, required: bool) -> str | None:
        candidates = (mask_dir,) if mask_dir else MASK_DIRS
        for name in candidates:
            if (self.root / name).is_dir():
                return name
        if required:
            tried = ", ".join(str(self.root / c) for c in candidates)
            raise DataError(
                f"mask folder not found (tried {tried}); pass load_masks=False for data without masks"
            )
        return None


def read_sbd_mat(path: str | os.PathLike) -> np.ndarray:
    """The class mask uint8 [H, W] (0 background, 1..20) of an SBD ``cls/<id>.mat`` file."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path, struct_as_record=False, squeeze_me=True)
        seg = mat["GTcls"].Segmentation
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise DataError(f"cannot read SBD mask {path} (expected a struct GTcls.Segmentation): {err}") from err
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.min(initial=0) < 0 or seg.max(initial=0) > 255:
        raise DataError(f"SBD mask {path} is not a 2-D map of class ids (shape {seg.shape})")
    return seg.astype(np.uint8)


def convert_sbd_to_png(
    sbd_cls_dir: str | os.PathLike, out_dir: str | os.PathLike, ids: Iterable[str] | None = None
) -> int:
    """Convert SBD ``<sbd_cls_dir>/<id>.mat`` masks to ``<out_dir>/<id>.png`` (e.g. into
    ``SegmentationClassAug``); ``ids`` defaults to every ``.mat`` file. Returns the count."""
    src, dst = Path(sbd_cls_dir), Path(out_dir)
    names = sorted(ids) if ids is not None else sorted(p.stem for p in src.glob("*.mat"))
    if not names:
        raise DataError(f"no SBD .mat files found in {src}")
    for sid in names:
        atomic_save_label_png(dst / f"{sid}.png", read_sbd_mat(src / f"{sid}.mat"))
    return len(names)
