"""``full``: cross-entropy on dense masks, the fully supervised upper bound."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from weakseg.losses import partial_cross_entropy
from weakseg.methods.base import Method, register_method


@dataclass
class FullParams:
    weight: float = 1.0
    label: str = "mask"  # which dense label map to fit: "mask", or "pseudo" for pseudo-labels with ignore


@register_method
class FullSupervision(Method):
    """Cross-entropy on every labelled pixel of a dense label map (255 = ignore)."""

    name = "full"
    Params = FullParams
    requires = ("mask",)

    def __init__(self, params: FullParams, **kw: Any):
        super().__init__(params, **kw)
        if params.label not in ("mask", "pseudo"):
            raise ValueError(f"method.label is '{params.label}'; expected 'mask' or 'pseudo'")
        self.requires = (params.label,)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        loss = partial_cross_entropy(outputs["logits"], batch[self.params.label], self.ignore_index)
        return {"ce": self.params.weight * loss}
