import builtins
import errno
import os
import stat
from pathlib import Path

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
    path_as_written_in,
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


# ------------------------------------------------------------------ reliability (docs/reliability.md)
def test_sample_ids_that_could_escape_are_refused():
    from weakseg.io import check_sample_id

    for good in ("2007_000032", "city/img_01", "a.b"):
        assert check_sample_id(good, "split.txt") == good
    for bad in ("../../victim/v", "/etc/passwd", "a/../../b", "C:/x", "a\\..\\b", "a//b", "./a", ""):
        with pytest.raises(DataError, match="split.txt: sample id"):
            check_sample_id(bad, "split.txt")


def test_safe_join_refuses_targets_outside_the_folder(tmp_path):
    from weakseg.io import safe_join

    assert safe_join(tmp_path, "sub/x.png") == tmp_path / "sub/x.png"
    for bad in ("../x.png", "/tmp/x.png", "a/../../x.png"):
        with pytest.raises(DataError, match="outside"):
            safe_join(tmp_path / "out", bad)


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "m.json", {"a": 1})
        atomic_torch_save(tmp_path / "c.ckpt", {"w": torch.zeros(1)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "c.ckpt").stat().st_mode) == 0o640


def test_temp_files_of_killed_writers_are_cleaned_and_live_ones_kept(tmp_path):
    from weakseg.io import TEMP_MARKER, clean_stale_temp_files

    dead_pid = 2**22 + 12345  # above pid_max on Linux: no such process
    stale = tmp_path / f".last.ckpt.{dead_pid}.abc123{TEMP_MARKER}.ckpt"
    live = tmp_path / f".best.ckpt.{os.getpid()}.def456{TEMP_MARKER}.ckpt"
    other = tmp_path / ".hidden_user_file"
    (tmp_path / "sub").mkdir()
    nested = tmp_path / "sub" / f".x.png.{dead_pid}.zz{TEMP_MARKER}.png"
    for p in (stale, live, other, nested):
        p.write_bytes(b"partial")
    assert clean_stale_temp_files(tmp_path) == [stale]
    assert live.exists() and other.exists() and nested.exists()
    assert clean_stale_temp_files(tmp_path, recursive=True) == [nested]


def test_a_full_disk_is_reported_with_the_file(tmp_path, monkeypatch):
    from weakseg.io import DiskFullError, append_text

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"disk full: cannot write .*m\.json \(no space left on device"):
        atomic_write(tmp_path / "m.json", full)
    assert list(tmp_path.iterdir()) == []

    log = tmp_path / "metrics.jsonl"
    if Path("/dev/full").exists():  # torch's writer on a device that is really full
        monkeypatch.setattr(
            "weakseg.io.open", lambda p, mode, **kw: builtins.open("/dev/full", mode), raising=False
        )
        with pytest.raises(DiskFullError, match=r"x\.ckpt"):
            atomic_torch_save(tmp_path / "x.ckpt", {"w": torch.zeros(100_000)})
        with pytest.raises(DiskFullError, match=r"metrics\.jsonl"):
            append_text(log, "x" * 100_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_paths_written_in_a_folder_are_relative_below_a_shared_folder(tmp_path):
    target = tmp_path / "source" / "images" / "{id}.png"
    assert path_as_written_in(target, tmp_path / "derived") == "../source/images/{id}.png"
    assert path_as_written_in(target, tmp_path / "source") == "images/{id}.png"
    assert path_as_written_in(Path("/data/x.png"), Path("/runs/out")) == "/data/x.png"  # only / is shared
