"""The ``cam`` and ``sfc`` methods: image bank, class weights, loss terms against a transcription of the
reference step, gradient paths, validation and short training runs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weakseg.config import load_config
from weakseg.data import FolderDataset
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.engine.trainer import train
from weakseg.io import read_label
from weakseg.methods import build_method
from weakseg.methods.image_bank import ImageBank
from weakseg.methods.sfc import SFC, sfc_seed_scores
from weakseg.models.classifier import CAMClassifier, create_cam_classifier
from weakseg.ops.class_maps import class_prototypes, prototype_cam, seed_masks

SIDE = [8, 8, 16, 16]


@pytest.fixture(scope="module")
def model() -> CAMClassifier:
    torch.manual_seed(0)
    spec = {"name": "sfc", "side_channels": SIDE}
    return create_cam_classifier("efficientnet_lite0", num_classes=4, **SFC.model_kwargs(spec))


def _batch(seed: int = 0, size: int = 64) -> dict:
    gen = torch.Generator().manual_seed(seed)
    tags = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]])
    valid = torch.ones(3, size, size, dtype=torch.bool)
    valid[0, :, size * 3 // 4 :] = False  # crop padding
    return {"image": torch.rand(3, 3, size, size, generator=gen), "tags": tags, "valid": valid}


# ---------------------------------------------------------------------------------------------- image bank


def test_bank_slots_hold_the_latest_image_per_class_and_draws_come_from_it() -> None:
    bank = ImageBank(num_slots=3, draws=4)
    batch = _batch()
    member = batch["tags"][:, 1:] > 0.5  # sample 0: class 1; sample 1: 2, 3; sample 2: 1, 3
    bank.update(batch["image"], batch["tags"], batch["valid"], member)
    assert torch.equal(bank.images[0], batch["image"][2])  # class 1: samples 0 and 2, the later wins
    assert torch.equal(bank.images[1], batch["image"][1])
    assert torch.equal(bank.images[2], batch["image"][2])
    assert torch.equal(bank.valid[0], batch["valid"][2]) and torch.equal(bank.tags[1], batch["tags"][1])
    # a later batch that only has class 2 replaces slot 1 alone
    later = _batch(seed=1)
    only = torch.tensor([[False, True, False], [False, False, False], [False, False, False]])
    bank.update(later["image"], later["tags"], later["valid"], only)
    assert torch.equal(bank.images[1], later["image"][0]) and torch.equal(bank.images[0], batch["image"][2])
    torch.manual_seed(3)
    drawn = bank.draw(50)
    assert drawn["image"].shape == (50, 3, 64, 64)
    for img, slot in zip(drawn["image"], drawn["slot"]):
        assert torch.equal(img, bank.images[slot])
    assert set(drawn["slot"].tolist()) == {0, 1, 2}  # uniform with replacement over all slots


def test_empty_slots_are_zero_and_appended_batches_grow() -> None:
    bank = ImageBank(num_slots=4, draws=4)
    batch = _batch()
    member = torch.zeros(3, 4, dtype=torch.bool)
    member[0, 0] = True
    out = bank.append(batch, member)
    assert out["image"].shape[0] == 7 and out["tags"].shape[0] == 7 and out["valid"].shape[0] == 7
    assert out["num_bank"] == 4 and torch.equal(out["image"][:3], batch["image"])
    assert bank.filled.tolist() == [True, False, False, False]
    assert torch.equal(bank.images[1:], torch.zeros(3, 3, 64, 64))
    assert not bank.valid[1:].any() and not bank.tags[1:].any()
    with pytest.raises(ValueError, match="one size"):
        bank.update(
            torch.rand(1, 3, 32, 32), torch.ones(1, 4), torch.ones(1, 32, 32, dtype=torch.bool), member[:1]
        )


def test_bank_lives_on_the_batch_device_without_host_copies() -> None:
    # the meta device stands in for an accelerator: any host round trip would fail on it
    bank = ImageBank(num_slots=3, draws=2)
    dev = torch.device("meta")
    images, tags = torch.empty(2, 3, 8, 8, device=dev), torch.empty(2, 4, device=dev)
    valid, member = (
        torch.empty(2, 8, 8, dtype=torch.bool, device=dev),
        torch.empty(2, 3, dtype=torch.bool, device=dev),
    )
    out = bank.append({"image": images, "tags": tags, "valid": valid}, member)
    assert all(t.device == dev for t in (bank.images, bank.tags, bank.valid, bank.filled))
    assert out["image"].device == dev and out["image"].shape == (4, 3, 8, 8)
    assert bank.state_dict() == {}  # not checkpointed


# ---------------------------------------------------------------------------------------------- class weights


class _TagTable:
    """A minimal dataset: tags per sample and one label file per sample."""

    def __init__(self, tags: list[list[int]], labels: list[Path] | None = None):
        self.tags = [np.asarray(t, dtype=np.float32) for t in tags]
        self.labels = labels
        self.num_classes = len(tags[0])

    def __len__(self) -> int:
        return len(self.tags)

    def tags_of(self, i: int) -> np.ndarray:
        return self.tags[i]

    def label_path(self, key: str, i: int) -> Path:
        if self.labels is None or key != "mask":
            raise KeyError(key)
        return self.labels[i]


def test_fit_dataset_computes_the_distribution_coefficients_from_tags() -> None:
    # foreground image counts (class 1, 2, 3) = (3, 2, 1) over 4 images
    data = _TagTable([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    method = build_method({"name": "sfc"}, num_classes=4)
    info = method.fit_dataset(data, batch_size=2, progress=False)
    # bank extra per class: 3 * (4 / 2) * 4 / 3 = 8; spreads (1+2, 1+1, 2+1) = (3, 2, 3)
    raw = torch.tensor([3 / 11, 2 / 10, 3 / 9])
    assert info["images"] == [3, 2, 1] and info["extra"] == pytest.approx(8.0)
    assert torch.allclose(method.dc_weights, raw / raw.mean())
    no_bank = build_method({"name": "sfc", "ibr": False}, num_classes=4)
    no_bank.fit_dataset(data, batch_size=2, progress=False)
    raw = torch.tensor([3 / 3, 2 / 2, 3 / 1])
    assert torch.allclose(no_bank.dc_weights, raw / raw.mean())


def test_fit_dataset_pixel_counts_and_fallbacks(tmp_path: Path) -> None:
    from weakseg.io import atomic_save_label_png

    paths = []
    for i, counts in enumerate([(10, 2, 0, 4), (12, 0, 4, 0)]):  # pixels of classes 0..3
        label = np.repeat(np.arange(4, dtype=np.uint8), counts)
        paths.append(tmp_path / f"{i}.png")
        atomic_save_label_png(paths[-1], label.reshape(2, -1))
    data = _TagTable([[1, 1, 0, 1], [1, 0, 1, 0]], labels=paths)
    method = build_method({"name": "sfc", "dc_counts": "pixels", "ibr": False}, num_classes=4)
    info = method.fit_dataset(data, batch_size=1, progress=False)
    assert info["pixel_source"] == "mask" and info["pixels"] == [2, 4, 4]
    # pixel shares rescaled to the 3 tagged images: (0.6, 1.2, 1.2); spreads (1.2, 0.6, 0.6); the
    # denominator 0.6 is clamped to 1
    raw = torch.tensor([1.2 / 1.0, 0.6 / 1.2, 0.6 / 1.2])
    assert torch.allclose(method.dc_weights, raw / raw.mean())
    with pytest.warns(UserWarning, match="image counts"):
        build_method({"name": "sfc", "dc_counts": "pixels"}, num_classes=4).fit_dataset(
            _TagTable([[1, 1, 0, 1], [1, 0, 1, 0]]), batch_size=1, progress=False
        )
    uniform = build_method({"name": "sfc", "dc_counts": "uniform"}, num_classes=4)
    assert torch.equal(uniform.dc_weights, torch.ones(3))


def test_forward_refuses_to_train_without_class_weights(model: CAMClassifier) -> None:
    method = build_method({"name": "sfc", "side_channels": SIDE}, num_classes=4)
    batch = method.prepare_batch(_batch())
    with pytest.raises(RuntimeError, match="fit_dataset"):
        method(method.run_model(model, batch), batch)
    with pytest.raises(ValueError, match="dc_counts"):
        build_method({"name": "sfc", "dc_counts": "median"}, num_classes=4)


# ---------------------------------------------------------------------------------------------- the loss


def _reference_step(
    out: dict, small: dict, batch: dict, dc: torch.Tensor, seeds_before_pcm: bool = False
) -> dict[str, torch.Tensor]:
    """SFC's training step written out as the authors' code orders it (background at channel 0);
    ``seeds_before_pcm``: the prototype seeds from the map before the PCM (``seed_source="cam"``)."""
    tags, valid = batch["tags"], batch["valid"].float()
    label = tags[:, 1:]

    def before_pcm(o: dict, vm: torch.Tensor) -> torch.Tensor:
        norm = F.relu(o["cam"])
        norm = norm / (F.adaptive_max_pool2d(norm, (1, 1)) + 1e-5)
        return torch.cat([1 - norm.max(dim=1, keepdim=True)[0], norm], dim=1) * vm

    def m_w(o: dict, vm: torch.Tensor) -> torch.Tensor:
        norm = before_pcm(o, vm)
        n, c, h, w = norm.shape
        f = o["pcm_embedding"].view(n, -1, h * w)
        f = f / (torch.norm(f, dim=1, keepdim=True) + 1e-5)
        aff = F.relu(torch.matmul(f.transpose(1, 2), f))
        aff = aff / (aff.sum(dim=1, keepdim=True) + 1e-5)
        cam = torch.matmul(norm.view(n, c, -1), aff)
        return torch.matmul(cam, aff).view(n, c, h, w)

    vm = valid[:, None].repeat(1, 4, 1, 1)
    vm[:, 1:] = vm[:, 1:] * label[:, :, None, None]
    vm0 = F.interpolate(vm, size=out["cam"].shape[-2:], mode="nearest")
    vm1 = F.interpolate(vm, size=small["cam"].shape[-2:], mode="nearest")
    cam1, cam2 = m_w(out, vm0), m_w(small, vm1)
    seeds_in = (before_pcm(out, vm0) if seeds_before_pcm else cam1).detach().clone()
    seeds_in[:, 0] *= 0.3
    seeds = F.one_hot(seeds_in.argmax(1), 4).permute(0, 3, 1, 2).float() * vm0
    feat = out["side_embedding"]
    proto = F.adaptive_avg_pool2d(seeds.unsqueeze(2) * feat.unsqueeze(1), 1)  # [n, 4, d, 1, 1]
    is_cam = F.relu(torch.cosine_similarity(feat.unsqueeze(1), proto, dim=2))
    is_cam = is_cam / (F.adaptive_max_pool2d(is_cam, (1, 1)) + 1e-5)
    w = torch.cat([torch.ones(1), dc]).view(1, 4, 1, 1)
    l_p = 1.6 * (torch.abs(cam1 - is_cam) * w).mean()
    lab = torch.cat([torch.ones(len(tags), 1), label], dim=1)[:, :, None, None]
    down = F.interpolate(cam1, size=cam2.shape[-2:], mode="bilinear", align_corners=True) * lab
    l_w = 0.8 * (torch.abs(down - cam2 * lab)[:, 1:] * dc.view(1, 3, 1, 1)).mean()
    cls = 0.5 * (
        F.multilabel_soft_margin_loss(out["cls_logits"], label)
        + F.multilabel_soft_margin_loss(small["cls_logits"], label)
    )
    return {"cls": cls, "msdw_p": l_p, "msdw_w": l_w}


def test_terms_match_a_transcription_of_the_reference_step(model: CAMClassifier) -> None:
    method = build_method({"name": "sfc", "side_channels": SIDE}, num_classes=4).train()
    dc = torch.tensor([1.3, 0.6, 1.1])
    method.set_class_weights(dc)
    torch.manual_seed(0)
    batch = method.prepare_batch(_batch())
    assert batch["image"].shape[0] == 7  # 3 + 4 bank samples
    outputs = method.run_model(model.eval(), batch)
    terms = method(outputs, batch)
    ref = _reference_step(outputs, outputs["aux_scale"], batch, dc)
    assert set(terms) == {"cls", "msdw_p", "msdw_w"}
    for key in terms:
        assert terms[key].item() == pytest.approx(ref[key].item(), rel=1e-4, abs=1e-7), key
        assert torch.isfinite(terms[key]) and terms[key].item() > 0


def test_seeds_before_the_pcm_match_the_transcription(model: CAMClassifier) -> None:
    method = build_method({"name": "sfc", "side_channels": SIDE, "seed_source": "cam"}, num_classes=4).train()
    dc = torch.tensor([1.3, 0.6, 1.1])
    method.set_class_weights(dc)
    torch.manual_seed(0)
    batch = method.prepare_batch(_batch())
    outputs = method.run_model(model.eval(), batch)
    terms = method(outputs, batch)
    ref = _reference_step(outputs, outputs["aux_scale"], batch, dc, seeds_before_pcm=True)
    for key in terms:
        assert terms[key].item() == pytest.approx(ref[key].item(), rel=1e-4, abs=1e-7), key
    # the seeds (and the logged background share) are those of the map before the PCM
    region = method._region(
        method.channel_labels(batch["tags"]), batch["valid"], tuple(outputs["cam"].shape[-2:])
    )
    raw = method.raw_maps(outputs, region)
    seeds = method.seeds(method.seed_map(outputs, method.propagate(outputs, raw), region), region)
    torch.testing.assert_close(seeds, seed_masks(raw, region, 0, 0.3))
    bg = seeds[:3, 0]
    logged = method.log_values()["sfc/bg_seed_share"].item()
    assert logged == pytest.approx((bg.sum() / region[:3, 0].sum()).item(), rel=1e-6)
    # inference (weakseg cam): M_P's prototypes come from the same pre-PCM seeds
    tags = batch["tags"]
    maps = method.eval().class_maps(outputs, tags)
    grid_region = method._region(method.channel_labels(tags), None, tuple(outputs["cam"].shape[-2:]))
    seeds_inf = seed_masks(method.raw_maps(outputs, grid_region), grid_region, 0, 0.3)
    side = outputs["side_embedding"].float()
    torch.testing.assert_close(maps["M_P"], prototype_cam(side, class_prototypes(seeds_inf, side)))
    with pytest.raises(ValueError, match="seed_source"):
        build_method({"name": "sfc", "seed_source": "raw"}, num_classes=4)


def test_gradients_reach_the_intended_parameters(model: CAMClassifier) -> None:
    method = build_method({"name": "sfc", "side_channels": SIDE}, num_classes=4).train()
    method.set_class_weights(torch.ones(3))
    batch = method.prepare_batch(_batch(seed=2))
    outputs = method.run_model(model.train(), batch)
    terms = method(outputs, batch)
    side = list(model.side.parameters())
    head = [model.classifier.weight, model.pcm.weight]
    deep = model.backbone.model.blocks[6][0].conv_pw.weight

    def grads(loss: torch.Tensor, params: list) -> list:
        return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)

    # the side convs learn only through M_P (the prototype term)...
    assert all(g is not None and g.abs().sum() > 0 for g in grads(terms["msdw_p"], side))
    assert all(g is None for g in grads(terms["cls"] + terms["msdw_w"], side))
    # ...and the prototype CAM sends nothing into the backbone
    region = method._region(
        method.channel_labels(batch["tags"]), batch["valid"], tuple(outputs["cam"].shape[-2:])
    )
    cam_w = method.classifier_cam(outputs, region)
    cam_p = method.prototype_cam(outputs, cam_w, region)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is None for g in grads(cam_p.sum(), backbone))
    # every term reaches the classifier and the deepest backbone level; the MSDW terms the PCM conv too
    for key in ("cls", "msdw_p", "msdw_w"):
        g_cls, g_pcm, g_deep = grads(terms[key], [*head, deep])
        assert g_cls.abs().sum() > 0 and g_deep.abs().sum() > 0, key
        assert (g_pcm is not None and g_pcm.abs().sum() > 0) == (key != "cls"), key


def test_cam_method_term_and_maps(model: CAMClassifier) -> None:
    method = build_method({"name": "cam"}, num_classes=4)
    assert method.model_kind == "classifier" and method.requires == ("tags",)
    assert type(method).model_kwargs({"name": "cam", "bg_threshold": 0.3}) == {"bg_threshold": 0.3}
    batch = _batch()
    outputs = method.run_model(model.eval(), batch)
    expected = F.multilabel_soft_margin_loss(outputs["cls_logits"], batch["tags"][:, 1:])
    assert method(outputs, batch)["cls"].item() == pytest.approx(expected.item(), rel=1e-6)
    maps = method.class_maps(outputs)["cam"]  # the foreground classes only: no background of its own
    assert maps.shape == (3, 3, 4, 4) and torch.equal(maps, F.relu(outputs["cam"]))
    sfc = build_method({"name": "sfc", "side_channels": SIDE}, num_classes=4)
    sfc_maps = sfc.class_maps(outputs, batch["tags"])
    assert list(sfc_maps) == ["cam", "M_W", "M_P"] and torch.equal(sfc_maps["cam"], maps)  # same raw CAM
    assert all(sfc_maps[k].shape == (3, 4, 4, 4) for k in ("M_W", "M_P"))  # with their own background
    assert torch.equal(sfc_maps["M_P"][0, 2], torch.zeros(4, 4))  # class 2 is not tagged in image 0
    # validation: both methods score the raw CAM by the same rule
    size = (8, 8)
    assert torch.equal(
        method.seed_scores(outputs, batch["tags"], size)["cam"],
        sfc.seed_scores(outputs, batch["tags"], size)["cam"],
    )
    assert list(sfc.seed_scores(outputs, batch["tags"], size)) == ["M_W+M_P", "M_W", "M_P", "cam"]


def test_sfc_seed_scores_follow_the_reference_inference() -> None:
    # background, class 1 (tagged), class 2 (not tagged); two pixels
    maps = torch.tensor([[[[0.5, 1.0]], [[2.0, 1.0]], [[9.0, 9.0]]]])
    scores = sfc_seed_scores(maps, torch.tensor([[1.0, 1.0, 0.0]]), background=0)
    # background: max-normalised (0.5, 1) + 0.4; class 1: (1, 0.5) x 2; class 2: -1
    expected = torch.tensor([[[[0.9, 1.4]], [[2.0, 1.0]], [[-1.0, -1.0]]]])
    assert torch.allclose(scores, expected, atol=1e-4)
    assert scores.argmax(1).tolist() == [[[1, 0]]]
    no_bg = sfc_seed_scores(maps[:, 1:], torch.tensor([[1.0, 1.0]]), background=None)
    assert torch.allclose(no_bg, torch.tensor([[[[2.0, 1.0]], [[2.0, 2.0]]]]), atol=1e-4)


def test_collapse_statistics_by_hand() -> None:
    method = build_method({"name": "sfc", "side_channels": SIDE}, num_classes=4)
    # 3 images on a 2x2 grid (background channel 0); the third is a bank sample and is left out
    seeds = torch.zeros(3, 4, 2, 2)
    seeds[0, 0, 0, :] = 1.0  # image 0: 2 background seeds
    seeds[0, 1, 1, :] = 1.0
    seeds[1, 2] = 1.0  # image 1: no background seed -> an empty background prototype
    seeds[2, 0] = 1.0
    region = torch.ones(3, 4, 2, 2)
    region[0, :, 1, 1] = 0.0  # image 0: 3 valid pixels
    stats = method.seed_statistics(seeds, region, num_images=2)
    assert stats["sfc/empty_bg_prototype"].item() == pytest.approx(0.5)
    assert stats["sfc/bg_seed_share"].item() == pytest.approx(2 / 7)  # 2 of 3 + 4 valid pixels
    no_bg = build_method({"name": "sfc", "side_channels": SIDE}, num_classes=4, background=None)
    assert no_bg.seed_statistics(seeds, region, 2) == {}


def test_forward_records_the_statistics_of_the_batch_images(model: CAMClassifier) -> None:
    method = build_method({"name": "sfc", "side_channels": SIDE}, num_classes=4).train()
    method.set_class_weights(torch.ones(3))
    assert method.log_values() == {} and method.training_statistics() == {}
    batch = method.prepare_batch(_batch())
    outputs = method.run_model(model.eval(), batch)
    method.set_progress(4, 10)
    method(outputs, batch)
    values = method.log_values()
    assert set(values) == {"sfc/empty_bg_prototype", "sfc/bg_seed_share"}
    assert all(v.ndim == 0 and not v.requires_grad for v in values.values())
    # the same numbers from the seeds of the three batch images (the four bank samples left out)
    region = method._region(
        method.channel_labels(batch["tags"]), batch["valid"], tuple(outputs["cam"].shape[-2:])
    )
    seeds = method.seeds(method.classifier_cam(outputs, region), region)
    bg = seeds[:3, 0].flatten(1)
    assert values["sfc/bg_seed_share"].item() == pytest.approx(
        (bg.sum() / region[:3, 0].sum()).item(), rel=1e-6
    )
    assert values["sfc/empty_bg_prototype"].item() == pytest.approx((bg.sum(1) == 0).float().mean().item())
    history = method.training_statistics()
    assert history["step"] == [5] and history["bg_seed_share"][0] == pytest.approx(
        values["sfc/bg_seed_share"].item()
    )


class _NamedTags(_TagTable):
    classes = ["background", "road", "car", "person"]


def test_image_level_methods_warn_about_constant_tags() -> None:
    # road in all 20 images, car in 19 (95 %, not more), person in 5
    tags = [[1, 1, int(i != 0), int(i < 5)] for i in range(20)]
    for name in ("cam", "sfc", "aal"):
        method = build_method({"name": name}, num_classes=4)
        with pytest.warns(UserWarning, match=r"road \(100%\)") as caught:
            info = method.fit_dataset(_NamedTags(tags), batch_size=2, progress=False)
        assert info["dominant_tags"] == {"road": 1.0}, name
        assert "car" not in str(caught[0].message) and name in str(caught[0].message)
    varied = [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [1, 1, 1, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when the tags vary
        assert (
            build_method({"name": "cam"}, num_classes=4).fit_dataset(
                _NamedTags(varied), batch_size=2, progress=False
            )["dominant_tags"]
            == {}
        )
    # without a background class every class counts
    no_bg = build_method({"name": "cam"}, num_classes=4, background=None)
    with pytest.warns(UserWarning, match="background"):
        no_bg.fit_dataset(_NamedTags(varied), batch_size=2, progress=False)


# ---------------------------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, num_train=6, num_val=3, size=(64, 64), seed=3)
    return root


def test_validate_scores_cam_seeds(tiny_data: Path, model: CAMClassifier) -> None:
    val = FolderDataset(tiny_data, "val")
    method = build_method({"name": "sfc", "side_channels": SIDE}, num_classes=4)
    metrics = method.validate(model.train(), val, None, torch.device("cpu"))
    assert model.training  # mode restored
    assert set(metrics["per_class_IoU"]) == set(val.classes)
    assert {"mIoU", "pixel_accuracy", "mIoU_M_W+M_P", "mIoU_M_W", "mIoU_M_P", "mIoU_cam"} <= set(metrics)
    assert "sfc_train_statistics" not in metrics  # nothing trained yet
    assert metrics["mIoU"] == metrics["mIoU_M_W+M_P"] and metrics["num_samples"] == 3
    masks = [read_label(val.label_path("mask", i)) for i in range(3)]
    assert int(np.sum(metrics["confusion_matrix"])) == sum(int((m != 255).sum()) for m in masks)
    # the seeds predict only tagged classes: no image holds every class, so some column must stay empty
    predicted = np.asarray(metrics["confusion_matrix"]).sum(axis=0)
    tagged = np.zeros(4, dtype=bool)
    for m in masks:
        tagged[np.unique(m[m != 255])] = True
    assert not predicted[~tagged].any()


def _config(method: str, data: Path, out: Path, extra: tuple[str, ...] = ()):
    return load_config(
        None,
        [
            f"method={method}",
            f"data.root={data}",
            f"out_dir={out}",
            "data.crop_size=[64,64]",
            "data.num_workers=0",
            "model.backbone=efficientnet_lite0",
            "model.pretrained=null",
            "optim.name=sgd",
            "optim.lr=0.01",
            "train.batch_size=2",
            "train.steps=3",
            "train.log_every=1",
            "train.val_every=3",
            "train.ckpt_every=3",
            "train.num_overlays=0",
            *extra,
        ],
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "terms"), [("cam", {"cls"}), ("sfc", {"cls", "msdw_p", "msdw_w"})], ids=["cam", "sfc"]
)
def test_three_training_steps_on_synthetic_data(
    tiny_data: Path, tmp_path: Path, method: str, terms: set
) -> None:
    extra = ("method.side_channels=[8,8,16,16]", "optim.grad_clip=1.0") if method == "sfc" else ()
    result = train(_config(method, tiny_data, tmp_path, extra), device="cpu", progress=False)
    assert result.step == 3
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(terms <= set(r) and np.isfinite(r["loss"]) for r in steps)
    assert 0.0 <= result.metrics["mIoU"] <= 1.0
    assert "mIoU_cam" in result.metrics  # the raw CAM by IRN's rule, for both methods
    if method == "sfc":  # the collapse diagnostics of every step reach metrics.json
        saved = json.loads((result.run_dir / "metrics.json").read_text())["sfc_train_statistics"]
        assert saved["step"] == [1, 2, 3] and all(0 <= v <= 1 for v in saved["bg_seed_share"])
        # and every logged step carries them in metrics.jsonl (Method.log_values)
        assert all(0 <= r["sfc/bg_seed_share"] <= 1 and "sfc/empty_bg_prototype" in r for r in steps)


@pytest.mark.slow
def test_sfc_checkpoint_through_cams_seeds_and_pseudo_labels(tiny_data: Path, tmp_path: Path) -> None:
    """The Python API of `weakseg cam --rule sfc`, `cam evaluate` (both rules), `pseudo-labels --rule sfc`."""
    from weakseg.cam.pseudo_labels import PseudoLabelParams
    from weakseg.tools.cam_folder import make_cams
    from weakseg.tools.cam_store import load_cam_meta, load_cams
    from weakseg.tools.pseudo_dataset import make_pseudo_labels
    from weakseg.tools.seed_report import evaluate_seeds

    cfg = _config(
        "sfc", tiny_data, tmp_path / "run", ("method.side_channels=[8,8,16,16]", "optim.grad_clip=1.0")
    )
    train(cfg, device="cpu", progress=False)
    out, dataset = make_cams(
        tmp_path / "run" / "last.ckpt",
        tmp_path / "cams",
        split="train",
        scales=[1.0],
        rule="sfc",
        progress=False,
    )
    meta = load_cam_meta(out)
    assert meta["rule"] == "sfc" and meta["cam_keys"] == ["cam", "M_W", "M_P"]
    assert meta["backgrounds"] == ["M_W", "M_P"]
    record = load_cams(out / f"{dataset.ids[0]}.npz")
    assert set(record.backgrounds) == {"M_W", "M_P"} and record.backgrounds["M_W"].shape == record.size
    train_set = FolderDataset(tiny_data, "train")
    irn = evaluate_seeds(out, train_set, progress=False)
    sfc = evaluate_seeds(out, train_set, rule="sfc", progress=False)
    assert irn["weights"] == {"cam": 1.0} and irn["fixed_threshold"] == 0.15
    assert sfc["weights"] == {"M_W": 1.0, "M_P": 1.0} and sfc["thresholds"] == [0.0]
    assert 0.0 <= irn["fixed_mIoU"] <= irn["best_mIoU"] <= 1.0 and 0.0 <= sfc["fixed_mIoU"] <= 1.0
    summary = make_pseudo_labels(
        out, train_set, tmp_path / "pl", params=PseudoLabelParams(crf="none", rule="sfc"), progress=False
    )
    assert summary["rule"] == "sfc" and summary["weights"] == {"M_W": 1.0, "M_P": 0.7}
    label = read_label(tmp_path / "pl" / "pseudo" / f"{dataset.ids[0]}.png")
    assert set(np.unique(label)) <= {0, 1, 2, 3, 255}
