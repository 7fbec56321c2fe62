"""Dataset formats by name (``data.format``, ``--format``): the one place where a format name becomes a
dataset.

Each format is a :class:`~weakseg.data.base.SegDataset` subclass registered with
:func:`register_dataset` that implements :class:`DatasetFormat`: ``from_options(root, split, options)``
maps the format-independent :class:`DatasetOptions` to its constructor, ``splits(root)`` lists its split
names. :func:`create_dataset` and :func:`dataset_splits` are the entry points; ``DATASETS.descriptions()``
lists the formats (``weakseg datasets``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from weakseg.registry import Registry

if TYPE_CHECKING:
    from weakseg.data.base import SegDataset, TagsSource

ScribbleRequest = Literal["load", "if_present", "off"]


@dataclass(frozen=True)
class DatasetOptions:
    """Which label maps a dataset opened by format name loads.

    Attributes:
        load_masks: the dense masks (VOC, COCO: they must exist; folder: when its layout has them).
        scribbles: "load" (VOC: the folder of ``scribble_format`` must exist), "if_present", "off", or
            None for the format's default: the folder format loads them when its layout has them, VOC
            does not load them.
        pseudo: the folder format's pseudo-labels (when its layout has them).
        tags_source: where image-level tags come from (see :class:`~weakseg.data.base.SegDataset`).
        scribble_format, scribble_width: VOC's scribbles, "png" (``pascal_2012_scribble``) or ScribbleSup
            "xml" rasterised with strokes this many pixels wide.
    """

    load_masks: bool = True
    scribbles: ScribbleRequest | None = None
    pseudo: bool = True
    tags_source: TagsSource = "auto"
    scribble_format: str = "png"
    scribble_width: int = 3


class DatasetFormat(Protocol):
    """What a registered dataset format provides (class methods of its dataset class)."""

    @classmethod
    def from_options(cls, root: str | os.PathLike, split: str, options: DatasetOptions) -> SegDataset:
        """The dataset of ``split`` under ``root`` (no transform) with the label maps ``options`` asks for."""
        ...

    @staticmethod
    def splits(root: str | os.PathLike) -> list[str]:
        """The split names of the dataset at ``root``."""
        ...


#: format name -> dataset class (a :class:`DatasetFormat`)
DATASETS: Registry[type[DatasetFormat]] = Registry("dataset format")


def register_dataset(name: str, *, description: str | None = None) -> Callable[[type[Any]], type[Any]]:
    """Class decorator adding a dataset class that implements :class:`DatasetFormat` under ``name``."""
    return DATASETS.register(name, description=description)


def create_dataset(fmt: str, root: str | os.PathLike, split: str, **options: Any) -> SegDataset:
    """The dataset of format ``fmt`` (:data:`DATASETS`) at ``root``, split ``split``, without transform;
    ``options`` are the fields of :class:`DatasetOptions`."""
    return DATASETS[fmt].from_options(root, split, DatasetOptions(**options))


def dataset_splits(fmt: str, root: str | os.PathLike) -> list[str]:
    """The split names of the dataset of format ``fmt`` at ``root``."""
    return DATASETS[fmt].splits(root)


__all__ = [
    "DATASETS",
    "DatasetFormat",
    "DatasetOptions",
    "ScribbleRequest",
    "create_dataset",
    "dataset_splits",
    "register_dataset",
]
