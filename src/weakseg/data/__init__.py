"""Datasets, image-level tags and joint augmentations.

Every dataset returns the same sample dict (:class:`~weakseg.data.sample.Sample`): ``image`` float32
[3, H, W], label maps int64 [H, W] with 255 = ignore, ``valid`` bool [H, W], ``tags`` float32 [K],
``id`` and ``size``; a training batch is a :class:`~weakseg.data.sample.Batch`. Dataset formats are
opened by name from one registry (:mod:`weakseg.data.formats`: ``create_dataset``, ``register_dataset``;
``weakseg datasets`` lists them).
"""

from weakseg.data.base import IGNORE_INDEX, LabelSource, PathPattern, SegDataset, to_tensors
from weakseg.data.coco import COCO_CLASSES, COCODataset, coco_category_to_index, write_coco_label_pngs
from weakseg.data.folder import (
    DatasetSpec,
    FolderDataset,
    list_splits,
    read_dataset_json,
    write_dataset_json,
    write_split,
)
from weakseg.data.formats import DATASETS, DatasetOptions, create_dataset, dataset_splits, register_dataset
from weakseg.data.sample import Batch, Sample
from weakseg.data.tags import load_tags_file, tags_from_label, write_tags_csv
from weakseg.data.transforms import (
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
from weakseg.data.voc import VOC_CLASSES, VOCDataset, convert_sbd_to_png

__all__ = [
    "COCO_CLASSES",
    "DATASETS",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "Batch",
    "COCODataset",
    "ColorJitter",
    "Compose",
    "DatasetOptions",
    "DatasetSpec",
    "FolderDataset",
    "LabelSource",
    "PadToSize",
    "PathPattern",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomRotate",
    "RandomScale",
    "Resize",
    "Sample",
    "SegDataset",
    "VOCDataset",
    "build_eval_transform",
    "build_train_transform",
    "coco_category_to_index",
    "convert_sbd_to_png",
    "create_dataset",
    "dataset_splits",
    "list_splits",
    "load_tags_file",
    "read_dataset_json",
    "register_dataset",
    "tags_from_label",
    "to_tensors",
    "write_coco_label_pngs",
    "write_dataset_json",
    "write_split",
    "write_tags_csv",
]
