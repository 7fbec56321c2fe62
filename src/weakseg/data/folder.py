"""The generic folder format: a ``dataset.json`` beside the files and ``splits/<split>.txt``.

Layout of a dataset root::

    dataset.json
    splits/train.txt            one sample id per line
    images/<id>.png             (any patterns; see "layout" below)
    masks/<id>.png              uint8 class ids, 255 = ignore
    scribbles/<id>.png          uint8 class ids, 255 = unlabelled

``dataset.json``::

    {
      "name": "acdc-scribble",
      "classes": ["background", "right ventricle", "myocardium", "left ventricle"],
      "ignore_index": 255,
      "image_mode": "L",                       # "RGB" (default) or "L" (grey, replicated to 3 channels)
      "layout": {"images": "images/{id}.png",  # required; the others are optional
                 "masks": "masks/{id}.png", "scribbles": "scribbles/{id}.png",
                 "pseudo": "pseudo/{id}.png", "tags": "tags.csv"},
      "background": 0                          # optional, see below
    }

Patterns are relative to the root and contain ``{id}``; ``tags`` is a file (``.csv`` or ``.npy``,
see :mod:`weakseg.data.tags`). ``background`` is the index of the background class or null
(no background, e.g. CamVid); when absent it is 0 if the first class is named "background" and
null otherwise. Other top-level keys (``source``, ``license``, ...) are kept but not used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from weakseg.data.base import (
    IGNORE_INDEX,
    PathPattern,
    SegDataset,
    TagsSource,
    pattern_source,
    read_split_file,
)
from weakseg.data.formats import DatasetOptions, register_dataset
from weakseg.data.tags import resolve_background
from weakseg.io import DataError, atomic_write_json, atomic_write_text, read_json

DATASET_JSON = "dataset.json"
SPLITS_DIR = "splits"
# layout key -> sample key of the label map it holds
LABEL_LAYOUT_KEYS = {"masks": "mask", "scribbles": "scribble", "pseudo": "pseudo"}
LAYOUT_KEYS = ("images", *LABEL_LAYOUT_KEYS, "tags")


@dataclass(frozen=True)
class DatasetSpec:
    """A validated ``dataset.json``."""

    name: str
    classes: list[str]
    layout: dict[str, str]
    ignore_index: int = IGNORE_INDEX
    image_mode: str = "RGB"
    background: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "ignore_index": self.ignore_index,
            "image_mode": self.image_mode,
            "layout": dict(self.layout),
            "background": self.background,
            **self.extra,
        }


def _expect(cond: bool, source: str, message: str) -> None:
    if not cond:
        raise DataError(f"{source}: {message}")


def parse_dataset_spec(obj: Any, source: str, default_name: str = "dataset") -> DatasetSpec:
    """Validate a parsed ``dataset.json`` object; ``source`` names the file in error messages."""
    _expect(isinstance(obj, dict), source, f"expected a JSON object, got {type(obj).__name__}")
    for key in ("classes", "layout"):
        _expect(key in obj, source, f"missing required key {key!r}")
    classes = obj["classes"]
    _expect(
        isinstance(classes, list)
        and len(classes) > 0
        and all(isinstance(c, str) and c.strip() for c in classes),
        source,
        "'classes' must be a non-empty list of non-empty strings",
    )
    _expect(len(set(classes)) == len(classes), source, f"'classes' has duplicate names: {classes}")
    _expect(len(classes) <= 255, source, f"at most 255 classes fit in uint8 label maps, got {len(classes)}")
    name = obj.get("name", default_name)
    _expect(isinstance(name, str) and name != "", source, "'name' must be a non-empty string")
    ignore = obj.get("ignore_index", IGNORE_INDEX)
    _expect(
        isinstance(ignore, int) and not isinstance(ignore, bool) and 0 <= ignore <= 255,
        source,
        f"'ignore_index' must be an integer in 0..255, got {ignore!r}",
    )
    _expect(
        ignore == IGNORE_INDEX or ignore >= len(classes),
        source,
        f"'ignore_index' {ignore} collides with a class index (0..{len(classes) - 1})",
    )
    mode = obj.get("image_mode", "RGB")
    _expect(mode in ("RGB", "L"), source, f'\'image_mode\' must be "RGB" or "L", got {mode!r}')
    layout = obj["layout"]
    _expect(isinstance(layout, dict), source, "'layout' must be an object of patterns")
    _expect("images" in layout, source, "'layout' is missing the required key 'images'")
    for key, pattern in layout.items():
        _expect(
            key in LAYOUT_KEYS, source, f"unknown layout key {key!r}; expected some of {list(LAYOUT_KEYS)}"
        )
        _expect(
            isinstance(pattern, str) and pattern != "", source, f"layout {key!r} must be a non-empty string"
        )
        if key != "tags":
            _expect("{id}" in pattern, source, f"layout {key!r} pattern {pattern!r} must contain '{{id}}'")
    background = obj.get("background", "auto")
    if background != "auto":
        _expect(
            background is None
            or (
                isinstance(background, int)
                and not isinstance(background, bool)
                and 0 <= background < len(classes)
            ),
            source,
            f"'background' must be null or a class index in 0..{len(classes) - 1}, got {background!r}",
        )
    known = {"name", "classes", "ignore_index", "image_mode", "layout", "background"}
    return DatasetSpec(
        name=name,
        classes=list(classes),
        layout=dict(layout),
        ignore_index=ignore,
        image_mode=mode,
        background=resolve_background(classes, background),
        extra={k: v for k, v in obj.items() if k not in known},
    )


def read_dataset_json(root: str | os.PathLike) -> DatasetSpec:
    """Read and validate ``root/dataset.json``."""
    root = Path(root)
    path = root / DATASET_JSON
    obj = read_json(path, f"not a dataset folder: {path} not found")
    return parse_dataset_spec(obj, str(path), default_name=root.resolve().name)


def write_dataset_json(
    root: str | os.PathLike,
    classes: Sequence[str],
    *,
    name: str | None = None,
    layout: Mapping[str, str] | None = None,
    image_mode: str = "RGB",
    ignore_index: int = IGNORE_INDEX,
    background: int | None | Literal["auto"] = "auto",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Validate and write ``root/dataset.json`` atomically; returns its path.

    ``layout`` defaults to ``{"images": "images/{id}.png", "masks": "masks/{id}.png"}``;
    ``background`` "auto" resolves to 0 when ``classes[0]`` is "background", else null, and the
    resolved value is written. ``extra`` adds informative keys (source, license, ...).
    """
    root = Path(root)
    obj: dict[str, Any] = {
        "name": name or root.resolve().name,
        "classes": list(classes),
        "ignore_index": ignore_index,
        "image_mode": image_mode,
        "layout": dict(layout)
        if layout is not None
        else {"images": "images/{id}.png", "masks": "masks/{id}.png"},
        "background": background,
        **dict(extra or {}),
    }
    spec = parse_dataset_spec(obj, str(root / DATASET_JSON))
    return atomic_write_json(root / DATASET_JSON, spec.to_json())


def write_split(root: str | os.PathLike, split: str, ids: Iterable[str]) -> Path:
    """Write ``root/splits/<split>.txt`` (one id per line) atomically; returns its path."""
    ids = list(ids)
    bad = [i for i in ids if not i or i != i.strip() or "\n" in i]
    if bad:
        raise ValueError(
            f"split {split!r}: sample ids must be non-empty without surrounding spaces, got {bad[:5]}"
        )
    return atomic_write_text(Path(root) / SPLITS_DIR / f"{split}.txt", "".join(f"{i}\n" for i in ids))


def list_splits(root: str | os.PathLike) -> list[str]:
    """The split names with a file in ``root/splits``."""
    folder = Path(root) / SPLITS_DIR
    return sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []


@register_dataset("folder", description="the generic folder format: dataset.json, label PNG folders, splits/")
class FolderDataset(SegDataset):
    """A dataset in the generic folder format (see the module doc).

    Args:
        root: the folder holding ``dataset.json``.
        split: a name with a file ``splits/<split>.txt``.
        transform: joint transform on the numpy sample (see :mod:`weakseg.data.transforms`).
        load_masks / load_scribbles / load_pseudo: include those label maps (when the layout has
            them) in samples. Masks stay available as a tags source when not loaded.
        tags_source: "auto" (layout tags file → scribbles → masks), "masks", "scribbles", a path
            to a ``.npy`` / ``.csv`` tags file, or "none".
        seed: base seed of the per-sample augmentation generators.
    """

    @classmethod
    def from_options(cls, root: str | os.PathLike, split: str, options: DatasetOptions) -> FolderDataset:
        """The folder-format dataset (:class:`~weakseg.data.formats.DatasetFormat`): every label map its
        layout has, scribbles unless ``options.scribbles`` is "off"."""
        return cls(
            root,
            split,
            load_masks=options.load_masks,
            load_scribbles=options.scribbles != "off",
            load_pseudo=options.pseudo,
            tags_source=options.tags_source,
        )

    splits = staticmethod(list_splits)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Any = None,
        load_masks: bool = True,
        load_scribbles: bool = True,
        load_pseudo: bool = True,
        tags_source: TagsSource = "auto",
        seed: int = 0,
    ) -> None:
        root = Path(root)
        spec = read_dataset_json(root)
        ids = read_split_file(root / SPLITS_DIR / f"{split}.txt", split, list_splits(root))
        super().__init__(
            name=spec.name,
            root=root,
            split=split,
            classes=spec.classes,
            ids=ids,
            image_path=PathPattern(root, spec.layout["images"]),
            image_mode=spec.image_mode,
            background=spec.background,
            source_ignore_index=spec.ignore_index,
            transform=transform,
            seed=seed,
        )
        self.spec = spec
        emit = {"masks": load_masks, "scribbles": load_scribbles, "pseudo": load_pseudo}
        for layout_key, key in LABEL_LAYOUT_KEYS.items():
            if layout_key in spec.layout:
                self._add_source(pattern_source(key, root, spec.layout[layout_key], emit=emit[layout_key]))
        tags_file = root / spec.layout["tags"] if "tags" in spec.layout else None
        self._setup_tags(tags_source, tags_file)
