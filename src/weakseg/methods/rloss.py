"""``rloss``: partial cross-entropy + dense CRF loss (Tang et al., ECCV 2018, "On Regularized Losses").

Defaults follow the authors' PyTorch release (meng-tang/rloss, ``train_withdensecrfloss.py`` and its
README command: ``--densecrfloss 2e-9 --rloss-scale 0.5 --sigma-rgb 15 --sigma-xy 100``, batch 12,
513-pixel crops). The CRF term sees the softmax of the logits upsampled (bilinearly) to the label size, as
the reference's network outputs full-resolution scores, then downscaled by ``scale`` inside the loss
(see :mod:`weakseg.losses.dense_crf`). The ROI is ``batch["valid"]`` (crop padding excluded); the image
colours are ``batch["image"]·255``. No warm-up: the reference adds the loss from the first step.

**Balance.** The release divides *both* terms by the batch size ``N`` (``SegmentationLosses`` with
``batch_average=True``, and ``DenseCRFLoss`` returns ``weight·Σ_b E_b / N``), so its objective is
``(CE_mean + weight·Σ_b E_b) / N``: relative to the mean cross-entropy the CRF weighs
``weight·N·mean_b E_b``. weakseg optimises ``CE_mean + weight·c_crop·N_ref·mean_b E_b``:

- ``N_ref = reference_batch`` (12): the published balance, independent of the batch size actually used
  (``reference_batch=None`` follows the code literally at the current batch, ``weight·Σ_b E_b``). The
  equivalent weight on the per-image mean is 2.4e-8; without the batch factor the CRF would be 12x weaker
  than published. The overall factor ``N`` the release also puts on the cross-entropy is a learning-rate
  scale (its SGD lr 0.007 corresponds to 0.007/12 here); Adam-type optimisers ignore it.
- ``c_crop``: the energy of one image grows with the kernel's spatial mass ``Σ_ij exp(-|p_i-p_j|²/2σ_xy²)``
  on the loss grid, i.e. with the crop size. ``c_crop = mass(reference_crop) / mass(this crop)`` keeps the
  published weight's meaning on any crop (1 at 513, 1.27 at 465, 6.0 at 256, 56 at 128 with σ_xy 100), so a
  ``data.crop_size`` override does not silently change the balance. ``reference_crop=None`` disables it.

Measured (README, Results): on the CPU ladders (EfficientNet-lite0, crops 160-192) the published balance
over-regularises large regions; ``reference_batch=1`` (12x weaker) raised val mIoU from 0.301 to 0.370 on
voc-real and from 0.405 to 0.583 on CamVid. The default stays the published balance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from weakseg.data.sample import Batch
from weakseg.losses import partial_cross_entropy
from weakseg.losses.dense_crf import dense_crf_loss
from weakseg.methods.base import Method, register_method
from weakseg.models.outputs import ModelOutputs


@dataclass
class RLossParams:
    weight: float = 2e-9  # rloss's weight on one image's energy, at reference_crop and reference_batch
    sigma_rgb: float = 15.0  # colour bandwidth, 0..255 units
    sigma_xy: float = 100.0  # spatial bandwidth, pixels of the input crop
    scale: float = 0.5  # the loss runs on a grid downscaled by this factor
    reference_crop: int | None = 513  # crop side the weight was published for; None = no crop rescaling
    reference_batch: int | None = 12  # batch the published balance was set at; None = the current batch
    pce_weight: float = 1.0
    backend: str = "exact"  # W·S: "exact", "lattice" (permutohedral, the reference's) or "auto"


def spatial_kernel_mass(height: int, width: int, sigma_xy: float, scale: float) -> float:
    """``Σ_ij exp(-|p_i - p_j|² / 2σ_xy²)`` over the pixel pairs of the loss grid of a ``height x width``
    crop.

    The grid is ``⌊height·scale⌋ x ⌊width·scale⌋`` (``F.interpolate``'s size for ``scale_factor``) with
    positions in crop pixels (``index / scale``). The Gaussian separates into rows and columns:
    ``mass = m(h)·m(w)`` with ``m(n) = n + 2 Σ_{d=1}^{n-1} (n - d) exp(-(d/scale)² / 2σ_xy²)``.
    """

    def one_axis(n: int) -> float:
        d = torch.arange(1, n, dtype=torch.float64)
        return float(n + 2.0 * ((n - d) * torch.exp(-((d / scale) ** 2) / (2.0 * sigma_xy**2))).sum())

    return one_axis(max(1, math.floor(height * scale))) * one_axis(max(1, math.floor(width * scale)))


@register_method
class RLoss(Method):
    """pCE on scribbles + ``weight · Σ_k S_kᵀ W (1 - S_k)`` with the RGBXY bilateral kernel ``W``
    (the published balance, see the module doc)."""

    name = "rloss"
    Params = RLossParams
    requires = ("scribble",)

    def __init__(self, params: RLossParams, **kw: Any):
        super().__init__(params, **kw)
        if not 0 < params.scale <= 1:
            raise ValueError(f"method.scale must be in (0, 1], got {params.scale}")
        for key in ("reference_crop", "reference_batch"):
            value = getattr(params, key)
            if value is not None and value < 1:
                raise ValueError(f"method.{key} must be >= 1 or null, got {value}")
        self._crop_factors: dict[tuple[int, int], float] = {}

    def crop_factor(self, height: int, width: int) -> float:
        """``c_crop`` for a ``height x width`` crop (1 when ``reference_crop`` is None); cached per size."""
        p = self.params
        if p.reference_crop is None:
            return 1.0
        key = (height, width)
        if key not in self._crop_factors:
            ref = spatial_kernel_mass(p.reference_crop, p.reference_crop, p.sigma_xy, p.scale)
            self._crop_factors[key] = ref / spatial_kernel_mass(height, width, p.sigma_xy, p.scale)
        return self._crop_factors[key]

    def crf_weight(self, height: int, width: int, batch_size: int) -> float:
        """The weight on the batch-mean energy ``mean_b E_b``: ``weight · c_crop · N_ref`` (or ``· N``)."""
        p = self.params
        images = p.reference_batch if p.reference_batch is not None else batch_size
        return p.weight * self.crop_factor(height, width) * images

    def forward(self, outputs: ModelOutputs, batch: Batch) -> dict[str, torch.Tensor]:
        p = self.params
        logits = outputs["logits"]
        target = batch["scribble"]
        pce = partial_cross_entropy(logits, target, self.ignore_index)
        full = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        mean_energy = dense_crf_loss(  # weight 1, "batch": the mean over images of E_b
            full.softmax(1),
            batch["image"].float() * 255.0,
            batch.get("valid"),
            sigma_rgb=p.sigma_rgb,
            sigma_xy=p.sigma_xy,
            scale=p.scale,
            weight=1.0,
            normalization="batch",
            backend=p.backend,
        )
        weight = self.crf_weight(target.shape[-2], target.shape[-1], target.shape[0])
        return {"pce": p.pce_weight * pce, "dense_crf": weight * mean_energy}
