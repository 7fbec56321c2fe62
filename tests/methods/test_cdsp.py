"""The ``cdsp`` method: its terms, LoRM wiring, the distance maps it asks for, training end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from weakseg.config import load_config
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.engine.trainer import train
from weakseg.losses.distance_entropy import distance_entropy_loss
from weakseg.losses.partial_ce import partial_cross_entropy
from weakseg.methods import build_method
from weakseg.methods.cdsp import BOUNDARY_MAP, SCRIBBLE_MAP
from weakseg.models import create_segmentor


def _model():
    torch.manual_seed(0)
    return create_segmentor("efficientnet_lite0", "deeplabv2", num_classes=3, pretrained=None)


def _batch(size: int = 64) -> dict:
    gen = torch.Generator().manual_seed(0)
    scribble = torch.full((2, size, size), 255, dtype=torch.long)
    scribble[:, 10:12, 8:40] = 1
    scribble[:, 50:52, 8:56] = 0
    pseudo = torch.zeros(2, size, size, dtype=torch.long)
    pseudo[:, 4:30, 4:44] = 1
    pseudo[1, 40:60, 40:60] = 2
    pseudo[:, 30:33] = 255
    return {
        "image": torch.rand(2, 3, size, size, generator=gen),
        "scribble": scribble,
        "pseudo": pseudo,
        SCRIBBLE_MAP: torch.rand(2, size, size, generator=gen),
        BOUNDARY_MAP: torch.rand(2, size, size, generator=gen),
    }


def test_terms_are_the_paper_losses_and_lorm_trains_the_backbone() -> None:
    model = _model()
    method = build_method({"name": "cdsp"}, num_classes=3)
    assert set(method.requires) == {"scribble", "pseudo"}
    method.setup(model)
    assert method.lorm is not None and method.lorm.query.in_channels == model.backbone.channels[-1]
    batch = _batch()
    outputs = model(batch["image"])
    terms = method(outputs, batch)
    assert set(terms) == {"segs", "segc", "lorm", "ds", "dc"}
    logits = outputs["logits"]
    torch.testing.assert_close(terms["segs"], partial_cross_entropy(logits, batch["scribble"]))
    torch.testing.assert_close(
        terms["segc"], partial_cross_entropy(logits, batch["pseudo"], label_smoothing=0.1)
    )
    torch.testing.assert_close(terms["dc"], distance_entropy_loss(logits, batch[BOUNDARY_MAP]))
    # LoRM's loss reaches its own parameters and the backbone, never the classifier
    model.zero_grad()
    terms["lorm"].backward()
    assert method.lorm.delta.grad is not None and method.lorm.query.weight.grad.abs().sum() > 0
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert backbone_grads and sum(g.abs().sum() for g in backbone_grads) > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.head.parameters())


def test_lorm_mask_is_the_nearest_resized_foreground() -> None:
    method = build_method({"name": "cdsp"}, num_classes=3)
    pseudo = torch.zeros(1, 8, 8, dtype=torch.long)
    pseudo[0, :4, :4] = 2
    pseudo[0, 4:, 4:] = 255
    mask = method.foreground(pseudo, (2, 2))
    assert mask.tolist() == [[[True, False], [False, False]]]
    no_bg = build_method({"name": "cdsp"}, num_classes=3, background=None)
    assert no_bg.foreground(pseudo, (2, 2)).tolist() == [[[True, True], [True, False]]]


def test_ablation_switches_and_maps() -> None:
    method = build_method({"name": "cdsp", "lorm": False, "distance_entropy": False}, num_classes=3)
    assert method.dataset_maps() == {}
    outputs = {"logits": torch.randn(2, 3, 8, 8), "features": []}
    assert set(method(outputs, _batch())) == {"segs", "segc"}
    full = build_method({"name": "cdsp", "lambda_s": 2.0, "lambda_c": 7.0}, num_classes=3)
    maps = full.dataset_maps()
    assert set(maps) == {SCRIBBLE_MAP, BOUNDARY_MAP} and maps[SCRIBBLE_MAP].lam == 2.0
    with pytest.raises(ValueError, match="lorm_reduction"):
        build_method({"name": "cdsp", "lorm_reduction": "sum"}, num_classes=3)


@pytest.mark.slow
def test_uncertain_pixels_as_background_switch_and_key_masked_lorm() -> None:
    model = _model()
    batch = _batch()
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    valid[:, :, -4:] = False  # crop padding: stays ignored
    batch["pseudo"][:, :, -4:] = 255
    batch["valid"] = valid
    method = build_method({"name": "cdsp", "uncertain": "background", "lorm": False}, num_classes=3)
    target = method.pseudo_target(batch["pseudo"], valid)
    assert (target[:, 30:33, :-4] == 0).all() and (target[:, :, -4:] == 255).all()
    outputs = model(batch["image"])
    want = partial_cross_entropy(outputs["logits"], target, label_smoothing=0.1)
    torch.testing.assert_close(method(outputs, batch)["segc"], want)
    paper = build_method({"name": "cdsp", "lorm": False}, num_classes=3)
    assert not torch.allclose(paper(outputs, batch)["segc"], want)  # the default ignores them
    keyed = build_method({"name": "cdsp", "lorm_mask": "key"}, num_classes=3)
    keyed.setup(model)
    assert keyed.lorm is not None and keyed.lorm.mask_axis == "key"
    with pytest.raises(ValueError, match="background class"):
        build_method({"name": "cdsp", "uncertain": "background"}, num_classes=3, background=None)
    with pytest.raises(ValueError, match="lorm_mask"):
        build_method({"name": "cdsp", "lorm_mask": "rows"}, num_classes=3)


def test_trains_end_to_end_with_maps_from_the_dataset(tmp_path: Path) -> None:
    data = tmp_path / "syn"
    make_synthetic_dataset(data, num_train=6, num_val=2, size=(48, 48), seed=2)
    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "cdsp" / "synthetic_effnetlite0-v3p_96x96_600.yaml",
        [
            f"data.root={data}",
            f"data.pseudo_dir={data / 'masks'}",  # stand-in pseudo-labels
            f"out_dir={tmp_path / 'run'}",
            "data.crop_size=[48,48]",
            "data.num_workers=0",
            "model.pretrained=null",
            "train.steps=3",
            "train.batch_size=2",
            "train.log_every=1",
            "train.val_every=3",
            "train.ckpt_every=3",
            "train.num_overlays=1",
        ],
    )
    result = train(cfg, device="cpu", progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {k for r in rows for k in r}
    assert {"segs", "segc", "lorm", "ds", "dc"} <= logged
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and np.isfinite(losses).all()
    ckpt = torch.load(result.run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert "lorm.delta" in ckpt["method"]
