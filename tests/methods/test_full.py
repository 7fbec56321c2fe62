"""The ``full`` method's losses: CE, CE + soft Dice (WSL4MIS's 0.5/0.5) and class-weighted CE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weakseg.losses import partial_cross_entropy, soft_dice_loss
from weakseg.methods import build_method
from weakseg.methods.full import median_frequency_weights


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, generator=gen)
    mask = torch.randint(0, 3, (2, 8, 8), generator=gen)
    mask[1, :3] = 255
    return {"logits": logits}, {"mask": mask}


def test_ce_dice_is_half_ce_plus_half_dice() -> None:
    outputs, batch = _batch()
    terms = build_method({"name": "full", "loss": "ce_dice"}, num_classes=3)(outputs, batch)
    assert set(terms) == {"ce", "dice"}
    ce = partial_cross_entropy(outputs["logits"], batch["mask"])
    dice = soft_dice_loss(outputs["logits"], batch["mask"])
    assert terms["ce"].item() == pytest.approx(0.5 * ce.item(), rel=1e-6)
    assert terms["dice"].item() == pytest.approx(0.5 * dice.item(), rel=1e-6)


def test_weighted_ce_equals_torch_weighted_mean_by_hand() -> None:
    outputs, batch = _batch(1)
    weights = [0.1, 1.0, 3.0]
    terms = build_method({"name": "full", "loss": "weighted_ce", "class_weights": weights}, num_classes=3)(
        outputs, batch
    )
    logp = F.log_softmax(outputs["logits"].double(), 1)
    keep = batch["mask"] != 255
    y = batch["mask"][keep]
    nll = -logp.permute(0, 2, 3, 1)[keep].gather(1, y[:, None])[:, 0]
    w = torch.tensor(weights, dtype=torch.float64)[y]
    assert terms["ce"].item() == pytest.approx(((w * nll).sum() / w.sum()).item(), rel=1e-5)


def test_median_frequency_weights() -> None:
    w = median_frequency_weights(np.array([960, 20, 10, 10, 0]))
    freq = np.array([0.96, 0.02, 0.01, 0.01])
    assert np.allclose(w[:4], np.median(freq) / freq)
    assert w[4] == 0.0


def test_plain_ce_is_the_default_and_bad_options_are_rejected() -> None:
    outputs, batch = _batch(2)
    terms = build_method({"name": "full"}, num_classes=3)(outputs, batch)
    assert set(terms) == {"ce"}
    with pytest.raises(ValueError, match="method.loss"):
        build_method({"name": "full", "loss": "focal"}, num_classes=3)
    with pytest.raises(ValueError, match="class_weights"):
        build_method({"name": "full", "loss": "weighted_ce", "class_weights": [1.0]}, num_classes=3)
