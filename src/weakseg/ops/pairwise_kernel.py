"""Exact Gaussian pairwise kernels applied to per-pixel values: ``out = R·W·R·v`` without an N×N matrix.

``W_ij = exp(-|f_i - f_j|² / 2)`` over pixel features ``f`` that are already divided by their
bandwidths (e.g. ``[x/σ_xy, y/σ_xy, r/σ_rgb, g/σ_rgb, b/σ_rgb]``), and ``R = diag(roi)``. This product
is the core of the dense CRF loss (Tang et al. 2018), the Gated CRF loss (Obukhov et al. 2019) and
DFR's regularised loss. Two evaluation modes share one entry point:

* ``"dense"`` (all pairs): a Gaussian kernel is attention in disguise. With
  ``q_i = [f_i, -|f_i|²/2, 1]`` and ``k_j = [f_j, 1, -|f_j|²/2]``, ``q_i·k_j = -|f_i - f_j|²/2``, so
  fused ``scaled_dot_product_attention`` (scale 1) evaluates ``Σ_j w_ij v_j / Σ_j w_ij`` in O(N)
  memory for any feature dimension. The softmax normaliser ``Z_i`` is recovered with one extra key
  whose score is 0 (an all-zero key) and whose value is ``[0, …, 0, 1]``: its output channel is
  ``exp(0)/Z_i``. Every real score is ≤ 0 and the extra key scores exactly 0, so the softmax's row
  maximum is 0, ``1 ≤ Z_i ≤ N + 1`` and nothing overflows; far pairs underflow harmlessly to 0.
  Keys outside the ROI get ``k_j = [0, …, 0, -10⁴]`` (score -10⁴, weight exactly 0 in fp32), so they
  enter neither the weighted sum nor the normaliser, with no attention mask at all.
* ``"local"``: only pairs with ``|dx|, |dy| ≤ radius`` (a square window, as Gated CRF's unfold).
  Evaluated as a loop over the window's offsets on shifted slices, each unordered pair once, so
  memory stays O(N·(C + D)) instead of unfold's (2r+1)²·N·C.

Both modes are ``torch.autograd.Function`` s whose backward passes re-use the forward evaluator
rather than storing per-pair intermediates: because ``W`` is symmetric, ``∂L/∂v = R·W·R·g``; the
gradient with respect to the features is ``-Σ_j r_i r_j w_ij (f_i - f_j)(g_i·v_j + g_j·v_i)``, which in
dense mode expands into kernel products of ``f ⊙ v`` and ``f ⊙ g`` (D·C extra value channels, only
computed when the features require a gradient — CRF losses usually feed image features that do not).
On CPU this is also far faster than SDPA's own fused backward.

**Backends.** ``backend="exact"`` (the default) is everything above. ``"lattice"`` replaces dense mode by the
permutohedral-lattice approximation of :mod:`weakseg.ops.lattice` (linear in the number of pixels, the
approximation pydensecrf2 and rloss's reference make; gradient to the values only), and ``"auto"`` picks
by the number of pixels, the feature dimension and the device (:func:`weakseg.ops.lattice.choose_backend`;
exact whenever the features need a gradient). Local mode is always exact. With the lattice,
``include_self=False`` subtracts the lattice's own self weight (:meth:`PermutohedralLattice.self_weights`)
instead of 1.

Precision: everything runs in fp32 with autocast disabled (inputs of any float dtype are cast; the
output is fp32). In dense mode the score ``f_i·f_j - |f_i|²/2 - |f_j|²/2`` loses ~``ε·|f|²`` absolutely
to cancellation, so features are centred per image (mean over ROI pixels) first; with centred
``|f|² ≲ 300`` the weights are within ~3e-5 relative of the exact ones, and typically ~1e-6 (see
tests/ops/test_pairwise_kernel.py for the measured tolerances).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from weakseg.ops.lattice import PermutohedralLattice, lattice_gaussian_filter, resolve_backend

__all__ = [
    "GaussianAffinityMatrix",
    "gaussian_affinity_apply",
    "kernel_features_rgbxy",
    "naive_gaussian_affinity_apply",
]

_EXCLUDED_SCORE = -1.0e4  # exp(-1e4) == 0 exactly in fp32: an excluded key never carries weight
_SMALLEST_NORMAL_SCORE = -87.0  # exp(-87) = 1.6e-38, just above fp32's smallest normal number
_SMALLEST_NORMAL_WEIGHT = math.exp(_SMALLEST_NORMAL_SCORE) * (1.0 + 1e-6)
_MAX_HEAD_DIM = 128  # value channels per fused-attention call (GPU kernels prefer head dims <= 128)
_FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def gaussian_affinity_apply(
    features: Tensor,
    values: Tensor,
    roi: Tensor | None = None,
    *,
    mode: str = "dense",
    radius: int = 5,
    include_self: bool = False,
    backend: str = "exact",
) -> Tensor:
    """``out_i = roi_i · Σ_j roi_j · exp(-|f_i - f_j|²/2) · v_j`` for every pixel ``i``.

    Args:
        features: [B, D, H, W] kernel features, already divided by their bandwidths.
        values: [B, C, H, W] what the kernel multiplies (e.g. softmax probabilities).
        roi: [B, H, W] bool or float; pixels outside (0) neither receive (their output is 0) nor
            contribute. ``None`` = every pixel. Float values act as per-pixel weights on both sides.
        mode: ``"dense"`` (every pair in the image) or ``"local"`` (``|dx|, |dy| <= radius``).
        radius: half-size of the local window (ignored in dense mode).
        include_self: whether the ``j == i`` term (``w_ii = 1``) is included. The default ``False``
            makes ``out`` a pure message from the *other* pixels, as in mean-field CRF inference and
            Gated CRF (which zeroes the window centre); the dense CRF loss (Tang et al.; its
            permutohedral filter includes the centre, ``w_ii = 1``) passes ``True``.
        backend: ``"exact"``, ``"lattice"`` (dense mode only) or ``"auto"`` (see the module docstring).

    Returns:
        [B, C, H, W] fp32 (computed in fp32 with autocast disabled, whatever the input dtypes).
        Differentiable with respect to ``values``, and to ``features`` with the exact backend.
    """
    feats, vals, weights = _check_and_prepare(features, values, roi)
    if _use_lattice(backend, mode, features):
        with torch.autocast(device_type=vals.device.type, enabled=False):
            lattice = PermutohedralLattice(feats, weights if roi is not None else None)
            out = lattice_gaussian_filter(feats, vals, lattice=lattice)
            if not include_self:
                out = out - lattice.self_weight_map() * vals
            return out
    with torch.autocast(device_type=vals.device.type, enabled=False):
        if mode == "dense":
            return _DenseGaussian.apply(feats, vals, weights, include_self)
        if mode == "local":
            if radius < 1:
                raise ValueError(f"local mode needs radius >= 1, got {radius}")
            return _LocalGaussian.apply(feats, vals, weights, int(radius), include_self)
    raise ValueError(f"unknown mode '{mode}'; expected 'dense' or 'local'")


class GaussianAffinityMatrix:
    """The dense-mode operator of :func:`gaussian_affinity_apply` held as explicit ``[B, N, N]`` matrices.

    For small grids applied many times to the same features (the mean-field iterations of a dense CRF on
    a coarse grid): the kernel's ``N²`` exponentials are computed once, and each application is one
    batched matrix product instead of a fused-attention pass that recomputes them. Same result as
    ``gaussian_affinity_apply(features, ·, roi, mode="dense", include_self=include_self)`` up to fp32
    rounding: the squared distances come from one matrix product of centred features, as in the fused
    pass (the module doc's precision note; so meant for fp32 products without TF32, as on a CPU), and
    weights below ``exp(-87)`` (fp32's smallest normal number is 1.2e-38) are 0. Memory ``4·B·N²`` bytes,
    also at the peak of the construction (:meth:`fits`); no gradient to the features or the ROI.

    Args:
        features: [B, D, H, W] kernel features, already divided by their bandwidths.
        roi: [B, H, W] bool or float, as in :func:`gaussian_affinity_apply`; None = every pixel.
        include_self: whether the ``j == i`` term (weight ``r_i²``) is kept.
        shared: every image has the first image's features (e.g. position-only features on one grid):
            one ``[N, N]`` matrix serves the batch (the ROI still applies per image).
    """

    def __init__(
        self, features: Tensor, roi: Tensor | None = None, *, include_self: bool = False, shared: bool = False
    ) -> None:
        feats, _, weights = _check_and_prepare(features, features[:, :1], roi)
        h, w = feats.shape[-2:]
        with torch.no_grad(), torch.autocast(device_type=feats.device.type, enabled=False):
            f = feats.detach()[:1] if shared else feats.detach()
            f = f.flatten(2).transpose(1, 2)  # [B', N, D]
            f = f - f.mean(1, keepdim=True)  # distances are translation invariant; centring keeps |f|² small
            half_sq = 0.5 * f.square().sum(-1)  # [B', N]
            # score_ij = f_i·f_j - |f_i|²/2 - |f_j|²/2 = -|f_i - f_j|²/2, clipped at 0 against rounding;
            # every step in place, so the construction holds one [B', N, N] buffer
            score = torch.bmm(f, f.transpose(1, 2)).sub_(half_sq[:, :, None]).sub_(half_sq[:, None, :])
            score.clamp_(_SMALLEST_NORMAL_SCORE, 0.0)
            # exp of a score below -87 is subnormal or 0 and takes a slow path on x86: clipped to -87
            # above, its weight exp(-87) is then zeroed (with the few whose score lies within 1e-6 of it)
            matrix = F.threshold(score.exp_(), _SMALLEST_NORMAL_WEIGHT, 0.0, inplace=True)
            if not include_self:
                matrix.diagonal(dim1=1, dim2=2).zero_()
        self.matrix = matrix  # [B' (1 if shared), N, N], W without the ROI
        self.weights = weights.detach().flatten(1)  # [B, N]; no gradient to a float ROI, as the fused path
        self.shape = (h, w)

    @staticmethod
    def fits(batch: int, height: int, width: int, budget_bytes: int) -> bool:
        """Whether the fp32 matrices of ``batch`` images of ``height x width`` fit in ``budget_bytes``."""
        return 4 * batch * (height * width) ** 2 <= budget_bytes

    def apply(self, values: Tensor) -> Tensor:
        """``out_i = r_i Σ_j W_ij r_j v_j``: [B, C, H, W] -> fp32 [B, C, H, W] (a gradient to ``values``)."""
        b, c = values.shape[:2]
        if tuple(values.shape[-2:]) != self.shape or b != self.weights.shape[0]:
            raise ValueError(
                f"values {tuple(values.shape)} do not match the matrix of {self.weights.shape[0]} images "
                f"of {self.shape}"
            )
        r = self.weights[:, None, :]
        with torch.autocast(device_type=values.device.type, enabled=False):
            rv = values.float().flatten(2) * r  # [B, C, N]
            if self.matrix.shape[0] == 1 and b > 1:  # one matrix for the batch: a single product
                out = (rv.reshape(b * c, -1) @ self.matrix[0]).view(b, c, -1)
            else:  # W is symmetric: (W rv^T)^T = rv W
                out = torch.bmm(rv, self.matrix)
        return (out * r).view(b, c, *self.shape)


def kernel_features_rgbxy(
    image_rgb255: Tensor, sigma_rgb: float, sigma_xy: float, scale: float = 1.0
) -> Tensor:
    """Bilateral features ``[x/σ_xy, y/σ_xy, r/σ_rgb, g/σ_rgb, b/σ_rgb]`` of an image.

    Args:
        image_rgb255: [B, 3, H, W] colours in 0..255 (any float dtype).
        sigma_rgb: colour bandwidth, in 0..255 units.
        sigma_xy: spatial bandwidth in pixels of the ORIGINAL resolution.
        scale: the factor by which ``image_rgb255`` was resized from the original image. A pixel
            with column index ``j`` on this grid sits at ``x = j / scale`` original pixels (likewise
            ``y``), so ``σ_xy`` keeps its meaning on a downsampled grid. This equals rloss's choice
            of dividing grid indices by ``σ_xy·scale``.

    Returns:
        [B, 5, H, W] fp32 features.
    """
    if image_rgb255.dim() != 4 or image_rgb255.shape[1] != 3:
        raise ValueError(f"image_rgb255 must be [B, 3, H, W], got {tuple(image_rgb255.shape)}")
    if sigma_rgb <= 0 or sigma_xy <= 0 or scale <= 0:
        raise ValueError("sigma_rgb, sigma_xy and scale must be positive")
    b, _, h, w = image_rgb255.shape
    dev = image_rgb255.device
    ys = torch.arange(h, device=dev, dtype=torch.float32) / (scale * sigma_xy)
    xs = torch.arange(w, device=dev, dtype=torch.float32) / (scale * sigma_xy)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    xy = torch.stack([grid_x, grid_y]).unsqueeze(0).expand(b, 2, h, w)
    return torch.cat([xy, image_rgb255.float() / sigma_rgb], dim=1)


def naive_gaussian_affinity_apply(
    features: Tensor,
    values: Tensor,
    roi: Tensor | None = None,
    *,
    mode: str = "dense",
    radius: int = 5,
    include_self: bool = False,
) -> Tensor:
    """Reference for :func:`gaussian_affinity_apply`: builds each image's [N, N] matrix explicitly.

    Same arguments and result (fp32); O(N²) memory, for tests and benchmarks only. Squared distances
    are accumulated from exact per-dimension differences (no cancellation); gradients come from plain
    autograd through the matrix.
    """
    if mode not in ("dense", "local"):
        raise ValueError(f"unknown mode '{mode}'; expected 'dense' or 'local'")
    feats, vals, weights = _check_and_prepare(features, values, roi)
    b, c, h, w = vals.shape
    window = None
    if mode == "local":
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ys, xs = ys.flatten().to(feats.device), xs.flatten().to(feats.device)
        window = ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)
    outs = []
    for n in range(b):
        f = feats[n].flatten(1)  # [D, N]
        dist = torch.zeros(h * w, h * w, device=f.device)
        for fd in f:
            dist = dist + (fd[:, None] - fd[None]).pow(2)
        kernel = torch.exp(-0.5 * dist)
        if window is not None:
            kernel = kernel * window
        if not include_self:
            kernel = kernel * (1.0 - torch.eye(h * w, device=f.device))
        if roi is not None:
            r = weights[n].flatten()
            kernel = kernel * r[:, None] * r[None]
        outs.append((vals[n].flatten(1) @ kernel.T).reshape(c, h, w))  # out_i = Σ_j K_ij v_j
    return torch.stack(outs)


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------
def _check_and_prepare(features: Tensor, values: Tensor, roi: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Validate shapes; return fp32 ``features``, ``values`` and a float ROI weight map [B, H, W]."""
    if features.dim() != 4 or values.dim() != 4:
        raise ValueError(
            f"features and values must be [B, D, H, W] and [B, C, H, W], got {tuple(features.shape)} "
            f"and {tuple(values.shape)}"
        )
    b, _, h, w = features.shape
    if values.shape[0] != b or values.shape[-2:] != (h, w):
        raise ValueError(f"values {tuple(values.shape)} do not match features {tuple(features.shape)}")
    if roi is None:
        weights = features.new_ones((b, h, w), dtype=torch.float32)
    else:
        if roi.shape != (b, h, w):
            raise ValueError(f"roi must be [B, H, W] = {(b, h, w)}, got {tuple(roi.shape)}")
        weights = roi.to(device=features.device, dtype=torch.float32)
    return features.float(), values.float(), weights


def _use_lattice(backend: str, mode: str, features: Tensor) -> bool:
    """Whether :func:`gaussian_affinity_apply` takes the lattice (see its ``backend``)."""
    if mode not in ("dense", "local"):
        raise ValueError(f"unknown mode '{mode}'; expected 'dense' or 'local'")
    if backend == "lattice" and mode == "local":
        raise ValueError("backend 'lattice' replaces dense mode; local mode is exact only")
    if mode == "local" or backend == "exact":
        resolve_backend(backend, 0, 0, features.device)  # validates the name
        return False
    if backend == "auto" and features.requires_grad and torch.is_grad_enabled():
        return False  # the lattice gives no feature gradient: keep the exact one
    pixels = features[0, 0].numel() if features.shape[0] else 0
    return resolve_backend(backend, pixels, features.shape[1], features.device) == "lattice"


def _self_term(values: Tensor, weights: Tensor) -> Tensor:
    """The ``j == i`` contribution ``r_i · w_ii · r_i · v_i`` with ``w_ii = 1``: [B, C, H, W]."""
    return values * weights.pow(2).unsqueeze(1)


# --------------------------------------------------------------------------------------------------
# dense mode: fused attention
# --------------------------------------------------------------------------------------------------
def _centre(f: Tensor, r: Tensor) -> Tensor:
    """Subtract each image's mean feature over its ROI pixels (all pixels if the ROI is empty).

    Distances are translation invariant; centring keeps ``|f|²`` small so that the attention score
    ``f_i·f_j - |f_i|²/2 - |f_j|²/2`` does not lose precision to cancellation. f: [B, N, D], r: [B, N].
    """
    inside = (r != 0).float()
    count = inside.sum(1, keepdim=True)
    mean = (f * inside.unsqueeze(-1)).sum(1) / count.clamp_min(1.0)
    mean = torch.where(count > 0, mean, f.mean(1))
    return f - mean.unsqueeze(1)


def _queries_keys(f: Tensor, r: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Query and key tensors [B, 1, N(+1), width] with ``q_i·k_j = -|f_i - f_j|²/2`` (see module doc).

    Keys outside the ROI score ``_EXCLUDED_SCORE``; the appended all-zero key scores 0 everywhere.
    """
    b, n, d = f.shape
    half_sq = 0.5 * f.pow(2).sum(-1, keepdim=True)
    ones = torch.ones_like(half_sq)
    q = torch.cat([f, -half_sq, ones], dim=-1)
    k = torch.cat([f, ones, -half_sq], dim=-1)
    excluded = torch.zeros_like(k)
    excluded[..., -1] = _EXCLUDED_SCORE
    k = torch.where((r != 0).unsqueeze(-1), k, excluded)
    k = torch.cat([k, k.new_zeros(b, 1, d + 2)], dim=1)  # the normaliser key: score exactly 0
    pad = width - (d + 2)
    return F.pad(q, (0, pad)).unsqueeze(1), F.pad(k, (0, pad)).unsqueeze(1)


def _value_chunks(c: int, d: int) -> tuple[int, Iterator[tuple[int, int]]]:
    """Head width and ``[start, stop)`` ranges of value channels per fused-attention call.

    q, k and v share one last dimension (PyTorch's fused CPU kernel requires it; with unequal dims it
    silently falls back to a path that builds the N×N matrix), rounded up to a multiple of 8.
    """
    qk_dim = d + 2
    per_call = max(min(c, _MAX_HEAD_DIM - 1), qk_dim - 1, 1)
    width = max(qk_dim, per_call + 1)
    width = -(-width // 8) * 8
    return width, ((s, min(s + per_call, c)) for s in range(0, c, per_call))


def _dense_kernel_sum(f: Tensor, r: Tensor, v: Tensor) -> Tensor:
    """``Σ_j r_j w_ij v_j`` for every ``i`` (diagonal included, no row mask): [B, N, C] fp32.

    f: [B, N, D] centred features, r: [B, N] ROI weights, v: [B, N, C] values.
    """
    b, n, c = v.shape
    width, chunks = _value_chunks(c, f.shape[-1])
    q, k = _queries_keys(f, r, width)
    rv = v * r.unsqueeze(-1)
    outs = []
    for start, stop in chunks:
        cw = stop - start
        val = F.pad(rv[..., start:stop], (0, width - cw))  # channel cw (the normaliser) is 0 here
        extra = val.new_zeros(b, 1, width)
        extra[..., cw] = 1.0  # value e = [0, …, 0, 1] of the normaliser key
        val = torch.cat([val, extra], dim=1).unsqueeze(1)
        with sdpa_kernel(_FUSED_BACKENDS):
            att = F.scaled_dot_product_attention(q, k, val, scale=1.0).squeeze(1)  # [B, N, width]
        # att[..., :cw] = Σ_j w_ij v_j / Z_i and att[..., cw] = 1 / Z_i (Z_i >= 1, never tiny)
        outs.append(att[..., :cw] / att[..., cw : cw + 1])
    return torch.cat(outs, dim=-1)


class _DenseGaussian(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, feats: Tensor, vals: Tensor, weights: Tensor, include_self: bool
    ) -> Tensor:
        b, c, h, w = vals.shape
        f = _centre(feats.flatten(2).transpose(1, 2), weights.flatten(1))
        r = weights.flatten(1)
        v = vals.flatten(2).transpose(1, 2)
        wv = _dense_kernel_sum(f, r, v) * r.unsqueeze(-1)  # R W R v, diagonal included: [B, N, C]
        out = wv.transpose(1, 2).reshape(b, c, h, w)
        if not include_self:
            out = out - _self_term(vals, weights)
        ctx.save_for_backward(f, v, r, wv)
        ctx.include_self = include_self
        ctx.shape = (b, c, h, w, feats.shape[1])
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        f, v, r, wv = ctx.saved_tensors
        b, c, h, w, d = ctx.shape
        need_f, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(device_type=grad_out.device.type, enabled=False):
            g = grad_out.float().flatten(2).transpose(1, 2)  # [B, N, C]
            rr = r.unsqueeze(-1)
            # one fused pass: W R g (for ∂v) and, when needed, W R (f ⊙ v), W R (f ⊙ g) (for ∂f)
            channels = [g]
            if need_f:
                outer = [(f.unsqueeze(-1) * x.unsqueeze(-2)).flatten(2) for x in (v, g)]  # [B, N, D·C] each
                channels += outer
            sums = _dense_kernel_sum(f, r, torch.cat(channels, dim=-1))
            wg = sums[..., :c]
            grad_v = grad_f = None
            if need_v:
                gv = wg * rr
                if not ctx.include_self:
                    gv = gv - g * rr.pow(2)
                grad_v = gv.transpose(1, 2).reshape(b, c, h, w)
            if need_f:
                # ∂L/∂f_i = -r_i Σ_j r_j w_ij (f_i - f_j)(g_i·v_j + g_j·v_i); the j == i terms cancel, so
                # the diagonal-inclusive sums are exact.
                w_fv = sums[..., c : c + d * c].reshape(b, -1, d, c)
                w_fg = sums[..., c + d * c :].reshape(b, -1, d, c)
                a = (g * wv).sum(-1, keepdim=True)  # g_i · (R W R v)_i
                bb = (v * wg).sum(-1, keepdim=True) * rr  # v_i · r_i (W R g)_i
                cross = (w_fv * g.unsqueeze(-2)).sum(-1) + (w_fg * v.unsqueeze(-2)).sum(-1)
                gf = -(f * (a + bb) - cross * rr)
                grad_f = gf.transpose(1, 2).reshape(b, d, h, w)
        return grad_f, grad_v, None, None


# --------------------------------------------------------------------------------------------------
# local mode: shifted slices over the window's offsets
# --------------------------------------------------------------------------------------------------
def _half_offsets(radius: int) -> Iterator[tuple[int, int]]:
    """One offset of each ± pair in the (2r+1)² window, centre excluded."""
    for dy in range(0, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy > 0 or dx > 0:
                yield dy, dx


def _pad(x: Tensor, radius: int) -> Tensor:
    return F.pad(x, (radius, radius, radius, radius))


Slices = tuple[slice, slice, slice, slice]


def _window_slices(radius: int, dy: int, dx: int, h: int, w: int) -> tuple[Slices, Slices]:
    """Slices of the image (``i``) and of its ``(dy, dx)``-shifted copy (``j = i + d``) in a padded tensor."""
    every = slice(None)
    centre = (every, every, slice(radius, radius + h), slice(radius, radius + w))
    shifted = (every, every, slice(radius + dy, radius + dy + h), slice(radius + dx, radius + dx + w))
    return centre, shifted


def _pair_weights(fp: Tensor, rp: Tensor, centre: Slices, shifted: Slices) -> tuple[Tensor, Tensor]:
    """Pixel pairs ``(i, j)`` of one offset: ``r_i r_j w_ij`` [B, 1, H, W] and ``f_i - f_j`` [B, D, H, W].

    fp, rp: features and ROI zero-padded by the radius (neighbours outside the image have r = 0).
    """
    diff = fp[centre] - fp[shifted]
    weight = torch.exp(-0.5 * diff.pow(2).sum(1, keepdim=True)) * rp[centre] * rp[shifted]
    return weight, diff


def _local_apply(fp: Tensor, rp: Tensor, v: Tensor, radius: int) -> Tensor:
    """``Σ_{j ≠ i in window} r_i r_j w_ij v_j``: [B, C, H, W]; fp, rp padded, v unpadded."""
    h, w = v.shape[-2:]
    vp = _pad(v, radius)
    out = torch.zeros_like(vp)
    for dy, dx in _half_offsets(radius):
        centre, shifted = _window_slices(radius, dy, dx, h, w)
        weight, _ = _pair_weights(fp, rp, centre, shifted)
        out[centre] += weight * vp[shifted]  # i receives from j = i + d
        out[shifted] += weight * vp[centre]  # j receives from i (W is symmetric)
    return out[_window_slices(radius, 0, 0, h, w)[0]]


def _local_feature_grad(fp: Tensor, rp: Tensor, v: Tensor, g: Tensor, radius: int) -> Tensor:
    """``∂L/∂f`` for ``L = Σ g·out``: per pair ``t = r_i r_j w_ij (f_i - f_j)(g_i·v_j + g_j·v_i)``,
    ``∂f_i -= t`` and ``∂f_j += t``. Returns [B, D, H, W]."""
    h, w = v.shape[-2:]
    gp, vp = _pad(g, radius), _pad(v, radius)
    acc = torch.zeros_like(fp)
    for dy, dx in _half_offsets(radius):
        centre, shifted = _window_slices(radius, dy, dx, h, w)
        weight, diff = _pair_weights(fp, rp, centre, shifted)
        coupling = (gp[centre] * vp[shifted] + gp[shifted] * vp[centre]).sum(1, keepdim=True)
        t = weight * coupling * diff
        acc[centre] -= t
        acc[shifted] += t
    return acc[_window_slices(radius, 0, 0, h, w)[0]]


class _LocalGaussian(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, feats: Tensor, vals: Tensor, weights: Tensor, radius: int, include_self: bool
    ) -> Tensor:
        fp, rp = _pad(feats, radius), _pad(weights.unsqueeze(1), radius)
        out = _local_apply(fp, rp, vals, radius)
        if include_self:
            out = out + _self_term(vals, weights)
        ctx.save_for_backward(feats, vals, weights)
        ctx.radius, ctx.include_self = radius, include_self
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        feats, vals, weights = ctx.saved_tensors
        radius = ctx.radius
        with torch.autocast(device_type=grad_out.device.type, enabled=False):
            g = grad_out.float()
            fp, rp = _pad(feats, radius), _pad(weights.unsqueeze(1), radius)
            grad_v = grad_f = None
            if ctx.needs_input_grad[1]:
                grad_v = _local_apply(fp, rp, g, radius)  # W is symmetric: ∂L/∂v = R W R g
                if ctx.include_self:
                    grad_v = grad_v + _self_term(g, weights)
            if ctx.needs_input_grad[0]:
                grad_f = _local_feature_grad(fp, rp, vals, g, radius)
        return grad_f, grad_v, None, None, None
