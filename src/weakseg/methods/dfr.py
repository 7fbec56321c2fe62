"""``dfr``: Dynamic Feature Regularized loss (Zhang, Xiao, Zhao; arXiv 2108.01296 / Pattern Recognition 2025).

**Built from the paper's abstract, not a reproduction.** The abstract states: partial cross-entropy on
scribbles plus a regularized loss whose kernel uses shallow static features (colour, position) and deep
features that are updated during training; a feature consistency head, trained on pairwise feature
relationships, supplies the deep features; everything trains end to end in one stage. The method section,
equations, hyperparameters and code were not available, so every concrete choice below is our design; each
is a config value, listed with its reason in ``docs/dfr.md`` (which also gives the ablation ladder).

One training step (``S`` = softmax of the logits; grids are fractions of the input size):

1. ``pce``: partial cross-entropy on scribbled pixels.
2. ``consistency`` (with ``consistency_head``): the method-owned :class:`FeatureConsistencyHead` maps a
   segmentor feature (``feature_source``), resampled to the deep grid (``1 / deep_stride``), to unit
   embeddings ``f``; :func:`pairwise_consistency_loss` fits ``sigmoid(t f_i . f_j)`` to "same label" with
   labels from scribbles, else from confident **detached** predictions.
3. ``reg_*``: the normalised Potts regularizer :func:`dfr_regularized_loss` with the shallow RGB+XY kernel
   and, once the warm-up is over, a deep kernel on **detached** unit features: the head's output
   (``deep_kernel="dynamic"`` with the head), the segmentor's own current features (``"dynamic"`` without
   the head) or a frozen copy of the ImageNet-initialised backbone (``"frozen"``).

The two stop-gradients rule out degenerate joint minima: the regularizer cannot lower itself by pushing
embeddings apart (it never reaches ``f``), and the consistency loss cannot move the predictions that
define its own targets. The consistency loss does reach the segmentor trunk through the head's input when
``head_input_grad`` (the default), never the classifier, which lies after the embedding.

Engine hooks (optional): :meth:`DFR.setup` (``model``, before the optimiser and any checkpoint is loaded)
sizes the head and, for ``"frozen"``, copies the backbone; :meth:`DFR.set_progress` (``step``, ``total``,
before each step) drives the warm-up. Without ``set_progress`` the method behaves as after the warm-up.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from weakseg.data.sample import Batch
from weakseg.losses.feature_consistency import consistency_labels, labels_to_grid, pairwise_consistency_loss
from weakseg.losses.normalized_potts import (
    KERNEL_COMBINATIONS,
    KERNEL_MODES,
    dfr_regularized_loss,
    unit_features_on_grid,
)
from weakseg.losses.partial_ce import partial_cross_entropy
from weakseg.methods.base import Method, register_method
from weakseg.models.consistency_head import FeatureConsistencyHead
from weakseg.models.outputs import ModelOutputs
from weakseg.ops.resize import resize_area, resize_mask, scaled_size

if TYPE_CHECKING:
    from weakseg.models.segmentor import Segmentor

DEEP_KERNELS = ("none", "frozen", "dynamic")
#: ``reg_weight`` at which DFR's shallow term pulls as hard, relative to the cross-entropy, as rloss's
#: release with its batch-12 averaging (12 x the per-image match 0.4; see ``DFRParams.reg_weight``).
RLOSS_BATCH_BALANCE_REG_WEIGHT = 4.8
FEATURE_SOURCES = ("embedding", "backbone")


@dataclass
class DFRParams:
    """DFR hyperparameters (our design from the abstract; reasons in ``docs/dfr.md``).

    Attributes:
        pce_weight: weight of partial cross-entropy (1, the anchor every scribble method shares).
        reg_weight: ``lambda_reg`` on each regularizer term. The terms are normalised to a disagreement
            probability in [0, 1), so the gradient per pixel is ``~2 lambda / N``. 0.4 pulls one image
            like rloss's weight 2e-9 pulls one image (512x512 VOC crops, measured ratio 0.32-0.40,
            ``docs/dfr.md``).
            rloss's release also divides its cross-entropy by its batch of 12, which makes its CRF 12x
            stronger relative to the cross-entropy; :data:`RLOSS_BATCH_BALANCE_REG_WEIGHT` (4.8 = 12 x 0.4)
            carries that factor over. We measured both (``benchmarks/scribble_ladder.py``): at 4.8 DFR
            collapses on the 21 classes of voc-real (val mIoU 0.088, 15 classes below 0.02 IoU, against
            pCE's 0.338) and trails 0.4 on ACDC by 0.014 Dice over two seeds. DFR's authors publish no
            weight, so the default is the per-image match 0.4.
        sigma_rgb: colour bandwidth of the shallow kernel, 0..255 units (15, rloss / RRM).
        sigma_xy: spatial bandwidth of the shallow kernel in original-image pixels (100, rloss / RRM).
        shallow_scale: the shallow kernel runs on the image resized by this factor (0.5, rloss / RRM).
        shallow_mode: ``"dense"`` (every pair, exact and O(N) memory through fused attention) or ``"local"``.
        shallow_radius: window radius in grid cells for ``shallow_mode="local"``.
        shallow_backend: dense shallow kernel through the exact fused kernel (``"exact"``), the
            permutohedral lattice (``"lattice"``, linear in the grid size; what the RRM / rloss code of
            DFR's authors runs) or ``"auto"`` (the default: the lattice from ~2,300 grid cells on a CPU,
            see :func:`weakseg.ops.lattice.choose_backend`). The loss is normalised by the kernel's
            mass, so the lattice's lower overall scale cancels and the backends give the same balance.
        deep_kernel: ``"none"`` (shallow kernel only, ~rloss), ``"frozen"`` (ImageNet backbone features,
            never updated), ``"dynamic"`` (features of the network being trained: DFR).
        consistency_head: train the feature consistency head and, with ``"dynamic"``, take the deep
            features from it (the abstract's head "to provide accurate deep features"); False with
            ``"dynamic"`` uses the segmentor's own feature (``feature_source``), detached.
        kernel_combination: ``"sum"`` (``E_shallow + beta E_deep``: a pair that is similar in either
            space is pulled together; "aggregate sufficient information") or ``"product"`` (a pair must be
            similar in both; one kernel on concatenated features, on the deep grid).
        deep_weight: ``beta`` of the sum; both energies are normalised, so 1 weighs them equally.
        sigma_deep: bandwidth on unit vectors: ``W = exp(-(1 - cos) / sigma^2)``; 0.5 gives 0.67 at cos 0.9,
            0.14 at cos 0.5 and 0.02 at cos 0, a soft same-class indicator.
        deep_stride: input pixels per cell of the deep grid, where the head runs and the deep kernel and the
            consistency loss are evaluated (8: 64x64 = 4096 cells for a 512 crop, cheap for a dense kernel).
        deep_mode: ``"dense"`` (every pair: deep features relate distant pixels of one object) or ``"local"``.
        deep_radius: window radius in deep-grid cells for ``deep_mode="local"``.
        feature_source: what the head (or the head-less dynamic kernel) reads: ``"embedding"`` (the decoder's
            last hidden map: semantic and high resolution) or ``"backbone"`` (level ``feature_level``).
        feature_level: backbone level index (negative counts from the deepest) for ``feature_source=
            "backbone"`` and for ``deep_kernel="frozen"`` (2: stride 16, mid-level ImageNet features).
        head_input_grad: let the consistency loss reach the segmentor through the head's input (True: the
            head and the segmentor "benefit from each other"); False trains the head alone.
        head_hidden: width of the head's hidden 3x3 layers (256).
        head_dim: embedding dimension ``d`` of the head (64).
        head_convs: number of hidden 3x3 conv + BN + ReLU layers (2).
        consistency_weight: ``lambda_fc`` of the consistency loss (0.1, a usual auxiliary-loss weight; the
            loss is a balanced BCE of order 0.1-0.7).
        consistency_samples: pixels ``M`` sampled per image for the ``M x M`` pairs (1024: ~1M pairs).
        consistency_temperature: ``t`` in ``sigmoid(t f_i . f_j)`` (10: probabilities 0.99995 / 4.5e-5 at cos
            +-1, so both targets are reachable).
        confidence_threshold: a prediction labels its pixel for the consistency loss when its max probability
            exceeds this (0.9); scribbles always do.
        warmup_fraction: the deep kernel is switched on after this fraction of training (0.1): early
            features are not yet meaningful. The consistency head trains from the first step.
    """

    pce_weight: float = 1.0
    reg_weight: float = 0.4
    sigma_rgb: float = 15.0
    sigma_xy: float = 100.0
    shallow_scale: float = 0.5
    shallow_mode: str = "dense"
    shallow_radius: int = 5
    shallow_backend: str = "auto"
    deep_kernel: str = "dynamic"
    consistency_head: bool = True
    kernel_combination: str = "sum"
    deep_weight: float = 1.0
    sigma_deep: float = 0.5
    deep_stride: int = 8
    deep_mode: str = "dense"
    deep_radius: int = 8
    feature_source: str = "embedding"
    feature_level: int = 2
    head_input_grad: bool = True
    head_hidden: int = 256
    head_dim: int = 64
    head_convs: int = 2
    consistency_weight: float = 0.1
    consistency_samples: int = 1024
    consistency_temperature: float = 10.0
    confidence_threshold: float = 0.9
    warmup_fraction: float = 0.1


def _check_params(p: DFRParams) -> None:
    choices = {
        "deep_kernel": (p.deep_kernel, DEEP_KERNELS),
        "kernel_combination": (p.kernel_combination, KERNEL_COMBINATIONS),
        "shallow_mode": (p.shallow_mode, KERNEL_MODES),
        "deep_mode": (p.deep_mode, KERNEL_MODES),
        "feature_source": (p.feature_source, FEATURE_SOURCES),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"method.{key} is '{value}'; expected one of {', '.join(allowed)}")
    if p.consistency_head and p.deep_kernel == "frozen":
        raise ValueError("method.consistency_head=true needs deep_kernel 'dynamic' (or 'none'), not 'frozen'")
    positive = {
        "sigma_rgb": p.sigma_rgb,
        "sigma_xy": p.sigma_xy,
        "sigma_deep": p.sigma_deep,
        "shallow_scale": p.shallow_scale,
        "deep_stride": p.deep_stride,
        "consistency_samples": p.consistency_samples,
        "head_dim": p.head_dim,
    }
    for key, number in positive.items():
        if number <= 0:
            raise ValueError(f"method.{key} must be positive, got {number}")
    if not 0.0 <= p.warmup_fraction <= 1.0:
        raise ValueError(f"method.warmup_fraction must lie in [0, 1], got {p.warmup_fraction}")


@register_method
class DFR(Method):
    """DFR built from the abstract: pCE + shallow/deep-kernel regularized loss + feature consistency head.

    Not a reproduction of the authors' code (unpublished); see the module docstring and ``docs/dfr.md``.
    Returned terms: ``pce``, ``reg_shallow`` and ``reg_deep`` (``"sum"``; ``reg_deep`` is 0 during the
    warm-up, absent with ``deep_kernel="none"``) or ``reg`` (``"product"``), and ``consistency`` (with the
    head), each already weighted.
    """

    name = "dfr"
    Params = DFRParams
    requires = ("scribble",)

    def __init__(self, params: DFRParams, **kw: Any) -> None:
        super().__init__(params, **kw)
        _check_params(params)
        self.head: FeatureConsistencyHead | None = None
        if params.consistency_head:
            self.head = FeatureConsistencyHead(
                None, hidden=params.head_hidden, out_dim=params.head_dim, num_convs=params.head_convs
            )
        self.frozen_backbone: nn.Module | None = None
        self.register_buffer("frozen_mean", None, persistent=False)
        self.register_buffer("frozen_std", None, persistent=False)
        self._progress: float | None = None
        self._warned_no_progress = False

    # ------------------------------------------------------------------ engine hooks

    def setup(self, model: Segmentor) -> None:
        """Bind to the segmentor before the optimiser is built (and before a checkpoint is loaded).

        Sizes the lazy first layer of the consistency head from the chosen feature's width (so no
        uninitialised parameter reaches the optimiser or DDP) and, for ``deep_kernel="frozen"``, keeps a
        frozen copy of ``model.backbone`` (still ImageNet-initialised at this point; part of the method's
        state, so a resumed run restores it from the checkpoint) with the model's input normalisation.
        """
        p = self.params
        if self.head is not None:
            if p.feature_source == "embedding":
                channels = int(model.embed_dim)
            else:
                channels = int(model.backbone.channels[self._level_index(len(model.backbone.channels))])
            self.head.materialize(channels)
        if p.deep_kernel == "frozen":
            self._level_index(len(model.backbone.channels))
            self.frozen_backbone = copy.deepcopy(model.backbone).requires_grad_(False).eval()
            self.frozen_mean = model.mean.detach().clone()
            self.frozen_std = model.std.detach().clone()

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The method's own parameters, group "method": the consistency head (and the frozen backbone
        copy, which does not train)."""
        return {"method": list(self.parameters())}

    def set_progress(self, step: int, total_steps: int) -> None:
        """Training progress before step ``step`` (0-based) of ``total_steps``; drives the warm-up."""
        super().set_progress(step, total_steps)
        self._progress = step / max(int(total_steps), 1)

    def deep_kernel_active(self) -> bool:
        """Whether the deep kernel enters the regularizer at this step (after the warm-up).

        If :meth:`set_progress` was never called the progress is unknown and the deep kernel is on (a
        warning says so once): a silent fall-back to the shallow kernel alone would hide DFR's mechanism.
        """
        p = self.params
        if p.deep_kernel == "none":
            return False
        if self._progress is None:
            if p.warmup_fraction > 0 and not self._warned_no_progress and self.training:
                warnings.warn(
                    "dfr: set_progress() was never called, so the warm-up is skipped (deep kernel on from "
                    "the first step)",
                    stacklevel=3,
                )
                self._warned_no_progress = True
            return True
        return self._progress >= p.warmup_fraction

    def train(self, mode: bool = True) -> DFR:
        super().train(mode)
        if self.frozen_backbone is not None:
            self.frozen_backbone.eval()  # fixed statistics, no dropout: the features never change
        return self

    # ------------------------------------------------------------------ the loss

    def forward(self, outputs: ModelOutputs, batch: Batch) -> dict[str, Tensor]:
        """``outputs``: the segmentor's dict; ``batch``: "image", "scribble", optional "valid"."""
        p = self.params
        logits, image, scribble = outputs["logits"], batch["image"], batch["scribble"]
        valid = batch.get("valid")
        terms = {"pce": p.pce_weight * partial_cross_entropy(logits, scribble, self.ignore_index)}
        probs = logits.float().softmax(dim=1)
        size = scaled_size(image.shape[-2:], 1.0 / p.deep_stride)
        active = self.deep_kernel_active()

        deep: Tensor | None = None
        if self.head is not None:
            embeddings = self.consistency_embeddings(outputs, size)
            terms["consistency"] = p.consistency_weight * self.consistency_loss(
                embeddings, probs, scribble, valid
            )
            if p.deep_kernel == "dynamic":
                deep = embeddings.detach()
        elif p.deep_kernel == "dynamic" and active:
            deep = unit_features_on_grid(self._source_feature(outputs).detach(), size)
        elif p.deep_kernel == "frozen" and active:
            deep = self._frozen_features(image, size)

        reg = dfr_regularized_loss(
            probs,
            image,
            valid,
            deep if active else None,
            combination=p.kernel_combination,
            beta=p.deep_weight,
            sigma_rgb=p.sigma_rgb,
            sigma_xy=p.sigma_xy,
            sigma_deep=p.sigma_deep,
            shallow_scale=p.shallow_scale,
            shallow_mode=p.shallow_mode,
            shallow_radius=p.shallow_radius,
            shallow_backend=p.shallow_backend,
            deep_mode=p.deep_mode,
            deep_radius=p.deep_radius,
        )
        if p.kernel_combination == "product" and p.deep_kernel != "none":
            terms["reg"] = p.reg_weight * sum(reg.values())  # shallow alone during the warm-up
        else:
            terms["reg_shallow"] = p.reg_weight * reg["shallow"]
            if p.deep_kernel != "none":
                terms["reg_deep"] = p.reg_weight * reg["deep"] if "deep" in reg else probs.new_zeros(())
        return terms

    def consistency_embeddings(self, outputs: ModelOutputs, size: tuple[int, int]) -> Tensor:
        """Unit embeddings ``[B, head_dim, h, w]`` of the consistency head on the deep grid ``size``.

        The head reads the source feature resampled to the grid (so it runs at the grid's cost); the
        input is detached unless ``head_input_grad``.
        """
        assert self.head is not None
        x = self._source_feature(outputs)
        if not self.params.head_input_grad:
            x = x.detach()
        return self.head(resize_area(x, size))

    def consistency_loss(
        self, embeddings: Tensor, probs: Tensor, scribble: Tensor, valid: Tensor | None
    ) -> Tensor:
        """Unweighted pairwise consistency loss on the grid of ``embeddings`` (targets carry no gradient)."""
        p = self.params
        size = tuple(embeddings.shape[-2:])
        with torch.no_grad():
            labels, from_scribble = consistency_labels(
                resize_area(probs.detach(), size),
                labels_to_grid(scribble, size, self.num_classes, self.ignore_index),
                resize_mask(valid, size),
                threshold=p.confidence_threshold,
                ignore_index=self.ignore_index,
            )
        return pairwise_consistency_loss(
            embeddings,
            labels,
            num_samples=p.consistency_samples,
            temperature=p.consistency_temperature,
            priority=from_scribble,
        )

    # ------------------------------------------------------------------ feature access

    def _level_index(self, num_levels: int) -> int:
        level = self.params.feature_level
        if not -num_levels <= level < num_levels:
            raise ValueError(
                f"method.feature_level {level} is out of range for a {num_levels}-level backbone"
            )
        return level

    def _source_feature(self, outputs: ModelOutputs) -> Tensor:
        """The segmentor feature named by ``feature_source`` (``[B, C, h, w]``, with its gradient)."""
        if self.params.feature_source == "embedding":
            return outputs["embedding"]
        levels = outputs["features"]
        return levels[self._level_index(len(levels))]

    @torch.no_grad()
    def _frozen_features(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        """Unit features of the frozen ImageNet backbone at ``feature_level`` on the grid ``size``."""
        if self.frozen_backbone is None:
            raise RuntimeError(
                "dfr: deep_kernel='frozen' needs DFR.setup(model) before training, to copy the "
                "ImageNet-initialised backbone"
            )
        levels = self.frozen_backbone((image.float() - self.frozen_mean) / self.frozen_std)
        return unit_features_on_grid(levels[self._level_index(len(levels))], size)
