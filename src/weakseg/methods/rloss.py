"""``rloss``: partial cross-entropy + dense CRF loss (Tang et al., ECCV 2018, "On Regularized Losses").

Defaults follow the authors' PyTorch release (meng-tang/rloss, ``train_withdensecrfloss.py`` and its
README command: ``--densecrfloss 2e-9 --rloss-scale 0.5 --sigma-rgb 15 --sigma-xy 100``).
The CRF term sees the softmax of the logits upsampled (bilinearly) to the label size, as the
reference's network outputs full-resolution scores, then downscaled by ``scale`` inside the loss
(see :mod:`weakseg.losses.dense_crf`). The ROI is ``batch["valid"]`` (crop padding excluded); the image
colours are ``batch["image"]·255``. No warm-up: the reference adds the loss from the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from weakseg.losses import partial_cross_entropy
from weakseg.losses.dense_crf import dense_crf_loss
from weakseg.methods.base import Method, register_method


@dataclass
class RLossParams:
    weight: float = 2e-9  # on the per-image sum (normalization "batch"), rloss's value
    sigma_rgb: float = 15.0  # colour bandwidth, 0..255 units
    sigma_xy: float = 100.0  # spatial bandwidth, pixels of the input crop
    scale: float = 0.5  # the loss runs on a grid downscaled by this factor
    normalization: str = "batch"  # "batch" (÷ images, rloss) or "pixels" (÷ ROI pixels; weight ≈ 1.1e-4)
    pce_weight: float = 1.0


@register_method
class RLoss(Method):
    """pCE on scribbles + ``weight · Σ_k S_kᵀ W (1 - S_k)`` with the RGBXY bilateral kernel ``W``."""

    name = "rloss"
    Params = RLossParams
    requires = ("scribble",)

    def __init__(self, params: RLossParams, **kw: Any):
        super().__init__(params, **kw)
        if params.normalization not in ("batch", "pixels"):
            raise ValueError(
                f"method.normalization is '{params.normalization}'; expected 'batch' or 'pixels'"
            )
        if not 0 < params.scale <= 1:
            raise ValueError(f"method.scale must be in (0, 1], got {params.scale}")

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.params
        logits = outputs["logits"]
        target = batch["scribble"]
        pce = partial_cross_entropy(logits, target, self.ignore_index)
        full = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        crf = dense_crf_loss(
            full.softmax(1),
            batch["image"].float() * 255.0,
            batch.get("valid"),
            sigma_rgb=p.sigma_rgb,
            sigma_xy=p.sigma_xy,
            scale=p.scale,
            weight=p.weight,
            normalization=p.normalization,
        )
        return {"pce": p.pce_weight * pce, "dense_crf": crf}
