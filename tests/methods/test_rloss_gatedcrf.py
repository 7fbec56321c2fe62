"""The ``rloss`` and ``gatedcrf`` methods: named finite terms, gradients to the logits, warm-up, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from weakseg.config import load_config
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.engine.trainer import train
from weakseg.losses.dense_crf import dense_crf_loss
from weakseg.losses.gated_crf import GatedCRFKernel, gated_crf_loss
from weakseg.methods import build_method


def _tiny_batch(seed: int = 0, k: int = 3, size: int = 32) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, size // 4, size // 4, generator=gen).requires_grad_()
    scribble = torch.full((2, size, size), 255, dtype=torch.long)
    scribble[:, 4:6, 4:20] = 1
    scribble[:, 20:22, 8:28] = 0
    valid = torch.ones(2, size, size, dtype=torch.bool)
    valid[1, :, -8:] = False  # crop padding on the right of image 1
    image = torch.rand(2, 3, size, size, generator=gen)
    return {"logits": logits}, {"image": image, "scribble": scribble, "valid": valid}


@pytest.mark.parametrize(
    ("spec", "crf_term"),
    [({"name": "rloss"}, "dense_crf"), ({"name": "gatedcrf", "warmup": 0.0}, "gated_crf")],
)
def test_forward_gives_finite_named_terms_and_logit_gradients(spec: dict, crf_term: str) -> None:
    method = build_method(spec, num_classes=3)
    assert method.requires == ("scribble",)
    outputs, batch = _tiny_batch()
    terms = method(outputs, batch)
    assert set(terms) == {"pce", crf_term}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    assert terms[crf_term] > 0
    (grad,) = torch.autograd.grad(terms[crf_term], outputs["logits"])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_rloss_term_is_the_dense_crf_loss_of_the_full_resolution_softmax() -> None:
    # literal reference form: weight · Σ_b E_b (the release's (CE + w Σ E) / N, times N)
    spec = {
        "name": "rloss",
        "weight": 1e-3,
        "sigma_xy": 20.0,
        "reference_crop": None,
        "reference_batch": None,
    }
    method = build_method(spec, num_classes=3)
    outputs, batch = _tiny_batch(seed=1)
    full = F.interpolate(outputs["logits"], size=(32, 32), mode="bilinear", align_corners=False)
    per_image_mean = dense_crf_loss(
        full.softmax(1), batch["image"] * 255, batch["valid"], 15.0, 20.0, 0.5, 1e-3
    )
    assert method(outputs, batch)["dense_crf"].item() == pytest.approx(2 * per_image_mean.item(), rel=1e-6)


def test_rloss_keeps_the_published_balance_of_batch_12() -> None:
    """Relative to mean pCE the CRF weighs weight · 12 · mean_b E_b at a 513 crop (the release divides both
    terms by the batch); the old form weight · mean_b E_b was 12x too weak."""
    method = build_method({"name": "rloss", "reference_crop": 32}, num_classes=3)  # crop factor 1
    outputs, batch = _tiny_batch(seed=1)
    full = F.interpolate(outputs["logits"], size=(32, 32), mode="bilinear", align_corners=False)
    mean_energy = dense_crf_loss(full.softmax(1), batch["image"] * 255, batch["valid"], 15.0, 100.0, 0.5, 1.0)
    terms = method(outputs, batch)
    assert terms["dense_crf"].item() == pytest.approx(2e-9 * 12 * mean_energy.item(), rel=1e-6)
    assert method.crf_weight(32, 32, batch_size=2) == pytest.approx(2.4e-8)


def test_rloss_spatial_mass_matches_brute_force() -> None:
    from weakseg.methods.rloss import spatial_kernel_mass

    h, w, sigma, scale = 13, 9, 4.0, 0.5
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(4.0), indexing="ij")  # ⌊13/2⌋ x ⌊9/2⌋ grid
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).double() / scale
    brute = torch.exp(-(torch.cdist(pos, pos) ** 2) / (2 * sigma**2)).sum().item()
    assert spatial_kernel_mass(h, w, sigma, scale) == pytest.approx(brute, rel=1e-10)


def test_rloss_weight_follows_the_crop() -> None:
    """The factor reproduces the per-crop weights the configs once set by hand, and is 1 at 513."""
    method = build_method({"name": "rloss"}, num_classes=3)
    assert method.crop_factor(513, 513) == pytest.approx(1.0)
    assert 2e-9 * method.crop_factor(256, 256) == pytest.approx(1.2e-8, rel=0.01)
    assert 2e-9 * method.crop_factor(465, 465) == pytest.approx(2.5e-9, rel=0.02)
    # a smaller crop gets a larger weight: the per-image energy shrinks with the kernel's spatial mass
    assert method.crop_factor(128, 128) > method.crop_factor(256, 256) > 1.0


def test_gatedcrf_term_uses_the_scaled_grid_and_imagenet_std() -> None:
    method = build_method({"name": "gatedcrf", "warmup": 0.0, "scale": 0.5}, num_classes=3)
    outputs, batch = _tiny_batch(seed=2)
    small = F.interpolate(outputs["logits"], size=(16, 16), mode="bilinear", align_corners=False)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    valid = batch["valid"]
    expected = gated_crf_loss(small.softmax(1), batch["image"] / std, [GatedCRFKernel()], 5, valid, valid)
    assert method(outputs, batch)["gated_crf"].item() == pytest.approx(0.1 * expected.item(), rel=1e-6)


def test_gatedcrf_grey_image_uses_one_intensity_channel() -> None:
    method = build_method({"name": "gatedcrf", "grey_image": True, "rgb_std": None}, num_classes=3)
    grey = torch.rand(2, 1, 8, 8).expand(2, 3, 8, 8)
    assert torch.allclose(method._image(grey), grey[:, :1])


def test_gatedcrf_waits_for_its_warmup() -> None:
    method = build_method({"name": "gatedcrf"}, num_classes=3)  # warm-up 0.5% of the steps
    outputs, batch = _tiny_batch(seed=3)
    method.set_progress(4, 1000)
    assert method(outputs, batch)["gated_crf"].item() == 0.0
    method.set_progress(5, 1000)
    assert method(outputs, batch)["gated_crf"].item() > 0.0


def test_padding_takes_no_part() -> None:
    # changing the image under the crop padding changes neither CRF term
    for spec, term in (({"name": "rloss"}, "dense_crf"), ({"name": "gatedcrf", "warmup": 0.0}, "gated_crf")):
        method = build_method(spec, num_classes=3)
        outputs, batch = _tiny_batch(seed=4)
        before = method(outputs, batch)[term]
        batch["image"][1, :, :, -8:] = torch.rand(3, 32, 8)
        assert method(outputs, batch)[term].item() == pytest.approx(before.item(), rel=1e-6)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="reference_crop"):
        build_method({"name": "rloss", "reference_crop": 0}, num_classes=3)
    with pytest.raises(ValueError, match="scale"):
        build_method({"name": "rloss", "scale": 0.0}, num_classes=3)
    with pytest.raises(ValueError, match="scale"):
        build_method({"name": "gatedcrf", "scale": 2.0}, num_classes=3)
    with pytest.raises(ValueError, match="bandwidth"):
        build_method(
            {"name": "gatedcrf", "kernels": [{"weight": 1.0, "xy": None, "rgb": None}]}, num_classes=3
        )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, num_train=6, num_val=2, size=(48, 48), seed=2)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rloss", "gatedcrf"])
def test_three_training_steps_on_synthetic_data(tiny_data: Path, tmp_path: Path, method: str) -> None:
    cfg = load_config(
        None,
        [
            f"method={method}",
            f"data.root={tiny_data}",
            f"out_dir={tmp_path}",
            "data.crop_size=[48,48]",
            "data.num_workers=0",
            "model.backbone=efficientnet_lite0",
            "model.head=deeplabv3plus",
            "model.pretrained=null",
            "optim.name=sgd",
            "optim.lr=0.01",
            "train.batch_size=2",
            "train.steps=3",
            "train.log_every=1",
            "train.val_every=3",
            "train.ckpt_every=3",
            "train.num_overlays=0",
        ],
    )
    result = train(cfg, device="cpu", progress=False)
    assert result.step == 3
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    term = {"rloss": "dense_crf", "gatedcrf": "gated_crf"}[method]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r[term] >= 0 and r["loss"] == r["loss"] for r in steps)
