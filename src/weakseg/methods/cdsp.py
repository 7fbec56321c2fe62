"""``cdsp``: Class-Driven Scribble Promotion (scribbles + CAM pseudo-labels made from the scribbles' tags).

One training step, ``L = L_segs + L_segc + L_lorm + L_ds + L_dc`` (all weights 1, as the authors' script):

1. ``segs``: partial cross-entropy on the scribbled pixels;
2. ``segc``: cross-entropy with label smoothing ε = 0.1 on the pseudo-label (255 = uncertain, ignored);
3. ``lorm``: the localization rectification module (:class:`~weakseg.models.lorm.LoRM`, method-owned)
   on the deepest backbone level ``F``: ``F̂ = δ · M ⊙ attention(q̂, k̂, F)`` with ``M`` the pseudo-label
   foreground resized to the feature grid by nearest neighbour (the authors' code interpolates the label
   ids bilinearly and thresholds > 0; nearest is the clean reading), MSE(F, F̂) reduced as the authors'
   code does (``method.lorm_reduction``);
4. ``ds`` / ``dc``: the distance entropy loss with the scribble map ``d_s`` (λ_s) and the pseudo-label
   boundary map ``d_c`` (λ_c), see :mod:`weakseg.data.distance_maps`; the maps are computed on each
   untransformed training sample and follow its augmentations (:meth:`CDSP.dataset_maps`).

Two readings are switches (defaults first): ``lorm_mask="query"`` masks LoRM's query rows as the authors'
code does, ``"key"`` masks the keys as the text of the paper's Eq. 11 says; ``uncertain="ignore"`` leaves
uncertain pseudo-label pixels (255) out of ``L_segc`` as the paper describes, ``"background"`` trains them
as background, which the authors' LoRM runs did (their LoRM sets the shared label tensor's 255 to 0 in
place before the loss reads it). Crop padding stays ignored in both.

Defaults are the paper's ablation setting (λ_s = 1, λ_c = 6, ResNet-50 + DeepLabV2); its best setting
(ResNet-101 + DeepLabV3+) uses λ_s = 2, λ_c = 7. ``lorm=false`` and ``distance_entropy=false`` give the
ablations; ``pseudo_weight=0`` / ``scribble_weight=0`` the single-source baselines.

Pseudo-labels come from the image-level pipeline on tags taken from the scribbles
(``data.tags=scribbles`` → ``weakseg train`` a ``cam``/``sfc`` config → ``weakseg cam`` →
``weakseg pseudo-labels``) or from any folder of label PNGs (``data.pseudo_dir``). See ``docs/cdsp.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor, nn

from weakseg.data.distance_maps import BoundaryDistanceMap, ScribbleDistanceMap
from weakseg.data.sample import Batch
from weakseg.losses.distance_entropy import distance_entropy_loss
from weakseg.losses.feature_rectification import LORM_REDUCTIONS, lorm_loss
from weakseg.losses.partial_ce import partial_cross_entropy
from weakseg.methods.base import Method, register_method
from weakseg.models.lorm import LORM_MASK_AXES, LoRM
from weakseg.models.outputs import ModelOutputs
from weakseg.ops.resize import resize_nearest

if TYPE_CHECKING:
    from weakseg.models.segmentor import Segmentor

SCRIBBLE_MAP, BOUNDARY_MAP = "dist_scribble", "dist_pseudo"
UNCERTAIN_READINGS = ("ignore", "background")


@dataclass
class CDSPParams:
    scribble_weight: float = 1.0  # L_segs, partial CE on scribbles
    pseudo_weight: float = 1.0  # L_segc, CE on the pseudo-label
    label_smoothing: float = 0.1  # ε of L_segc (paper)
    lorm: bool = True  # the localization rectification module
    lorm_weight: float = 1.0
    lorm_reduction: str = "authors"  # "authors": Σ(F−F̂)²/#nonzero over all positions; "foreground": fg mean
    lorm_level: int = -1  # backbone level LoRM reads (-1 = deepest, C = 2048 on ResNet)
    lorm_mask: str = "query"  # "query": M masks rows (the authors' code); "key": M masks keys (Eq. 11's text)
    uncertain: str = (
        "ignore"  # pseudo-label 255 in L_segc: "ignore" (the paper) or "background" (authors' runs)
    )
    distance_entropy: bool = True  # L_ds + L_dc
    lambda_s: float = 1.0  # scribble map multiplier sqrt(e^λ_s) (paper: 1 in the ablations, 2 best)
    lambda_c: float = 6.0  # boundary map multiplier sqrt(e^λ_c) (paper: 6 in the ablations, 7 best)
    scribble_entropy_weight: float = 1.0  # L_ds
    boundary_entropy_weight: float = 1.0  # L_dc


@register_method
class CDSP(Method):
    """Scribbles + pseudo-labels, LoRM and the distance entropy losses (see the module docstring)."""

    name = "cdsp"
    Params = CDSPParams
    requires = ("scribble", "pseudo")

    def __init__(self, params: CDSPParams, **kw: Any):
        super().__init__(params, **kw)
        if params.lorm_reduction not in LORM_REDUCTIONS:
            raise ValueError(
                f"method.lorm_reduction is {params.lorm_reduction!r}; expected one of {LORM_REDUCTIONS}"
            )
        if params.lorm_mask not in LORM_MASK_AXES:
            raise ValueError(f"method.lorm_mask is {params.lorm_mask!r}; expected one of {LORM_MASK_AXES}")
        if params.uncertain not in UNCERTAIN_READINGS:
            raise ValueError(
                f"method.uncertain is {params.uncertain!r}; expected one of {UNCERTAIN_READINGS}"
            )
        if params.uncertain == "background" and self.background is None:
            raise ValueError("method.uncertain=background needs a background class; this dataset has none")
        self.lorm: LoRM | None = None

    def dataset_maps(self) -> dict[str, Any]:
        if not self.params.distance_entropy:
            return {}
        bg, ignore = self.background, self.ignore_index
        return {
            SCRIBBLE_MAP: ScribbleDistanceMap(self.params.lambda_s, bg, ignore),
            BOUNDARY_MAP: BoundaryDistanceMap(self.params.lambda_c, bg, ignore),
        }

    def setup(self, model: Segmentor) -> None:
        """Build LoRM with the width of the backbone level it reads (before the optimiser exists)."""
        if self.params.lorm:
            channels = model.backbone.channels
            level = self.params.lorm_level
            if not -len(channels) <= level < len(channels):
                raise ValueError(f"method.lorm_level={level} but the backbone has {len(channels)} levels")
            self.lorm = LoRM(int(channels[level]), mask_axis=self.params.lorm_mask)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The method's own parameters, LoRM's projections: group "method"."""
        return {"method": list(self.parameters())}

    def foreground(self, pseudo: Tensor, size: tuple[int, int]) -> Tensor:
        """LoRM's row mask ``M``: ``[B, H, W]`` pseudo-label → bool ``[B, h, w]`` (nearest resize);
        foreground = neither background nor ignored (every labelled pixel without a background class)."""
        small = resize_nearest(pseudo, size)
        keep = small != self.ignore_index
        return keep if self.background is None else keep & (small != self.background)

    def pseudo_target(self, pseudo: Tensor, valid: Tensor | None) -> Tensor:
        """``L_segc``'s target ``[B, H, W]``: the pseudo-label, with uncertain pixels inside the image set to
        background when ``uncertain="background"``."""
        if self.params.uncertain == "ignore":
            return pseudo
        uncertain = pseudo == self.ignore_index
        if valid is not None:
            uncertain &= valid
        assert self.background is not None  # __init__ rejects uncertain="background" without one
        return pseudo.masked_fill(uncertain, int(self.background))

    def forward(self, outputs: ModelOutputs, batch: Batch) -> dict[str, Tensor]:
        p = self.params
        logits, pseudo = outputs["logits"], batch["pseudo"]
        target = self.pseudo_target(pseudo, batch.get("valid"))
        terms = {
            "segs": p.scribble_weight * partial_cross_entropy(logits, batch["scribble"], self.ignore_index),
            "segc": p.pseudo_weight
            * partial_cross_entropy(logits, target, self.ignore_index, label_smoothing=p.label_smoothing),
        }
        if p.lorm:
            if self.lorm is None:
                raise RuntimeError("cdsp: LoRM is not built; call method.setup(model) before training")
            feats = outputs["features"][p.lorm_level]
            mask = self.foreground(pseudo, feats.shape[-2:])
            terms["lorm"] = p.lorm_weight * lorm_loss(feats, self.lorm(feats, mask), mask, p.lorm_reduction)
        if p.distance_entropy:
            for term, key, weight in (
                ("ds", SCRIBBLE_MAP, p.scribble_entropy_weight),
                ("dc", BOUNDARY_MAP, p.boundary_entropy_weight),
            ):
                distances = cast(Mapping[str, Tensor], batch).get(key)  # a sample map: not a Batch key
                if distances is None:
                    raise KeyError(f"cdsp: batch has no '{key}' map; the engine attaches CDSP.dataset_maps()")
                terms[term] = weight * distance_entropy_loss(logits, distances)
        return terms


__all__ = ["CDSP", "CDSPParams"]
