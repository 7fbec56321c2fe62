"""Pairwise feature-consistency loss: pixels with the same label should have similar embeddings.

Built for DFR's feature consistency head (see ``docs/dfr.md``; DFR's own formula is not public). On a
feature grid, every pixel gets a target label (:func:`consistency_labels`): its scribble class where a
scribble crosses its cell, otherwise the argmax of the detached prediction where that is confident, otherwise
none. :func:`pairwise_consistency_loss` then samples up to ``M`` labelled pixels per image (scribbled ones
first), forms all ``M x M`` pairs and applies binary cross-entropy to ``sigmoid(t * f_i . f_j)`` with target
1 for equal labels and 0 otherwise. Positive and negative pairs are averaged separately (over the whole
batch) and the two means are averaged, so the rarer positive pairs are not drowned by the negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

UNLABELLED = -1  # target label of a pixel without scribble and without a confident prediction


def labels_to_grid(labels: Tensor, size: Sequence[int], num_classes: int, ignore_index: int = 255) -> Tensor:
    """Majority label of each cell of a coarser grid, counting only labelled pixels.

    Pixel ``(y, x)`` of ``[B, H, W]`` falls in cell ``(y * h // H, x * w // W)`` of the ``h x w`` grid. A
    cell takes the most frequent label among its labelled pixels (ties: the smaller class id), or
    ``ignore_index`` when it has none; thin scribbles thus survive downsampling (nearest sampling would lose
    most of them). Counting is a scatter-add, without a ``[B, K, H, W]`` one-hot.

    Args:
        labels: int64 ``[B, H, W]``, class ids or ``ignore_index``.
        size: ``(h, w)``.

    Returns:
        int64 ``[B, h, w]``.
    """
    b, height, width = labels.shape
    h, w = int(size[0]), int(size[1])
    device = labels.device
    rows = torch.arange(height, device=device) * h // height
    cols = torch.arange(width, device=device) * w // width
    cell = (rows[:, None] * w + cols[None, :]).expand(b, height, width)
    labelled = labels != ignore_index
    key = cell * num_classes + torch.where(labelled, labels, 0).clamp(0, num_classes - 1)
    counts = torch.zeros(b, h * w * num_classes, device=device)
    counts.scatter_add_(1, key.reshape(b, -1), labelled.reshape(b, -1).float())
    counts = counts.view(b, h, w, num_classes)
    best = counts.argmax(-1)
    return torch.where(counts.amax(-1) > 0, best, torch.full_like(best, ignore_index))


def consistency_labels(
    probs: Tensor,
    scribble: Tensor | None,
    roi: Tensor | None = None,
    *,
    threshold: float = 0.9,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """Target labels on the grid of ``probs``: scribbles override confident detached predictions.

    Args:
        probs: ``[B, K, h, w]`` class probabilities on the feature grid (detached here).
        scribble: int64 ``[B, h, w]`` scribble labels already on the grid (``ignore_index`` = none), or None.
        roi: bool ``[B, h, w]``; pixels outside get no label. None = everywhere.
        threshold: a prediction labels its pixel when its max probability exceeds this.

    Returns:
        ``labels`` int64 ``[B, h, w]`` (``UNLABELLED`` = -1 where unknown) and ``from_scribble`` bool
        ``[B, h, w]``.
    """
    probs = probs.detach()
    confidence, predicted = probs.max(dim=1)
    labels = torch.where(confidence > threshold, predicted, torch.full_like(predicted, UNLABELLED))
    from_scribble = torch.zeros_like(labels, dtype=torch.bool)
    if scribble is not None:
        from_scribble = scribble != ignore_index
        labels = torch.where(from_scribble, scribble, labels)
    if roi is not None:
        labels = torch.where(roi, labels, torch.full_like(labels, UNLABELLED))
        from_scribble = from_scribble & roi
    return labels, from_scribble


def sample_labelled_pixels(
    labels: Tensor, num_samples: int, priority: Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Pick up to ``num_samples`` labelled pixels per image at random, ``priority`` pixels first.

    Args:
        labels: int64 ``[B, h, w]``, ``UNLABELLED`` where unknown.
        priority: bool ``[B, h, w]`` pixels taken before any other (e.g. scribbled ones), or None.

    Returns:
        ``index`` int64 ``[B, M]`` (flat pixel indices, ``M = min(num_samples, h * w)``) and ``valid`` bool
        ``[B, M]`` (False for padding slots of images with fewer labelled pixels than ``M``).
    """
    b = labels.shape[0]
    flat = labels.reshape(b, -1)
    m = min(int(num_samples), flat.shape[1])
    score = torch.rand(flat.shape, device=flat.device, generator=generator)
    if priority is not None:
        score = score + priority.reshape(b, -1).float()  # in [1, 2): ranked above every other pixel
    score = score.masked_fill(flat == UNLABELLED, -1.0)
    top, index = score.topk(m, dim=1)
    return index, top >= 0


def pairwise_consistency_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    num_samples: int = 1024,
    temperature: float = 10.0,
    priority: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Balanced pairwise BCE between ``sigmoid(t * f_i . f_j)`` and ``[label_i == label_j]``.

    Args:
        embeddings: ``[B, d, h, w]`` pixel embeddings (unit-norm for DFR, so ``f_i . f_j`` is a cosine).
        labels: int64 ``[B, h, w]`` targets, ``UNLABELLED`` (-1) where unknown; must carry no gradient.
        num_samples: ``M``, labelled pixels sampled per image (memory is ``O(B M^2)``).
        temperature: ``t``; with unit-norm features logits lie in ``[-t, t]``.
        priority: bool ``[B, h, w]`` pixels sampled first (scribbled ones).

    Returns:
        Scalar fp32 ``(mean over positive pairs + mean over negative pairs) / 2`` of the BCE, over
        ordered pairs ``i != j`` of sampled pixels of the same image; an empty set of pairs contributes 0
        (the loss keeps a gradient path to ``embeddings``).
    """
    b, d = embeddings.shape[:2]
    index, valid = sample_labelled_pixels(labels, num_samples, priority, generator)
    feats = embeddings.reshape(b, d, -1).float().gather(2, index[:, None, :].expand(b, d, -1))  # [B, d, M]
    picked = labels.reshape(b, -1).gather(1, index)  # [B, M]
    with torch.autocast(device_type=feats.device.type, enabled=False):  # fp32 similarities, even under AMP
        logits = temperature * feats.transpose(1, 2) @ feats  # [B, M, M]
    pair_weight, sign = _balanced_pair_weights(picked, valid)
    # BCE with a 0/1 target y is softplus(-z) for y = 1 and softplus(z) for y = 0: softplus(sign * z)
    return (F.softplus(logits * sign) * pair_weight).sum()


@torch.no_grad()
def _balanced_pair_weights(picked: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair weights ``[B, M, M]`` that turn a plain sum of pair losses into the balanced mean, and the
    sign ``[B, M, M]`` (-1 for same-label pairs, +1 otherwise).

    A valid ordered pair ``i != j`` weighs ``0.5 / P`` if its labels agree and ``0.5 / Q`` otherwise, with
    ``P`` and ``Q`` the batch's numbers of such pairs (a weight of 0 when its set is empty). The counts
    stay on the device (float sums, no host synchronisation).
    """
    v = valid.float()
    same = (picked[:, :, None] == picked[:, None, :]).float()
    pairs = v[:, :, None] * v[:, None, :]
    pairs.diagonal(dim1=1, dim2=2).zero_()  # pairs i != j only
    same_pairs = same * pairs
    positives = same_pairs.sum()
    negatives = pairs.sum() - positives
    w_pos, w_neg = 0.5 / positives.clamp_min(1.0), 0.5 / negatives.clamp_min(1.0)
    return pairs * w_neg + same_pairs * (w_pos - w_neg), 1.0 - 2.0 * same
