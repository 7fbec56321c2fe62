"""Folder-format datasets from the annotation tools people use, and from a folder of photos.

:func:`import_annotations` reads an export of

``cvat``
    CVAT for images 1.1 XML: ``annotations.xml``, the export folder holding it (with ``images/``)
    or the export ``.zip``. ``<polyline>`` and ``<points>`` become scribbles, ``<mask>`` (brush)
    becomes scribble pixels as painted, ``<polygon>`` becomes a mask region, ``<tag>`` an
    image-level tag; ``<box>``, ``<ellipse>``, ``<cuboid>`` and ``<skeleton>`` are skipped (counted).
``labelme``
    LabelMe JSON: one ``.json`` file or a folder of them (searched recursively). ``linestrip``,
    ``line`` and ``point`` shapes become scribbles; ``polygon``, ``rectangle``, ``circle`` and
    ``mask`` shapes become mask regions; ``flags`` set to true are image-level tags. The image is
    ``imagePath`` (relative to the JSON file), or the embedded ``imageData`` when that file is absent.
``labelstudio``
    Label Studio's JSON export (a list of tasks). ``brushlabels`` become scribble pixels as painted,
    ``keypointlabels`` scribble dots, ``polygonlabels`` mask regions, ``choices`` image-level
    tags; ``rectanglelabels`` and other region types are skipped (counted). Of a task's
    annotations the last one not cancelled is used.

Lines and dots are drawn with :func:`weakseg.data.scribbles.rasterize_polylines` (the ScribbleSup
XML reader's rasteriser) with a configurable stroke ``width``; brush pixels are taken as they are;
polygons are filled. Shapes are drawn in the export's order (CVAT: by ``z_order``), later ones on
top. Pixels no polygon covers are background in images that have at least one polygon (when the
dataset has a background class and ``mask_fill="background"``), else 255 (unlabelled).

The output is a folder-format dataset: ``images/<id>.<ext>`` (copied; re-encoded as PNG when the
images have mixed formats), ``scribbles/<id>.png``, ``masks/<id>.png`` when any polygon was
imported, ``tags.csv`` (the tagged classes plus every class scribbled or masked) and
````splits/<split>.txt``. An image's id is its path in the export without the suffix
(``city/img_01.jpg`` → ``city/img_01``); for LabelMe, the JSON file's path in the export folder
without the suffix (``city/img_01.json`` → ``city/img_01``); for Label Studio, the image file's
path below the folder it was found in (an upload ``/data/upload/3/1a2b3c4d-cat.jpg`` found as
``IMAGES/cat.jpg`` → ``cat``).

Errors (:class:`~weakseg.io.DataError`) name the file and the entry: an unknown label, an image the
export names but that cannot be found, malformed XML / JSON, bad coordinates or a size mismatch.

:func:`create_dataset_from_images` makes an unannotated dataset from a folder of photos (what
``weakseg annotate --new`` starts from).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import shutil
import tempfile
import urllib.parse
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from weakseg.data.folder import DATASET_JSON, write_dataset_json, write_split
from weakseg.data.scribbles import rasterize_polylines
from weakseg.data.tags import resolve_background, write_tags_csv
from weakseg.io import (
    DataError,
    atomic_path,
    atomic_save_label_png,
    check_sample_id,
    safe_join,
)

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "ImportReport",
    "create_dataset_from_images",
    "decode_labelstudio_rle",
    "find_images",
    "import_annotations",
    "parse_classes",
]

ImportFormat = Literal["cvat", "labelme", "labelstudio"]
FORMATS: tuple[str, ...] = ("cvat", "labelme", "labelstudio")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
IGNORE = 255

# Shape kinds: a stroke is a polyline drawn with the stroke width, a dot a single point drawn the
# same way, a brush a boolean mask of scribbled pixels, a polygon a filled mask region.
_STROKE, _BRUSH, _POLYGON = "stroke", "brush", "polygon"
_REGION = "labelme-region"  # a LabelMe region until the image size is known


# ---------------------------------------------------------------------------------------------- model
@dataclass
class _Shape:
    kind: str
    cls: int
    points: np.ndarray | None = None  # float [P, 2] as (x, y)
    mask: np.ndarray | None = None  # bool [H, W] (brush / raster region)
    order: float = 0.0  # drawing order (CVAT z_order); stable sort keeps the file order
    raw: dict | None = None  # a LabelMe region shape, resolved once the image size is known
    where: str = ""


@dataclass
class _Entry:
    """One image of an export: where it is referenced, its size and its shapes."""

    name: str  # image reference as the export spells it (relative path or URL)
    where: str  # "<file>: <entry>" for error messages
    base: Path  # folder that relative image references are resolved against
    size: tuple[int, int] | None = None  # (H, W) stated by the export
    shapes: list[_Shape] = field(default_factory=list)
    tags: set[int] = field(default_factory=set)
    embedded: bytes | None = None  # image bytes inside the export (LabelMe imageData)
    candidates: list[str] = field(default_factory=list)  # extra names to try (Label Studio uploads)
    sample_id: str | None = None  # when not derived from ``name`` (LabelMe: the JSON file's path)
    id_from_file: bool = False  # id from the file found (Label Studio: URLs are not names)


@dataclass
class ImportReport:
    """What :func:`import_annotations` wrote."""

    out_dir: Path
    images: int
    scribbled: int  # images with at least one scribble pixel
    masked: int  # images with at least one polygon
    tagged: int  # images with at least one image-level tag from the export
    skipped: dict[str, int]  # shape type -> count of shapes that are neither scribbles nor regions

    def summary(self) -> str:
        """One line for the command line."""
        text = (
            f"{self.images} images imported into {self.out_dir}: {self.scribbled} with scribbles, "
            f"{self.masked} with mask regions, {self.tagged} with tags"
        )
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items()))
        return text


# ---------------------------------------------------------------------------------------------- classes
def parse_classes(classes: str | Sequence[str]) -> list[str]:
    """Class names from ``"background,cat,dog"`` or a list (names stripped; empty names refused)."""
    items = classes.split(",") if isinstance(classes, str) else [str(c) for c in classes]
    names = [c.strip() for c in items]
    if not names or any(not n for n in names):
        raise DataError(f"--classes: expected comma-separated non-empty names, got {classes!r}")
    if len(set(names)) != len(names):
        raise DataError(f"--classes: duplicate class names in {names}")
    return names


class _Labels:
    """Label name -> class id, exact first, then ignoring case and surrounding spaces."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.exact = {c: i for i, c in enumerate(self.classes)}
        self.folded = {c.strip().casefold(): i for i, c in enumerate(self.classes)}

    def __call__(self, name: Any, where: str) -> int:
        if isinstance(name, str):
            if name in self.exact:
                return self.exact[name]
            if name.strip().casefold() in self.folded:
                return self.folded[name.strip().casefold()]
        raise DataError(
            f"{where}: unknown label {name!r}; expected one of {self.classes} "
            "(pass every label of the export in --classes)"
        )


# ---------------------------------------------------------------------------------------------- helpers
def _number(value: Any, where: str, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} must be a number, got {value!r}") from None
    if not np.isfinite(out):
        raise DataError(f"{where}: {what} must be finite, got {value!r}")
    return out


def _positive_int(value: Any, where: str, what: str) -> int:
    number = _number(value, where, what)
    if number < 1 or number != int(number):
        raise DataError(f"{where}: {what} must be a positive integer, got {value!r}")
    return int(number)


def _point_list(value: Any, where: str) -> np.ndarray:
    """[[x, y], ...] (JSON) as float [P, 2]."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'points' must be a non-empty list of [x, y] pairs, got {value!r}")
    out = []
    for k, pair in enumerate(value):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise DataError(f"{where}: point {k} must be an [x, y] pair, got {pair!r}")
        out.append((_number(pair[0], where, f"point {k} x"), _number(pair[1], where, f"point {k} y")))
    return np.asarray(out, dtype=np.float64)


def _fill_polygon(target: np.ndarray, points: np.ndarray, value: int) -> None:
    """Fill the polygon (x, y points rounded to pixels) with ``value`` in ``target`` [H, W]."""
    pts = np.rint(points).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(target, [pts], color=int(value))


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {what} {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err})") from err


# ---------------------------------------------------------------------------------------------- CVAT
def _cvat_points(text: str | None, where: str) -> np.ndarray:
    """CVAT's ``points="x1,y1;x2,y2;..."`` as float [P, 2]."""
    if not text or not text.strip():
        raise DataError(f"{where}: missing 'points' attribute")
    out = []
    for k, item in enumerate(text.strip().split(";")):
        parts = item.split(",")
        if len(parts) != 2:
            raise DataError(f"{where}: point {k} {item!r} is not 'x,y'")
        out.append((_number(parts[0], where, f"point {k} x"), _number(parts[1], where, f"point {k} y")))
    return np.asarray(out, dtype=np.float64)


def _cvat_mask(elem: ET.Element, size: tuple[int, int], where: str) -> np.ndarray:
    """A CVAT ``<mask rle="..." left top width height>`` as bool [H, W].

    ``rle`` lists run lengths over the box, row by row, alternating unpainted / painted and starting
    with unpainted."""
    left = int(_number(elem.get("left"), where, "left"))
    top = int(_number(elem.get("top"), where, "top"))
    width = _positive_int(elem.get("width"), where, "width")
    height = _positive_int(elem.get("height"), where, "height")
    try:
        counts = [int(c) for c in (elem.get("rle") or "").split(",") if c.strip()]
    except ValueError:
        raise DataError(f"{where}: 'rle' must be comma-separated integers") from None
    if any(c < 0 for c in counts) or sum(counts) != width * height:
        raise DataError(
            f"{where}: 'rle' run lengths add up to {sum(counts)}, expected width x height = {width * height}"
        )
    flat = np.zeros(width * height, dtype=bool)
    pos = 0
    for k, count in enumerate(counts):
        if k % 2 == 1:
            flat[pos : pos + count] = True
        pos += count
    out = np.zeros(size, dtype=bool)
    box = flat.reshape(height, width)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, size[0]), min(left + width, size[1])
    if y0 < y1 and x0 < x1:
        out[y0:y1, x0:x1] = box[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


_CVAT_SKIPPED = {"box", "ellipse", "cuboid", "skeleton"}


def _read_cvat(xml_path: Path, images_base: Path, labels: _Labels, skipped: Counter) -> list[_Entry]:
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{xml_path}: malformed XML ({err})") from err
    except OSError as err:
        raise DataError(f"cannot read CVAT export {xml_path}: {err}") from err
    if root.tag != "annotations":
        raise DataError(f"{xml_path}: root element is <{root.tag}>, expected CVAT's <annotations>")
    if root.find("track") is not None:
        raise DataError(
            f"{xml_path}: holds <track> elements (CVAT for video); export as 'CVAT for images 1.1'"
        )
    entries = []
    for n, img in enumerate(root.iter("image")):
        name = img.get("name")
        if not name:
            raise DataError(f"{xml_path}: <image> number {n} has no 'name' attribute")
        where = f"{xml_path}: image {name!r}"
        size = (
            _positive_int(img.get("height"), where, "height"),
            _positive_int(img.get("width"), where, "width"),
        )
        entry = _Entry(name=name, where=where, base=images_base, size=size)
        for k, el in enumerate(img):
            what = f"{where}, <{el.tag}> number {k}"
            if el.tag in _CVAT_SKIPPED:
                skipped[f"cvat {el.tag}"] += 1
                continue
            if el.tag not in ("polyline", "points", "polygon", "mask", "tag"):
                continue  # unknown extension elements are not annotations we can use
            cls = labels(el.get("label"), what)
            if el.tag == "tag":
                entry.tags.add(cls)
                continue
            order = _number(el.get("z_order", 0), what, "z_order")
            if el.tag == "polyline":
                entry.shapes.append(_Shape(_STROKE, cls, _cvat_points(el.get("points"), what), order=order))
            elif el.tag == "points":  # every point is a dot
                for point in _cvat_points(el.get("points"), what):
                    entry.shapes.append(_Shape(_STROKE, cls, point[None], order=order))
            elif el.tag == "polygon":
                entry.shapes.append(_Shape(_POLYGON, cls, _cvat_points(el.get("points"), what), order=order))
            else:
                entry.shapes.append(_Shape(_BRUSH, cls, mask=_cvat_mask(el, size, what), order=order))
        entry.shapes.sort(key=lambda s: s.order)  # stable: file order within a z level
        entries.append(entry)
    return entries


@contextmanager
def _cvat_source(export: Path) -> Iterator[tuple[Path, Path]]:
    """(annotations.xml, images folder) of an XML file, an export folder or an export zip."""
    if export.is_dir():
        xml = export / "annotations.xml"
        if not xml.is_file():
            raise DataError(f"{export}: no annotations.xml in this CVAT export folder")
        yield xml, export / "images" if (export / "images").is_dir() else export
    elif export.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="weakseg-cvat-") as tmp:
            try:
                with zipfile.ZipFile(export) as archive:
                    for member in archive.infolist():  # never outside the temporary folder
                        safe_join(tmp, member.filename)
                    archive.extractall(tmp)
            except zipfile.BadZipFile as err:
                raise DataError(f"{export}: not a readable zip file ({err})") from err
            with _cvat_source(Path(tmp)) as found:
                yield found
    else:
        yield export, export.parent / "images" if (export.parent / "images").is_dir() else export.parent


# ---------------------------------------------------------------------------------------------- LabelMe
_LABELME_STROKES = {"linestrip", "line", "point", "points"}
_LABELME_REGIONS = {"polygon", "rectangle", "circle", "mask"}


def _labelme_region(shape: dict, points: np.ndarray, size: tuple[int, int], where: str) -> _Shape:
    """A LabelMe region shape as a polygon or a raster region (class set by the caller)."""
    kind = shape.get("shape_type") or "polygon"
    if kind == "polygon":
        return _Shape(_POLYGON, -1, points)
    if kind == "rectangle":
        if len(points) != 2:
            raise DataError(f"{where}: a rectangle needs 2 points, got {len(points)}")
        (xa, ya), (xb, yb) = points
        return _Shape(_POLYGON, -1, np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]]))
    region = np.zeros(size, dtype=np.uint8)
    if kind == "circle":
        if len(points) != 2:
            raise DataError(f"{where}: a circle needs 2 points (centre, rim), got {len(points)}")
        centre, rim = points
        radius = float(np.hypot(*(rim - centre)))
        cv2.circle(region, tuple(int(v) for v in np.rint(centre)), int(round(radius)), 1, thickness=-1)
        return _Shape(_BRUSH, -1, mask=region.astype(bool))
    # "mask": a base64 PNG of the box between the two points
    if len(points) != 2 or not isinstance(shape.get("mask"), str):
        raise DataError(f"{where}: a mask shape needs 2 points and a base64 'mask' PNG")
    box = _decode_image(shape["mask"], where)
    x0, y0 = (int(v) for v in np.rint(points[0]))
    h, w = box.shape[:2]
    patch = (box if box.ndim == 2 else box[..., 0]) > 0
    ys, xs = slice(max(y0, 0), min(y0 + h, size[0])), slice(max(x0, 0), min(x0 + w, size[1]))
    region_bool = np.zeros(size, dtype=bool)
    region_bool[ys, xs] = patch[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return _Shape(_BRUSH, -1, mask=region_bool)


def _decode_image(data: str, where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(data, validate=False)
        with Image.open(io.BytesIO(raw)) as img:
            return np.asarray(img)
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{where}: cannot decode the embedded base64 image ({err})") from err


def _read_labelme_file(path: Path, sample_id: str, labels: _Labels) -> _Entry:
    obj = _read_json(path, "LabelMe file")
    if not isinstance(obj, dict) or not isinstance(obj.get("shapes"), list):
        raise DataError(f"{path}: not a LabelMe file (expected an object with a 'shapes' list)")
    image_path = obj.get("imagePath")
    if not isinstance(image_path, str) or not image_path:
        raise DataError(f"{path}: missing 'imagePath'")
    where = f"{path}"
    size = None
    if obj.get("imageHeight") is not None and obj.get("imageWidth") is not None:
        size = (
            _positive_int(obj["imageHeight"], where, "imageHeight"),
            _positive_int(obj["imageWidth"], where, "imageWidth"),
        )
    embedded = None
    if isinstance(obj.get("imageData"), str) and obj["imageData"]:
        try:
            embedded = base64.b64decode(obj["imageData"])
        except (binascii.Error, ValueError) as err:
            raise DataError(f"{path}: 'imageData' is not valid base64 ({err})") from err
    entry = _Entry(
        name=image_path.replace("\\", "/"),
        where=where,
        base=path.parent,
        size=size,
        embedded=embedded,
        sample_id=sample_id,
    )
    flags = obj.get("flags") or {}
    if not isinstance(flags, dict):
        raise DataError(f"{path}: 'flags' must be an object of name: true/false")
    for name, on in flags.items():
        if on is True:
            entry.tags.add(labels(name, f"{path}: flag {name!r}"))
    entry.shapes = list(_labelme_raw_shapes(obj["shapes"], path, labels))
    return entry


def _labelme_raw_shapes(shapes: list, path: Path, labels: _Labels) -> Iterator[_Shape]:
    """The shapes of a LabelMe file; region shapes that need the image size are resolved later."""
    for k, shape in enumerate(shapes):
        where = f"{path}: shape {k}"
        if not isinstance(shape, dict):
            raise DataError(f"{where}: expected an object, got {type(shape).__name__}")
        kind = shape.get("shape_type") or "polygon"
        where = f"{where} ({kind} {shape.get('label')!r})"
        if kind not in _LABELME_STROKES and kind not in _LABELME_REGIONS:
            raise DataError(f"{where}: unknown shape_type {kind!r}")
        cls = labels(shape.get("label"), where)
        points = _point_list(shape.get("points"), where)
        if kind in _LABELME_STROKES:
            if kind == "points":
                yield from (_Shape(_STROKE, cls, p[None]) for p in points)
            else:
                yield _Shape(_STROKE, cls, points)
        else:  # resolved against the image size in _finish_labelme_shapes
            yield _Shape(_REGION, cls, points, raw=shape, where=where)


def _read_labelme(export: Path, labels: _Labels) -> list[_Entry]:
    if export.is_dir():
        files = sorted((p for p in export.rglob("*.json") if p.is_file()), key=lambda p: p.as_posix())
        if not files:
            raise DataError(f"{export}: no LabelMe .json files in this folder")
        ids = [_sample_id(p.relative_to(export).as_posix(), str(p)) for p in files]
    else:
        files, ids = [export], [_sample_id(export.name, str(export))]
    return [_read_labelme_file(path, sid, labels) for path, sid in zip(files, ids)]


def _finish_labelme_shapes(entry: _Entry, size: tuple[int, int]) -> None:
    """Turn LabelMe region shapes (kept with their source dicts) into polygons / raster regions."""
    done: list[_Shape] = []
    for shape in entry.shapes:
        if shape.kind == _REGION:
            assert shape.points is not None  # LabelMe regions keep their points
            region = _labelme_region(shape.raw or {}, shape.points, size, shape.where)
            region.cls = shape.cls
            region.kind = _POLYGON  # a raster region (circle, mask) is a mask region, not a scribble
            done.append(region)
        else:
            done.append(shape)
    entry.shapes = done


# ---------------------------------------------------------------------------------------------- Label Studio
class _BitReader:
    """Reads big-endian bit fields from a byte sequence (Label Studio's brush RLE)."""

    def __init__(self, data: bytes) -> None:
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > self.bits.size:
            raise ValueError("the RLE data ends early")
        value = 0
        for bit in self.bits[self.pos : self.pos + n]:
            value = (value << 1) | int(bit)
        self.pos += n
        return value


def decode_labelstudio_rle(rle: Sequence[int]) -> np.ndarray:
    """Decode Label Studio's brush RLE (the ``value.rle`` byte list) into its flat uint8 array.

    The stream (bits, most significant first) is: the value count (32 bits), the word size minus
    one (5 bits), four run-length field sizes minus one (4 bits each), then blocks of: a flag bit,
    a size selector (2 bits) and a length minus one (that many bits); a set flag repeats one word
    over the run, a clear flag is followed by that many literal words. The result is the RGBA
    image, row by row (``H * W * 4`` values); the alpha channel marks the painted pixels.
    """
    if not isinstance(rle, list | tuple) or not all(isinstance(b, int) and 0 <= b <= 255 for b in rle):
        raise ValueError("expected a list of byte values 0..255")
    reader = _BitReader(bytes(rle))
    count = reader.read(32)
    word = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8 if word <= 8 else np.uint32)
    i = 0
    while i < count:
        repeat = reader.read(1)
        end = min(i + 1 + reader.read(sizes[reader.read(2)]), count)
        if repeat:
            out[i:end] = reader.read(word)
        else:
            for j in range(i, end):
                out[j] = reader.read(word)
        i = end
    return out


_LS_SKIPPED = {"rectanglelabels", "ellipselabels", "rectangle", "ellipse", "textarea", "rating", "number"}
_LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def _ls_image_name(data: Any, where: str) -> tuple[str, list[str]]:
    """The image reference of a task's ``data`` and other names to try for it."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: 'data' must be an object holding the image URL")
    value = data.get("image")
    if not isinstance(value, str):
        value = next(
            (
                v
                for v in data.values()
                if isinstance(v, str) and Path(v.split("?")[0]).suffix.lower() in IMAGE_SUFFIXES
            ),
            None,
        )
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: no image URL in 'data' (expected data.image)")
    parsed = urllib.parse.urlparse(value)
    query = urllib.parse.parse_qs(parsed.query)
    name = query["d"][0] if "d" in query else urllib.parse.unquote(parsed.path)  # local-files ?d=dir/x.jpg
    base = name.rsplit("/", 1)[-1]
    others = [base]
    if _LS_UPLOAD_PREFIX.match(base):
        others.append(base[9:])  # uploads are stored as <8 hex>-<original name>
    return name.lstrip("/"), others


def _read_labelstudio(export: Path, images_base: Path, labels: _Labels, skipped: Counter) -> list[_Entry]:
    tasks = _read_json(export, "Label Studio export")
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise DataError(f"{export}: expected Label Studio's JSON export (a list of tasks)")
    entries = []
    for n, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise DataError(f"{export}: task number {n} is not an object")
        where = f"{export}: task {task.get('id', n)!r}"
        name, others = _ls_image_name(task.get("data"), where)
        entry = _Entry(
            name=name, where=f"{where} ({name})", base=images_base, candidates=others, id_from_file=True
        )
        annotations = task.get("annotations", task.get("completions", []))
        if not isinstance(annotations, list):
            raise DataError(f"{where}: 'annotations' must be a list")
        kept = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
        results = kept[-1].get("result", []) if kept else []
        if not isinstance(results, list):
            raise DataError(f"{where}: 'result' must be a list")
        for k, res in enumerate(results):
            _labelstudio_result(entry, res, f"{entry.where}, result {k}", labels, skipped)
        entries.append(entry)
    return entries


def _labelstudio_result(entry: _Entry, res: Any, where: str, labels: _Labels, skipped: Counter) -> None:
    if not isinstance(res, dict) or not isinstance(res.get("value"), dict):
        raise DataError(f"{where}: expected an object with a 'value' object")
    kind, value = res.get("type"), res["value"]
    if kind in ("choices", "taxonomy"):
        names = value.get(kind, [])
        flat_names = [n for item in names for n in (item if isinstance(item, list) else [item])]
        entry.tags.update(labels(name, where) for name in flat_names)
        return
    if kind not in ("polygonlabels", "brushlabels", "keypointlabels"):
        skipped[f"labelstudio {kind}"] += 1
        return
    if res.get("image_rotation", 0) not in (0, None):
        raise DataError(f"{where}: the image was rotated in Label Studio (image_rotation); not supported")
    size = (
        _positive_int(res.get("original_height"), where, "original_height"),
        _positive_int(res.get("original_width"), where, "original_width"),
    )
    if entry.size is None:
        entry.size = size
    elif entry.size != size:
        raise DataError(
            f"{where}: original size {size} differs from {entry.size} of the task's other results"
        )
    names = value.get(kind) or value.get("labels")
    if not isinstance(names, list) or not names:
        raise DataError(f"{where}: no label in value.{kind}")
    cls = labels(names[0], where)
    h, w = size
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise DataError(f"{where}: brush value must have format 'rle' and an 'rle' list")
        try:
            flat = decode_labelstudio_rle(value["rle"])
        except ValueError as err:
            raise DataError(f"{where}: malformed brush RLE ({err})") from None
        if flat.size != h * w * 4:
            raise DataError(f"{where}: brush RLE holds {flat.size} values, expected {h} x {w} x 4 (RGBA)")
        entry.shapes.append(_Shape(_BRUSH, cls, mask=flat.reshape(h, w, 4)[..., 3] > 0))
        return
    if kind == "keypointlabels":
        x = _number(value.get("x"), where, "x") * w / 100.0
        y = _number(value.get("y"), where, "y") * h / 100.0
        entry.shapes.append(_Shape(_STROKE, cls, np.array([[x, y]])))
        return
    points = _point_list(value.get("points"), where) * np.array([w / 100.0, h / 100.0])  # percent -> pixels
    entry.shapes.append(_Shape(_POLYGON, cls, points))


# ---------------------------------------------------------------------------------------------- images
def _sample_id(name: str, where: str) -> str:
    """A sample id from an image's relative name: the path without its suffix."""
    rel = name.replace("\\", "/").lstrip("/")
    stem = rel.rsplit(".", 1)[0] if Path(rel).suffix else rel
    return check_sample_id(stem, where)


def _locate(entry: _Entry, search: Sequence[Path]) -> tuple[Path, Path] | tuple[None, None]:
    """(image file, folder it was found in) of ``entry``: its name relative to the entry's base and
    the search folders, then its other names there; (None, None) when absent."""
    names = [entry.name, *entry.candidates, entry.name.rsplit("/", 1)[-1]]
    for folder in [entry.base, *search]:
        for name in names:
            path = folder / name
            if path.is_file():
                return path, folder
    return None, None


def _image_size(path: Path, where: str) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{where}: cannot read image {path} ({err})") from err


@dataclass
class _Picture:
    """An image to put into a dataset: a file, or bytes embedded in an export."""

    sample_id: str
    path: Path | None
    data: bytes | None
    suffix: str  # lower case, with the dot

    def size(self, where: str) -> tuple[int, int]:
        if self.path is not None:
            return _image_size(self.path, where)
        try:
            with Image.open(io.BytesIO(self.data or b"")) as img:
                return img.size[1], img.size[0]
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{where}: cannot read the embedded image ({err})") from err


def _embedded_suffix(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}.get(
                img.format or "", ".png"
            )
    except (UnidentifiedImageError, OSError):
        return ".png"


def _write_images(out: Path, pictures: Sequence[_Picture]) -> str:
    """Copy the images into ``out/images`` and return the layout pattern for them.

    Images keep their files when they share one format; otherwise every image is re-encoded as PNG
    (lossless) so that one pattern names them all."""
    suffixes = {p.suffix for p in pictures}
    suffix = suffixes.pop() if len(suffixes) == 1 else ".png"
    for pic in pictures:
        target = safe_join(out / "images", pic.sample_id + suffix)
        with atomic_path(target) as tmp:
            if pic.suffix == suffix and pic.path is not None:
                shutil.copyfile(pic.path, tmp)
            elif pic.suffix == suffix:
                tmp.write_bytes(pic.data or b"")
            else:
                source = pic.path if pic.path is not None else io.BytesIO(pic.data or b"")
                with Image.open(source) as img:
                    img.save(tmp, format="PNG")
    return "images/{id}" + suffix


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is an existing file; expected a folder for the new dataset")
    if (out / DATASET_JSON).is_file() and not overwrite:
        raise DataError(
            f"{out} already holds a dataset ({out / DATASET_JSON}); choose another folder, "
            "or pass --overwrite to write over its files"
        )


def _unique_ids(pictures: Iterable[_Picture], sources: Iterable[str]) -> None:
    seen: dict[str, str] = {}
    for pic, source in zip(pictures, sources):
        key = pic.sample_id.casefold()
        if key in seen:
            raise DataError(
                f"{source} and {seen[key]} would both become sample {pic.sample_id!r} "
                "(same name without the suffix); rename one of them"
            )
        seen[key] = source


# ---------------------------------------------------------------------------------------------- drawing
def _draw(
    entry: _Entry, size: tuple[int, int], width: int, fill: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The scribble map and (when the entry has polygons) the mask of one entry."""
    scribble = np.full(size, IGNORE, dtype=np.uint8)
    strokes: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if strokes:
            drawn = rasterize_polylines(strokes, size, width=width, ignore_index=IGNORE)
            scribble[drawn != IGNORE] = drawn[drawn != IGNORE]
            strokes.clear()

    mask = None
    for shape in entry.shapes:
        if shape.kind == _STROKE:
            assert shape.points is not None  # strokes are points, never masks
            strokes.append((shape.cls, shape.points))
        elif shape.kind == _BRUSH:
            flush()
            scribble[shape.mask] = shape.cls
        else:
            if mask is None:
                mask = np.full(size, fill, dtype=np.uint8)
            if shape.mask is not None:
                mask[shape.mask] = shape.cls
            else:
                assert shape.points is not None  # a region without a mask is a polygon
                _fill_polygon(mask, shape.points, shape.cls)
    flush()
    return scribble, mask


# ---------------------------------------------------------------------------------------------- entry point
def import_annotations(
    fmt: ImportFormat,
    export: str | os.PathLike,
    out_dir: str | os.PathLike,
    classes: str | Sequence[str],
    *,
    images: str | os.PathLike | None = None,
    width: int = 3,
    split: str = "train",
    mask_fill: Literal["background", "ignore"] = "background",
    overwrite: bool = False,
) -> ImportReport:
    """Convert an annotation tool's export into a folder-format dataset (see the module doc).

    Args:
        fmt: ``"cvat"``, ``"labelme"`` or ``"labelstudio"``.
        export: the export file or folder.
        out_dir: the new dataset's folder (refused when it holds a dataset, unless ``overwrite``).
        classes: class names in id order (``"background,cat,dog"`` or a list); every label of the
            export must be one of them (matched exactly, then ignoring case).
        images: folder to look for the images in besides where the export says (Label Studio:
            where the task images are; they are matched by file name, with or without the upload
            prefix).
        width: stroke width in pixels of lines and dots.
        split: the split that lists every imported image.
        mask_fill: what polygon masks hold outside their polygons: ``"background"`` (the background
            class; 255 when the dataset has none) or ``"ignore"`` (255).
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown import format {fmt!r}; expected one of {list(FORMATS)}")
    if width < 1:
        raise DataError(f"--width must be >= 1, got {width}")
    if mask_fill not in ("background", "ignore"):
        raise DataError(f"mask_fill must be 'background' or 'ignore', got {mask_fill!r}")
    export, out = Path(export), Path(out_dir)
    if not export.exists():
        raise DataError(f"export not found: {export}")
    if images is not None and not Path(images).is_dir():
        raise DataError(f"--images {images} is not a folder")
    names = parse_classes(classes)
    labels = _Labels(names)
    _check_out_dir(out, overwrite)
    background = resolve_background(names)
    fill = background if (mask_fill == "background" and background is not None) else IGNORE
    skipped: Counter = Counter()
    search = [Path(images)] if images is not None else []

    with _entries(fmt, export, labels, skipped, search) as entries:
        if not entries:
            raise DataError(f"{export}: the export lists no images")
        pictures, sizes = [], []
        for entry in entries:
            path, found_in = _locate(entry, search)
            if path is None and entry.embedded is None:
                looked = ", ".join(str(f) for f in dict.fromkeys([entry.base, *search]))
                raise DataError(f"{entry.where}: image {entry.name!r} not found (looked in {looked})")
            if entry.sample_id is not None:
                sid = entry.sample_id
            elif entry.id_from_file and path is not None and found_in is not None:
                sid = _sample_id(path.relative_to(found_in).as_posix(), entry.where)
            else:
                sid = _sample_id(entry.name, entry.where)
            if path is not None:
                pic = _Picture(sid, path, None, path.suffix.lower())
            else:
                pic = _Picture(sid, None, entry.embedded, _embedded_suffix(entry.embedded or b""))
            size = pic.size(entry.where)
            if entry.size is not None and entry.size != size:
                raise DataError(
                    f"{entry.where}: the export says {entry.size[1]}x{entry.size[0]} (WxH) but the image "
                    f"{path or 'embedded in it'} is {size[1]}x{size[0]}"
                )
            _finish_labelme_shapes(entry, size)
            pictures.append(pic)
            sizes.append(size)
        _unique_ids(pictures, [e.where for e in entries])

        from weakseg.viz import make_palette

        palette = make_palette()
        layout_images = _write_images(out, pictures)
        any_mask = any(s.kind == _POLYGON for e in entries for s in e.shapes)
        tags: dict[str, np.ndarray] = {}
        scribbled = masked = tagged = 0
        for entry, pic, size in zip(entries, pictures, sizes):
            scribble, mask = _draw(entry, size, width, fill)
            atomic_save_label_png(safe_join(out / "scribbles", pic.sample_id + ".png"), scribble, palette)
            vec = np.zeros(len(names), dtype=np.float32)
            vec[sorted(entry.tags)] = 1.0
            present = np.unique(scribble)
            if any_mask:
                if mask is None:
                    mask = np.full(size, IGNORE, dtype=np.uint8)  # not annotated: unknown, not background
                else:
                    masked += 1
                atomic_save_label_png(safe_join(out / "masks", pic.sample_id + ".png"), mask, palette)
                present = np.union1d(present, np.unique(mask))  # the fill (background) is tagged anyway
            present = present[present != IGNORE].astype(np.int64)
            vec[present] = 1.0
            scribbled += int((scribble != IGNORE).any())
            tagged += int(bool(entry.tags))
            tags[pic.sample_id] = vec

    layout = {"images": layout_images, "scribbles": "scribbles/{id}.png", "tags": "tags.csv"}
    if any_mask:
        layout["masks"] = "masks/{id}.png"
    write_split(out, split, [p.sample_id for p in pictures])
    write_tags_csv(out / "tags.csv", tags, names, form="names")
    write_dataset_json(
        out, names, layout=layout, extra={"imported_from": {"format": fmt, "export": str(export)}}
    )
    return ImportReport(out, len(pictures), scribbled, masked, tagged, dict(skipped))


@contextmanager
def _entries(
    fmt: str, export: Path, labels: _Labels, skipped: Counter, search: list[Path]
) -> Iterator[list[_Entry]]:
    """The entries of an export (kept valid while a zip's temporary folder is needed)."""
    if fmt == "cvat":
        with _cvat_source(export) as (xml, images_base):
            yield _read_cvat(xml, images_base, labels, skipped)
    elif fmt == "labelme":
        yield _read_labelme(export, labels)
    else:
        if export.is_dir():
            raise DataError(f"{export}: expected Label Studio's exported .json file, got a folder")
        yield _read_labelstudio(export, export.parent, labels, skipped)


# ---------------------------------------------------------------------------------------------- photos
def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by suffix) under ``folder``, recursively, sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--images {folder} is not a folder")
    files = sorted(
        (
            p
            for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise DataError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def create_dataset_from_images(
    out_dir: str | os.PathLike,
    images: str | os.PathLike,
    classes: str | Sequence[str],
    *,
    split: str = "train",
    overwrite: bool = False,
) -> Path:
    """A new, unannotated folder-format dataset of the photos under ``images`` (copied into
    ``out_dir/images``; ids are their paths without the suffix) with every image in
    ``splits/<split>.txt``, an empty scribble map (all 255) per image and a ``tags.csv`` row per
    image (no class tagged), so the dataset is complete (``weakseg data verify`` passes) before the
    first stroke. Returns ``out_dir``."""
    out = Path(out_dir)
    names = parse_classes(classes)
    _check_out_dir(out, overwrite)
    folder = Path(images)
    files = find_images(folder)
    pictures = [
        _Picture(_sample_id(f.relative_to(folder).as_posix(), str(f)), f, None, f.suffix.lower())
        for f in files
    ]
    _unique_ids(pictures, [str(f) for f in files])
    sizes = [pic.size(str(f)) for pic, f in zip(pictures, files)]  # readable, or an error naming it
    layout = {"images": _write_images(out, pictures), "scribbles": "scribbles/{id}.png", "tags": "tags.csv"}
    for pic, size in zip(pictures, sizes):
        atomic_save_label_png(
            safe_join(out / "scribbles", pic.sample_id + ".png"), np.full(size, IGNORE, np.uint8)
        )
    empty = np.zeros(len(names), dtype=np.float32)
    write_tags_csv(out / "tags.csv", {p.sample_id: empty for p in pictures}, names, form="names")
    write_split(out, split, [p.sample_id for p in pictures])
    write_dataset_json(out, names, layout=layout)
    return out
