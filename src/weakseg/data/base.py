"""The dataset base class shared by every format (folder, VOC, COCO).

A sample flows: files → :meth:`SegDataset.load_raw` (numpy dict, validated) → the transform
(:mod:`weakseg.data.transforms`, same change on every map) → tensors. ``__getitem__`` returns::

    "image"     float32 [3, H, W] in [0, 1] (grey images replicated to 3 channels)
    "mask"      int64 [H, W], 255 = ignore          (dense labels, when loaded)
    "scribble"  int64 [H, W], 255 = unlabelled      (when the dataset has scribbles)
    "pseudo"    int64 [H, W], 255 = uncertain       (when a pseudo-label folder is attached)
    <map>       float32 [H, W]                      (maps added with add_map, e.g. distances)
    "valid"     bool [H, W]: False on padding added by crops / rotations
    "tags"      float32 [K] multi-hot over all classes (background entry 1 when there is one)
    "id"        str;   "size": int64 [2] = (H, W) of the image before transforms

Decoded samples can be kept in memory (:meth:`SegDataset.cache_decoded`, ``data.cache_mb`` for training
sets): a sample's files are then read and checked once per process, and later epochs copy the arrays;
what ``__getitem__`` returns does not change.

Augmentation is reproducible: the transform receives a generator seeded from
``(seed, epoch, index)``; call :meth:`SegDataset.set_epoch` at the start of each epoch, before
iterating the DataLoader. The epoch lives in shared memory, so persistent DataLoader workers see
the change too.
"""

from __future__ import annotations

import inspect
import operator
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from weakseg.data.sample import Sample
from weakseg.data.tags import load_tags_file, resolve_background, tags_from_label, with_background
from weakseg.io import DataError, WeaksegWarning, check_sample_id, read_image_rgb, read_label

IGNORE_INDEX = 255
# Keys with a fixed meaning in a sample; label maps and float maps may not use them.
RESERVED_KEYS = frozenset({"image", "valid", "tags", "id", "size"})
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# reader(path, (H, W) of the image, or None when unknown) -> uint8 [H, W]
LabelReader = Callable[[Path, tuple[int, int] | None], np.ndarray]
MapFn = Callable[[dict[str, np.ndarray]], np.ndarray]
TagsSource = Literal["auto", "masks", "scribbles", "none"] | str | os.PathLike | None


def read_png_label(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """Read a label image (PNG/BMP, palette or grey) as uint8 [H, W]; ``size`` is not used."""
    return read_label(path)


@dataclass
class LabelSource:
    """Where label map ``key`` comes from: ``path(id)`` read by ``reader(path, (H, W))``.

    ``emit`` False keeps the map out of samples (it may still provide tags).
    """

    key: str
    path: Callable[[str], Path]
    reader: LabelReader = read_png_label
    emit: bool = True


@dataclass(frozen=True)
class PathPattern:
    """``root / pattern`` with ``{id}`` replaced by a sample id (a picklable callable, so datasets
    can be sent to DataLoader workers started by "spawn")."""

    root: Path
    pattern: str

    def __call__(self, sample_id: str) -> Path:
        check_sample_id(sample_id, self.root)  # ids never reach outside (also checked on reading splits)
        return self.root / self.pattern.replace("{id}", sample_id)


def pattern_source(key: str, root: Path, pattern: str, emit: bool = True) -> LabelSource:
    """A PNG label source whose files are ``root / pattern`` (pattern containing ``{id}``)."""
    return LabelSource(key, PathPattern(Path(root), pattern), emit=emit)


def duplicate_ids(ids: Sequence[str]) -> dict[str, int]:
    """``{id: count}`` of the ids listed more than once, in first-seen order."""
    return {i: n for i, n in Counter(ids).items() if n > 1}


def check_split_ids(ids: Sequence[str], source: str | os.PathLike) -> list[str]:
    """Validate split ids (see :func:`weakseg.io.check_sample_id`) and warn about duplicates, which
    would otherwise be sampled more often without notice. Returns ``ids`` unchanged."""
    for sample_id in ids:
        check_sample_id(sample_id, source)
    dups = duplicate_ids(ids)
    if dups:
        shown = ", ".join(f"{i!r} x{n}" for i, n in list(dups.items())[:5])
        more = f" and {len(dups) - 5} more" if len(dups) > 5 else ""
        warnings.warn(
            f"{source} lists {len(dups)} sample id(s) more than once ({shown}{more}); "
            "those samples are drawn that many times per epoch",
            WeaksegWarning,
            stacklevel=3,
        )
    return list(ids)


def read_split_file(
    path: Path, split: str, available: Sequence[str], parse: Callable[[str], str] | None = None
) -> list[str]:
    """Sample ids listed in ``path``, one per line (blank lines, ``#`` comments and a missing
    trailing newline are tolerated); ``parse`` turns a line into its id (default: the line).

    Raises :class:`DataError` for an unknown or empty split and for ids that could reach outside
    the dataset folder (absolute, ``..``); warns about ids listed more than once."""
    if not path.is_file():
        known = ", ".join(sorted(available)) or "none"
        raise DataError(f"unknown split {split!r}: no split file {path} (available splits: {known})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read split file {path}: {err}") from err
    ids = [line.strip() for line in text.splitlines()]
    ids = [i for i in ids if i and not i.startswith("#")]
    if not ids:
        raise DataError(f"split file {path} lists no sample ids (split {split!r} is empty)")
    if parse is not None:
        ids = [parse(i) for i in ids]
    return check_split_ids(ids, path)


def check_label_values(label: np.ndarray, num_classes: int, path: Path | str) -> None:
    """Raise :class:`DataError` naming ``path`` and the bad values when ``label`` (uint8 [H, W])
    holds values outside 0..num_classes-1 other than 255."""
    counts = np.bincount(label.ravel(), minlength=256)
    counts[IGNORE_INDEX] = 0
    bad = np.flatnonzero(counts[num_classes:]) + num_classes
    if bad.size:
        raise DataError(
            f"label file {path} has values {bad.tolist()} outside 0..{num_classes - 1} "
            f"(255 = ignore is the only other value allowed)"
        )


def _accepts_rng(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "rng" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _writable(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable version of ``array`` (torch.from_numpy warns on read-only data)."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def to_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    """Convert a transformed numpy sample to tensors following the sample contract: image
    uint8 [H, W, 3] → float32 [3, H, W] / 255, uint8 maps → int64, float maps → float32, bool
    stays bool; other entries pass through."""
    out: dict[str, Any] = {}
    for key, value in sample.items():
        if not isinstance(value, np.ndarray):
            out[key] = value
        elif key == "image":
            chw = value[:, :, None] if value.ndim == 2 else value
            t = torch.from_numpy(_writable(chw.transpose(2, 0, 1)))
            out[key] = t.float().div_(255.0) if value.dtype == np.uint8 else t.float()
        elif value.dtype == np.uint8 and value.ndim == 2:
            out[key] = torch.from_numpy(_writable(value)).long()
        elif np.issubdtype(value.dtype, np.floating):
            out[key] = torch.from_numpy(_writable(value.astype(np.float32, copy=False)))
        else:
            out[key] = torch.from_numpy(_writable(value))
    return out


class SegDataset(torch.utils.data.Dataset):
    """Base of every weakseg dataset (see the module doc for the sample contract).

    Subclasses call ``super().__init__`` with the metadata and ids, then register label sources
    with :meth:`_add_source` and tags with :meth:`_setup_tags`. Files are read and validated
    lazily, one sample at a time; :meth:`verify` checks them all.

    Attributes: ``name``, ``root``, ``split``, ``classes``, ``num_classes``, ``ignore_index``
    (always 255 in samples), ``background`` (class index or None), ``ids``, ``image_mode``
    ("RGB" or "L"), ``seed`` and ``transform``.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        *,
        name: str,
        root: str | os.PathLike,
        split: str,
        classes: Sequence[str],
        ids: Sequence[str],
        image_path: Callable[[str], Path],
        image_mode: str = "RGB",
        background: int | None | Literal["auto"] = "auto",
        source_ignore_index: int = IGNORE_INDEX,
        transform: Callable[..., dict[str, Any]] | None = None,
        seed: int = 0,
    ) -> None:
        if image_mode not in ("RGB", "L"):
            raise ValueError(f"image_mode must be 'RGB' or 'L', got {image_mode!r}")
        self.name = name
        self.root = Path(root)
        self.split = split
        self.classes = list(classes)
        self.ids = list(ids)
        self.image_mode = image_mode
        self.background = resolve_background(self.classes, background)
        self.source_ignore_index = int(source_ignore_index)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self._image_path = image_path
        self._sources: dict[str, LabelSource] = {}
        self._maps: dict[str, MapFn] = {}
        self._tag_key: str | None = None  # label map that tags are computed from
        self._tag_table: dict[str, np.ndarray] | None = None  # tags read from a file
        self._tag_file: Path | None = None
        self._tag_cache: dict[str, np.ndarray] = {}
        # Shared memory: DataLoader workers (also persistent ones) see set_epoch() updates.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.transform = transform
        self._cache: dict[int, dict[str, np.ndarray]] = {}  # index -> load_raw's arrays
        self._cache_budget = 0  # bytes; 0 = no cache
        self._cache_bytes = 0

    # ------------------------------------------------------------------ configuration
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def transform(self) -> Callable[..., dict[str, Any]] | None:
        return self._transform

    @transform.setter
    def transform(self, fn: Callable[..., dict[str, Any]] | None) -> None:
        self._transform = fn
        self._transform_takes_rng = fn is not None and _accepts_rng(fn)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` draws (part of the sample seed)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(int(epoch))

    def sample_rng(self, index: int) -> np.random.Generator:
        """The generator for sample ``index`` in the current epoch: a pure function of
        (seed, epoch, index)."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _add_source(self, source: LabelSource) -> None:
        self._sources[source.key] = source
        self.clear_cache()  # cached samples lack the new map

    def cache_decoded(self, megabytes: float) -> None:
        """Keep decoded samples (what :meth:`load_raw` returns) in memory, up to ``megabytes`` in this
        process; 0 turns the cache off. Each DataLoader worker holds its own cache.

        A cached sample's files are not read again: :meth:`load_raw` returns copies of its arrays, so
        samples, augmentation and errors for files that are never read twice are unchanged. Samples are
        kept in the order they are first loaded until the budget is spent.
        """
        if megabytes < 0:
            raise ValueError(f"cache size must be >= 0 MB, got {megabytes}")
        self._cache_budget = int(megabytes * 2**20)
        if self._cache_bytes > self._cache_budget:
            self.clear_cache()

    def clear_cache(self) -> None:
        """Drop every cached sample (after a label source or map is added, or to free memory)."""
        self._cache, self._cache_bytes = {}, 0

    def add_label_dir(self, key: str, folder: str | os.PathLike, pattern: str = "{id}.png") -> None:
        """Attach label maps ``folder / pattern`` (``{id}`` = sample id) as sample entry ``key``.

        For pseudo-labels and other users' outputs: uint8 class ids, 255 = ignore. Replaces an
        existing entry of the same key.
        """
        if not _KEY_RE.match(key) or key in RESERVED_KEYS:
            raise ValueError(
                f"label key {key!r} must be an identifier and not one of {sorted(RESERVED_KEYS)}"
            )
        if "{id}" not in pattern:
            raise ValueError(f"pattern {pattern!r} must contain '{{id}}'")
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"label folder for {key!r} not found: {folder}")
        self._add_source(pattern_source(key, folder, pattern))

    def add_map(self, key: str, fn: MapFn) -> None:
        """Attach a float map: ``fn(raw_sample) -> float32 [H, W]`` computed on the untransformed
        sample (after its label maps are loaded), so it then follows the augmentations.

        With DataLoader workers started by "spawn", ``fn`` must be picklable.
        """
        if not _KEY_RE.match(key) or key in RESERVED_KEYS or key in self._sources:
            raise ValueError(f"map key {key!r} must be an identifier, not reserved and not a label map")
        self._maps[key] = fn
        self.clear_cache()

    def _setup_tags(self, tags_source: TagsSource, tags_file: Path | None = None) -> None:
        """Choose where tags come from.

        ``"auto"``: ``tags_file`` (from the dataset's layout) when given, else the scribbles, else
        the masks, else no tags. ``"masks"`` / ``"scribbles"``: that label map (which must exist).
        A path: a ``.npy`` / ``.csv`` tags file. ``"none"`` / None: no tags.
        """
        self._tag_key, self._tag_table, self._tag_file = None, None, None
        self._tag_cache = {}
        if tags_source is None or tags_source == "none":
            return
        if tags_source == "auto":
            if tags_file is not None:
                return self._setup_tags(tags_file)
            self._tag_key = next((k for k in ("scribble", "mask") if k in self._sources), None)
            return
        if tags_source in ("masks", "scribbles"):
            key = str(tags_source)[:-1]
            if key not in self._sources:
                raise DataError(f"tags_source={tags_source!r} but dataset {self.name!r} has no {tags_source}")
            self._tag_key = key
            return
        self._tag_file = Path(tags_source)
        self._tag_table = load_tags_file(self._tag_file, self.classes, self.background)

    def has(self, key: str) -> bool:
        """Whether samples contain entry ``key`` ("image", "mask", "scribble", "pseudo", "tags",
        or an attached label/float map)."""
        if key in ("image", "valid", "id", "size"):
            return True
        if key == "tags":
            return self._tag_key is not None or self._tag_table is not None
        if key in self._sources:
            return self._sources[key].emit
        return key in self._maps

    @property
    def keys(self) -> list[str]:
        """The label and float map keys samples contain, in load order."""
        return [k for k, s in self._sources.items() if s.emit] + list(self._maps)

    # ------------------------------------------------------------------ loading
    def __len__(self) -> int:
        return len(self.ids)

    def _index(self, index: int) -> int:
        i = operator.index(index)
        if i < 0:
            i += len(self.ids)
        if not 0 <= i < len(self.ids):
            raise IndexError(f"sample index {index} out of range for {len(self.ids)} samples")
        return i

    def image_path(self, index: int) -> Path:
        return self._image_path(self.ids[self._index(index)])

    def label_path(self, key: str, index: int) -> Path:
        return self._sources[key].path(self.ids[self._index(index)])

    def _read_image(self, sample_id: str) -> np.ndarray:
        return read_image_rgb(self._image_path(sample_id), mode=self.image_mode)

    def _read_label(
        self, source: LabelSource, sample_id: str, image_size: tuple[int, int] | None
    ) -> np.ndarray:
        """Read and validate label map ``source`` of a sample; ``image_size`` None skips the size
        check (used by :meth:`verify` when the image itself is unreadable)."""
        path = source.path(sample_id)
        if not path.is_file():
            raise DataError(f"{source.key} file not found: {path} (sample {sample_id!r})")
        label = source.reader(path, image_size)
        if image_size is not None and label.shape != image_size:
            raise DataError(
                f"size mismatch: {source.key} file {path} is {label.shape[0]}x{label.shape[1]} but image "
                f"{self._image_path(sample_id)} is {image_size[0]}x{image_size[1]} (HxW)"
            )
        if self.source_ignore_index != IGNORE_INDEX:
            label = label.copy()
            label[label == self.source_ignore_index] = IGNORE_INDEX
        check_label_values(label, self.num_classes, path)
        return label

    def _compute_map(self, key: str, sample: dict[str, np.ndarray], sample_id: str) -> np.ndarray:
        value = np.asarray(self._maps[key](sample), dtype=np.float32)
        if value.shape != sample["image"].shape[:2]:
            raise DataError(
                f"map {key!r} for sample {sample_id!r} has shape {value.shape}, "
                f"expected the image size {sample['image'].shape[:2]}"
            )
        return value

    def load_raw(self, index: int) -> dict[str, np.ndarray]:
        """The untransformed sample ``index``: "image" uint8 [H, W, 3], label maps uint8 [H, W]
        (255 = ignore), float maps float32 [H, W]. Raises :class:`DataError` naming the file on
        a missing/unreadable file, a size mismatch or out-of-range label values.

        With :meth:`cache_decoded`, a sample read before comes from memory (as fresh copies)."""
        i = self._index(index)
        cached = self._cache.get(i)
        if cached is not None:
            return {key: value.copy() for key, value in cached.items()}
        sample = self._decode(i)
        size = sum(value.nbytes for value in sample.values())
        if self._cache_bytes + size <= self._cache_budget:
            self._cache[i] = {key: value.copy() for key, value in sample.items()}
            self._cache_bytes += size
        return sample

    def _decode(self, i: int) -> dict[str, np.ndarray]:
        """:meth:`load_raw` from the files."""
        sid = self.ids[i]
        image = self._read_image(sid)
        size = (int(image.shape[0]), int(image.shape[1]))
        sample: dict[str, np.ndarray] = {"image": image}
        for key, source in self._sources.items():
            if source.emit:
                sample[key] = self._read_label(source, sid, size)
        for key in self._maps:
            sample[key] = self._compute_map(key, sample, sid)
        return sample

    def tags_of(self, index: int, raw: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Tags float32 [K] of sample ``index`` (background entry 1 when there is a background).

        ``raw`` (the untransformed sample) saves reading its label map again.
        """
        sid = self.ids[self._index(index)]
        if self._tag_table is not None:
            if sid not in self._tag_table:
                raise DataError(f"tags file {self._tag_file} has no entry for sample {sid!r}")
            return self._tag_table[sid].copy()
        if self._tag_key is None:
            raise DataError(f"dataset {self.name!r} has no tags source (no tags file, scribbles or masks)")
        if sid not in self._tag_cache:
            if raw is not None and self._tag_key in raw:
                label = raw[self._tag_key]
            else:
                size = raw["image"].shape[:2] if raw is not None else self._image_size(sid)
                label = self._read_label(self._sources[self._tag_key], sid, size)
            tags = tags_from_label(label, self.num_classes, IGNORE_INDEX)
            self._tag_cache[sid] = with_background(tags, self.background)
        return self._tag_cache[sid].copy()

    def _image_size(self, sample_id: str) -> tuple[int, int]:
        """Image (H, W) read from the file header only."""
        from PIL import Image

        path = self._image_path(sample_id)
        if not path.is_file():
            raise DataError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                return img.height, img.width
        except OSError as err:
            raise DataError(f"cannot read image {path}: {err}") from err

    def __getitem__(self, index: int) -> Sample:
        """The transformed sample ``index`` as tensors (:class:`~weakseg.data.sample.Sample`)."""
        i = self._index(index)
        raw = self.load_raw(i)
        tags = self.tags_of(i, raw) if self.has("tags") else None
        size = raw["image"].shape[:2]
        if self._transform is None:
            sample = dict(raw)
        elif self._transform_takes_rng:
            sample = self._transform(raw, rng=self.sample_rng(i))
        else:
            sample = self._transform(raw)
        if "valid" not in sample:
            sample["valid"] = np.ones(sample["image"].shape[:2], dtype=bool)
        out = to_tensors(sample)
        if tags is not None:
            out["tags"] = torch.from_numpy(tags)
        out["id"] = self.ids[i]
        out["size"] = torch.tensor(size, dtype=torch.int64)
        return cast(Sample, out)

    # ------------------------------------------------------------------ checking
    def _check_sample(self, index: int) -> list[str]:
        """Every problem with sample ``index`` (image, each label map, maps, tags)."""
        sid = self.ids[index]
        problems: list[str] = []
        raw: dict[str, np.ndarray] = {}
        size: tuple[int, int] | None = None
        try:
            raw["image"] = self._read_image(sid)
            size = (int(raw["image"].shape[0]), int(raw["image"].shape[1]))
        except DataError as err:
            problems.append(str(err))
        for key, source in self._sources.items():
            if source.emit or key == self._tag_key:
                try:
                    raw[key] = self._read_label(source, sid, size)
                except DataError as err:
                    problems.append(str(err))
        if problems:
            return problems  # maps and tags need a complete, consistent sample
        for key in self._maps:
            try:
                raw[key] = self._compute_map(key, raw, sid)
            except DataError as err:
                problems.append(str(err))
        if self.has("tags"):
            try:
                self.tags_of(index, raw)
            except (DataError, ValueError) as err:
                problems.append(str(err))
        return problems

    def check_samples(self, indices: Sequence[int]) -> list[str]:
        """Every problem with the samples ``indices`` (files readable, sizes, label values, tags):
        what :meth:`verify` checks, on a subset (the training pre-flight reads a spread sample)."""
        return [msg for i in indices for msg in self._check_sample(self._index(i))]

    def verify(self, progress: bool = False, raise_on_error: bool = False) -> list[str]:
        """Check every sample and the id list (duplicates); return all problems found (one message
        per problem, each naming the file or id). With ``raise_on_error`` a non-empty list raises
        one :class:`DataError`."""
        indices: Any = range(len(self.ids))
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc=f"verify {self.name}/{self.split}", unit="sample")
        problems = [
            f"split {self.split!r} lists sample id {sid!r} {count} times"
            for sid, count in duplicate_ids(self.ids).items()
        ]
        problems += [msg for i in indices for msg in self._check_sample(i)]
        if problems and raise_on_error:
            raise DataError(
                f"{len(problems)} problem(s) in dataset {self.name!r} split {self.split!r}:\n"
                + "\n".join(problems)
            )
        return problems

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, samples={len(self)}, "
            f"classes={self.num_classes}, keys={self.keys}, tags={self.has('tags')})"
        )
