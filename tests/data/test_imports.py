"""Imports from CVAT, LabelMe and Label Studio exports, and datasets made from a folder of photos.

Every export here is written by the test itself, following each tool's documented format; the
checks read the PNGs and the CSV the import wrote."""

from __future__ import annotations

import base64
import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.cli import main
from weakseg.data import FolderDataset
from weakseg.data.imports import create_dataset_from_images, decode_labelstudio_rle, import_annotations
from weakseg.data.scribbles import rasterize_polylines
from weakseg.io import DataError, read_label

CLASSES = ["background", "cat", "dog"]


# ---------------------------------------------------------------------------------------------- helpers
def write_image(path: Path, size: tuple[int, int], value: int = 90) -> Path:
    """An RGB image of ``size`` (H, W) with a gradient, so copies can be compared byte by byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    arr = np.full((h, w, 3), value, np.uint8)
    arr[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 3
    Image.fromarray(arr).save(path)
    return path


def tags_rows(path: Path) -> dict[str, set[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "tags"]
    return {r[0]: set(filter(None, r[1].split(";"))) for r in rows[1:]}


def polygon_mask(size: tuple[int, int], x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Pixels of an axis-aligned polygon with corners (x0, y0) .. (x1, y1), both ends included."""
    out = np.zeros(size, bool)
    out[y0 : y1 + 1, x0 : x1 + 1] = True
    return out


def ls_rle(values: np.ndarray) -> list[int]:
    """Encode a flat uint8 array in Label Studio's brush RLE (repeat runs only, 16-bit lengths)."""
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> (n - 1 - k)) & 1 for k in range(n))

    put(values.size, 32)
    put(7, 5)  # 8-bit words
    for _ in range(4):
        put(15, 4)  # every length field is 16 bits wide
    i = 0
    while i < values.size:
        j = i
        while j < values.size and values[j] == values[i] and j - i < 65536:
            j += 1
        put(1, 1)  # a repeat run
        put(0, 2)  # length field 0
        put(j - i - 1, 16)
        put(int(values[i]), 8)
        i = j
    bits.extend([0] * (-len(bits) % 8))
    return np.packbits(np.array(bits, np.uint8)).tolist()


# ---------------------------------------------------------------------------------------------- CVAT
CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>pets</name><labels>
    <label><name>cat</name></label><label><name>dog</name></label><label><name>background</name></label>
  </labels></task></meta>
  <image id="0" name="a.png" width="40" height="30">
    <polygon label="dog" source="manual" occluded="0" points="2,20;10,20;10,28;2,28" z_order="0"/>
    <polyline label="cat" source="manual" occluded="0" points="5,5;20,5;20,12" z_order="0"/>
    <box label="cat" source="manual" occluded="0" xtl="1" ytl="1" xbr="5" ybr="5" z_order="0"/>
    <points label="background" source="manual" occluded="0" points="35,25;36,2" z_order="0"/>
    <mask label="dog" source="manual" occluded="0" rle="1, 2, 2, 1" left="30" top="10" width="3" height="2"
          z_order="0"/>
    <tag label="dog" source="manual"/>
  </image>
  <image id="1" name="sub/b.png" width="20" height="10"></image>
</annotations>
"""


@pytest.fixture
def cvat_export(tmp_path: Path) -> Path:
    export = tmp_path / "cvat"
    write_image(export / "images" / "a.png", (30, 40))
    write_image(export / "images" / "sub" / "b.png", (10, 20))
    (export / "annotations.xml").write_text(CVAT_XML, encoding="utf-8")
    return export


def test_cvat_polylines_points_masks_polygons_and_tags(cvat_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = import_annotations("cvat", cvat_export / "annotations.xml", out, CLASSES, width=3)
    assert (report.images, report.scribbled, report.masked, report.tagged) == (2, 1, 1, 1)
    assert report.skipped == {"cvat box": 1}

    scribble = read_label(out / "scribbles" / "a.png")
    expected = rasterize_polylines(
        [(1, np.array([[5, 5], [20, 5], [20, 12]])), (0, np.array([[35, 25]])), (0, np.array([[36, 2]]))],
        (30, 40),
        width=3,
    )
    expected[10, 31:33] = 2  # the brush mask: runs 1 off, 2 on, 2 off, 1 on over a 3x2 box at (30, 10)
    expected[11, 32] = 2
    np.testing.assert_array_equal(scribble, expected)
    assert int((scribble == 1).sum()) > 16 * 3  # really a thick line

    mask = read_label(out / "masks" / "a.png")
    dog = polygon_mask((30, 40), 2, 20, 10, 28)
    assert (mask[dog] == 2).all() and (mask[~dog] == 0).all()  # outside the polygon: background
    assert (read_label(out / "masks" / "sub" / "b.png") == 255).all()  # no polygon: unknown, not background
    assert (read_label(out / "scribbles" / "sub" / "b.png") == 255).all()

    assert tags_rows(out / "tags.csv") == {"a": {"background", "cat", "dog"}, "sub/b": set()}
    assert (out / "splits" / "train.txt").read_text() == "a\nsub/b\n"
    assert (out / "images" / "a.png").read_bytes() == (cvat_export / "images" / "a.png").read_bytes()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == CLASSES and meta["layout"]["masks"] == "masks/{id}.png"

    dataset = FolderDataset(out, "train")
    assert dataset.verify(progress=False) == []
    sample = dataset[0]
    assert sample["id"] == "a" and sample["tags"].tolist() == [1.0, 1.0, 1.0]


def test_cvat_zip_and_folder_give_the_same_dataset(cvat_export: Path, tmp_path: Path) -> None:
    archive = tmp_path / "task.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in cvat_export.rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(cvat_export).as_posix())
    import_annotations("cvat", archive, tmp_path / "from_zip", CLASSES, width=5)
    import_annotations("cvat", cvat_export, tmp_path / "from_dir", CLASSES, width=5)
    for name in ("scribbles/a.png", "masks/a.png", "scribbles/sub/b.png"):
        np.testing.assert_array_equal(
            read_label(tmp_path / "from_zip" / name), read_label(tmp_path / "from_dir" / name)
        )
    assert (tmp_path / "from_zip" / "tags.csv").read_text() == (
        tmp_path / "from_dir" / "tags.csv"
    ).read_text()


def test_cvat_z_order_puts_higher_shapes_on_top(tmp_path: Path) -> None:
    export = tmp_path / "cvat"
    write_image(export / "images" / "a.png", (20, 20))
    (export / "annotations.xml").write_text(
        '<annotations><image id="0" name="a.png" width="20" height="20">'
        '<polygon label="cat" points="0,0;19,0;19,19;0,19" z_order="2"/>'
        '<polygon label="dog" points="0,0;19,0;19,19;0,19" z_order="1"/>'
        "</image></annotations>"
    )
    import_annotations("cvat", export, tmp_path / "out", CLASSES)
    assert (read_label(tmp_path / "out" / "masks" / "a.png") == 1).all()


def test_cvat_errors_name_the_file_and_the_entry(cvat_export: Path, tmp_path: Path) -> None:
    xml = cvat_export / "annotations.xml"
    with pytest.raises(
        DataError, match=r"annotations\.xml: image 'a\.png', <polyline> number 1: unknown label 'cat'"
    ):
        import_annotations("cvat", xml, tmp_path / "o1", ["background", "dog"])

    xml.write_text(CVAT_XML.replace('name="sub/b.png"', 'name="sub/missing.png"'))
    with pytest.raises(DataError, match=r"image 'sub/missing\.png'.* not found"):
        import_annotations("cvat", xml, tmp_path / "o2", CLASSES)

    xml.write_text(CVAT_XML.replace('points="5,5;20,5;20,12"', 'points="5,5;twenty,5"'))
    with pytest.raises(DataError, match=r"image 'a\.png', <polyline> number 1: point 1 x must be a number"):
        import_annotations("cvat", xml, tmp_path / "o3", CLASSES)

    xml.write_text(CVAT_XML.replace('width="40" height="30"', 'width="41" height="30"'))
    with pytest.raises(DataError, match=r"image 'a\.png': the export says 41x30 .* is 40x30"):
        import_annotations("cvat", xml, tmp_path / "o4", CLASSES)

    xml.write_text(CVAT_XML[:300])
    with pytest.raises(DataError, match=r"annotations\.xml: malformed XML"):
        import_annotations("cvat", xml, tmp_path / "o5", CLASSES)
    # nothing is written before the whole export was read and every image found and measured
    assert not any((tmp_path / f"o{k}").exists() for k in range(1, 6))


# ---------------------------------------------------------------------------------------------- LabelMe
def labelme_file(path: Path, image_path: str, shapes: list[dict], size=(30, 40), **extra) -> Path:
    obj = {
        "version": "5.4.1",
        "flags": extra.pop("flags", {}),
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": extra.pop("imageData", None),
        "imageHeight": size[0],
        "imageWidth": size[1],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def shape(label: str, kind: str, points: list) -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": None,
        "description": "",
        "shape_type": kind,
        "flags": {},
    }


def test_labelme_linestrips_polygons_flags_and_embedded_images(tmp_path: Path) -> None:
    export = tmp_path / "lm"
    write_image(export / "one.jpg", (30, 40))
    labelme_file(
        export / "one.json",
        "one.jpg",
        [
            shape("cat", "linestrip", [[3, 3], [30.4, 3.4]]),
            shape("background", "point", [[38, 28]]),
            shape("dog", "rectangle", [[20, 10], [25, 14]]),
            shape("cat", "polygon", [[2, 15], [8, 15], [8, 20], [2, 20]]),
        ],
        flags={"dog": True, "cat": False},
    )
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 16, 3), 200, np.uint8)).save(buf, format="PNG")
    labelme_file(
        export / "nested" / "two.json",
        "../gone/two.png",  # not on disk: the embedded copy is used
        [shape("dog", "line", [[1, 1], [14, 10]])],
        size=(12, 16),
        imageData=base64.b64encode(buf.getvalue()).decode(),
    )
    out = tmp_path / "out"
    report = import_annotations("labelme", export, out, CLASSES, width=1)
    assert (report.images, report.scribbled, report.masked) == (2, 2, 1)
    assert sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.*")) == [
        "images/nested/two.png",
        "images/one.png",
    ]  # mixed jpg/png inputs: all re-encoded as PNG under one pattern
    assert json.loads((out / "dataset.json").read_text())["layout"]["images"] == "images/{id}.png"

    scribble = read_label(out / "scribbles" / "one.png")
    expected = rasterize_polylines(
        [(1, np.array([[3, 3], [30, 3]])), (0, np.array([[38, 28]]))], (30, 40), width=1
    )
    np.testing.assert_array_equal(scribble, expected)
    assert (scribble[3, 3:31] == 1).all() and scribble[28, 38] == 0

    mask = read_label(out / "masks" / "one.png")
    rect, poly = polygon_mask((30, 40), 20, 10, 25, 14), polygon_mask((30, 40), 2, 15, 8, 20)
    assert (mask[rect] == 2).all() and (mask[poly] == 1).all() and (mask[~(rect | poly)] == 0).all()
    two = read_label(out / "scribbles" / "nested" / "two.png")
    assert two[1, 1] == 2 and two[10, 14] == 2 and (two == 2).sum() == 14  # one 8-connected line
    assert tags_rows(out / "tags.csv") == {"one": {"background", "cat", "dog"}, "nested/two": {"dog"}}


def test_labelme_errors_name_the_file_and_the_shape(tmp_path: Path) -> None:
    export = tmp_path / "lm"
    write_image(export / "one.png", (30, 40))
    labelme_file(
        export / "one.json",
        "one.png",
        [shape("cat", "polygon", [[1, 1], [5, 1], [5, 5]]), shape("cow", "line", [[1, 1], [2, 2]])],
    )
    with pytest.raises(DataError, match=r"one\.json: shape 1 \(line 'cow'\): unknown label 'cow'"):
        import_annotations("labelme", export, tmp_path / "o1", CLASSES)
    labelme_file(export / "one.json", "elsewhere.png", [])
    with pytest.raises(DataError, match=r"one\.json: image 'elsewhere\.png' not found"):
        import_annotations("labelme", export, tmp_path / "o2", CLASSES)
    (export / "one.json").write_text('{"shapes": [', encoding="utf-8")
    with pytest.raises(DataError, match=r"one\.json: malformed JSON"):
        import_annotations("labelme", export, tmp_path / "o3", CLASSES)
    labelme_file(export / "one.json", "one.png", [shape("cat", "linestrip", [[1, 1], [2]])])
    with pytest.raises(
        DataError, match=r"one\.json: shape 0 \(linestrip 'cat'\): point 1 must be an \[x, y\] pair"
    ):
        import_annotations("labelme", export, tmp_path / "o4", CLASSES)


# ---------------------------------------------------------------------------------------------- Label Studio
def test_labelstudio_rle_decoder_reads_repeats_and_literals() -> None:
    # 4 values, 8-bit words, every length field 1 bit; a repeat run of 2 x 255, then 2 literals 1, 2
    bits = f"{4:032b}" + "00111" + "0000" * 4 + "1" + "00" + "1" + "11111111"
    bits += "0" + "00" + "1" + "00000001" + "00000010"
    bits += "0" * (-len(bits) % 8)
    data = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert decode_labelstudio_rle(data).tolist() == [255, 255, 1, 2]
    values = np.repeat(np.array([0, 0, 7, 7, 7, 255], np.uint8), 4)
    assert decode_labelstudio_rle(ls_rle(values)).tolist() == values.tolist()


def ls_task(task_id: int, image: str, results: list[dict], cancelled_first: bool = False) -> dict:
    annotations = [{"id": 1, "result": results, "was_cancelled": False}]
    if cancelled_first:
        annotations.append({"id": 2, "result": [], "was_cancelled": True})
    return {"id": task_id, "data": {"image": image}, "annotations": annotations, "predictions": []}


def ls_result(kind: str, value: dict, size=(30, 40)) -> dict:
    return {
        "id": "r",
        "type": kind,
        "from_name": "tag",
        "to_name": "image",
        "original_width": size[1],
        "original_height": size[0],
        "image_rotation": 0,
        "value": value,
    }


def test_labelstudio_brushes_keypoints_polygons_and_choices(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_image(photos / "photo.png", (30, 40))
    write_image(photos / "other.png", (30, 40))
    brush = np.zeros((30, 40), bool)
    brush[4:7, 5:25] = True  # a painted stroke
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[brush] = (255, 0, 0, 255)
    tasks = [
        ls_task(
            11,
            "/data/upload/3/1a2b3c4d-photo.png",
            [
                ls_result(
                    "brushlabels", {"format": "rle", "rle": ls_rle(rgba.ravel()), "brushlabels": ["cat"]}
                ),
                ls_result(
                    "keypointlabels", {"x": 50.0, "y": 50.0, "width": 1.0, "keypointlabels": ["Background"]}
                ),
                ls_result(
                    "polygonlabels",
                    {"points": [[50, 50], [75, 50], [75, 80], [50, 80]], "polygonlabels": ["dog"]},
                ),
                ls_result(
                    "rectanglelabels", {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["dog"]}
                ),
                {
                    "id": "c",
                    "type": "choices",
                    "from_name": "kind",
                    "to_name": "image",
                    "value": {"choices": ["dog"]},
                },
            ],
            cancelled_first=True,
        ),
        ls_task(12, "/data/local-files/?d=photos/other.png", []),
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks), encoding="utf-8")
    out = tmp_path / "out"
    report = import_annotations("labelstudio", export, out, CLASSES, images=photos, width=3)
    assert (report.images, report.scribbled, report.masked, report.tagged) == (2, 1, 1, 1)
    assert report.skipped == {"labelstudio rectanglelabels": 1}
    assert (out / "splits" / "train.txt").read_text() == "photo\nphotos/other\n"

    scribble = read_label(out / "scribbles" / "photo.png")
    expected = np.full((30, 40), 255, np.uint8)
    expected[brush] = 1
    dot = rasterize_polylines([(0, np.array([[20.0, 15.0]]))], (30, 40), width=3)
    expected[dot == 0] = 0
    np.testing.assert_array_equal(scribble, expected)
    mask = read_label(out / "masks" / "photo.png")
    region = polygon_mask((30, 40), 20, 15, 30, 24)
    assert (mask[region] == 2).all() and (mask[~region] == 0).all()
    assert tags_rows(out / "tags.csv")["photo"] == {"background", "cat", "dog"}


def test_labelstudio_errors_name_the_task(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_image(photos / "photo.png", (30, 40))
    export = tmp_path / "export.json"
    bad_label = [
        ls_task(
            7,
            "/data/upload/1/photo.png",
            [ls_result("keypointlabels", {"x": 1, "y": 1, "keypointlabels": ["cow"]})],
        )
    ]
    export.write_text(json.dumps(bad_label))
    with pytest.raises(
        DataError, match=r"export\.json: task 7 \(data/upload/1/photo\.png\), result 0: unknown label 'cow'"
    ):
        import_annotations("labelstudio", export, tmp_path / "o1", CLASSES, images=photos)
    export.write_text(json.dumps([ls_task(8, "/data/upload/1/nothere.png", [])]))
    with pytest.raises(DataError, match=r"task 8 \(data/upload/1/nothere\.png\): image .* not found"):
        import_annotations("labelstudio", export, tmp_path / "o2", CLASSES, images=photos)
    brush = ls_result(
        "brushlabels", {"format": "rle", "rle": ls_rle(np.zeros(10, np.uint8)), "brushlabels": ["cat"]}
    )
    export.write_text(json.dumps([ls_task(9, "photo.png", [brush])]))
    with pytest.raises(
        DataError, match=r"task 9 \(photo\.png\), result 0: brush RLE holds 10 values, expected 30 x 40 x 4"
    ):
        import_annotations("labelstudio", export, tmp_path / "o3", CLASSES, images=photos)


# ---------------------------------------------------------------------------------------------- CLI, photos
def test_cli_import_and_its_one_line_errors(cvat_export: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "data",
            "import",
            "--format",
            "cvat",
            str(cvat_export),
            str(out),
            "--classes",
            "background,cat,dog",
            "--width",
            "1",
        ]
    )
    assert code == 0
    assert "2 images imported" in capsys.readouterr().out
    assert (read_label(out / "scribbles" / "a.png")[5, 5:21] == 1).all()

    code = main(
        ["data", "import", "--format", "cvat", str(cvat_export), str(out), "--classes", "background,cat,dog"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("weakseg data: error: ") and "already holds a dataset" in err
    assert len(err.splitlines()) == 1
    code = main(
        [
            "data",
            "import",
            "--format",
            "cvat",
            str(cvat_export),
            str(tmp_path / "x"),
            "--classes",
            "background,dog",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown label 'cat'" in err and len(err.splitlines()) == 1


def test_a_dataset_from_a_folder_of_photos_is_complete_before_the_first_stroke(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_image(photos / "b.jpg", (20, 30))
    write_image(photos / "trip" / "a.jpg", (10, 12))
    (photos / "notes.txt").write_text("not an image")
    out = create_dataset_from_images(tmp_path / "ds", photos, "background,cat")
    assert (out / "splits" / "train.txt").read_text() == "b\ntrip/a\n"
    assert (read_label(out / "scribbles" / "trip" / "a.png") == 255).all()
    assert read_label(out / "scribbles" / "b.png").shape == (20, 30)
    assert tags_rows(out / "tags.csv") == {"b": set(), "trip/a": set()}
    assert FolderDataset(out, "train").verify(progress=False) == []
    with pytest.raises(DataError, match="already holds a dataset"):
        create_dataset_from_images(out, photos, "background,cat")
