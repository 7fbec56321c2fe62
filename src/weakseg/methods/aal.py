"""``aal``: single-stage image-level WSSS with an adaptive affinity (AA) loss and a label reassign (LR)
loss, **designed from the abstract** of Zhang et al., "Adaptive Affinity Loss and Erroneous Pseudo-Label
Refinement for Weakly Supervised Semantic Segmentation" (ACM MM 2021). Not a reproduction: the paper's
method section, equations, hyperparameters and code were not available; every concrete choice is ours
and listed in docs/aal.md.

One network (:class:`~weakseg.models.single_stage.SingleStageNetwork`: shared backbone, CAM
classification branch, segmentation head) trained end to end on image tags. One step:

1. ``cls`` = ``cls_weight ·`` multi-label soft margin loss of the image scores vs the foreground tags.
2. While ``step < cls_warmup · total_steps`` that is all (the segmentation terms are 0; ``seg`` keeps a
   zero-weighted path through the head so every parameter takes part in every step).
3. Otherwise a **pseudo mask** is made from the current CAMs, without gradient and on the device
   (:func:`weakseg.cam.pseudo_labels.cam_pseudo_labels`, the same rule and function as
   ``weakseg pseudo-labels``): max-normalised CAMs of the tagged classes at image size, a constant
   background score, confident foreground (``fg_threshold``) / confident background (``bg_threshold``)
   with an ignore band between them (or an uncertainty threshold without a background class), each map
   refined by the batched torch dense CRF (``crf_scale`` grid); crop padding is ignored.
4. ``seg`` = ``seg_weight ·`` cross-entropy of the (upsampled) segmentation logits vs the pseudo mask.
5. ``aa`` (``use_aa``) = ``aa_weight ·`` :func:`~weakseg.losses.affinity.adaptive_affinity_loss` on the
   segmentation embedding, with the pseudo mask sampled (nearest) onto its grid and per-pixel
   confidences from the CAMs (``aa_confidence``).
6. ``reassign`` (``use_lr``, the label reassign loss, from ``step >= lr_start · total_steps``) =
   ``lr_weight ·`` the cross-entropy of reassigned pixels toward their nearest class centre
   (:mod:`weakseg.losses.label_reassign`); those pixels leave ``seg``, so they are no longer pulled
   toward their old pseudo label. Not named ``lr``: that is the learning rate's log column.

The step has no host synchronisation (no ``.item()``, ``.cpu()`` or data-dependent Python branch).
Validation and inference use the segmentation logits (the engine's defaults: multi-scale + flip via
``eval.scales``/``eval.flip``); ``weakseg cam`` works on the checkpoint through the ``"cam"`` output.
The ladder baseline → +AA → +LR → both is ``method.use_aa`` / ``method.use_lr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from weakseg.cam.pseudo_labels import PseudoLabelParams, cam_pseudo_labels
from weakseg.data.sample import Batch
from weakseg.losses.affinity import adaptive_affinity_loss
from weakseg.losses.label_reassign import reassign_labels, reassigned_cross_entropy
from weakseg.losses.multilabel import multilabel_soft_margin_loss
from weakseg.losses.partial_ce import partial_cross_entropy
from weakseg.methods.base import Method, register_method
from weakseg.methods.cam import check_tag_variety
from weakseg.models.outputs import ModelOutputs
from weakseg.models.single_stage import create_single_stage
from weakseg.ops.class_maps import foreground_indices, insert_background
from weakseg.ops.resize import resize_nearest
from weakseg.postprocess.crf import CRFParams

__all__ = ["AAL", "AALParams"]

CRF_KINDS = ("torch", "none")


@dataclass
class AALParams:
    """AAL hyperparameters. The paper's values are unknown; each default is explained in docs/aal.md.

    Attributes:
        cls_weight, seg_weight: weights of the classification loss and of the pseudo-mask cross-entropy.
        aa_weight: weight of the AA loss (1.0, the design notes' starting point).
        lr_weight: weight of the LR loss (0.5: the reassigned targets are themselves uncertain, so a
            reassigned pixel counts half as much as a kept one; within the notes' 0.1-0.5 range).
        use_aa, use_lr: switch the two losses (the ablation ladder).
        cls_warmup: fraction of ``train.steps`` trained on the classification loss alone (0.25: CAMs of an
            ImageNet-initialised classifier are not worth a pseudo mask before that; 0 = jointly from step 0).
        lr_start: fraction of ``train.steps`` after which LR is on (0.5: class centres need a segmentation
            embedding trained for a while on pseudo masks; LR never starts before the segmentation terms).
        fg_threshold, bg_threshold: background scores of the confident-foreground and confident-background
            maps (IRN's 0.30 / 0.05, as ``weakseg pseudo-labels``); between them pixels are ignored.
        uncertain_threshold: datasets without a background class: pixels whose best tagged class scores no
            more than this are ignored.
        crf: "torch" (batched dense CRF on the device) or "none".
        crf_scale: the CRF runs on the image grid resized by this factor (0.25: the exact dense CRF costs
            O(N²) per iteration; bandwidths keep their meaning in image pixels).
        crf_iters: mean-field iterations (IRN/SFC's pseudo-label CRF: 12).
        aa_radius: pairs within ``|Δp|² < r²`` cells of the embedding grid (PSA's 5).
        aa_temperature: ``τ`` of the affinity ``exp(-(1 - cos) / τ)``.
        aa_group_weights: base weights of the background-positive, foreground-positive and negative
            pair groups (PSA's 1/4, 1/4, 1/2), renormalised over the groups present.
        aa_confidence: weight pairs by their pseudo labels' CAM confidence (``min`` of the two pixels).
        lr_margin: reassign only when the nearest centre beats the pixel's own class centre by more than
            this cosine margin (0: plain nearest centre).
    """

    cls_weight: float = 1.0
    seg_weight: float = 1.0
    aa_weight: float = 1.0
    lr_weight: float = 0.5
    use_aa: bool = True
    use_lr: bool = True
    cls_warmup: float = 0.25
    lr_start: float = 0.5
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    uncertain_threshold: float = 0.30
    crf: str = "torch"
    crf_scale: float = 0.25
    crf_iters: int = 12
    aa_radius: int = 5
    aa_temperature: float = 0.5
    aa_group_weights: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.5])
    aa_confidence: bool = True
    lr_margin: float = 0.0


def _check_params(p: AALParams) -> None:
    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"method.{key} = {getattr(p, key)!r}; expected {expected}")

    for key in ("cls_weight", "seg_weight", "aa_weight", "lr_weight", "lr_margin"):
        if getattr(p, key) < 0:
            raise bad(key, "a value >= 0")
    for key in ("cls_warmup", "lr_start"):
        if not 0.0 <= getattr(p, key) <= 1.0:
            raise bad(key, "a fraction of train.steps in [0, 1]")
    if not p.bg_threshold <= p.fg_threshold:
        raise bad("bg_threshold", f"<= method.fg_threshold ({p.fg_threshold})")
    if p.crf not in CRF_KINDS:
        raise bad("crf", f"one of {', '.join(CRF_KINDS)} (on-the-fly pseudo masks stay on the device)")
    if not 0.0 < p.crf_scale <= 1.0:
        raise bad("crf_scale", "a factor in (0, 1]")
    if p.crf_iters < 0:
        raise bad("crf_iters", "an integer >= 0")
    if p.aa_radius < 1:
        raise bad("aa_radius", "an integer >= 1 (grid cells)")
    if not p.aa_temperature > 0:
        raise bad("aa_temperature", "a positive number")
    if len(p.aa_group_weights) != 3 or min(p.aa_group_weights) < 0 or sum(p.aa_group_weights) <= 0:
        raise bad("aa_group_weights", "3 non-negative weights [bg_pos, fg_pos, neg], not all 0")


@register_method
class AAL(Method):
    """Single stage from tags: CAM pseudo masks every step train the segmentation branch, + AA and LR losses
    (designed from the abstract; terms ``cls``, ``seg``, ``aa``, ``reassign``; module doc)."""

    name = "aal"
    Params = AALParams
    requires = ("tags",)
    model_kind = "single_stage"
    fg_index: Tensor  # long [C]: the foreground classes' indices (a buffer)

    def __init__(self, params: AALParams, **kw: Any) -> None:
        super().__init__(params, **kw)
        _check_params(params)
        fg = foreground_indices(self.num_classes, self.background)
        self.num_foreground = len(fg)
        self.register_buffer("fg_index", torch.tensor(fg, dtype=torch.long), persistent=False)
        self.pseudo_params = PseudoLabelParams(
            fg_threshold=params.fg_threshold,
            bg_threshold=params.bg_threshold,
            uncertain_threshold=params.uncertain_threshold,
            crf=params.crf,  # type: ignore[arg-type]
            crf_params=CRFParams.pseudo_label(scale=params.crf_scale, num_iters=params.crf_iters),
        )

    @classmethod
    def build_model(cls, spec: Mapping[str, Any], **options: Any) -> nn.Module:
        """The :class:`~weakseg.models.single_stage.SingleStageNetwork` (shared backbone, CAM branch and
        segmentation head; :class:`~weakseg.methods.base.BuildsModel`)."""
        return create_single_stage(**options)

    def fit_dataset(self, dataset: Any, *, batch_size: int, progress: bool = True) -> dict[str, Any]:
        """Warn when the training tags hardly vary (:func:`~weakseg.methods.cam.check_tag_variety`, as
        ``cam`` and ``sfc``); returns ``{"dominant_tags": {class name: share}}``."""
        return {"dominant_tags": check_tag_variety(self.name, dataset, self.background, progress=progress)}

    # ------------------------------------------------------------------ schedule

    @property
    def segmentation_on(self) -> bool:
        """Past the classification-only warm-up (from :meth:`set_progress`)."""
        return self.step >= self.params.cls_warmup * self.total_steps

    @property
    def reassign_on(self) -> bool:
        """LR is switched on and past ``lr_start`` (and the classification warm-up)."""
        return (
            self.params.use_lr
            and self.segmentation_on
            and self.step >= self.params.lr_start * self.total_steps
        )

    # ------------------------------------------------------------------ pseudo masks

    @torch.no_grad()
    def pseudo_masks(self, outputs: ModelOutputs, batch: Batch) -> tuple[Tensor, Tensor]:
        """On-the-fly pseudo masks of the batch and each pixel's confidence, at image size.

        Returns:
            ``(labels, confidence)``: int64 ``[B, H, W]`` (255 = ignored) and float32 ``[B, H, W]`` in [0, 1]:
            the normalised CAM of the pixel's class, ``1 - max`` over the tagged classes for background,
            0 where ignored.
        """
        image = batch["image"]
        image_u8 = (image.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        labels, scores = cam_pseudo_labels(
            outputs["cam"],
            batch["tags"],
            image_u8,
            num_classes=self.num_classes,
            background=self.background,
            params=self.pseudo_params,
            valid=batch.get("valid"),
        )
        if self.background is None:
            per_class = scores
        else:
            per_class = insert_background(scores, 1.0 - scores.amax(dim=1, keepdim=True), self.background)
        labelled = labels != self.ignore_index
        index = labels.clamp(0, self.num_classes - 1)[:, None]
        confidence = per_class.gather(1, index)[:, 0].clamp(0.0, 1.0) * labelled
        return labels, confidence

    # ------------------------------------------------------------------ loss

    def forward(self, outputs: ModelOutputs, batch: Batch) -> dict[str, Tensor]:
        p = self.params
        logits = outputs["logits"]
        fg_tags = batch["tags"].index_select(1, self.fg_index.to(batch["tags"].device))
        losses = {"cls": p.cls_weight * multilabel_soft_margin_loss(outputs["cls_logits"], fg_tags)}
        zero = logits.new_zeros((), dtype=torch.float32)
        if not self.segmentation_on:  # classification warm-up: keep the head in the graph at weight 0
            losses["seg"] = 0.0 * logits.float().sum()
            if p.use_aa:
                losses["aa"] = zero
            if p.use_lr:
                losses["reassign"] = zero
            return losses

        labels, confidence = self.pseudo_masks(outputs, batch)
        embedding = outputs["embedding"]
        lr_term = zero
        if self.reassign_on:
            moved = reassign_labels(
                embedding,
                labels,
                num_classes=self.num_classes,
                ignore_index=self.ignore_index,
                margin=p.lr_margin,
            )
            kept, reassigned = reassigned_cross_entropy(logits, moved, self.ignore_index)
            losses["seg"] = p.seg_weight * kept
            lr_term = p.lr_weight * reassigned
        else:
            losses["seg"] = p.seg_weight * partial_cross_entropy(logits, labels, self.ignore_index)
        if p.use_aa:
            grid = tuple(embedding.shape[-2:])
            grid_labels = resize_nearest(labels, grid)
            grid_conf = resize_nearest(confidence, grid) if p.aa_confidence else None
            losses["aa"] = p.aa_weight * adaptive_affinity_loss(
                embedding,
                grid_labels,
                radius=p.aa_radius,
                background=self.background,
                ignore_index=self.ignore_index,
                confidence=grid_conf,
                group_weights=p.aa_group_weights,
                temperature=p.aa_temperature,
            )
        if p.use_lr:
            losses["reassign"] = lr_term
        return losses
