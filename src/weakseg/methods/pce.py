"""``pce``: partial cross-entropy on scribbles, the baseline of every scribble method."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weakseg.data.sample import Batch
from weakseg.losses import partial_cross_entropy
from weakseg.methods.base import Method, register_method
from weakseg.models.outputs import ModelOutputs


@dataclass
class PCEParams:
    weight: float = 1.0


@register_method
class PartialCE(Method):
    """Cross-entropy on scribbled pixels only (label 255 = unlabelled is ignored)."""

    name = "pce"
    Params = PCEParams
    requires = ("scribble",)

    def forward(self, outputs: ModelOutputs, batch: Batch) -> dict[str, torch.Tensor]:
        loss = partial_cross_entropy(outputs["logits"], batch["scribble"], self.ignore_index)
        return {"pce": self.params.weight * loss}
