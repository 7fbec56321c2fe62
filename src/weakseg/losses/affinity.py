"""Adaptive affinity (AA) loss: local pairwise affinities of segmentation-branch features, supervised by
a pseudo mask, with background-positive, foreground-positive and negative pairs balanced adaptively.

**Designed from the abstract, not a reproduction.** The AAL paper (Zhang et al., ACM MM 2021) is only
available as an abstract ("an adaptive affinity loss to thoroughly learn the local pairwise
affinity", embedding the affinity learning of multi-stage methods in a single-stage model). The form
below is our design in the spirit of PSA/AffinityNet's affinity loss; see docs/aal.md for every choice.

**Pairs.** On the feature grid, every unordered pair of pixels ``(i, j)`` with
``0 < |p_i - p_j|² < r²`` (a disc of radius ``r`` grid cells, as PSA's neighbourhood) whose pseudo labels
are both reliable (not ``ignore_index``). A pair is

* **background-positive** (group 0) when both labels are the background class,
* **foreground-positive** (group 1) when both labels are the same non-background class (every positive
  pair when the dataset has no background class),
* **negative** (group 2) when the labels differ.

**Affinity.** With ``ê`` the per-pixel L2-normalised feature and ``τ`` a temperature,
``a_ij = exp(-|ê_i - ê_j|² / (2τ)) = exp(-(1 - cos_ij) / τ)`` in ``(0, 1]``. Positive pairs pay
``-log a_ij = (1 - cos_ij) / τ``, negative pairs ``-log(1 - a_ij + ε)``.

**Adaptive balancing.** Each pair carries a confidence ``c_ij = min(c_i, c_j)`` (the pseudo label's
confidence per pixel, detached; 1 without confidences). Within a group the pair losses are averaged
with these weights, so a group's size does not set its influence (inverse-count balancing: the
abundant background pairs cannot drown the foreground ones), and the group weights ``w_g`` (default
PSA's 1/4, 1/4, 1/2) are renormalised over the groups that have pairs in the batch:

    L = Σ_g ŵ_g · Σ_{(i,j) ∈ g} c_ij ℓ_g(a_ij) / Σ_{(i,j) ∈ g} c_ij,   ŵ_g = w_g [S_g > 0] / Σ_h w_h [S_h > 0]

i.e. every pair has the weight ``ω_ij = ŵ_g c_ij / S_g`` (``S_g`` the group's confidence mass), and the
weights of all pairs sum to 1 (0 when there is no pair at all).

**No N×N matrix.** The pairs are enumerated by offset ``d`` over one half of the disc (one of each ±d)
on shifted slices of zero-padded tensors: memory ``O(P · B · h · w)`` for ``P`` offsets (34 at
``r = 5``), and the cosine of an offset is a channel sum over two views of one padded tensor, so the
autograd graph stores no per-offset ``[B, D, h, w]`` copy. Everything is computed in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["GROUPS", "AffinityPairs", "adaptive_affinity_loss", "affinity_pairs", "local_offsets"]

#: Pair groups, in the order of ``group_weights`` and of :attr:`AffinityPairs.group` codes 0, 1, 2.
GROUPS: tuple[str, str, str] = ("bg_pos", "fg_pos", "neg")
_NO_PAIR = -1


def local_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets ``(dy, dx)`` with ``0 < dy² + dx² < radius²``, one of each ``±d`` (``dy > 0``, or
    ``dy == 0`` and ``dx > 0``), in raster order: pixel ``i`` pairs with ``i + d``."""
    if radius < 1:
        raise ValueError(f"the affinity radius must be >= 1 grid cell, got {radius}")
    out = []
    for dy in range(0, radius):
        for dx in range(-radius + 1, radius):
            if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius:
                out.append((dy, dx))
    return out


def _shifted(padded: Tensor, radius: int, dy: int, dx: int, h: int, w: int) -> Tensor:
    """The view of a tensor padded by ``radius`` (last two dims) whose pixel ``i`` is ``i + (dy, dx)``."""
    return padded[..., radius + dy : radius + dy + h, radius + dx : radius + dx + w]


@dataclass
class AffinityPairs:
    """The pairs of a label map and their loss weights, by offset.

    Attributes:
        offsets: the ``P`` offsets of :func:`local_offsets`; pair ``p`` of pixel ``i`` is
            ``(i, i + offsets[p])``.
        group: int64 ``[P, B, h, w]``: 0 background-positive, 1 foreground-positive, 2 negative, -1 no
            pair (a partner outside the grid or an unreliable label).
        weight: float32 ``[P, B, h, w]``: the pair weight ``ω_ij`` (0 where there is no pair).
        group_weight: float32 ``[3]``: the renormalised group weights ``ŵ_g``.
        group_mass: float32 ``[3]``: ``S_g``, the summed pair confidences of each group (pair counts
            without confidences).
    """

    offsets: list[tuple[int, int]]
    group: Tensor
    weight: Tensor
    group_weight: Tensor
    group_mass: Tensor


@torch.no_grad()
def affinity_pairs(
    labels: Tensor,
    *,
    radius: int = 5,
    background: int | None = 0,
    ignore_index: int = 255,
    confidence: Tensor | None = None,
    group_weights: Sequence[float] = (0.25, 0.25, 0.5),
) -> AffinityPairs:
    """Groups and adaptive weights of every local pair of ``labels`` (see the module doc).

    Args:
        labels: int ``[B, h, w]`` pseudo labels on the feature grid, ``ignore_index`` = unreliable.
        radius: pairs with ``0 < |Δp|² < radius²`` grid cells.
        background: the background class (None: every positive pair is foreground-positive).
        ignore_index: the unreliable label.
        confidence: optional float ``[B, h, w]`` in [0, 1], each pixel's pseudo-label confidence;
            a pair gets the smaller of its two. None: every pair counts 1.
        group_weights: ``(w_bg_pos, w_fg_pos, w_neg)``, non-negative.

    Returns:
        :class:`AffinityPairs`; no gradient flows through it.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be [B, h, w], got shape {tuple(labels.shape)}")
    if len(group_weights) != 3 or min(group_weights) < 0:
        raise ValueError(f"group_weights must be 3 non-negative numbers {GROUPS}, got {list(group_weights)}")
    if confidence is not None and confidence.shape != labels.shape:
        raise ValueError(f"confidence {tuple(confidence.shape)} must match labels {tuple(labels.shape)}")
    h, w = labels.shape[-2:]
    offsets = local_offsets(radius)
    lab = labels.long()
    lab_p = F.pad(lab, (radius, radius, radius, radius), value=ignore_index)
    conf = labels.new_ones(labels.shape, dtype=torch.float32) if confidence is None else confidence.float()
    conf_p = F.pad(conf, (radius, radius, radius, radius), value=0.0)
    groups, pair_conf = [], []
    for dy, dx in offsets:
        other = _shifted(lab_p, radius, dy, dx, h, w)
        reliable = (lab != ignore_index) & (other != ignore_index)
        same = lab == other
        bg = same & (lab == background) if background is not None else torch.zeros_like(same)
        group = torch.where(same, torch.where(bg, 0, 1), 2)
        groups.append(torch.where(reliable, group, _NO_PAIR))
        pair_conf.append(torch.minimum(conf, _shifted(conf_p, radius, dy, dx, h, w)) * reliable)
    group = torch.stack(groups)  # [P, B, h, w]
    pconf = torch.stack(pair_conf)
    masks = torch.stack([group == g for g in range(3)])  # [3, P, B, h, w]
    mass = (masks * pconf).flatten(1).sum(1)  # [3]
    base = torch.stack([mass.new_full((), float(w)) for w in group_weights])  # no host-to-device copy
    active = base * (mass > 0)
    g_weight = active / active.sum().clamp_min(1e-12)
    per_group = g_weight / mass.clamp_min(1e-12)  # ŵ_g / S_g
    weight = pconf * per_group[group.clamp_min(0)] * (group >= 0)
    return AffinityPairs(offsets=offsets, group=group, weight=weight, group_weight=g_weight, group_mass=mass)


def adaptive_affinity_loss(
    embedding: Tensor,
    labels: Tensor,
    *,
    radius: int = 5,
    background: int | None = 0,
    ignore_index: int = 255,
    confidence: Tensor | None = None,
    group_weights: Sequence[float] = (0.25, 0.25, 0.5),
    temperature: float = 0.5,
    eps: float = 1e-5,
) -> Tensor:
    """The AA loss ``Σ_pairs ω_ij ℓ(a_ij)`` of the module doc, differentiable w.r.t. ``embedding``.

    Args:
        embedding: float ``[B, D, h, w]`` segmentation-branch features.
        labels: int ``[B, h, w]`` pseudo labels on the same grid (no gradient; 255 = unreliable).
        radius, background, ignore_index, confidence, group_weights: see :func:`affinity_pairs`.
        temperature: ``τ`` of ``a_ij = exp(-(1 - cos_ij) / τ)``.
        eps: ``ε`` of the negative-pair loss ``-log(1 - a + ε)`` (bounds it by ``-log ε``).

    Returns:
        A scalar; 0 (with a gradient path) when the labels have no reliable pair.
    """
    if (
        embedding.ndim != 4
        or embedding.shape[0] != labels.shape[0]
        or embedding.shape[-2:] != labels.shape[-2:]
    ):
        raise ValueError(
            f"embedding [B, D, h, w] {tuple(embedding.shape)} and labels [B, h, w] {tuple(labels.shape)} "
            "must share batch and grid"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    pairs = affinity_pairs(
        labels,
        radius=radius,
        background=background,
        ignore_index=ignore_index,
        confidence=confidence,
        group_weights=group_weights,
    )
    h, w = labels.shape[-2:]
    with torch.autocast(embedding.device.type, enabled=False):
        unit = F.normalize(embedding.float(), dim=1)
        padded = F.pad(unit, (radius, radius, radius, radius))
        total = unit.new_zeros(())
        for p, (dy, dx) in enumerate(pairs.offsets):
            cos = (unit * _shifted(padded, radius, dy, dx, h, w)).sum(1)  # [B, h, w]
            x = ((1.0 - cos) / temperature).clamp_min(0.0)  # -log a_ij
            neg = -torch.log(-torch.expm1(-x) + eps)  # -log(1 - a_ij + ε)
            loss = torch.where(pairs.group[p] == 2, neg, x)
            total = total + (pairs.weight[p] * loss).sum()
    return total
