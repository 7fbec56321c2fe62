"""Pseudo-labels from CAMs: SFC's IR-label rule with uncertain pixels left out, refined by a dense CRF.

**Combined CAM.** ``M = Σ_k w_k M_k / Σ_k w_k`` over the stored CAM types
(:func:`weakseg.cam.seeds.combine_cams`; default weights per rule, :func:`~weakseg.cam.seeds.choose_weights`:
the raw classifier CAM ``cam`` for rule "irn", ``M_W + 0.7·M_P`` for rule "sfc", i.e.
``--weights M_W=1 M_P=0.7``). The scale of the sum does not change the arg-max below, but it does change
what a threshold means, so the thresholds here apply to the weighted mean in [0, 1].

**With a background class**, rule "irn" (IRN's ``cam_to_ir_label``):

1. confident foreground: arg-max over ``[t_fg, M_1 … M_n]`` (a constant background score beside
   the tagged classes' maps), refined by the CRF -> map F (0 = background);
2. confident background: the same with the lower score ``t_bg`` -> map G;
3. the label is F's class where F is foreground; background where F and G are both background;
   255 (ignore) where F says background but G foreground.

IRN's defaults ``t_fg = 0.30`` and ``t_bg = 0.05`` are used. Rule "sfc" (SFC.md §4 "IR labels", SFC's
``cam2ir.py``) replaces the constants by the maps' own background: scores as ``make_cam`` biases them
(background ``B + 0.4``, foreground ``2 M``, :func:`~weakseg.cam.seeds.sfc_scores`), F is the arg-max
over ``[B + 0.4, 2 M_1 … 2 M_n]`` and G the arg-max with the background ``x bg_scale`` (0.5); step 3 is
the same.

**Without a background class** (every class is a foreground class, e.g. CamVid, MSRC) there is no
background to be confident about: the label is the arg-max over ``[t_u, M_1 … M_n]`` refined by the
CRF, and pixels won by the constant ``t_u`` (no tagged class scores above it) are 255 (uncertain).
Both rules do this (SFC's code has no such case; its biases change no arg-max among classes).

**CRF.** ``crf="torch"`` is :func:`weakseg.postprocess.crf.dense_crf` on a label unary
(pydensecrf's ``unary_from_labels`` with ``gt_prob`` 0.7, as ``crf_inference_label``), batched over
both maps of several images on the GPU; ``"pydensecrf"`` runs the same through
:func:`~weakseg.postprocess.crf.pydensecrf_reference` (CPU); ``"none"`` keeps the raw arg-max maps.
Images with fewer tagged classes than others in a batch get extra label channels with a huge
energy, which never win and send no messages, so each image's CRF is the one it would have alone.

**One implementation, offline and on the fly.** :func:`batched_ir_labels` applies the rule to a batch
in *slot* layout (``[B, S, H, W]`` maps, the class of every slot, which slots are used), on the
device and without host synchronisation. :func:`ir_labels` (the offline tool,
:func:`weakseg.tools.pseudo_dataset.make_pseudo_labels`) packs each image's
tagged classes into the first slots; :func:`cam_pseudo_labels` (single-stage training, e.g. ``aal``)
turns a network's raw CAMs into one slot per foreground class, unused where the class is not tagged
(on a CPU it then packs the tagged ones into the fewest slots, which cuts the CRF's labels from all
classes to the batch's largest tag count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.cam.seeds import (
    RULES,
)
from weakseg.ops.class_maps import foreground_indices, max_normalize
from weakseg.postprocess.crf import CRFParams, dense_crf, pydensecrf_reference

__all__ = [
    "PseudoLabelParams",
    "batched_ir_labels",
    "cam_pseudo_labels",
    "ir_labels",
]

IGNORE_INDEX = 255
CrfKind = Literal["torch", "pydensecrf", "none"]
_PAD_ENERGY = 1e4  # unary of padding label channels: exp(-1e4) = 0, so they never win


@dataclass(frozen=True)
class PseudoLabelParams:
    """Thresholds and refinement of :func:`ir_labels` (see the module doc).

    Attributes:
        fg_threshold: rule "irn": background score for the confident-foreground map (IRN's conf_fg_thres).
        bg_threshold: rule "irn": background score for the confident-background map (IRN's conf_bg_thres).
        uncertain_threshold: datasets without background: pixels whose best tagged class scores
            no more than this are uncertain (255).
        crf: "torch", "pydensecrf" or "none".
        crf_params: dense-CRF settings (default IRN/SFC's ``crf_inference_label``).
        rule: "irn" (constant background scores) or "sfc" (the maps' own backgrounds, ``cam2ir.py``).
        bg_scale: rule "sfc": the own background is multiplied by this for the confident-background map.
    """

    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    uncertain_threshold: float = 0.30
    crf: CrfKind = "torch"
    crf_params: CRFParams = field(default_factory=CRFParams.pseudo_label)
    rule: str = "irn"
    bg_scale: float = 0.5

    def __post_init__(self) -> None:
        if self.crf not in ("torch", "pydensecrf", "none"):
            raise ValueError(f"crf must be 'torch', 'pydensecrf' or 'none', got {self.crf!r}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not 0.0 <= self.bg_scale <= 1.0:
            raise ValueError(f"bg_scale must lie in [0, 1] (it lowers the background), got {self.bg_scale}")
        if not self.bg_threshold <= self.fg_threshold:
            raise ValueError(
                f"bg_threshold ({self.bg_threshold}) must not exceed fg_threshold ({self.fg_threshold}): "
                "the confident-background map must mark more foreground than the confident-foreground map"
            )


# --------------------------------------------------------------------------------------------------
# The labelling rule
# --------------------------------------------------------------------------------------------------
def _argmax_with_constant(cams: torch.Tensor, score: float | torch.Tensor) -> torch.Tensor:
    """Arg-max over ``[score, slots…]`` of ``[N, S, H, W]`` maps -> int64 ``[N, H, W]`` in 0..S (0 where
    no slot beats ``score``; ties go to the lower index as ``np.argmax`` does). Unused slots hold -inf.
    ``score`` is a constant or a per-pixel background score ``[N, H, W]``."""
    if cams.shape[1] == 0:
        return torch.zeros((cams.shape[0], *cams.shape[-2:]), dtype=torch.long, device=cams.device)
    peak, arg = cams.max(dim=1)
    return torch.where(peak > score, arg + 1, torch.zeros_like(arg))


def _slot_label_unary(labels: torch.Tensor, present: torch.Tensor, gt_prob: float) -> torch.Tensor:
    """The CRF unary of label maps over slots, pydensecrf's ``unary_from_labels`` for each image's own
    label count, batched: ``[N, H, W]`` labels in 0..S (0 = the background / uncertain label) and
    ``[N, S]`` used slots -> fp32 ``[N, S + 1, H, W]`` energies.

    An image with ``n`` used slots has ``n + 1`` labels: its label gets ``-log(gt_prob)``, its other
    labels ``-log((1 - gt_prob) / n)``, and unused slots ``_PAD_ENERGY`` (their marginal is exactly 0,
    so they never win and send no messages: the CRF is the one the image would have alone).
    """
    n, s = present.shape
    real_labels = present.sum(1, dtype=torch.float64) + 1.0  # [N]
    off = (-torch.log((1.0 - gt_prob) / (real_labels - 1.0).clamp_min(1.0))).float()
    on = off.new_full((), -math.log(gt_prob))
    chosen = F.one_hot(labels, s + 1).permute(0, 3, 1, 2).bool()
    unary = torch.where(chosen, on, off[:, None, None, None])
    used = torch.cat([present.new_ones(n, 1), present], dim=1)[:, :, None, None]
    return torch.where(used, unary, torch.full_like(unary, _PAD_ENERGY))


def batched_ir_labels(
    cams: torch.Tensor,
    classes: torch.Tensor,
    present: torch.Tensor,
    images: torch.Tensor,
    *,
    background: int | None,
    params: PseudoLabelParams = PseudoLabelParams(),
    valid: torch.Tensor | None = None,
    bg_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """The pseudo-label rule of the module doc on a batch in *slot* layout, all on the maps' device.

    This is the one implementation behind both the offline tool (:func:`ir_labels`, which packs each
    image's tagged classes into the first slots) and on-the-fly pseudo masks during training
    (:func:`cam_pseudo_labels`: one slot per foreground class, or on a CPU the tagged ones packed). It
    has no host synchronisation (no ``.item()``/``.cpu()``, no data-dependent Python branch) when
    ``params.crf`` is "torch" or "none" and ``images`` is uint8.

    Args:
        cams: float ``[B, S, H, W]`` combined, max-normalised CAMs, one per slot.
        classes: int64 ``[B, S]`` the dataset class of every slot.
        present: bool ``[B, S]`` slots in use (the image's tagged foreground classes); unused slots
            never win, whatever their maps hold.
        images: uint8 ``[B, 3, H, W]`` (0..255) or float in [0, 1], for the CRF.
        background: the dataset's background class, or None (no background: uncertain pixels 255).
        params: thresholds and CRF.
        valid: optional bool ``[B, H, W]``: pixels outside (crop padding) are 255 and take no part in
            the CRF.
        bg_scores: rule "sfc" (datasets with a background class): float ``[B, H, W]``, the background
            score beside the slots (the maps' own biased background); the confident-background map uses
            it ``x params.bg_scale``. None: IRN's constant scores.

    Returns:
        int64 ``[B, H, W]``: class ids, 255 where uncertain.
    """
    if (bg_scores is not None) != (params.rule == "sfc" and background is not None):
        raise ValueError("bg_scores go with rule 'sfc' on a dataset with a background class, and only there")
    if bg_scores is not None and bg_scores.shape != (cams.shape[0], *cams.shape[-2:]):
        raise ValueError(f"bg_scores must be [B, H, W] = {(cams.shape[0], *cams.shape[-2:])}")
    if cams.ndim != 4 or classes.shape != cams.shape[:2] or present.shape != cams.shape[:2]:
        raise ValueError(
            f"expected cams [B, S, H, W] with classes and present [B, S]; got {tuple(cams.shape)}, "
            f"{tuple(classes.shape)} and {tuple(present.shape)}"
        )
    if images.shape[0] != cams.shape[0] or tuple(images.shape[-2:]) != tuple(cams.shape[-2:]):
        raise ValueError(f"images {tuple(images.shape)} do not match the CAMs {tuple(cams.shape)}")
    batch = cams.shape[0]
    alt = IGNORE_INDEX if background is None else background
    first_score = params.uncertain_threshold if background is None else params.fg_threshold
    present = present.bool()
    masked = cams.float().masked_fill(~present[:, :, None, None], -math.inf)
    if bg_scores is not None:  # SFC's cam2ir: the own background, then halved
        own = bg_scores.float()
        maps = [_argmax_with_constant(masked, own), _argmax_with_constant(masked, own * params.bg_scale)]
    else:
        maps = [_argmax_with_constant(masked, first_score)]
        if background is not None:  # the confident-background maps go through the CRF in the same batch
            maps.append(_argmax_with_constant(masked, params.bg_threshold))
    copies = len(maps)
    label_maps = torch.cat(maps)  # [copies * B, H, W]
    if params.crf != "none":
        slots = present.repeat(copies, 1)
        unary = _slot_label_unary(label_maps, slots, params.crf_params.gt_prob)
        image_b = images.repeat(copies, 1, 1, 1)
        if params.crf == "torch":
            valid_b = None if valid is None else valid.bool().repeat(copies, 1, 1)
            q = dense_crf(unary, image_b, params=params.crf_params, valid=valid_b, input_type="unary")
        else:
            q = pydensecrf_reference(unary, image_b, params=params.crf_params, input_type="unary")
        label_maps = q.argmax(1).to(cams.device)
    lut = torch.cat([classes.new_full((batch, 1), alt), classes.long()], dim=1)  # slot -> class
    fg_map = label_maps[:batch]
    label = lut.gather(1, fg_map.flatten(1)).view_as(fg_map)
    if background is not None:
        bg_map = label_maps[batch:]
        label = torch.where(fg_map == 0, torch.full_like(label, IGNORE_INDEX), label)
        label = torch.where((fg_map == 0) & (bg_map == 0), torch.full_like(label, background), label)
    if valid is not None:
        label = label.masked_fill(~valid.bool(), IGNORE_INDEX)
    return label


def ir_labels(
    cams: Sequence[torch.Tensor],
    keys: Sequence[np.ndarray | Sequence[int]],
    images: torch.Tensor,
    *,
    background: int | None,
    params: PseudoLabelParams = PseudoLabelParams(),
    bg_scores: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Pseudo-labels of a batch of images of one size (see the module doc).

    Packs each image's tagged classes into the first slots and calls :func:`batched_ir_labels`.

    Args:
        cams: per image, the combined CAM ``[n_i, H, W]`` of its tagged foreground classes (rule "sfc":
            the biased foreground scores).
        keys: per image, the ``[n_i]`` class indices of those channels.
        images: uint8 ``[B, 3, H, W]`` (0..255) or float in [0, 1], for the CRF.
        background: the dataset's background class, or None (no background: uncertain pixels 255).
        bg_scores: rule "sfc" with a background class: per image the background score ``[H, W]``.

    Returns:
        int64 ``[B, H, W]``: class ids, 255 where uncertain.
    """
    if len(cams) != images.shape[0] or len(keys) != len(cams):
        raise ValueError(f"{len(cams)} CAMs, {len(keys)} key lists and {images.shape[0]} images differ")
    height, width = images.shape[-2:]
    device = cams[0].device if cams else images.device
    slots = max((int(cam.shape[0]) for cam in cams), default=0)
    packed = torch.zeros(len(cams), slots, height, width, device=device)
    classes = torch.zeros(len(cams), slots, dtype=torch.long, device=device)
    present = torch.zeros(len(cams), slots, dtype=torch.bool, device=device)
    for i, (cam, k) in enumerate(zip(cams, keys)):
        n = int(cam.shape[0])
        if len(k) != n:
            raise ValueError(f"image {i}: {n} CAM channels but {len(k)} class indices")
        packed[i, :n] = cam.to(device=device, dtype=torch.float32)
        classes[i, :n] = torch.as_tensor([int(c) for c in k], dtype=torch.long)
        present[i, :n] = True
    own = (
        None
        if bg_scores is None
        else torch.stack([b.to(device=device, dtype=torch.float32) for b in bg_scores])
    )
    return batched_ir_labels(
        packed, classes, present, images, background=background, params=params, bg_scores=own
    )


def cam_pseudo_labels(
    cam: torch.Tensor,
    tags: torch.Tensor,
    images: torch.Tensor,
    *,
    num_classes: int,
    background: int | None,
    params: PseudoLabelParams = PseudoLabelParams(),
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo masks from a network's raw CAMs, on the fly (single-stage training).

    The single-scale, unflipped version of ``weakseg cam`` followed by ``weakseg pseudo-labels``:
    ``ReLU`` at the network's resolution, bilinear upsampling to the image size, each channel divided
    by its spatial maximum + 1e-5 (:func:`~weakseg.ops.class_maps.max_normalize`; over the valid pixels),
    only the tagged classes kept, then :func:`batched_ir_labels`. Runs without gradient, in fp32
    with autocast disabled. On a CPU the tagged classes are first packed into the fewest slots
    (:func:`pack_tagged_slots`: the same labels, a CRF over a few labels instead of all); on a GPU the
    call never synchronises with the host.

    Args:
        cam: ``[B, C, h, w]`` raw class maps over the foreground classes (dataset order, background
            left out), e.g. the ``"cam"`` output of an image-level or single-stage network.
        tags: ``[B, K]`` multi-hot image tags over all classes.
        images: ``[B, 3, H, W]`` uint8 or float in [0, 1]; the labels come at this size.
        num_classes, background: the dataset's ``K`` and background index (None: no background).
        params: thresholds and CRF.
        valid: optional bool ``[B, H, W]`` (crop padding is False): 255 there, and left out of the
            normalisation and the CRF.

    Returns:
        ``(labels, scores)``: int64 ``[B, H, W]`` pseudo masks (255 = uncertain) and the float32
        ``[B, C, H, W]`` normalised maps the rule saw (0 for untagged classes).
    """
    fg = foreground_indices(num_classes, background)
    if cam.ndim != 4 or cam.shape[1] != len(fg):
        raise ValueError(
            f"expected raw CAMs [B, {len(fg)}, h, w] ({num_classes} classes, background {background}), "
            f"got shape {tuple(cam.shape)}"
        )
    if tags.shape != (cam.shape[0], num_classes):
        raise ValueError(f"expected tags [{cam.shape[0]}, {num_classes}], got {tuple(tags.shape)}")
    size = tuple(images.shape[-2:])
    with torch.no_grad(), torch.autocast(cam.device.type, enabled=False):
        maps = F.interpolate(F.relu(cam.detach().float()), size=size, mode="bilinear", align_corners=False)
        if valid is not None:
            maps = maps * valid[:, None].to(maps.dtype)
        fg_index = torch.arange(len(fg), device=cam.device)  # built on the device: no host copy
        if background is not None:
            fg_index = fg_index + (fg_index >= background).long()
        present = tags.index_select(1, fg_index) > 0.5
        scores = max_normalize(maps) * present[:, :, None, None]
        slots, classes, used = scores, fg_index.expand(cam.shape[0], -1), present
        if packs_slots(cam.device):
            slots, classes, used = pack_tagged_slots(slots, classes, used)
        labels = batched_ir_labels(
            slots, classes, used, images, background=background, params=params, valid=valid
        )
    return labels, scores


def packs_slots(device: torch.device) -> bool:
    """Whether :func:`cam_pseudo_labels` packs the tagged classes into the fewest slots on ``device``.

    Packing needs one host read (the batch's largest tag count), free on a CPU, a stall on a GPU; there
    the rule keeps one slot per foreground class and stays sync-free."""
    return device.type == "cpu"


def pack_tagged_slots(
    maps: torch.Tensor, classes: torch.Tensor, present: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The used slots of every image moved to the front, in their order, and the batch cut to the largest
    tag count ``S' = max_b sum(present[b])``: ``[B, S, H, W]``, ``[B, S]``, ``[B, S]`` -> ``[B, S', H, W]``,
    ``[B, S']``, ``[B, S']``.

    :func:`batched_ir_labels` gives the same labels on both layouts, up to floating-point rounding at
    exact CRF ties (an unused slot never wins, sends no CRF message, and the order of the used ones is
    kept, so arg-max ties break alike); the CRF and the unary then carry ``S' + 1`` labels instead of
    ``S + 1`` (VOC: about 3 instead of 21)."""
    if present.shape[0] == 0:
        return maps, classes, present
    # a stable sort on "unused" keeps the used slots' order and puts them first
    order = torch.sort((~present).to(torch.uint8), dim=1, stable=True).indices
    keep = max(1, int(present.sum(1).max()))  # the host read
    order = order[:, :keep]
    index = order[:, :, None, None].expand(-1, -1, *maps.shape[-2:])
    return maps.gather(1, index), classes.gather(1, order), present.gather(1, order)
