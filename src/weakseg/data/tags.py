"""Image-level tags: multi-hot float32 vectors [K] over all classes of a dataset.

Where a dataset has a background class, its entry is always 1 (every image is assumed to show
some background); the other entries say which classes appear in the image.

Tags come from a label map (:func:`tags_from_label`) or from a file (:func:`load_tags_file`):

``.npy``
    A pickled dict ``id -> vector``, the ``cls_labels.npy`` of IRN / SFC and their descendants.
    Vectors may cover the foreground classes only (length K - 1, background left out, as in
    IRN's 20-dim VOC vectors) or all K classes. Integer keys are decoded as IRN writes VOC ids:
    ten digits ``YYYYNNNNNN`` become ``YYYY_NNNNNN``; other integers become their decimal string.

``.csv``, one of two forms (``#`` lines and blank lines are skipped):

* names: ``id,names`` where names are class names separated by ``;`` (an optional header row
  whose first cell is ``id``, e.g. ``id,tags``)::

      id,tags
      2007_000032,aeroplane;person
      2007_000039,tvmonitor

* one-hot: a header ``id,<class>,<class>,...`` naming any subset of the classes, then one 0/1
  column per named class (classes not named are 0)::

      id,aeroplane,bicycle,person
      2007_000032,1,0,1
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from weakseg.io import DataError, atomic_write_text

Background = int | None | Literal["auto"]
# the layout of a tags CSV: class names per image, or one 0/1 column per class
TagsForm = Literal["names", "onehot"]


def resolve_background(class_names: Sequence[str], background: Background = "auto") -> int | None:
    """The background class index: ``"auto"`` means 0 when the first class is named "background"."""
    if background == "auto":
        return 0 if class_names and class_names[0].strip().lower() == "background" else None
    if background is not None and not 0 <= background < len(class_names):
        raise ValueError(f"background index {background} is outside 0..{len(class_names) - 1}")
    return background


def with_background(tags: np.ndarray, background: int | None) -> np.ndarray:
    """A float32 copy of ``tags`` [K] whose background entry is 1 (unchanged when ``background`` is None)."""
    out = np.asarray(tags, dtype=np.float32).copy()
    if background is not None:
        out[background] = 1.0
    return out


def tags_from_label(label: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Multi-hot float32 [K]: 1 for every class id present in ``label`` (int array [H, W]).

    ``ignore_index`` pixels are skipped; any other value outside 0..K-1 raises ValueError.
    """
    values = np.unique(label)
    values = values[values != ignore_index]
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(
            f"label values {bad.tolist()} are outside 0..{num_classes - 1} (and not {ignore_index} = ignore)"
        )
    tags = np.zeros(num_classes, dtype=np.float32)
    tags[values.astype(np.int64)] = 1.0
    return tags


def tags_to_names(tags: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """The names of the classes whose entry in ``tags`` [K] is above 0.5."""
    return [name for name, t in zip(class_names, tags) if t > 0.5]


def _decode_key(key: object) -> str:
    """A sample id from a cls_labels key (str, bytes, or IRN's integer encoding of VOC ids)."""
    if isinstance(key, bytes):
        return key.decode()
    if isinstance(key, (int, np.integer)):
        s = str(int(key))
        return f"{s[:4]}_{s[4:]}" if len(s) == 10 else s
    return str(key)


def _load_npy(path: Path, class_names: Sequence[str], background: int | None) -> dict[str, np.ndarray]:
    try:
        obj = np.load(path, allow_pickle=True)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read tags file {path}: {err}") from err
    if not (isinstance(obj, np.ndarray) and obj.ndim == 0 and isinstance(obj.item(), dict)):
        raise DataError(
            f"tags file {path} must hold a pickled dict id -> class vector (as cls_labels.npy does)"
        )
    k = len(class_names)
    out: dict[str, np.ndarray] = {}
    for key, value in obj.item().items():
        vec = np.asarray(value, dtype=np.float32).reshape(-1)
        sid = _decode_key(key)
        if vec.size == k - 1 and background is not None:
            vec = np.insert(vec, background, 1.0)
        elif vec.size != k:
            expected = f"{k} (all classes) or {k - 1} (foreground only)" if background is not None else str(k)
            raise DataError(f"tags file {path}: entry {sid!r} has {vec.size} values, expected {expected}")
        out[sid] = (vec > 0.5).astype(np.float32)
    return out


def _class_index(name: str, class_names: Sequence[str], where: str) -> int:
    try:
        return list(class_names).index(name)
    except ValueError:
        raise DataError(
            f"{where}: unknown class name {name!r}; expected one of {list(class_names)}"
        ) from None


def _load_csv(path: Path, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read tags file {path}: {err}") from err
    rows = [
        (n, [c.strip() for c in row])
        for n, row in enumerate(csv.reader(io.StringIO(text)), start=1)
        if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#")
    ]
    if not rows:
        raise DataError(f"tags file {path} has no rows")
    columns: list[int] | None = None  # class index of each 0/1 column in the one-hot form
    header = rows[0][1]
    if header[0].lower() == "id":
        rows = rows[1:]
        if len(header) > 2 or (len(header) == 2 and header[1] in class_names):
            columns = [_class_index(name, class_names, f"{path} header") for name in header[1:]]
    out: dict[str, np.ndarray] = {}
    for line, row in rows:
        where = f"{path} line {line}"
        sid = row[0]
        if sid in out:
            raise DataError(f"{where}: id {sid!r} appears twice")
        vec = np.zeros(len(class_names), dtype=np.float32)
        if columns is None:
            if len(row) > 2:
                raise DataError(
                    f"{where}: expected 'id,name;name;...' (2 fields), got {len(row)} fields; "
                    "separate class names with ';' or quote the field"
                )
            names = [n.strip() for n in row[1].split(";")] if len(row) == 2 else []
            for name in filter(None, names):
                vec[_class_index(name, class_names, where)] = 1.0
        else:
            if len(row) != len(columns) + 1:
                raise DataError(
                    f"{where}: expected {len(columns) + 1} fields like the header, got {len(row)}"
                )
            for col, cell in zip(columns, row[1:]):
                if cell not in ("0", "1", "0.0", "1.0"):
                    raise DataError(f"{where}: value {cell!r} for class {class_names[col]!r} is not 0 or 1")
                vec[col] = float(cell)
        out[sid] = vec
    return out


def load_tags_file(
    path: str | os.PathLike, class_names: Sequence[str], background: Background = "auto"
) -> dict[str, np.ndarray]:
    """Read a ``.npy`` or ``.csv`` tags file (see module doc) as ``{id: float32 [K]}``.

    ``background`` is the background class index (``"auto"``: 0 when the first class is named
    "background"); its entry is set to 1 in every vector. Raises :class:`DataError` naming the
    file (and line or id) on any malformed entry.
    """
    path = Path(path)
    bg = resolve_background(class_names, background)
    if not path.is_file():
        raise DataError(f"tags file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        tags = _load_npy(path, class_names, bg)
    elif suffix == ".csv":
        tags = _load_csv(path, class_names)
    else:
        raise DataError(f"tags file {path}: unsupported format {suffix!r}; expected .npy or .csv")
    return {sid: with_background(vec, bg) for sid, vec in tags.items()}


def write_tags_csv(
    path: str | os.PathLike,
    tags: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    form: TagsForm = "names",
) -> Path:
    """Write ``{id: tags [K]}`` as a CSV that :func:`load_tags_file` reads back, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if form == "names":
        writer.writerow(["id", "tags"])
        for sid, vec in tags.items():
            writer.writerow([sid, ";".join(tags_to_names(vec, class_names))])
    elif form == "onehot":
        writer.writerow(["id", *class_names])
        for sid, vec in tags.items():
            writer.writerow([sid, *(int(v > 0.5) for v in vec)])
    else:
        raise ValueError(f"form must be 'names' or 'onehot', got {form!r}")
    return atomic_write_text(path, buf.getvalue())
