"""CDSP's localization rectification module (LoRM), without the (HW)×(HW) matrix.

LoRM re-estimates each foreground feature as an attention-weighted average of all features of its
image, with cosine similarities as scores (no temperature)::

    q = W_q F,  k = W_k F                       (1×1 convs, C → C)
    A_ij = softmax_j(cos(q_i, k_j))
    F̂_i = δ · M_i · Σ_j A_ij F_j                (M_i = 1 where the pseudo-label at i is foreground)
    L_lorm = MSE(F, F̂)                          (:func:`weakseg.losses.feature_rectification.lorm_loss`)

That is the authors' code: ``M`` masks the *query* rows of ``A``. The paper's text for its Eq. 11 ("the
background features in each row A_i are largely suppressed") reads as masking the *key* columns instead,
``F̂_i = δ · Σ_j A_ij M_j F_j`` (the softmax still runs over every key); ``mask_axis="key"`` gives that
variant, which equals attention over the masked values ``M ⊙ F``.

Because ``M`` scales whole rows *after* the softmax, ``F̂ = δ · M ⊙ attention(q̂, k̂, F)`` with
L2-normalised ``q̂``, ``k̂`` and scale 1, which :func:`torch.nn.functional.scaled_dot_product_attention`
evaluates without building ``A`` (O(HW) memory). :func:`lorm_attention_explicit` is the matrix form the
tests compare against.

``F`` is not detached: the loss trains the backbone to produce features that the rectified
(self-attended) features can reproduce; ``F̂`` feeds only the loss, the classifier still reads ``F``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LORM_MASK_AXES", "LoRM", "lorm_attention", "lorm_attention_explicit"]

LORM_MASK_AXES = ("query", "key")


def _tokens(x: Tensor) -> Tensor:
    """``[B, C, h, w]`` → ``[B, 1, h*w, C]`` (one attention head), contiguous: the fused kernels need
    unit stride over channels, otherwise PyTorch silently takes the path that builds the matrix."""
    return x.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()


def _check(q: Tensor, k: Tensor, v: Tensor, row_mask: Tensor, mask_axis: str = "query") -> None:
    if mask_axis not in LORM_MASK_AXES:
        raise ValueError(f"lorm mask axis is {mask_axis!r}; expected one of {LORM_MASK_AXES}")
    if q.shape != k.shape or q.shape[0] != v.shape[0] or q.shape[2:] != v.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must share B, h, w")
    if row_mask.shape != (v.shape[0], *v.shape[2:]):
        raise ValueError(f"row_mask has shape {tuple(row_mask.shape)}, expected {(v.shape[0], *v.shape[2:])}")


def lorm_attention(q: Tensor, k: Tensor, v: Tensor, row_mask: Tensor, mask_axis: str = "query") -> Tensor:
    """``M ⊙ softmax(q̂ k̂ᵀ) v`` (``mask_axis="query"``) or ``softmax(q̂ k̂ᵀ) (M ⊙ v)`` (``"key"``) through
    fused attention.

    Args:
        q, k: ``[B, C_qk, h, w]`` queries and keys (cosine-normalised here over channels).
        v: ``[B, C, h, w]`` values (the features).
        row_mask: ``[B, h, w]`` bool or float, the foreground ``M``: 1 where a query keeps its output
            (``"query"``) or where a key contributes (``"key"``).

    Returns:
        ``[B, C, h, w]``.
    """
    _check(q, k, v, row_mask, mask_axis)
    b, c, h, w = v.shape
    mask = row_mask.to(v.dtype).unsqueeze(1)
    qn = F.normalize(_tokens(q), dim=-1)
    kn = F.normalize(_tokens(k), dim=-1)
    values = _tokens(v * mask if mask_axis == "key" else v).to(qn.dtype)
    out = F.scaled_dot_product_attention(qn, kn.to(qn.dtype), values, scale=1.0)
    out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
    return out * mask.to(out.dtype) if mask_axis == "query" else out


def lorm_attention_explicit(
    q: Tensor, k: Tensor, v: Tensor, row_mask: Tensor, mask_axis: str = "query"
) -> Tensor:
    """:func:`lorm_attention` with the ``[B, hw, hw]`` matrix built and masked (reference only)."""
    _check(q, k, v, row_mask, mask_axis)
    b, c, h, w = v.shape
    qn = F.normalize(q.flatten(2), dim=1)  # [B, C, N]
    kn = F.normalize(k.flatten(2), dim=1)
    attn = torch.softmax(qn.transpose(1, 2) @ kn, dim=-1)  # [B, N (query), N (key)]
    m = row_mask.to(attn.dtype).flatten(1)  # [B, N]
    attn = attn * (m[:, :, None] if mask_axis == "query" else m[:, None, :])
    return (v.flatten(2) @ attn.transpose(1, 2)).reshape(b, c, h, w)


class LoRM(nn.Module):
    """The module: query/key 1×1 convolutions (C → C) and the learnable scale δ (init 1).

    ``forward(features [B, C, h, w], foreground [B, h, w]) -> F̂ [B, C, h, w]``; ``mask_axis`` as in
    :func:`lorm_attention` (``"query"``: the authors' code, ``"key"``: the paper's Eq. 11 text).
    """

    def __init__(self, channels: int, delta_init: float = 1.0, mask_axis: str = "query") -> None:
        super().__init__()
        if mask_axis not in LORM_MASK_AXES:
            raise ValueError(f"lorm mask axis is {mask_axis!r}; expected one of {LORM_MASK_AXES}")
        self.mask_axis = mask_axis
        self.query = nn.Conv2d(channels, channels, kernel_size=1)
        self.key = nn.Conv2d(channels, channels, kernel_size=1)
        self.delta = nn.Parameter(torch.tensor(float(delta_init)))

    def forward(self, features: Tensor, foreground: Tensor) -> Tensor:
        attended = lorm_attention(
            self.query(features), self.key(features), features, foreground, self.mask_axis
        )
        return self.delta.to(attended.dtype) * attended
