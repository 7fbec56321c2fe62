"""``gatedcrf``: partial cross-entropy + Gated CRF loss (Obukhov et al. 2019).

Defaults are the official code's (github.com/toshas/GatedCRFLoss, ``utils/config.py``): one kernel
``{weight 1, xy 6, rgb 0.1}``, radius 5, loss weight 0.1, the loss switched on after 0.5% of training,
computed on the DeepLabV3+ decoder's stride-4 grid (``scale`` 0.25) with RGB normalised by the
ImageNet std (so ``rgb`` 0.1 means 0.1 std). WSL4MIS's ACDC setting (the DMPLS paper's "RLoss"
baseline) uses the same kernel at full resolution on one grey channel in [0, 1]: ``scale: 1.0``,
``rgb_std: null``, ``grey_image: true``, ``warmup: 0.0``
(configs/gatedcrf/acdc_effnetlite0-v3p_256x256_2k.yaml).

The loss sees ``softmax`` of the logits resized (bilinearly) to the loss grid, round(H·scale) ×
round(W·scale) of the label size (no resize when the head's grid already matches); σ_xy and the radius
are in pixels of that grid, as in the official code. ``batch["valid"]`` gates both the neighbour
(m_src, as the official trainer) and the centre (m_dst), so crop padding takes no part at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from weakseg.data.sample import Batch
from weakseg.losses import partial_cross_entropy
from weakseg.losses.gated_crf import GatedCRFKernel, gated_crf_loss
from weakseg.methods.base import Method, register_method
from weakseg.models.outputs import ModelOutputs

IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class GatedCRFKernelSpec:
    weight: float = 1.0
    xy: float | None = 6.0  # spatial bandwidth in loss-grid pixels (null = no XY term)
    rgb: float | None = 0.1  # image bandwidth, in units of image / rgb_std (null = XY-only kernel)


@dataclass
class GatedCRFParams:
    weight: float = 0.1
    kernels: list[GatedCRFKernelSpec] = field(default_factory=lambda: [GatedCRFKernelSpec()])
    radius: int = 5
    scale: float = 0.25  # loss grid relative to the label size (official: decoder stride 4)
    rgb_std: list[float] | None = field(default_factory=lambda: list(IMAGENET_STD))  # null: image in [0, 1]
    grey_image: bool = False  # use one intensity channel (mean of RGB), e.g. for replicated grey MRI
    warmup: float = 0.005  # fraction of training steps before the loss is switched on
    pce_weight: float = 1.0


@register_method
class GatedCRF(Method):
    """pCE on scribbles + ``weight ·`` Gated CRF loss gated by the valid (non-padding) pixels."""

    name = "gatedcrf"
    Params = GatedCRFParams
    requires = ("scribble",)

    def __init__(self, params: GatedCRFParams, **kw: Any):
        super().__init__(params, **kw)
        self.kernels = [GatedCRFKernel(**(k if isinstance(k, dict) else vars(k))) for k in params.kernels]
        if not self.kernels:
            raise ValueError("method.kernels is empty")
        if not 0 < params.scale <= 1:
            raise ValueError(f"method.scale must be in (0, 1], got {params.scale}")
        if params.rgb_std is not None and len(params.rgb_std) not in (1, 3):
            raise ValueError(f"method.rgb_std needs 1 or 3 values, got {params.rgb_std}")

    def crf_active(self) -> bool:
        """Whether the warm-up is over (``step >= warmup · total_steps``, from ``set_progress``)."""
        return self.step >= self.params.warmup * self.total_steps

    def _image(self, image: torch.Tensor) -> torch.Tensor:
        img = image.float()
        if self.params.grey_image:
            img = img.mean(1, keepdim=True)
        if self.params.rgb_std is not None:
            std = torch.tensor(self.params.rgb_std, device=img.device, dtype=img.dtype)
            if self.params.grey_image:
                std = std.mean().reshape(1)
            img = img / std.view(1, -1, 1, 1)
        return img

    def forward(self, outputs: ModelOutputs, batch: Batch) -> dict[str, torch.Tensor]:
        p = self.params
        logits = outputs["logits"]
        target = batch["scribble"]
        pce = partial_cross_entropy(logits, target, self.ignore_index)
        if not self.crf_active():
            return {"pce": p.pce_weight * pce, "gated_crf": pce.new_zeros(())}
        h, w = target.shape[-2:]
        grid = (max(1, round(h * p.scale)), max(1, round(w * p.scale)))
        small = logits.float()
        if small.shape[-2:] != grid:
            small = F.interpolate(small, size=grid, mode="bilinear", align_corners=False)
        valid = batch.get("valid")
        crf = gated_crf_loss(
            small.softmax(1),
            self._image(batch["image"]),
            self.kernels,
            p.radius,
            mask_src=valid,
            mask_dst=valid,
        )
        return {"pce": p.pce_weight * pce, "gated_crf": p.weight * crf}
