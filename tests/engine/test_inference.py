"""Tests for weakseg.engine.inference with tiny models whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.engine.inference import predict_labels, predict_probs, sliding_window_logits, window_positions


class PointwiseModel(nn.Module):
    """A 1x1 convolution at stride 1: each output pixel depends on its own input pixel only."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.conv(x)}


class StrideTwoModel(nn.Module):
    """3x3 conv then 2x2 average pooling: logits at stride 2, as a real segmentor returns them."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": F.avg_pool2d(self.conv(x), 2)}


class SizeModel(nn.Module):
    """Constant logits [h / 10, 0] at stride 2, where h is the input height; records input sizes."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, h, w = x.shape
        self.seen.append((h, w))
        logits = torch.zeros(b, 2, max(h // 2, 1), max(w // 2, 1))
        logits[:, 0] = h / 10.0
        return {"logits": logits}


class RampModel(nn.Module):
    """Logits [c * j / (w - 1), 0] for column j: depends on position, not content (not flip-equivariant)."""

    def __init__(self, c: float = 3.0):
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, h, w = x.shape
        ramp = torch.linspace(0.0, self.c, w).expand(b, h, w)
        return {"logits": torch.stack([ramp, torch.zeros_like(ramp)], dim=1)}


def _images(b: int = 2, h: int = 12, w: int = 17, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_single_scale_matches_direct_softmax():
    model = PointwiseModel().eval()
    x = _images()
    probs = predict_probs(model, x, num_classes=3)
    assert probs.shape == (2, 3, 12, 17) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, torch.softmax(model(x)["logits"], 1))
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 12, 17))
    assert torch.equal(predict_labels(model, x), probs.argmax(1))
    assert predict_labels(model, x).dtype == torch.int64


def test_stride_two_logits_are_upsampled_to_input_size():
    model = StrideTwoModel().eval()
    x = _images(h=16, w=20)
    probs = predict_probs(model, x)
    expected = torch.softmax(F.interpolate(model(x)["logits"], size=(16, 20), mode="bilinear"), 1)
    torch.testing.assert_close(probs, expected)


def test_scale_averaging_equals_hand_computation():
    model = SizeModel()
    x = _images(h=20, w=10)
    probs = predict_probs(model, x, scales=(0.5, 1.0, 1.5))
    assert model.seen == [(10, 5), (20, 10), (30, 15)]
    sigmoid = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731 - softmax of [v, 0]
    expected = (sigmoid(1.0) + sigmoid(2.0) + sigmoid(3.0)) / 3
    torch.testing.assert_close(probs[:, 0], torch.full((2, 20, 10), expected))
    assert probs.shape == (2, 2, 20, 10)


def test_flip_averaging_equals_hand_computation():
    x = _images(b=1, h=3, w=5)
    c = 3.0
    t = torch.linspace(0, 1, 5)
    plain = predict_probs(RampModel(c), x)[0, 0, 0]
    torch.testing.assert_close(plain, torch.sigmoid(c * t))
    flipped = predict_probs(RampModel(c), x, flip=True)[0, 0, 0]
    # the mirrored pass sees the same ramp, so after un-mirroring column j holds sigmoid(c (1 - t_j))
    torch.testing.assert_close(flipped, (torch.sigmoid(c * t) + torch.sigmoid(c * (1 - t))) / 2)


def test_flip_equivariant_model_is_unchanged_by_flip():
    model = PointwiseModel().eval()
    x = _images()
    torch.testing.assert_close(predict_probs(model, x, flip=True), predict_probs(model, x))


def test_prediction_of_mirrored_image_is_mirrored():
    model = StrideTwoModel().eval()
    x = _images(h=16, w=16)
    a = predict_probs(model, x, flip=True, scales=(0.75, 1.0))
    b = predict_probs(model, x.flip(-1), flip=True, scales=(0.75, 1.0))
    torch.testing.assert_close(a, b.flip(-1))


@pytest.mark.parametrize(("size", "window"), [((20, 27), 8), ((6, 30), 8), ((25, 9), (7, 4))])
def test_sliding_window_equals_full_image_for_a_pointwise_model(size, window):
    model = PointwiseModel().eval()
    x = _images(h=size[0], w=size[1])
    full = predict_probs(model, x)
    tiled = predict_probs(model, x, window=window, window_stride=0.5)
    torch.testing.assert_close(tiled, full)


def test_sliding_window_runs_tiles_of_window_size_and_covers_every_pixel():
    model = SizeModel()
    x = _images(b=1, h=6, w=21)
    logits = sliding_window_logits(model, x, window=8, window_stride=2 / 3)
    # height 6 < 8 is padded to 8; width positions 0, 5, 10, 13 (last one shifted back to the border)
    assert model.seen == [(8, 8)] * 4
    assert logits.shape == (1, 2, 6, 21)
    torch.testing.assert_close(logits[:, 0], torch.full((1, 6, 21), 0.8))
    assert window_positions(21, 8, 5) == [0, 5, 10, 13]
    assert window_positions(8, 8, 5) == [0]


def test_window_larger_than_image_runs_whole_image():
    model = SizeModel()
    predict_probs(model, _images(h=6, w=7), window=(8, 8))
    assert model.seen == [(6, 7)]


def test_resize_runs_at_fixed_size_and_maps_back():
    model = SizeModel()
    probs = predict_probs(model, _images(h=20, w=14), resize=(16, 16), scales=(1.0, 0.5))
    assert model.seen == [(16, 16), (8, 8)]
    assert probs.shape == (2, 2, 20, 14)
    sigmoid = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    torch.testing.assert_close(probs[0, 0, 0, 0].item(), (sigmoid(1.6) + sigmoid(0.8)) / 2)


def test_out_size_and_class_check():
    model = StrideTwoModel(num_classes=4).eval()
    x = _images(h=8, w=8)
    assert predict_probs(model, x, out_size=(16, 24)).shape == (2, 4, 16, 24)
    with pytest.raises(ValueError, match="num_classes=3"):
        predict_probs(model, x, num_classes=3)
    with pytest.raises(ValueError, match="images must be"):
        predict_probs(model, x[0])


def test_no_grad_and_bfloat16_autocast():
    model = StrideTwoModel().eval()
    x = _images(h=16, w=16)
    probs = predict_probs(model, x, autocast_dtype=torch.bfloat16)
    assert probs.dtype == torch.float32 and not probs.requires_grad
    torch.testing.assert_close(probs, predict_probs(model, x), atol=3e-2, rtol=0)


# --------------------------------------------------------------------------------------------------
# optional dense CRF at test time (eval.crf)
# --------------------------------------------------------------------------------------------------
class FixedLogitsModel(nn.Module):
    """Returns stored logits [1, K, h, w] whatever the input (a noisy classifier of a known scene)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        assert tuple(x.shape[-2:]) == tuple(self.logits.shape[-2:])
        return {"logits": self.logits.expand(x.shape[0], -1, -1, -1)}


def _noisy_two_region_scene(h: int = 16, w: int = 20, seed: int = 0):
    """A dark left half (class 0) and a bright right half (class 1); logits right on 75% of pixels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[..., w // 2 :] = 1
    image = torch.where(labels.bool(), 0.85, 0.15).float().unsqueeze(1).expand(1, 3, h, w).contiguous()
    flipped = torch.rand(1, h, w, generator=gen) < 0.25
    noisy = torch.where(flipped, 1 - labels, labels)
    logits = F.one_hot(noisy, 2).permute(0, 3, 1, 2).float() * 1.5
    return image, labels, logits


def test_crf_refines_the_averaged_probabilities_exactly_as_the_postprocess_hook():
    from weakseg.postprocess.crf import CRFParams, refine_probs_with_crf

    image, labels, logits = _noisy_two_region_scene()
    model = FixedLogitsModel(logits)
    params = CRFParams.postprocess()
    plain = predict_probs(model, image)
    refined = predict_probs(model, image, crf=params)
    torch.testing.assert_close(refined, refine_probs_with_crf(plain, image, params), rtol=0, atol=1e-6)
    torch.testing.assert_close(refined.sum(1), torch.ones(1, 16, 20), rtol=0, atol=1e-5)
    assert not torch.allclose(refined, plain, atol=1e-3)
    errors_before = (plain.argmax(1) != labels).double().mean().item()
    errors_after = (predict_labels(model, image, crf=params) != labels).double().mean().item()
    assert errors_before > 0.15 and errors_after < 0.5 * errors_before


def test_crf_runs_at_the_output_size_on_the_resized_image():
    from weakseg.postprocess.crf import CRFParams, refine_probs_with_crf

    image, _, logits = _noisy_two_region_scene(h=8, w=10, seed=1)
    model = FixedLogitsModel(logits)
    params = CRFParams.postprocess(num_iters=3)
    plain = predict_probs(model, image, out_size=(16, 20))
    refined = predict_probs(model, image, out_size=(16, 20), crf=params)
    guide = F.interpolate(image, size=(16, 20), mode="bilinear", align_corners=False)
    assert refined.shape == (1, 2, 16, 20)
    torch.testing.assert_close(refined, refine_probs_with_crf(plain, guide, params), rtol=0, atol=1e-6)


def test_inference_options_read_the_crf_settings():
    from weakseg.config import ConfigError, EvalConfig
    from weakseg.engine.inference import crf_params, inference_options
    from weakseg.postprocess.crf import CRFParams

    assert inference_options(EvalConfig())["crf"] is None
    assert inference_options(EvalConfig(crf=True))["crf"] == CRFParams.postprocess()
    assert crf_params(EvalConfig(crf=True, crf_scale=0.5)) == CRFParams.postprocess(scale=0.5)
    with pytest.raises(ConfigError, match="eval.crf_scale"):
        crf_params(EvalConfig(crf=True, crf_scale=0.0))


def test_evaluate_applies_and_reports_the_crf():
    from weakseg.engine.evaluation import evaluate
    from weakseg.postprocess.crf import CRFParams

    image, labels, logits = _noisy_two_region_scene(seed=2)

    class OneSample(torch.utils.data.Dataset):
        classes, num_classes, ignore_index, background = ["dark", "bright"], 2, 255, None

        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> dict:
            return {"image": image[0], "mask": labels[0], "id": "s0"}

    model = FixedLogitsModel(logits)
    plain = evaluate(model, OneSample(), progress=False, volume_dice=False)
    params = CRFParams.postprocess()
    refined = evaluate(model, OneSample(), progress=False, volume_dice=False, crf=params)
    assert plain["inference"]["crf"] is None
    assert refined["inference"]["crf"]["num_iters"] == params.num_iters
    assert refined["mIoU"] > plain["mIoU"] + 0.1
    expected = predict_labels(model, image, crf=params)
    pixel_accuracy = (expected == labels).double().mean().item()
    assert refined["pixel_accuracy"] == pytest.approx(pixel_accuracy)


def test_crf_config_round_trip_and_cli_flags():
    from weakseg.cli import _inference_overrides, build_parser
    from weakseg.config import config_from_dict, config_to_dict, load_config, to_yaml

    cfg = load_config(None, ["eval.crf=true", "eval.crf_scale=0.5"])
    assert cfg.eval.crf is True and cfg.eval.crf_scale == 0.5
    again = config_from_dict(config_to_dict(cfg))
    assert again.eval == cfg.eval
    assert "crf: true" in to_yaml(cfg)
    # checkpoints written before the option existed load with the CRF off
    old = config_to_dict(load_config(None))
    del old["eval"]["crf"], old["eval"]["crf_scale"]
    assert config_from_dict(old).eval.crf is False
    for command in (["evaluate", "run/last.ckpt"], ["predict", "run/last.ckpt", "img.png", "--out", "o"]):
        args = build_parser().parse_args([*command, "--crf", "--crf-scale", "0.25"])
        assert _inference_overrides(args) == ["eval.crf=true", "eval.crf_scale=0.25"]
        assert _inference_overrides(build_parser().parse_args(command)) == []
