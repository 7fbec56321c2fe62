"""The annotation tool's data side: reads and writes one folder-format dataset.

:class:`AnnotationStore` lists the images of a dataset's splits, reads an image's scribbles and
tags, and saves them: ``scribbles/<id>.png`` (class ids, 255 unlabelled; written atomically) and
the image's row of ``tags.csv`` (the whole file rewritten atomically under a lock). Every id is
checked with :func:`weakseg.io.check_sample_id` and must be listed in a split, so no request can
name a file outside the dataset's folders. Two writers of the same image (two browser tabs) never
mix their files: each save replaces the whole scribble map, and the last one wins.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from weakseg.data.base import IGNORE_INDEX, PathPattern, read_split_file
from weakseg.data.folder import DATASET_JSON, SPLITS_DIR, list_splits, read_dataset_json
from weakseg.data.tags import TagsForm, load_tags_file, resolve_background, tags_from_label, write_tags_csv
from weakseg.io import (
    DataError,
    atomic_save_label_png,
    atomic_write_json,
    check_sample_id,
    read_label,
    safe_join,
)

try:  # POSIX: a lock file keeps two annotate servers on one dataset from losing each other's tag rows
    import fcntl
except ImportError:  # pragma: no cover - Windows: the in-process lock only
    fcntl = None  # type: ignore[assignment]

DEFAULT_SCRIBBLES = "scribbles/{id}.png"
DEFAULT_TAGS = "tags.csv"
LOCK_NAME = ".weakseg-annotate.lock"


class UnknownImageError(DataError):
    """An id that is not one of the dataset's listed images (the server answers 404)."""


def encode_runs(labels: np.ndarray) -> list[int]:
    """Run-length code of a flat uint8 array: ``[value, count, value, count, ...]`` (row-major)."""
    flat = np.asarray(labels, dtype=np.uint8).ravel()
    if flat.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    counts = np.diff(np.r_[starts, flat.size])
    return np.column_stack([flat[starts], counts]).ravel().tolist()


def decode_runs(runs: Any, size: tuple[int, int], where: str) -> np.ndarray:
    """Inverse of :func:`encode_runs` into a uint8 [H, W] map; :class:`DataError` naming ``where``
    when the runs are malformed or do not cover exactly H x W pixels."""
    if not isinstance(runs, list) or len(runs) % 2:
        raise DataError(f"{where}: 'scribble' must be a flat list [value, count, value, count, ...]")
    arr = np.asarray(runs, dtype=np.int64) if runs else np.zeros(0, np.int64)
    values, counts = arr[0::2], arr[1::2]
    if (values < 0).any() or (values > 255).any() or (counts < 1).any():
        raise DataError(f"{where}: run values must lie in 0..255 and counts be >= 1")
    if int(counts.sum()) != size[0] * size[1]:
        raise DataError(
            f"{where}: the runs cover {int(counts.sum())} pixels, the image has {size[0]} x {size[1]}"
        )
    return np.repeat(values.astype(np.uint8), counts).reshape(size)


class AnnotationStore:
    """Scribbles and tags of a folder-format dataset's images (see the module doc).

    Args:
        root: the dataset folder (with ``dataset.json`` and ``splits/``).
        split: list only this split's images (default: every split, in split-name order, each id
            once).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None) -> None:
        self.root = Path(root)
        self.spec = read_dataset_json(self.root)
        available = list_splits(self.root)
        if split is None and not available:
            raise DataError(
                f"{self.root / SPLITS_DIR}: no split files; the images to annotate are listed there"
            )
        ids: list[str] = []
        for name in [split] if split is not None else available:
            ids.extend(read_split_file(self.root / SPLITS_DIR / f"{name}.txt", name, available))
        self.ids = list(dict.fromkeys(ids))
        self._listed = set(self.ids)
        self.classes = list(self.spec.classes)
        self.background = resolve_background(self.classes, self.spec.background)
        self.ignore = self.spec.ignore_index  # unlabelled value in the files (255 on the wire)
        layout = self.spec.layout
        self._image = PathPattern(self.root, layout["images"])
        self._image_base = _pattern_base(self.root, layout["images"])
        self._scribble_pattern = layout.get("scribbles", DEFAULT_SCRIBBLES)
        self._scribble_base = _pattern_base(self.root, self._scribble_pattern)
        self.tags_path = self.root / layout.get("tags", DEFAULT_TAGS)
        if self.tags_path.suffix.lower() != ".csv":
            raise DataError(
                f"{self.root / DATASET_JSON}: layout 'tags' is {layout['tags']!r}; the annotation tool keeps "
                "tags in a CSV file (convert it with `weakseg data tags`, or point 'tags' at a .csv)"
            )
        self._lock = threading.Lock()
        self._done: dict[str, bool] = {}

    # ------------------------------------------------------------------ ids and paths
    def check_id(self, sample_id: str) -> str:
        """``sample_id`` when it is safe and listed in the dataset's splits, else an error."""
        check_sample_id(sample_id, "request")
        if sample_id not in self._listed:
            raise UnknownImageError(f"no image {sample_id!r} in {self.root} (not listed in its splits)")
        return sample_id

    def image_path(self, sample_id: str) -> Path:
        """The image file of a listed id, inside the folder its layout pattern names."""
        path = self._image(self.check_id(sample_id))
        return _inside(self._image_base, path)

    def scribble_path(self, sample_id: str) -> Path:
        rel = self._scribble_pattern.replace("{id}", self.check_id(sample_id))
        return _inside(
            self._scribble_base, safe_join(self.root, rel) if not os.path.isabs(rel) else Path(rel)
        )

    def image_size(self, sample_id: str) -> tuple[int, int]:
        """(H, W) of an image, from its header."""
        path = self.image_path(sample_id)
        if not path.is_file():
            raise DataError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                return img.size[1], img.size[0]
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"cannot read image {path}: {err}") from err

    # ------------------------------------------------------------------ reading
    def read_scribble(self, sample_id: str) -> np.ndarray:
        """uint8 [H, W] class ids, 255 unlabelled (all 255 when no scribble file exists yet)."""
        size = self.image_size(sample_id)
        path = self.scribble_path(sample_id)
        if not path.is_file():
            return np.full(size, IGNORE_INDEX, dtype=np.uint8)
        label = read_label(path)
        if label.shape != size:
            raise DataError(
                f"scribble file {path} is {label.shape[1]}x{label.shape[0]}, its image {size[1]}x{size[0]}"
            )
        if self.ignore != IGNORE_INDEX:
            label = np.where(label == self.ignore, IGNORE_INDEX, label).astype(np.uint8)
        bad = np.setdiff1d(np.unique(label), [*range(len(self.classes)), IGNORE_INDEX])
        if bad.size:
            raise DataError(
                f"scribble file {path} has values {bad.tolist()} outside 0..{len(self.classes) - 1}"
            )
        return label

    def read_tags(self) -> dict[str, np.ndarray]:
        """Every row of the tags file (``{}`` when there is none yet)."""
        if not self.tags_path.is_file():
            return {}
        return load_tags_file(self.tags_path, self.classes, self.background)

    def tags_of(
        self,
        sample_id: str,
        scribble: np.ndarray | None = None,
        rows: dict[str, np.ndarray] | None = None,
    ) -> list[int]:
        """The tagged class ids of an image: its tags row, or the classes of its scribbles.
        ``rows`` (from :meth:`read_tags`) saves reading the tags file again."""
        row = (self.read_tags() if rows is None else rows).get(self.check_id(sample_id))
        if row is None:
            scribble = self.read_scribble(sample_id) if scribble is None else scribble
            row = self._scribble_tags(scribble)
        return [int(i) for i in np.flatnonzero(row > 0.5)]

    def annotation(self, sample_id: str) -> dict[str, Any]:
        """What the page shows for an image: size, scribble runs, tags and a revision stamp."""
        scribble = self.read_scribble(sample_id)
        path = self.scribble_path(sample_id)
        return {
            "id": sample_id,
            "height": int(scribble.shape[0]),
            "width": int(scribble.shape[1]),
            "scribble": encode_runs(scribble),
            "tags": self.tags_of(sample_id, scribble),
            "revision": path.stat().st_mtime_ns if path.is_file() else 0,
        }

    def is_done(self, sample_id: str, rows: dict[str, np.ndarray] | None = None) -> bool:
        """An image is done when it has a scribbled pixel or a tagged class other than background."""
        if sample_id not in self._done:
            try:
                scribble = self.read_scribble(sample_id)
                tags = self.tags_of(sample_id, scribble, rows)
            except DataError:
                return False  # unreadable: shown as to do; opening it shows the error
            self._done[sample_id] = bool((scribble != IGNORE_INDEX).any()) or any(
                t != self.background for t in tags
            )
        return self._done[sample_id]

    def status(self) -> list[dict[str, Any]]:
        """``[{"id", "done"}]`` for every listed image, in list order."""
        try:
            rows = self.read_tags()
        except DataError:
            rows = {}
        return [{"id": sid, "done": self.is_done(sid, rows)} for sid in self.ids]

    # ------------------------------------------------------------------ writing
    def save(self, sample_id: str, scribble: np.ndarray, tags: Sequence[int]) -> dict[str, Any]:
        """Write an image's scribble map and its tags row; returns the stored annotation summary.

        The saved tags are ``tags`` plus every class in the scribble (plus the background)."""
        self.check_id(sample_id)
        size = self.image_size(sample_id)
        scribble = np.asarray(scribble, dtype=np.uint8)
        if scribble.shape != size:
            raise DataError(
                f"scribble for {sample_id!r} is {scribble.shape[1]}x{scribble.shape[0]}, "
                f"the image {size[1]}x{size[0]}"
            )
        bad = np.setdiff1d(np.unique(scribble), [*range(len(self.classes)), IGNORE_INDEX])
        if bad.size:
            raise DataError(
                f"scribble for {sample_id!r} has values {bad.tolist()} outside 0..{len(self.classes) - 1}"
            )
        chosen = np.zeros(len(self.classes), dtype=np.float32)
        for t in tags:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < len(self.classes):
                raise DataError(
                    f"tags for {sample_id!r}: {t!r} is not a class index 0..{len(self.classes) - 1}"
                )
            chosen[t] = 1.0
        chosen = np.maximum(chosen, self._scribble_tags(scribble))
        on_disk = (
            scribble
            if self.ignore == IGNORE_INDEX
            else np.where(scribble == IGNORE_INDEX, self.ignore, scribble)
        )
        path = self.scribble_path(sample_id)
        with self._lock, self._file_lock():
            self._ensure_layout()
            atomic_save_label_png(path, on_disk.astype(np.uint8), _palette())
            self._write_tag_row(sample_id, chosen)
        self._done[sample_id] = bool((scribble != IGNORE_INDEX).any()) or any(
            i != self.background for i in np.flatnonzero(chosen)
        )
        return {
            "id": sample_id,
            "tags": [int(i) for i in np.flatnonzero(chosen > 0.5)],
            "done": self._done[sample_id],
            "revision": path.stat().st_mtime_ns,
        }

    def _scribble_tags(self, scribble: np.ndarray) -> np.ndarray:
        tags = tags_from_label(scribble, len(self.classes), IGNORE_INDEX)
        if self.background is not None:
            tags[self.background] = 1.0
        return tags

    def _write_tag_row(self, sample_id: str, vec: np.ndarray) -> None:
        """Rewrite the tags file with ``sample_id``'s row replaced (the file is read again under
        the lock, so rows other writers saved are kept). Images without a row get one from their
        scribbles, so the file covers every listed image (the data layer needs a row per id)."""
        rows = self.read_tags()
        form = _csv_form(self.tags_path, self.classes)
        rows[sample_id] = vec
        for sid in self.ids:
            if sid not in rows:
                try:
                    rows[sid] = self._scribble_tags(self.read_scribble(sid))
                except DataError:
                    rows[sid] = self._scribble_tags(np.full((1, 1), IGNORE_INDEX, np.uint8))
        for sid in self._all_split_ids():
            if sid not in rows:  # other splits' images: their scribbles' classes
                try:
                    scribble_path = self._scribble_file_anywhere(sid)
                    label = (
                        read_label(scribble_path)
                        if scribble_path.is_file()
                        else np.full((1, 1), 255, np.uint8)
                    )
                except DataError:
                    label = np.full((1, 1), IGNORE_INDEX, np.uint8)
                label = np.where(label == self.ignore, IGNORE_INDEX, label)
                label = np.where(label < len(self.classes), label, IGNORE_INDEX).astype(np.uint8)
                rows[sid] = self._scribble_tags(label)
        write_tags_csv(self.tags_path, rows, self.classes, form=form)

    def _all_split_ids(self) -> list[str]:
        ids: list[str] = []
        available = list_splits(self.root)
        for name in available:
            try:
                ids.extend(read_split_file(self.root / SPLITS_DIR / f"{name}.txt", name, available))
            except DataError:
                continue
        return ids

    def _scribble_file_anywhere(self, sample_id: str) -> Path:
        check_sample_id(sample_id, self.root / SPLITS_DIR)
        return safe_join(self.root, self._scribble_pattern.replace("{id}", sample_id))

    def _ensure_layout(self) -> None:
        """Add ``scribbles`` and ``tags`` to ``dataset.json``'s layout when it lacks them."""
        layout = dict(self.spec.layout)
        if "scribbles" in layout and "tags" in layout:
            return
        layout.setdefault("scribbles", DEFAULT_SCRIBBLES)
        layout.setdefault("tags", DEFAULT_TAGS)
        meta = self.spec.to_json()
        meta["layout"] = layout
        atomic_write_json(self.root / DATASET_JSON, meta)
        self.spec = read_dataset_json(self.root)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        with open(self.root / LOCK_NAME, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _pattern_base(root: Path, pattern: str) -> Path:
    """The folder a layout pattern's fixed part names (``images/{id}.png`` → ``root/images``):
    ids may add sub-folders below it, never leave it."""
    head = pattern.split("{id}", 1)[0]
    folder = head if head.endswith("/") else os.path.dirname(head)
    return (root / folder).resolve() if not os.path.isabs(folder) else Path(folder).resolve()


def _inside(base: Path, path: Path) -> Path:
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise DataError(f"{path} lies outside {base}; refused")
    return path


def _csv_form(path: Path, classes: Sequence[str]) -> TagsForm:
    """The form of an existing tags CSV ("onehot" when its header names classes), else "names"."""
    if not path.is_file():
        return "names"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "names"
    for row in csv.reader(io.StringIO(text)):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if cells[0].lower() == "id" and (len(cells) > 2 or (len(cells) == 2 and cells[1] in classes)):
            return "onehot"
        return "names"
    return "names"


def _palette() -> np.ndarray:
    from weakseg.viz import make_palette

    return make_palette()
