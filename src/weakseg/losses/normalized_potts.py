"""DFR's regularized loss: a normalised Potts relaxation whose kernel mixes shallow and deep features.

Built from the DFR abstract (Zhang, Xiao, Zhao; arXiv 2108.01296); the paper's equations are not public,
so this is our design (``docs/dfr.md``). For segmentation probabilities ``S`` (``[N, K]`` on a pixel grid),
a symmetric kernel ``K`` (no self pairs) and ROI pixels, the regularizer of one image is

    E(S) = sum_k S_k^T K (1 - S_k) / (1^T K 1)

the Potts relaxation of Tang et al. (2018), divided by the kernel's total mass. The quotient is the
probability that a pair ``(i, j)`` drawn with probability proportional to ``K_ij`` gets different labels
(``0 <= E < 1``), so its scale does not depend on the grid size, the bandwidths or the image content; the
batch loss is the mean over images. The mass is computed with the same kernel pass and carries no gradient.

Because sum_k S_k = 1 on every pixel, ``sum_k S_k^T K 1 = 1^T K 1`` and ``E = 1 - sum_k S_k^T K S_k / mass``:
the gradient is ``dE/dS_k = -2 K S_k / mass``. :func:`normalized_potts_loss` applies the kernel once to the
detached ``[S, 1]`` (exact fused evaluation, :mod:`weakseg.ops.pairwise_kernel`) and returns a surrogate
with exactly that value and gradient, like rloss's hand-written backward, so no autograd graph is kept
through the ``N x N`` interactions, and the kernel features never receive a gradient (DFR's stop-gradient on
the deep features).

Kernels (``K_ij = exp(-|f_i - f_j|^2 / 2)`` on bandwidth-scaled features):

- shallow: ``[x, y] / sigma_xy`` (original-image pixels) and ``[r, g, b] / sigma_rgb`` (0..255), on the
  image resized by ``shallow_scale`` (rloss: 0.5);
- deep: unit-length features ``f`` divided by ``sigma_deep``, i.e. ``exp(-(1 - cos_ij) / sigma_deep^2)``;
- ``"sum"``: ``E_shallow + beta * E_deep``, each term on its own grid and normalised by its own mass (equal
  to the energy of ``W_shallow + beta' W_deep`` on one grid, with ``beta`` rescaled by the mass ratio);
- ``"product"``: one kernel on the concatenated features, ``W_shallow * W_deep`` (a pair must be close in
  colour, position and deep feature), on the deep grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.ops.pairwise_kernel import gaussian_affinity_apply, kernel_features_rgbxy
from weakseg.ops.resize import resize_area, resize_mask, scaled_size

KERNEL_COMBINATIONS = ("sum", "product")
KERNEL_MODES = ("dense", "local")


def unit_features_on_grid(features: Tensor, size: Sequence[int]) -> Tensor:
    """L2-normalise per pixel, resample to ``size``, normalise again: ``[B, D, h, w]`` unit vectors."""
    return F.normalize(resize_area(F.normalize(features.float(), dim=1), size), dim=1)


def rgbxy_features(image: Tensor, size: Sequence[int], sigma_rgb: float, sigma_xy: float) -> Tensor:
    """Shallow kernel features of ``image`` (float ``[B, 3, H, W]`` in [0, 1]) on an ``h x w`` grid.

    The image is resampled to ``size`` (area/bilinear) and passed to
    :func:`~weakseg.ops.pairwise_kernel.kernel_features_rgbxy` with colours x255 and scale ``h / H``, so
    ``sigma_xy`` stays in original-image pixels. Returns ``[B, 5, h, w]``.
    """
    small = resize_area(image.float(), size)
    return kernel_features_rgbxy(small * 255.0, sigma_rgb, sigma_xy, scale=small.shape[-2] / image.shape[-2])


def normalized_potts_loss(
    features: Tensor,
    probs: Tensor,
    roi: Tensor | None = None,
    *,
    mode: str = "dense",
    radius: int = 5,
    backend: str = "exact",
) -> Tensor:
    """``mean_b [sum_k S_k^T K (1 - S_k) / 1^T K 1]``, ``K_ij = exp(-|f_i - f_j|^2/2)``, ROI pairs ``i != j``.

    Args:
        features: ``[B, D, h, w]`` kernel features, already divided by their bandwidths (detached here).
        probs: ``[B, K, h, w]`` class probabilities on the same grid (the gradient flows to them).
        roi: bool ``[B, h, w]`` pixels that take part; None = all.
        mode, radius: dense (all pairs) or local window evaluation of the kernel.
        backend: dense mode's ``"exact"`` kernel, the permutohedral ``"lattice"`` or ``"auto"``
            (:func:`~weakseg.ops.pairwise_kernel.gaussian_affinity_apply`; the quotient is
            insensitive to the lattice's overall scale).

    Returns:
        Scalar; an image whose ROI holds fewer than two pixels contributes 0. Its gradient with respect to
        ``probs`` is ``-2 K S_k / mass`` per image (divided by ``B``), the exact gradient of the quotient.
    """
    if probs.shape[-2:] != features.shape[-2:] or probs.shape[0] != features.shape[0]:
        raise ValueError(f"probs {tuple(probs.shape)} and features {tuple(features.shape)} need one grid")
    s = probs.float()
    inside = torch.ones_like(s[:, 0]) if roi is None else roi.to(s.dtype)
    s = s * inside[:, None]
    with torch.no_grad():
        values = torch.cat([s.detach(), inside[:, None]], dim=1)
        applied = gaussian_affinity_apply(
            features.detach(), values, roi, mode=mode, radius=radius, backend=backend
        )
        ks = applied[:, :-1]  # R K R S
        mass = applied[:, -1].sum(dim=(1, 2))  # 1^T R K R 1
        energy = mass - (s.detach() * ks).sum(dim=(1, 2, 3))
    # value = energy, d/ds = -2 K s: the surrogate's second term is zero-valued
    surrogate = energy - 2.0 * ((s - s.detach()) * ks).sum(dim=(1, 2, 3))
    return (surrogate / mass.clamp_min(1e-12)).mean()


def dfr_regularized_loss(
    probs: Tensor,
    image: Tensor,
    valid: Tensor | None,
    deep_features: Tensor | None,
    *,
    combination: str = "sum",
    beta: float = 1.0,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    sigma_deep: float = 0.5,
    shallow_scale: float = 0.5,
    shallow_mode: str = "dense",
    shallow_radius: int = 5,
    shallow_backend: str = "auto",
    deep_mode: str = "dense",
    deep_radius: int = 8,
) -> dict[str, Tensor]:
    """The regularizer of DFR with the shallow kernel and (optionally) the deep one.

    Args:
        probs: ``[B, K, h0, w0]`` softmax probabilities at the logits' resolution (resampled to each grid).
        image: float ``[B, 3, H, W]`` in [0, 1].
        valid: bool ``[B, H, W]`` (False on crop padding) or None.
        deep_features: unit-length ``[B, d, hd, wd]`` on the deep grid (detached here), or None for the
            shallow kernel alone.
        combination: ``"sum"`` or ``"product"`` (see the module docstring).
        beta: weight of the deep term in ``"sum"``.
        sigma_rgb, sigma_xy: shallow bandwidths (0..255 colour units; original-image pixels).
        sigma_deep: deep bandwidth on unit vectors.
        shallow_scale: image scale of the shallow grid.
        shallow_mode, shallow_radius, deep_mode, deep_radius: kernel evaluation (radius in grid cells).
        shallow_backend: ``"exact"``, ``"lattice"`` or ``"auto"`` (the default: the lattice from ~2,300
            grid cells on a CPU) for the shallow kernel in dense mode (the deep and product kernels stay
            exact).

    Returns:
        ``{"shallow": E_s, "deep": beta * E_d}`` for ``"sum"`` (``"deep"`` absent without deep features);
        ``{"product": E}`` for ``"product"`` with deep features.
    """
    if combination not in KERNEL_COMBINATIONS:
        raise ValueError(f"kernel combination '{combination}'; expected one of {KERNEL_COMBINATIONS}")
    height, width = image.shape[-2:]
    if deep_features is not None and combination == "product":
        size = tuple(deep_features.shape[-2:])
        shallow = rgbxy_features(image, size, sigma_rgb, sigma_xy)
        feats = torch.cat([shallow, deep_features.detach().float() / sigma_deep], dim=1)
        loss = normalized_potts_loss(
            feats, resize_area(probs, size), resize_mask(valid, size), mode=deep_mode, radius=deep_radius
        )
        return {"product": loss}
    size = scaled_size((height, width), shallow_scale)
    shallow = rgbxy_features(image, size, sigma_rgb, sigma_xy)
    terms = {
        "shallow": normalized_potts_loss(
            shallow,
            resize_area(probs, size),
            resize_mask(valid, size),
            mode=shallow_mode,
            radius=shallow_radius,
            backend=shallow_backend,
        )
    }
    if deep_features is not None:
        size = tuple(deep_features.shape[-2:])
        terms["deep"] = beta * normalized_potts_loss(
            deep_features.detach().float() / sigma_deep,
            resize_area(probs, size),
            resize_mask(valid, size),
            mode=deep_mode,
            radius=deep_radius,
        )
    return terms
