"""``full``: dense supervision, the fully supervised upper bound (or training on pseudo-labels).

Three losses (``method.loss``):

- ``"ce"``: mean cross-entropy over labelled pixels (natural scenes: VOC, COCO, CamVid).
- ``"ce_dice"``: ``ce_weight·CE + dice_weight·Dice`` with the soft Dice of :mod:`weakseg.losses.dice`;
  0.5 / 0.5 is the fully supervised baseline of the ACDC scribble benchmark (WSL4MIS). On volumes that are
  ~96 % background, plain CE first learns to predict background everywhere; the Dice term weighs every
  class equally from the first step.
- ``"weighted_ce"``: cross-entropy with per-class weights: ``class_weights`` when given, else median
  frequency balancing ``w_c = median(f) / f_c`` over the pixel frequencies ``f`` of the training set's
  label maps (Eigen & Fergus 2015), measured once before training (:meth:`FullSupervision.fit_dataset`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from weakseg.data.sample import Batch
from weakseg.losses import partial_cross_entropy, soft_dice_loss
from weakseg.methods.base import Method, register_method
from weakseg.models.outputs import ModelOutputs

LOSSES = ("ce", "ce_dice", "weighted_ce")


@dataclass
class FullParams:
    weight: float = 1.0
    label: str = "mask"  # which dense label map to fit: "mask", or "pseudo" for pseudo-labels with ignore
    loss: str = "ce"  # "ce" | "ce_dice" | "weighted_ce"
    ce_weight: float = 0.5  # "ce_dice": weight of the CE term (WSL4MIS: 0.5)
    dice_weight: float = 0.5  # "ce_dice": weight of the Dice term (WSL4MIS: 0.5)
    class_weights: list[float] | None = None  # "weighted_ce": one per class; None = median frequency


def median_frequency_weights(pixel_counts: np.ndarray) -> np.ndarray:
    """``median(f) / f_c`` for the pixel frequencies ``f`` of ``pixel_counts`` [K]; unseen classes get 0."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    seen = counts > 0
    if not seen.any():
        raise ValueError("median frequency weights: the label maps hold no labelled pixel")
    freq = counts / counts.sum()
    weights = np.zeros_like(freq)
    weights[seen] = np.median(freq[seen]) / freq[seen]
    return weights


@register_method
class FullSupervision(Method):
    """Cross-entropy (optionally + soft Dice, or class-weighted) on every labelled pixel of a dense map."""

    name = "full"
    Params = FullParams
    requires = ("mask",)
    class_weights: torch.Tensor  # [K] buffer

    def __init__(self, params: FullParams, **kw: Any):
        super().__init__(params, **kw)
        if params.label not in ("mask", "pseudo"):
            raise ValueError(f"method.label is '{params.label}'; expected 'mask' or 'pseudo'")
        if params.loss not in LOSSES:
            raise ValueError(f"method.loss is '{params.loss}'; expected one of {', '.join(LOSSES)}")
        if params.class_weights is not None and len(params.class_weights) != self.num_classes:
            raise ValueError(
                f"method.class_weights has {len(params.class_weights)} values; "
                f"expected one per class ({self.num_classes})"
            )
        self.requires = (params.label,)
        weights = (
            None if params.class_weights is None else torch.tensor(params.class_weights, dtype=torch.float32)
        )
        # a buffer moves with the method to the device; not saved: fit_dataset measures it again on resume
        self.register_buffer(
            "class_weights",
            weights if weights is not None else torch.ones(self.num_classes),
            persistent=False,
        )

    def fit_dataset(self, dataset: Any, *, batch_size: int, progress: bool = True) -> dict[str, Any] | None:
        """``weighted_ce`` without explicit weights: median frequency weights of the training labels."""
        p = self.params
        if p.loss != "weighted_ce" or p.class_weights is not None:
            return None
        from weakseg.methods.sfc import count_classes

        counts = count_classes(dataset, pixels=True, progress=progress)
        if counts.pixels is None:
            raise ValueError(
                "method.loss=weighted_ce: the training set has no label maps to count classes in"
            )
        weights = median_frequency_weights(counts.pixels)
        self.class_weights.copy_(torch.from_numpy(weights).float())
        return {"class_weights": weights.tolist(), "pixel_source": counts.pixel_source}

    def forward(self, outputs: ModelOutputs, batch: Batch) -> dict[str, torch.Tensor]:
        p = self.params
        logits, target = outputs["logits"], batch["mask"] if p.label == "mask" else batch["pseudo"]
        if p.loss == "ce":
            return {"ce": p.weight * partial_cross_entropy(logits, target, self.ignore_index)}
        if p.loss == "weighted_ce":
            ce = partial_cross_entropy(logits, target, self.ignore_index, class_weights=self.class_weights)
            return {"ce": p.weight * ce}
        return {
            "ce": p.weight * p.ce_weight * partial_cross_entropy(logits, target, self.ignore_index),
            "dice": p.weight * p.dice_weight * soft_dice_loss(logits, target, self.ignore_index),
        }
