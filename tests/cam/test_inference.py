"""CAM inference: scale/flip summation, normalisation, tagged-class selection and the CAM store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.cam.inference import find_cam_keys, multiscale_cams, present_foreground
from weakseg.io import DataError
from weakseg.tools.cam_folder import infer_cams
from weakseg.tools.cam_store import cam_file, load_cam_meta, load_cams, save_cams


class ColumnRamp(nn.Module):
    """cam[c] = (x[c] - 0.5) · (1 + column index): position dependent, so a flip is not a no-op."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ramp = 1.0 + torch.arange(x.shape[-1], dtype=x.dtype)
        return {"cam": (x[:, :2] - 0.5) * ramp, "logits": x}


class StridedToy(nn.Module):
    """A fixed 1×1 conv at stride 4 (3 classes) plus a second CAM type "cam_proto"."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.tensor([[1.0, -1.0, 0.5], [-0.5, 1.0, 1.0], [0.3, 0.3, -1.0]])[..., None, None]
            )
            self.conv.bias.copy_(torch.tensor([0.1, -0.2, 0.05]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cam = self.conv(F.avg_pool2d(x, 4, ceil_mode=True))
        return {"cam": cam, "cam_proto": torch.sigmoid(cam), "cls_logits": cam.mean((2, 3))}


def test_single_scale_flip_equals_hand_computation():
    x = torch.tensor([[[[0.9, 0.2, 0.7]], [[0.1, 0.8, 0.6]], [[0.0, 0.0, 0.0]]]])  # [1, 3, 1, 3]
    got = multiscale_cams(ColumnRamp(), x, scales=(1.0,), flip=True)["cam"]
    # cam(x) = relu((x - .5) * [1, 2, 3]); the mirrored pass, flipped back, is relu((x - .5) * [3, 2, 1]).
    c0 = [max(0.4 * 1, 0) + max(0.4 * 3, 0), 0.0, max(0.2 * 3, 0) + max(0.2 * 1, 0)]
    c1 = [0.0, 0.3 * 2 + 0.3 * 2, 0.1 * 3 + 0.1 * 1]
    assert torch.allclose(got, torch.tensor([[[c0], [c1]]]), atol=1e-6)
    no_flip = multiscale_cams(ColumnRamp(), x, scales=(1.0,), flip=False)["cam"]
    assert torch.allclose(no_flip, torch.tensor([[[[0.4, 0.0, 0.6]], [[0.0, 0.6, 0.3]]]]), atol=1e-6)


@torch.no_grad()
def _reference(model, images, scales, flip):
    """Scale by scale, one image and one mirror at a time: relu, flip back, upsample, sum."""
    size = images.shape[-2:]
    total = 0
    for s in scales:
        h, w = round(size[0] * s), round(size[1] * s)
        x = (
            F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
            if (h, w) != tuple(size)
            else images
        )
        passes = [torch.relu(model(x)["cam"])]
        if flip:
            passes.append(torch.relu(model(x.flip(-1))["cam"]).flip(-1))
        for cam in passes:
            total = total + F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return total


def test_multiscale_flip_sum_matches_reference_and_shapes():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 10, 14)
    model = StridedToy().eval()
    scales = (1.0, 0.5, 1.5, 2.0)
    got = multiscale_cams(model, images, scales=scales, flip=True)
    assert set(got) == {"cam", "cam_proto"}
    assert got["cam"].shape == (2, 3, 10, 14) and got["cam"].dtype == torch.float32
    assert torch.allclose(got["cam"], _reference(model, images, scales, True), atol=1e-5)
    assert (got["cam"] >= 0).all()
    one = multiscale_cams(model, images, scales=(1.0,), flip=False, keys=["cam"])
    assert list(one) == ["cam"]


def test_present_foreground_tags():
    assert present_foreground(torch.tensor([1.0, 0.0, 1.0, 1.0]), 4, 0).tolist() == [2, 3]
    assert present_foreground(np.array([1.0, 0.0, 1.0]), 3, None).tolist() == [0, 2]
    with pytest.raises(ValueError, match="one per class"):
        present_foreground(np.ones(3), 4, 0)


def test_find_cam_keys():
    t = torch.zeros(1, 2, 3, 3)
    assert find_cam_keys({"cam": t, "cam_proto": t, "cam_scores": torch.zeros(1, 2), "logits": t}) == [
        "cam",
        "cam_proto",
    ]
    with pytest.raises(KeyError, match="no 'cam'"):
        find_cam_keys({"logits": t})
    with pytest.raises(KeyError, match="cam_x"):
        find_cam_keys({"cam": t}, ["cam_x"])


def test_store_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    keys = np.array([2, 5])
    cams = {"cam": rng.random((2, 5, 7)).astype(np.float32), "cam_proto": torch.rand(2, 5, 7)}
    path = save_cams(tmp_path / "a.npz", keys, cams)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary file left behind
    rec = load_cams(path)
    assert rec.keys.tolist() == [2, 5] and rec.size == (5, 7)
    assert np.allclose(rec.cams["cam"], cams["cam"], atol=1e-3)  # float16 storage
    assert np.allclose(rec.cams["cam_proto"], cams["cam_proto"].numpy(), atol=1e-3)
    assert path.stat().st_size < 2 * 5 * 7 * 2 * 2 + 2000  # float16: 2 bytes a value
    empty = load_cams(save_cams(tmp_path / "b.npz", [], {"cam": np.zeros((0, 5, 7))}))
    assert empty.keys.size == 0 and empty.cams["cam"].shape == (0, 5, 7)
    with pytest.raises(ValueError, match="one channel per key"):
        save_cams(tmp_path / "c.npz", [1], {"cam": np.zeros((2, 5, 7))})
    with pytest.raises(DataError, match="not found"):
        load_cams(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_cams(tmp_path / "bad.npz")


class ToyDataset(torch.utils.data.Dataset):
    classes = ["background", "a", "b", "c"]
    background = 0

    def __init__(self) -> None:
        torch.manual_seed(1)
        self.ids = ["i0", "i1", "i2"]
        sizes = [(12, 16), (12, 16), (9, 11)]
        tags = [[1, 1, 0, 1], [1, 0, 1, 0], [1, 0, 0, 0]]
        self.samples = [
            {"image": torch.rand(3, *s), "tags": torch.tensor(t, dtype=torch.float32), "id": i}
            for i, s, t in zip(self.ids, sizes, tags)
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def test_infer_cams_writes_tagged_normalised_maps(tmp_path):
    data = ToyDataset()
    model = StridedToy().eval()
    out = infer_cams(
        model, data, tmp_path / "cams", num_classes=4, background=0, batch_size=2, progress=False
    )
    meta = load_cam_meta(out)
    assert meta["cam_keys"] == ["cam", "cam_proto"] and meta["scales"] == [1.0, 0.5, 1.5, 2.0]
    assert meta["classes"] == ToyDataset.classes and meta["background"] == 0 and meta["flip"] is True
    for sample, expected_keys in zip(data.samples, [[1, 3], [2], []]):
        rec = load_cams(cam_file(out, sample["id"]))
        assert rec.keys.tolist() == expected_keys
        full = _reference(model, sample["image"][None], (1.0, 0.5, 1.5, 2.0), True)[0]
        channels = [k - 1 for k in expected_keys]  # channel j of the CAM is class j + 1
        want = full[channels] / (full[channels].amax((1, 2), keepdim=True) + 1e-5)
        assert rec.cams["cam"].shape == (len(expected_keys), *sample["image"].shape[-2:])
        assert np.allclose(rec.cams["cam"], want.numpy(), atol=2e-3)
        if expected_keys:
            assert np.allclose(rec.cams["cam"].reshape(len(expected_keys), -1).max(1), 1.0, atol=1e-3)


def test_infer_cams_resumes_and_checks_channels(tmp_path):
    data = ToyDataset()
    out = tmp_path / "cams"
    infer_cams(StridedToy().eval(), data, out, num_classes=4, background=0, progress=False)
    stamp = cam_file(out, "i0").stat().st_mtime_ns
    infer_cams(StridedToy().eval(), data, out, num_classes=4, background=0, progress=False)
    assert cam_file(out, "i0").stat().st_mtime_ns == stamp  # skipped: the file existed
    assert json.loads((out / "cams.json").read_text())["cam_keys"] == ["cam", "cam_proto"]
    with pytest.raises(ValueError, match="foreground classes"):  # 3 channels but 4 foreground classes
        infer_cams(StridedToy().eval(), data, tmp_path / "x", num_classes=4, background=None, progress=False)


def test_maps_function_gets_tags_and_own_background_is_kept_apart():
    """A method-style maps function over all K classes (background channel first) that needs tags."""
    seen = []

    def maps_fn(outputs, tags):
        seen.append(tags.clone())
        cam = torch.relu(outputs["cam"])  # [B', 3, h, w] foreground maps
        bg = torch.full_like(cam[:, :1], 99.0)  # the maps' own background
        return {"M_W": torch.cat([bg, cam], 1), "M_P": torch.cat([bg, cam * tags[:, 1:, None, None]], 1)}

    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8)
    tags = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    model = StridedToy().eval()
    got = multiscale_cams(
        model, images, scales=(1.0, 0.5), flip=True, maps_fn=maps_fn, tags=tags, foreground=[1, 2, 3]
    )
    assert list(got) == ["M_W", "M_W@background", "M_P", "M_P@background"]
    assert got["M_W"].shape == (2, 3, 8, 8) and got["M_P@background"].shape == (2, 1, 8, 8)
    # the constant background, summed over 2 scales x (image + mirror)
    assert torch.allclose(got["M_W@background"], torch.full((2, 1, 8, 8), 4 * 99.0))
    assert torch.equal(seen[0], torch.cat([tags, tags]))  # the mirrored half gets the same tags
    assert torch.allclose(got["M_W"], _reference(model, images, (1.0, 0.5), True), atol=1e-5)
    assert torch.allclose(got["M_P"], got["M_W"] * tags[:, 1:, None, None])
    only = multiscale_cams(
        model, images, scales=(1.0,), maps_fn=maps_fn, tags=tags, foreground=[1, 2, 3], keys=["M_P"]
    )
    assert list(only) == ["M_P", "M_P@background"]


def test_own_backgrounds_are_stored_and_format_1_is_read(tmp_path):
    data = ToyDataset()

    def maps_fn(outputs, tags):
        cam = torch.relu(outputs["cam"])
        # background channel first: 1 - the normalised peak, as SFC's M_W (before its PCM)
        peak = (cam / (cam.amax((2, 3), keepdim=True) + 1e-5)).amax(1, keepdim=True)
        return {"cam": cam, "M_W": torch.cat([1.0 - peak, cam], 1)}

    model = StridedToy().eval()
    out = infer_cams(
        model, data, tmp_path / "cams", num_classes=4, background=0, maps_fn=maps_fn, progress=False
    )
    meta = load_cam_meta(out)
    assert meta["cam_keys"] == ["cam", "M_W"] and meta["backgrounds"] == ["M_W"]
    sample = data.samples[0]
    got = multiscale_cams(
        model, sample["image"][None], maps_fn=maps_fn, tags=sample["tags"][None], foreground=[1, 2, 3]
    )
    rec = load_cams(cam_file(out, "i0"))
    assert set(rec.backgrounds) == {"M_W"} and rec.backgrounds["M_W"].shape == rec.size
    want = got["M_W@background"][0, 0] / (got["M_W@background"][0, 0].max() + 1e-5)
    assert np.allclose(rec.backgrounds["M_W"], want.numpy(), atol=2e-3)
    assert rec.keys.tolist() == [1, 3] and rec.cams["M_W"].shape == (2, *rec.size)
    # a resumed run with nothing left to do still lists the stored backgrounds
    infer_cams(model, data, out, num_classes=4, background=0, maps_fn=maps_fn, progress=False)
    assert load_cam_meta(out)["backgrounds"] == ["M_W"]
    # format 1 folders (no backgrounds) stay readable
    meta_v1 = {**meta, "format_version": 1}
    meta_v1.pop("backgrounds")
    (out / "cams.json").write_text(json.dumps(meta_v1))
    assert load_cam_meta(out)["cam_keys"] == ["cam", "M_W"]
    with pytest.raises(ValueError, match="no CAM"):
        save_cams(
            tmp_path / "x.npz", [1], {"cam": np.zeros((1, 2, 2))}, backgrounds={"M_P": np.zeros((2, 2))}
        )
    with pytest.raises(ValueError, match="reserved"):
        save_cams(tmp_path / "x.npz", [1], {"cam@background": np.zeros((1, 2, 2))})
