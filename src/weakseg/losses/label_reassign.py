"""Label reassign (LR) loss: pseudo-labelled pixels whose embedding lies nearer another class's centre
are reassigned to that class and supervised toward it, so the segmenter does not memorise wrong pseudo
labels.

**Designed from the abstract, not a reproduction.** The AAL paper (Zhang et al., ACM MM 2021) is only
available as an abstract ("a novel label reassign loss to mitigate over-fitting" to erroneous pseudo
labels) and a figure caption ("labeled point embeddings are re-assigned"). The form below is our
design; see docs/aal.md for every choice.

For one image with embedding ``e`` (segmentation-branch features, L2-normalised per pixel: ``ê``) and
pseudo mask ``Y`` (255 = unreliable):

1. **Centres**: for every class ``k`` present in ``Y`` (sampled on the embedding grid by nearest
   neighbour), ``c_k = normalise(Σ_{Y_i = k} ê_i)``, the direction of the mean unit embedding. Centres
   are per image (the appearance of a class varies between images) and detached.
2. **Nearest centre**: ``ŷ_i = argmax_k cos(ê_i, c_k)`` over the image's centres, computed on the
   embedding grid and carried to the label resolution by nearest neighbour.
3. **Reassignment**: a labelled pixel is reassigned when ``ŷ_i ≠ Y_i`` and
   ``cos(ê_i, c_ŷ) - cos(ê_i, c_Y) > margin`` (a pixel whose own class has no centre on the grid counts
   as infinitely far from it). Its target becomes ``ŷ_i``, under stop-gradient.
4. **Loss**: the cross-entropy toward the corrected mask splits into the kept pixels (their pseudo
   label) and the reassigned ones (their new label); both sums are divided by the number of labelled
   pixels, so with equal weights they add up to the cross-entropy on the corrected mask, and a
   reassigned pixel is never pulled toward its old label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.ops.resize import resize_bilinear, resize_nearest

__all__ = [
    "Reassignment",
    "centre_similarity",
    "class_centres",
    "label_reassign_loss",
    "reassign_labels",
    "reassigned_cross_entropy",
]

_NO_CENTRE = -2.0  # similarity to a class without a centre: below any cosine


@torch.no_grad()
def class_centres(
    embedding: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Per-image class centres of unit embeddings.

    Args:
        embedding: float ``[B, D, h, w]``.
        labels: int ``[B, h, w]`` on the same grid; ``ignore_index`` (and anything outside
            ``0..num_classes-1``) belongs to no class.
        num_classes: ``K``.

    Returns:
        ``(centres, has)``: float32 ``[B, K, D]`` unit vectors ``normalise(Σ_{Y_i = k} ê_i)`` (0 for an
        absent class) and bool ``[B, K]`` which classes have at least one pixel.
    """
    if embedding.ndim != 4 or labels.shape != (embedding.shape[0], *embedding.shape[-2:]):
        raise ValueError(
            f"embedding [B, D, h, w] {tuple(embedding.shape)} and labels [B, h, w] {tuple(labels.shape)} "
            "must share batch and grid"
        )
    unit = F.normalize(embedding.detach().float(), dim=1).flatten(2)  # [B, D, N]
    lab = labels.long().flatten(1)
    member = (lab != ignore_index) & (lab >= 0) & (lab < num_classes)
    onehot = F.one_hot(lab.masked_fill(~member, 0), num_classes).float() * member[..., None]  # [B, N, K]
    sums = torch.bmm(unit, onehot).transpose(1, 2)  # [B, K, D]
    return F.normalize(sums, dim=-1), onehot.sum(1) > 0


@torch.no_grad()
def centre_similarity(embedding: Tensor, centres: Tensor, has: Tensor) -> Tensor:
    """``cos(ê_i, c_k)``: float32 ``[B, K, h, w]``; ``-2`` (below any cosine) where class k has no centre."""
    unit = F.normalize(embedding.detach().float(), dim=1)
    sim = torch.einsum("bdhw,bkd->bkhw", unit, centres)
    return sim.masked_fill(~has[:, :, None, None], _NO_CENTRE)


@dataclass
class Reassignment:
    """Where pseudo labels are reassigned, at the labels' resolution.

    Attributes:
        labels: int64 ``[B, H, W]`` the pseudo mask given (255 = unreliable).
        nearest: int64 ``[B, H, W]`` the class of the nearest centre (``ignore_index`` where the image
            has no centre).
        reassigned: bool ``[B, H, W]`` labelled pixels whose label is replaced by ``nearest``.
        target: int64 ``[B, H, W]`` the corrected mask: ``nearest`` where reassigned, else ``labels``.
    """

    labels: Tensor
    nearest: Tensor
    reassigned: Tensor
    target: Tensor


@torch.no_grad()
def reassign_labels(
    embedding: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    ignore_index: int = 255,
    margin: float = 0.0,
) -> Reassignment:
    """Steps 1-3 of the module doc (no gradient: the targets are stop-gradient; fp32 under autocast).

    Args:
        embedding: float ``[B, D, h, w]`` segmentation-branch features.
        labels: int ``[B, H, W]`` pseudo mask at any resolution (e.g. the image's); sampled onto the
            embedding grid by nearest neighbour for the centres.
        num_classes: ``K``.
        ignore_index: the unreliable label (never reassigned, never a centre).
        margin: reassign only when the nearest centre is more similar than the pixel's own class
            centre by more than this (cosine units, >= 0).
    """
    if labels.ndim != 3 or labels.shape[0] != embedding.shape[0]:
        raise ValueError(f"labels must be [B, H, W] with B = {embedding.shape[0]}, got {tuple(labels.shape)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    labels = labels.long()
    grid_labels = resize_nearest(labels.long(), embedding.shape[-2:])
    with torch.autocast(embedding.device.type, enabled=False):  # centres and cosines in fp32
        centres, has = class_centres(embedding, grid_labels, num_classes, ignore_index)
        sim = centre_similarity(embedding, centres, has)  # [B, K, h, w]
    if tuple(sim.shape[-2:]) != tuple(labels.shape[-2:]):
        sim = F.interpolate(sim, size=labels.shape[-2:], mode="nearest")
    best, nearest = sim.max(dim=1)
    any_centre = has.any(dim=1)[:, None, None]
    nearest = torch.where(any_centre, nearest, torch.full_like(nearest, ignore_index))
    labelled = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    own = sim.gather(1, labels.clamp(0, num_classes - 1)[:, None])[:, 0]
    reassigned = labelled & any_centre & (nearest != labels) & (best - own > margin)
    target = torch.where(reassigned, nearest, labels)
    return Reassignment(labels=labels, nearest=nearest, reassigned=reassigned, target=target)


def reassigned_cross_entropy(
    logits: Tensor, reassignment: Reassignment, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Cross-entropy toward the corrected mask, split into kept and reassigned pixels (step 4).

    Args:
        logits: float ``[B, K, h, w]``; upsampled bilinearly to the labels' size when it differs.
        reassignment: from :func:`reassign_labels`.

    Returns:
        ``(kept, reassigned)`` scalars: ``Σ_{kept} CE(logits, Y) / n`` and
        ``Σ_{reassigned} CE(logits, ŷ) / n`` with ``n`` the number of labelled pixels of the pseudo mask
        (at least 1). Both are 0 with a gradient path when nothing is labelled.
    """
    target = reassignment.target
    logits = resize_bilinear(logits, target.shape[-2:])
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    count = (reassignment.labels != ignore_index).sum().clamp_min(1)
    moved = reassignment.reassigned.to(per_pixel.dtype)
    return (per_pixel * (1.0 - moved)).sum() / count, (per_pixel * moved).sum() / count


def label_reassign_loss(logits: Tensor, reassignment: Reassignment, ignore_index: int = 255) -> Tensor:
    """The LR loss alone: ``Σ_{reassigned} CE(logits, ŷ) / n`` (see :func:`reassigned_cross_entropy`)."""
    return reassigned_cross_entropy(logits, reassignment, ignore_index)[1]
