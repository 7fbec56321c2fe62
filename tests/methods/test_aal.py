"""The ``aal`` method: parameters, the schedule, which parameters each term trains, on-the-fly pseudo
masks against the offline pseudo-label tool, no host synchronisation, and a short training run."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weakseg.cam.pseudo_labels import PseudoLabelParams, ir_labels
from weakseg.config import load_config
from weakseg.data import FolderDataset, write_dataset_json, write_split
from weakseg.io import atomic_save_image, atomic_save_label_png, read_label
from weakseg.methods import build_method
from weakseg.methods.aal import AAL
from weakseg.models.single_stage import SingleStageNetwork, create_single_stage
from weakseg.ops.class_maps import max_normalize
from weakseg.postprocess.crf import CRFParams
from weakseg.tools.cam_store import cam_file, save_cams, write_cam_meta
from weakseg.tools.pseudo_dataset import make_pseudo_labels

IGNORE = 255


def _method(num_classes: int = 4, background: int | None = 0, **params) -> AAL:
    spec = {"name": "aal", "crf_scale": 0.5, **params}
    return build_method(spec, num_classes=num_classes, background=background)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def net() -> SingleStageNetwork:
    torch.manual_seed(0)
    return create_single_stage(
        "efficientnet_lite0", "deeplabv3plus", num_classes=4, output_stride=8, head_kwargs={"channels": 16}
    )


def _batch(size: tuple[int, int] = (32, 40)) -> dict:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, *size, generator=gen)
    image[0, :, :, size[1] // 2 :] *= 0.3  # two regions of different colour for the CRF
    valid = torch.ones(2, *size, dtype=torch.bool)
    valid[1, :, -8:] = False  # crop padding
    tags = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    return {"image": image, "tags": tags, "valid": valid}


# ---------------------------------------------------------------------------------------------- parameters


def test_defaults_config_and_bad_values():
    cfg = load_config(None, ["method.name=aal"])
    assert cfg.method["use_aa"] is True and cfg.method["use_lr"] is True
    assert cfg.method["cls_warmup"] == 0.25 and cfg.method["aa_group_weights"] == [0.25, 0.25, 0.5]
    assert AAL.model_kind == "single_stage" and AAL.requires == ("tags",)
    for bad, needle in [
        ({"crf": "pydensecrf"}, "method.crf"),
        ({"lr_start": 1.5}, "method.lr_start"),
        ({"fg_threshold": 0.1, "bg_threshold": 0.2}, "method.bg_threshold"),
        ({"aa_group_weights": [1.0, 1.0]}, "method.aa_group_weights"),
        ({"crf_scale": 0.0}, "method.crf_scale"),
    ]:
        with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
            _method(**bad)


def test_schedule_follows_progress():
    method = _method(cls_warmup=0.25, lr_start=0.5)
    method.set_progress(0, 8)
    assert not method.segmentation_on and not method.reassign_on
    method.set_progress(2, 8)
    assert method.segmentation_on and not method.reassign_on
    method.set_progress(4, 8)
    assert method.reassign_on
    assert not _method(use_lr=False, lr_start=0.0).reassign_on
    early = _method(cls_warmup=0.5, lr_start=0.0)  # LR waits for the segmentation terms
    early.set_progress(2, 8)
    assert not early.reassign_on
    early.set_progress(4, 8)
    assert early.reassign_on


# ---------------------------------------------------------------------------------------------- gradients


def _grads(net: SingleStageNetwork, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    net.zero_grad(set_to_none=True)
    loss.backward()
    return {name: (None if p.grad is None else p.grad.clone()) for name, p in net.named_parameters()}


def _norm(grads: dict, prefix: str) -> float:
    return sum(float(g.abs().sum()) for n, g in grads.items() if n.startswith(prefix) and g is not None)


def test_warmup_trains_the_classifier_only_but_keeps_every_parameter_in_the_graph(net):
    method = _method(cls_warmup=0.5)
    method.set_progress(0, 10)
    net.train()
    batch = _batch()
    losses = method(net(batch["image"]), batch)
    assert set(losses) == {"cls", "seg", "aa", "reassign"}
    assert losses["seg"].item() == 0 and losses["aa"].item() == 0 and losses["reassign"].item() == 0
    grads = _grads(net, sum(losses.values()))
    assert all(g is not None for g in grads.values())  # DDP sees every parameter
    assert _norm(grads, "classifier") > 0 and _norm(grads, "backbone") > 0
    assert _norm(grads, "head") == 0


def test_each_term_trains_what_it_should(net):
    method = _method(cls_warmup=0.0, lr_start=0.0, lr_margin=0.0)
    method.set_progress(5, 10)
    net.train()
    batch = _batch()
    torch.manual_seed(1)
    outputs = net(batch["image"])
    losses = method(outputs, batch)
    assert set(losses) == {"cls", "seg", "aa", "reassign"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["seg"] > 0 and losses["aa"] > 0 and losses["reassign"] >= 0
    per_term = {}
    for name in losses:
        outputs = net(batch["image"])
        per_term[name] = _grads(net, method(outputs, batch)[name])
    # pseudo masks, confidences and reassigned targets are detached: the CAM classifier learns from cls only
    for name in ("seg", "aa", "reassign"):
        assert _norm(per_term[name], "classifier") == 0, name
    assert _norm(per_term["cls"], "classifier") > 0 and _norm(per_term["cls"], "head") == 0
    # seg reaches the head's classifier and the backbone; aa acts on the embedding (before the classifier)
    assert _norm(per_term["seg"], "head.classifier") > 0 and _norm(per_term["seg"], "backbone") > 0
    assert _norm(per_term["aa"], "head.classifier") == 0
    assert _norm(per_term["aa"], "head.decoder") > 0 and _norm(per_term["aa"], "backbone") > 0


def test_switches_remove_terms(net):
    batch = _batch()
    outputs = net(batch["image"])
    base = _method(use_aa=False, use_lr=False, cls_warmup=0.0)
    base.set_progress(1, 2)
    assert set(base(outputs, batch)) == {"cls", "seg"}
    only_lr = _method(use_aa=False, cls_warmup=0.0, lr_start=0.0)
    only_lr.set_progress(1, 2)
    assert set(only_lr(outputs, batch)) == {"cls", "seg", "reassign"}


def test_lr_moves_pixels_from_seg_to_lr_without_changing_their_sum(net):
    """With lr_weight = seg_weight = 1, seg + lr is the cross-entropy on the corrected pseudo mask."""
    from weakseg.losses.label_reassign import reassign_labels
    from weakseg.losses.partial_ce import partial_cross_entropy

    batch = _batch()
    with torch.no_grad():
        outputs = net(batch["image"])
    method = _method(use_aa=False, cls_warmup=0.0, lr_start=0.0, lr_weight=1.0)
    method.set_progress(1, 2)
    losses = method(outputs, batch)
    labels, _ = method.pseudo_masks(outputs, batch)
    moved = reassign_labels(outputs["embedding"], labels, num_classes=4)
    torch.testing.assert_close(
        losses["seg"] + losses["reassign"], partial_cross_entropy(outputs["logits"], moved.target)
    )


# ---------------------------------------------------------------------------------------------- pseudo masks


def _offline_inputs(cam: torch.Tensor, tags: torch.Tensor, size: tuple[int, int], background: int | None):
    """What ``weakseg cam`` (single scale, no flip) stores: ReLU, upsample, per-channel max-normalise,
    the tagged foreground channels and their class indices."""
    k = tags.shape[1]
    fg = [c for c in range(k) if c != background]
    maps = max_normalize(F.interpolate(cam.relu(), size=size, mode="bilinear", align_corners=False))
    cams, keys = [], []
    for b in range(cam.shape[0]):
        present = [i for i, c in enumerate(fg) if tags[b, c] > 0.5]
        cams.append(maps[b, present])
        keys.append([fg[i] for i in present])
    return cams, keys


def _structured_case(background: int | None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    k = 4
    c = k - 1 if background is not None else k
    cam = torch.randn(3, c, 6, 8, generator=gen) * 2
    cam[:, :, :, :4] += 1.5  # stronger on the left
    image = torch.randint(0, 256, (3, 3, 24, 32), generator=gen, dtype=torch.uint8)
    image[:, :, :, 16:] //= 4
    tags = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    if background is None:
        tags[1, 0] = 0.0
    return cam, image, tags


@pytest.mark.parametrize("background", [0, None])
@pytest.mark.parametrize("crf", ["none", "torch"])
def test_on_the_fly_pseudo_masks_equal_the_offline_rule(background, crf):
    cam, image, tags = _structured_case(background)
    method = _method(background=background, crf=crf, crf_scale=0.5, crf_iters=5)
    batch = {"image": image.float() / 255.0, "tags": tags}
    labels, confidence = method.pseudo_masks({"cam": cam}, batch)
    cams, keys = _offline_inputs(cam, tags, (24, 32), background)
    params = PseudoLabelParams(crf=crf, crf_params=CRFParams.pseudo_label(scale=0.5, num_iters=5))
    offline = ir_labels(cams, keys, image, background=background, params=params)
    assert torch.equal(labels, offline)
    labelled = labels != IGNORE
    assert labelled.any() and (~labelled).any()
    assert set(labels.unique().tolist()) <= {IGNORE, *range(4)}
    # confidences: the normalised CAM of the pixel's class (1 - max for background), 0 where ignored
    assert (confidence[~labelled] == 0).all() and (confidence >= 0).all() and (confidence <= 1).all()
    b, y, x = torch.nonzero(labelled & (labels != (background if background is not None else -1)))[0].tolist()
    cls = int(labels[b, y, x])
    slot = keys[b].index(cls)
    assert confidence[b, y, x] == pytest.approx(float(cams[b][slot, y, x]), abs=1e-6)


def test_crop_padding_is_ignored_and_untagged_classes_never_appear():
    cam, image, tags = _structured_case(0, seed=2)
    valid = torch.ones(3, 24, 32, dtype=torch.bool)
    valid[0, :, 24:] = False
    method = _method(crf="torch", crf_iters=3)
    labels, _ = method.pseudo_masks(
        {"cam": cam}, {"image": image.float() / 255, "tags": tags, "valid": valid}
    )
    assert (labels[0, :, 24:] == IGNORE).all()
    for b in range(3):
        present = {c for c in range(4) if tags[b, c] > 0.5} | {IGNORE}
        assert set(labels[b].unique().tolist()) <= present


def test_on_the_fly_pseudo_masks_equal_the_offline_tool_output_files(tmp_path):
    """The full offline path (CAM files in float16 -> `weakseg pseudo-labels` with the torch CRF) gives
    the PNGs the method computes on the fly from the same CAMs. CAM values are multiples of 1/8 with a
    2x2 block at 1 per channel, so float16 storage cannot move a value across a threshold."""
    gen = torch.Generator().manual_seed(4)
    cam = (torch.randint(0, 9, (2, 3, 6, 8), generator=gen) / 8.0).float()
    cam[:, :, 0:2, 0:2] = 0.0
    for c in range(3):
        cam[:, c, 2 * (c % 3) : 2 * (c % 3) + 2, 4:6] = 1.0
    size = (12, 16)
    masks = [np.zeros(size, np.uint8), np.zeros(size, np.uint8)]
    masks[0][:, 8:] = 1
    masks[0][6:, :4] = 3
    masks[1][:, :8] = 2
    src = tmp_path / "src"
    images = []
    for i, mask in enumerate(masks):
        rgb = np.full((*size, 3), 60, np.uint8) + (mask[..., None] * 50).astype(np.uint8)
        images.append(rgb)
        atomic_save_image(src / "images" / f"s{i}.png", rgb)
        atomic_save_label_png(src / "masks" / f"s{i}.png", mask)
    write_dataset_json(
        src, ["background", "a", "b", "c"], layout={"images": "images/{id}.png", "masks": "masks/{id}.png"}
    )
    write_split(src, "train", ["s0", "s1"])
    dataset = FolderDataset(src, "train")
    tags = torch.stack([torch.as_tensor(dataset[i]["tags"]).float() for i in range(2)])
    tags[:, 0] = 1.0
    cams, keys = _offline_inputs(cam, tags, size, 0)
    cam_dir = tmp_path / "cams"
    for i, (maps, k) in enumerate(zip(cams, keys)):
        save_cams(cam_file(cam_dir, f"s{i}"), k, {"cam": maps})
    write_cam_meta(cam_dir, {"classes": dataset.classes, "background": 0, "cam_keys": ["cam"]})
    params = PseudoLabelParams(crf="torch", crf_params=CRFParams.pseudo_label(scale=0.5, num_iters=4))
    make_pseudo_labels(cam_dir, dataset, tmp_path / "out", params=params, progress=False)
    offline = torch.stack(
        [torch.from_numpy(read_label(tmp_path / "out" / "pseudo" / f"s{i}.png")) for i in range(2)]
    )

    method = _method(crf="torch", crf_scale=0.5, crf_iters=4)
    image = torch.stack([torch.from_numpy(im).permute(2, 0, 1) for im in images]).float() / 255.0
    online, _ = method.pseudo_masks({"cam": cam}, {"image": image, "tags": tags})
    assert torch.equal(online, offline.long())
    assert (online != IGNORE).any()


def test_the_step_never_synchronises_with_the_host(net, monkeypatch):
    """On a GPU (simulated: the CPU told to keep one slot per class, as there) the step never reads
    a value back to the host."""
    from weakseg.cam import pseudo_labels

    monkeypatch.setattr(pseudo_labels, "packs_slots", lambda device: False)
    method = _method(cls_warmup=0.0, lr_start=0.0, crf="torch", crf_iters=2)
    method.set_progress(1, 2)
    batch = _batch()
    outputs = net(batch["image"])

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the training step")

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    losses = method(outputs, batch)
    total = sum(losses.values())
    monkeypatch.undo()
    assert torch.isfinite(total)


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_a_few_steps_through_the_engine(tmp_path):
    from weakseg.data.synthetic import make_synthetic_dataset
    from weakseg.engine.trainer import load_trained_model, train
    from weakseg.tools.cam_folder import make_cams

    data = make_synthetic_dataset(tmp_path / "syn", num_train=6, num_val=2, size=(48, 48), seed=1)
    cfg = load_config(
        None,
        [
            f"data.root={data}",
            f"out_dir={tmp_path / 'run'}",
            "data.crop_size=[48,48]",
            "data.num_workers=0",
            "model.backbone=efficientnet_lite0",
            "model.head=deeplabv3plus",
            "model.head_channels=16",
            "model.output_stride=8",
            "model.pretrained=null",
            "method.name=aal",
            "method.cls_warmup=0.25",
            "method.lr_start=0.5",
            "method.crf_scale=0.5",
            "method.crf_iters=3",
            "optim.name=sgd",
            "optim.lr=0.01",
            "train.batch_size=2",
            "train.steps=4",
            "train.log_every=1",
            "train.val_every=4",
            "train.ckpt_every=4",
            "train.num_overlays=0",
        ],
    )
    result = train(cfg, device="cpu", progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert train_rows[0]["seg"] == 0 and train_rows[1]["seg"] > 0  # classification warm-up, then joint
    assert train_rows[1]["reassign"] == 0 and train_rows[1]["lr"] > 0  # the term, then the learning rate
    assert all(np.isfinite(r["loss"]) for r in train_rows)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0
    model, _, _ = load_trained_model(result.run_dir / "last.ckpt")
    assert isinstance(model, SingleStageNetwork)
    out, dataset = make_cams(
        result.run_dir / "last.ckpt",
        tmp_path / "cams",
        scales=(1.0,),
        flip=False,
        device="cpu",
        progress=False,
    )
    assert len(list(out.glob("*.npz"))) == len(dataset)


def test_the_method_passes_its_settings_to_the_offline_tools_params():
    method = _method(fg_threshold=0.4, bg_threshold=0.1, crf_scale=0.25, crf_iters=7)
    p = method.pseudo_params
    assert (p.fg_threshold, p.bg_threshold, p.crf) == (0.4, 0.1, "torch")
    assert p.crf_params == replace(CRFParams.pseudo_label(), scale=0.25, num_iters=7)
