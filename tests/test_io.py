import numpy as np
import pytest
import torch
from PIL import Image

from weakseg.io import (
    DataError,
    atomic_save_label_png,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    read_image_rgb,
    read_label,
)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})

    def broken(path):
        path.write_text('{"half": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_checkpoint_round_trip(tmp_path):
    atomic_torch_save(tmp_path / "x.ckpt", {"w": torch.arange(3)})
    assert torch.equal(torch.load(tmp_path / "x.ckpt")["w"], torch.arange(3))


def test_label_png_round_trip_with_palette(tmp_path):
    label = np.array([[0, 1], [255, 20]], dtype=np.uint8)
    palette = np.zeros((256, 3), np.uint8)
    palette[1] = (128, 0, 0)
    atomic_save_label_png(tmp_path / "l.png", label, palette)
    assert Image.open(tmp_path / "l.png").mode == "P"
    assert np.array_equal(read_label(tmp_path / "l.png"), label)
    with pytest.raises(ValueError, match="2-D"):
        atomic_save_label_png(tmp_path / "bad.png", np.zeros((2, 2, 3)))


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.png"):
        read_image_rgb(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="junk.png"):
        read_image_rgb(tmp_path / "junk.png")
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (1, 2, 3)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour.png.*colour image"):
        read_label(tmp_path / "colour.png")


def test_gray_images_become_three_identical_channels(tmp_path):
    Image.fromarray(np.array([[0, 200]], np.uint8), mode="L").save(tmp_path / "g.png")
    rgb = read_image_rgb(tmp_path / "g.png", mode="L")
    assert rgb.shape == (1, 2, 3) and rgb.flags.writeable
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb[0, 1, 1] == 200
