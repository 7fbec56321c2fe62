"""Batched mean-field dense CRF (Krähenbühl & Koltun, NIPS 2011) in torch, on GPU or CPU.

The model is the fully connected CRF with Potts compatibility and the usual two kernels:

* appearance-free smoothness ("Gaussian"): ``k_g(i, j) = exp(-|p_i - p_j|² / 2 sxy_g²)``;
* appearance ("bilateral"): ``k_b(i, j) = exp(-|p_i - p_j|² / 2 sxy_b² - |I_i - I_j|² / 2 srgb²)``,

with pixel positions ``p`` in pixels of the input resolution and colours ``I`` in 0..255.

**Which mean field.** The update follows the ``densecrf`` library that ``pydensecrf`` wraps (read from
``DenseCRF::inference``, ``DenseKernel`` and ``PottsCompatibility`` in its source; written anew here):

1. ``Q⁰ = softmax(-U)``;
2. per kernel ``m``, with ``n_m = 1 / sqrt(K_m·1)`` (the kernel's row sums, computed once per image),
   the message is ``n_m ⊙ K_m (n_m ⊙ Q)``: ``NORMALIZE_SYMMETRIC``, the default of ``addPairwise*``;
3. Potts compatibility ``w_m`` turns the message into an energy ``-w_m · message``, so
   ``Q ← softmax(-U + Σ_m w_m · n_m ⊙ K_m (n_m ⊙ Q))``, repeated ``num_iters`` times.

``densecrf`` does **not** remove the ``j == i`` term: its permutohedral lattice splats and slices every
pixel onto itself, and neither ``DenseKernel::filter`` nor ``DenseCRF::inference`` subtracts it (the
2011 paper writes ``Σ_{j≠i}``). ``CRFParams.include_self=True`` (the default) follows the library, in the
row sums of the normalisation as well; ``False`` gives the paper's form.

**Backends: exact kernel or lattice** (``CRFParams.backend``).

* ``"exact"``: ``K_m`` is the exact Gaussian, applied through
  :func:`weakseg.ops.pairwise_kernel.gaussian_affinity_apply` (dense mode: fused attention, O(N)
  memory, O(N²) work per application: meant for a GPU or small grids; on a CPU, on grids small enough,
  the kernel is held as explicit matrices, computed once and reused by every iteration:
  :class:`~weakseg.ops.pairwise_kernel.GaussianAffinityMatrix`). ``pydensecrf`` evaluates a
  permutohedral-lattice approximation (lumpy, with an approximate self weight), so the two agree closely
  but not exactly: ≥ 98% of the argmax labels (tests/postprocess/test_crf.py).
* ``"lattice"``: ``K_m`` is that same permutohedral lattice (:mod:`weakseg.ops.lattice`, pure torch, CPU
  or CUDA), built once per image and kernel and reused by every iteration; its filter equals densecrf's
  to float precision, so the result is pydensecrf2's up to rounding, batched, with ``valid`` masks, and
  linear in the number of pixels. On the CPU it runs at full resolution in about pydensecrf2's time
  (benchmarks/crf_lattice_vs_pydensecrf.py).
* ``"auto"`` (default): the lattice from a few thousand pixels per image on CPU (more on CUDA), the
  exact kernel below (:func:`weakseg.ops.lattice.choose_backend`).

``scale`` still runs the CRF on a resized grid (bandwidths keep their meaning in pixels of the input) and
upsamples the marginals bilinearly; ``gaussian_truncate`` evaluates the exact backend's small spatial
kernel in a local window of ``truncate · sxy_g`` pixels instead of over all pairs (ignored by the
lattice).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from weakseg.ops.lattice import BACKENDS, LatticeOperator, PermutohedralLattice, resolve_backend
from weakseg.ops.pairwise_kernel import (
    GaussianAffinityMatrix,
    gaussian_affinity_apply,
    kernel_features_rgbxy,
)
from weakseg.ops.resize import resize_bilinear, scaled_size

__all__ = [
    "CRFParams",
    "crf_labels",
    "crf_refine_labels",
    "dense_crf",
    "pydensecrf_reference",
    "refine_probs_with_crf",
    "unary_from_labels",
    "unary_from_probs",
]

InputType = Literal["probs", "logits", "unary"]
_NORM_EPS = 1e-20  # densecrf's guard in 1 / sqrt(K·1 + eps)
#: on a CPU the exact dense kernels of a mean field are held as explicit [B, N, N] matrices (computed once,
#: reused by every iteration) while they take at most this many bytes each: coarse CRF grids, e.g. AAL's
#: on-the-fly pseudo masks (28x28 cells for 16 maps: 39 MB)
_MATRIX_BUDGET_BYTES = 1 << 27
_MIN_ENERGY = -60.0  # lattice mean field: floor of the shifted energies (exp(-60) ~ 1e-26, no denormals)


@dataclass(frozen=True)
class CRFParams:
    """Settings of the dense CRF; bandwidths are in pixels / 0..255 colour units of the input image.

    Attributes:
        num_iters: mean-field iterations.
        gaussian_sxy, gaussian_compat: spatial bandwidth and Potts weight of the smoothness kernel.
        bilateral_sxy, bilateral_srgb, bilateral_compat: spatial and colour bandwidths and Potts weight
            of the appearance kernel.
        gt_prob: confidence given to a hard label by :func:`unary_from_labels` (label-map inputs only).
        prob_clip: probabilities are clipped to ``[prob_clip, 1]`` before ``-log`` (pydensecrf's
            ``unary_from_softmax`` default 1e-5).
        scale: run the CRF on a grid resized by this factor (1 = input resolution).
        include_self: keep the ``j == i`` kernel term, as densecrf does (see the module docstring).
        gaussian_truncate: ``None`` evaluates the smoothness kernel over all pairs (exact); a number
            ``t`` keeps only pairs with ``|dx|, |dy| <= ceil(t · gaussian_sxy · scale)`` grid pixels
            (weights dropped are below ``exp(-t²/2)``), which is much faster for small ``sxy``
            (exact backend only).
        backend: ``"exact"``, ``"lattice"`` or ``"auto"`` (see the module docstring).
    """

    num_iters: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    gt_prob: float = 0.7
    prob_clip: float = 1e-5
    scale: float = 1.0
    include_self: bool = True
    gaussian_truncate: float | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got '{self.backend}'")
        if self.num_iters < 0:
            raise ValueError(f"num_iters must be >= 0, got {self.num_iters}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb", "scale", "prob_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.gt_prob < 1.0:
            raise ValueError(f"gt_prob must lie in (0, 1), got {self.gt_prob}")
        if self.gaussian_truncate is not None and not self.gaussian_truncate > 0:
            raise ValueError(f"gaussian_truncate must be positive or None, got {self.gaussian_truncate}")

    @classmethod
    def postprocess(cls, **overrides: Any) -> CRFParams:
        """DeepLab-style post-processing as in psa/SEAM's ``crf_inference``: Gaussian sxy 3 / compat 3,
        bilateral sxy 80 / srgb 13 / compat 10, 10 iterations, unary ``-log(clip(p, 1e-5))``."""
        return replace(cls(), **overrides)

    @classmethod
    def pseudo_label(cls, **overrides: Any) -> CRFParams:
        """IRN/SFC's ``crf_inference_label`` for pseudo labels: unary from a label map with
        ``gt_prob`` 0.7, Gaussian sxy 3 / compat 3, bilateral sxy 50 / srgb 5 / compat 10, and 12
        iterations (SFC's ``tool/imutils.py``; IRN's own default is 10)."""
        base = cls(num_iters=12, bilateral_sxy=50.0, bilateral_srgb=5.0, bilateral_compat=10.0, gt_prob=0.7)
        return replace(base, **overrides)


# --------------------------------------------------------------------------------------------------
# unaries
# --------------------------------------------------------------------------------------------------
def unary_from_probs(probs: Tensor, clip: float = 1e-5) -> Tensor:
    """``U = -log(clip(p, clip, 1))``: [B, K, H, W] probabilities -> [B, K, H, W] fp32 energies."""
    return -probs.float().clamp(min=clip, max=1.0).log()


def unary_from_labels(labels: Tensor, num_classes: int, gt_prob: float, ignore_index: int = 255) -> Tensor:
    """Unary of a hard label map, as pydensecrf's ``unary_from_labels(..., zero_unsure=False)``.

    The labelled class gets ``-log(gt_prob)`` and every other class ``-log((1 - gt_prob) / (K - 1))``.
    Pixels equal to ``ignore_index`` get the uniform energy ``-log(1 / K)`` (pydensecrf's "unsure").

    Args:
        labels: [B, H, W] integer labels in ``0..K-1`` or ``ignore_index``.
        num_classes: K (>= 2).
        gt_prob: confidence of the given label, in (0, 1).

    Returns:
        [B, K, H, W] fp32 energies.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 < gt_prob < 1.0:
        raise ValueError(f"gt_prob must lie in (0, 1), got {gt_prob}")
    labels = labels.long()
    unsure = labels == ignore_index
    if bool(((labels < 0) | (labels >= num_classes))[~unsure].any()):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} or equal ignore_index={ignore_index}")
    off_energy = -math.log((1.0 - gt_prob) / (num_classes - 1))
    onehot = F.one_hot(labels.masked_fill(unsure, 0), num_classes).permute(0, 3, 1, 2).float()
    unary = off_energy + (-math.log(gt_prob) - off_energy) * onehot
    return torch.where(unsure.unsqueeze(1), torch.full_like(unary, math.log(num_classes)), unary)


def _to_unary(scores: Tensor, input_type: InputType, clip: float) -> Tensor:
    if input_type == "probs":
        return unary_from_probs(scores, clip)
    if input_type == "logits":
        return -torch.log_softmax(scores.float(), dim=1)
    if input_type == "unary":
        return scores.float()
    raise ValueError(f"input_type must be 'probs', 'logits' or 'unary', got '{input_type}'")


# --------------------------------------------------------------------------------------------------
# inputs: image range, resizing for ``scale``
# --------------------------------------------------------------------------------------------------
def _image_255(image_rgb: Tensor) -> Tensor:
    """uint8 0..255 or float 0..1 images [B, 3, H, W] -> fp32 0..255."""
    if image_rgb.dim() != 4 or image_rgb.shape[1] != 3:
        raise ValueError(f"image_rgb must be [B, 3, H, W], got {tuple(image_rgb.shape)}")
    if image_rgb.dtype == torch.uint8:
        return image_rgb.float()
    if not image_rgb.is_floating_point():
        raise ValueError(f"image_rgb must be uint8 (0..255) or float (0..1), got {image_rgb.dtype}")
    if image_rgb.numel() and (image_rgb.min() < -1e-3 or image_rgb.max() > 1.0 + 1e-3):
        raise ValueError("a float image_rgb must hold values in [0, 1]; pass uint8 for 0..255 colours")
    return image_rgb.float() * 255.0


def _prepare(
    scores: Tensor, image_rgb: Tensor, valid: Tensor | None, params: CRFParams, input_type: InputType
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Unary [B, K, h, w], colours 0..255 [B, 3, h, w] and valid [B, h, w] on the CRF grid."""
    if scores.dim() != 4:
        raise ValueError(f"scores must be [B, K, H, W], got {tuple(scores.shape)}")
    b, _, h, w = scores.shape
    if image_rgb.shape[0] != b or tuple(image_rgb.shape[-2:]) != (h, w):
        raise ValueError(f"image_rgb {tuple(image_rgb.shape)} does not match scores {tuple(scores.shape)}")
    if valid is not None and tuple(valid.shape) != (b, h, w):
        raise ValueError(f"valid must be [B, H, W] = {(b, h, w)}, got {tuple(valid.shape)}")
    unary = _to_unary(scores, input_type, params.prob_clip)
    image = _image_255(image_rgb.to(unary.device))
    grid = scaled_size((h, w), params.scale)
    # the unary is averaged in energy (log-probability) space when the grid shrinks
    unary, image = resize_bilinear(unary, grid, antialias=True), resize_bilinear(image, grid, antialias=True)
    if valid is not None:
        valid = (
            resize_bilinear(valid.to(unary.device).float().unsqueeze(1), grid, antialias=True).squeeze(1)
            >= 0.5
        )
    return unary, image, valid


# --------------------------------------------------------------------------------------------------
# mean field
# --------------------------------------------------------------------------------------------------
@dataclass
class _Kernel:
    """One pairwise term on the CRF grid: features and Potts weight (the mean field adds the symmetric
    normaliser n = 1/sqrt(K·1))."""

    features: Tensor  # [B, D, h, w]
    compat: float
    mode: str
    radius: int
    shared: bool = False  # every image has the first image's features (the position-only kernel)


def _exact_operator(kernel: _Kernel, roi: Tensor | None, include_self: bool) -> Callable[[Tensor], Tensor]:
    """``values [B, K, h, w] -> K values`` for one kernel restricted to ``roi``, computed exactly.

    On a CPU a dense kernel is held as explicit matrices when they fit :data:`_MATRIX_BUDGET_BYTES`: its
    exponentials are then computed once per CRF instead of once per iteration. (A GPU keeps the fused
    kernel: cheap there, and exact whatever the matmul precision settings.)
    """
    b, _, h, w = kernel.features.shape
    if (
        kernel.features.device.type == "cpu"
        and kernel.mode == "dense"
        and GaussianAffinityMatrix.fits(1 if kernel.shared else b, h, w, _MATRIX_BUDGET_BYTES)
    ):
        return GaussianAffinityMatrix(
            kernel.features, roi, include_self=include_self, shared=kernel.shared
        ).apply
    return functools.partial(
        gaussian_affinity_apply,
        kernel.features,
        roi=roi,
        mode=kernel.mode,
        radius=kernel.radius,
        include_self=include_self,
    )


def _kernels(image255: Tensor, params: CRFParams, grid_scale: float) -> list[_Kernel]:
    """The smoothness and appearance kernels of ``params`` for images on a grid resized by ``grid_scale``."""
    kernels = []
    if params.gaussian_compat != 0:
        xy = kernel_features_rgbxy(image255, 1.0, params.gaussian_sxy, grid_scale)[:, :2]
        mode, radius = "dense", 1
        if params.gaussian_truncate is not None:
            radius = max(1, math.ceil(params.gaussian_truncate * params.gaussian_sxy * grid_scale))
            mode = "local" if radius < max(image255.shape[-2:]) else "dense"
        kernels.append(_Kernel(xy, params.gaussian_compat, mode, radius, shared=True))
    if params.bilateral_compat != 0:
        rgbxy = kernel_features_rgbxy(image255, params.bilateral_srgb, params.bilateral_sxy, grid_scale)
        kernels.append(_Kernel(rgbxy, params.bilateral_compat, "dense", 1))
    return kernels


def _mean_field(
    unary: Tensor,
    image255: Tensor,
    valid: Tensor | None,
    params: CRFParams,
    num_iters: int,
    grid_scale: float,
) -> Tensor:
    """``num_iters`` densecrf-style updates on one grid; returns Q [B, K, h, w] (rows sum to 1).

    Pixels outside ``valid`` neither send nor receive messages: they keep ``softmax(-U)``.
    """
    dim = 5 if params.bilateral_compat != 0 else 2
    backend = resolve_backend(params.backend, unary[0, 0].numel(), dim, unary.device)
    if backend == "lattice":
        return _mean_field_lattice(unary, image255, valid, params, num_iters, grid_scale)
    q = torch.softmax(-unary, dim=1)
    kernels = _kernels(image255, params, grid_scale) if num_iters > 0 else []
    ones = unary.new_ones(unary.shape[0], 1, *unary.shape[-2:])
    operators = [_exact_operator(kernel, valid, params.include_self) for kernel in kernels]
    # [B, 1, h, w] per kernel; outside the ROI the row sums are 0 and the norm stays finite
    norms = [torch.rsqrt(operator(ones) + _NORM_EPS) for operator in operators]
    for _ in range(num_iters):
        energy = -unary
        for kernel, operator, norm in zip(kernels, operators, norms):
            message = norm * operator(norm * q)
            energy = energy + kernel.compat * message  # Potts: -(−w · message)
        q = torch.softmax(energy, dim=1)
    return q


def _mean_field_lattice(
    unary: Tensor,
    image255: Tensor,
    valid: Tensor | None,
    params: CRFParams,
    num_iters: int,
    grid_scale: float,
) -> Tensor:
    """:func:`_mean_field` through permutohedral lattices, in the lattices' ``[P, K]`` point layout.

    Both kernels' lattices hold the same points (the ``valid`` pixels of the batch, in one order), so Q
    stays a ``[P, K]`` matrix through the iterations and is put back on the grid once at the end.
    """
    q_grid = torch.softmax(-unary, dim=1)
    kernels = _kernels(image255, params, grid_scale) if num_iters > 0 else []
    if not kernels:
        return q_grid
    lattices = [_lattice_of(kernel, valid, params, grid_scale) for kernel in kernels]
    u = lattices[0].to_points(unary)  # [P, K]
    ones = u.new_ones(u.shape[0], 1)
    operators, self_terms = [], []
    for kernel, lattice in zip(kernels, lattices):
        row_sums = lattice.filter_points(ones)
        if not params.include_self:
            self_weight = lattice.self_weights().unsqueeze(1)
            row_sums = (row_sums - self_weight).clamp_min(0.0)
        norm = torch.rsqrt(row_sums + _NORM_EPS)
        # compat · n ⊙ K (n ⊙ Q) as one operator, n and compat folded into its matrices
        operators.append(lattice.operator(before=norm, after=kernel.compat * norm))
        if not params.include_self:
            self_terms.append(-kernel.compat * norm.pow(2) * self_weight)
    # The softmax is shift invariant per pixel: subtract max_k(-U) once. With Potts weights >= 0 every
    # message is >= 0, so each pixel keeps an energy >= 0 (one exp >= 1) and the exponentials stay
    # finite; _softmax_rows checks that and falls back to the row maxima otherwise.
    base = -u
    base -= base.amax(dim=1, keepdim=True)
    # Energies below -60 are raised to -60: a class that unlikely keeps a marginal of ~1e-26 instead of
    # a float32 denormal, which would make every later exp and product several times slower on a CPU.
    # Messages are >= 0, so no energy goes below the floor later either.
    base.clamp_(min=_MIN_ENERGY)
    # Classes padded to a multiple of 4 with that floor energy (marginals ~1e-26; a class's messages only
    # reach its own energy): the sparse products run markedly faster on 4-aligned rows (21 -> 24).
    k = base.shape[1]
    if k % 4:
        base = torch.cat([base, base.new_full((base.shape[0], 4 - k % 4), _MIN_ENERGY)], dim=1)
    if self_terms:  # the paper's form (no self term): whole-matrix updates, Q kept between iterations
        q = _softmax_rows(base, out=torch.empty_like(base))
        energy = torch.empty_like(q)
        for _ in range(num_iters):
            energy.copy_(base)
            for operator in operators:
                operator(q, accumulate=energy)
            for term in self_terms:
                energy.addcmul_(term, q)
            q = _softmax_rows(energy, out=q)
    else:
        q = _blockwise_updates(base, operators, num_iters)
    return lattices[0].from_points(q[:, :k], fill=q_grid)


def _blockwise_updates(base: Tensor, operators: list[LatticeOperator], num_iters: int) -> Tensor:
    """``num_iters >= 1`` updates ``Q ← softmax(base + Σ_m op_m(Q))``, fused per block of points.

    One update needs the other points' Q only through the vertex values (splat), so the points can be
    swept block by block: a block's energy is its ``base`` rows plus the slices of the blurred vertex
    values, then its softmax, whose rows go straight into the next update's vertex values. A block's
    ``[n, K]`` rows stay in cache through all of this and Q is written out in full only once, at the
    end: about half the memory traffic of whole-matrix updates, which is what limits them on a CPU.
    Returns the final Q ``[P, K]``.
    """
    p, k = base.shape
    bounds = [(start, stop) for start, stop, _, _ in operators[0].blocks]
    largest = max(stop - start for start, stop in bounds)
    energy_block, q_block = base.new_empty(largest, k), base.new_empty(largest, k)
    vertex_values = [op.buffers(k, base)[0] for op in operators]
    out = base.new_empty(p, k)
    for index, (start, stop) in enumerate(bounds):  # Q⁰ = softmax(base), splatted
        q = _softmax_rows(base[start:stop], out=q_block[: stop - start])
        for op, values in zip(operators, vertex_values):
            op.splat(index, q, values, first=index == 0)
    for iteration in range(num_iters):
        lattices = [op.blur(values) for op, values in zip(operators, vertex_values)]
        last = iteration == num_iters - 1
        for index, (start, stop) in enumerate(bounds):
            energy = energy_block[: stop - start]
            energy.copy_(base[start:stop])
            for op, lattice in zip(operators, lattices):
                op.slice(index, lattice, energy, accumulate=True)
            q = _softmax_rows(energy, out=out[start:stop] if last else q_block[: stop - start])
            if not last:
                for op, values in zip(operators, vertex_values):
                    op.splat(index, q, values, first=index == 0)
    return out


_GRID_LATTICES: OrderedDict[tuple, PermutohedralLattice] = OrderedDict()
_GRID_LATTICE_CACHE = 4  # spatial-kernel lattices kept (a few image sizes)


def _lattice_of(
    kernel: _Kernel, valid: Tensor | None, params: CRFParams, grid_scale: float
) -> PermutohedralLattice:
    """The lattice of one kernel's features.

    The smoothness kernel's features ``[x, y]/sxy`` depend on the grid size only, so without a
    ``valid`` mask its lattice is reused for every batch of the same size (a few sizes are kept).
    """
    dim = kernel.features.shape[1]
    name = "smoothness-kernel features [x, y]/sxy" if dim == 2 else "appearance-kernel features rgbxy"
    if dim != 2 or valid is not None:
        return PermutohedralLattice(kernel.features, valid, name=name)
    key = (str(kernel.features.device), *kernel.features.shape, params.gaussian_sxy * grid_scale)
    lattice = _GRID_LATTICES.pop(key, None)
    if lattice is None:
        lattice = PermutohedralLattice(kernel.features, None, name=name)
    _GRID_LATTICES[key] = lattice  # most recently used last
    while len(_GRID_LATTICES) > _GRID_LATTICE_CACHE:
        _GRID_LATTICES.popitem(last=False)
    return lattice


def _softmax_rows(x: Tensor, out: Tensor) -> Tensor:
    """``softmax(x, dim=1)`` of a row-major ``[P, K]`` matrix whose rows are already shifted, into ``out``.

    ``exp`` is taken without subtracting each row's maximum (PyTorch's CPU softmax over a short last
    dimension such as K = 11 classes is several times slower than these three passes); if that
    overflows, or underflows to 0 in a whole row, the row maxima are subtracted after all.
    """
    torch.exp(x, out=out)
    total = out @ out.new_ones(out.shape[1], 1)  # row sums: a matrix-vector product beats sum(dim=1)
    low, high = torch.aminmax(total)
    if bool((low > 0) & torch.isfinite(high)):
        return out.mul_(total.reciprocal_())
    torch.sub(x, x.amax(dim=1, keepdim=True), out=out).exp_()
    return out.div_(out.sum(dim=1, keepdim=True))


@torch.no_grad()
def dense_crf(
    scores: Tensor,
    image_rgb: Tensor,
    *,
    params: CRFParams | None = None,
    valid: Tensor | None = None,
    num_iters: int | None = None,
    input_type: InputType = "probs",
) -> Tensor:
    """Mean-field inference of the dense CRF for a batch of images (no gradient).

    Args:
        scores: [B, K, H, W] class probabilities (``input_type="probs"``, unary ``-log(clip(p))``),
            logits (``"logits"``, unary ``-log_softmax``) or energies (``"unary"``, used as given, e.g.
            from :func:`unary_from_labels`).
        image_rgb: [B, 3, H, W] uint8 colours in 0..255, or float in [0, 1] (``batch["image"]``).
        params: kernel settings; default :meth:`CRFParams.postprocess`.
        valid: [B, H, W] bool; pixels outside (e.g. crop padding) neither send nor receive messages and
            return ``softmax(-U)``.
        num_iters: overrides ``params.num_iters``.
        input_type: see ``scores``.

    Returns:
        [B, K, H, W] fp32 marginals on ``scores``' device (each pixel's K values sum to 1). With
        ``params.scale != 1`` they are computed on the resized grid and upsampled bilinearly.
    """
    params = params or CRFParams.postprocess()
    iters = params.num_iters if num_iters is None else num_iters
    size = tuple(scores.shape[-2:])
    unary, image255, valid_grid = _prepare(scores, image_rgb, valid, params, input_type)
    grid_scale = unary.shape[-1] / size[1]  # the actual resize factor (rounded grid)
    q = _mean_field(unary, image255, valid_grid, params, iters, grid_scale)
    if q.shape[-2:] != size:
        q = resize_bilinear(q, size, antialias=True)
        q = q / q.sum(1, keepdim=True)  # bilinear weights sum to 1; this only removes rounding
    return q


def crf_labels(
    scores: Tensor,
    image_rgb: Tensor,
    *,
    params: CRFParams | None = None,
    valid: Tensor | None = None,
    num_iters: int | None = None,
    input_type: InputType = "probs",
) -> Tensor:
    """``dense_crf(...).argmax(1)``: [B, H, W] int64 labels (same arguments as :func:`dense_crf`)."""
    q = dense_crf(scores, image_rgb, params=params, valid=valid, num_iters=num_iters, input_type=input_type)
    return q.argmax(1)


def crf_refine_labels(
    labels: Tensor,
    image_rgb: Tensor,
    num_classes: int,
    *,
    params: CRFParams | None = None,
    valid: Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """IRN/SFC's ``crf_inference_label``: CRF-smoothed argmax of a hard label map.

    Args:
        labels: [B, H, W] labels in ``0..num_classes-1`` (``ignore_index`` = uniform unary).
        image_rgb: [B, 3, H, W] uint8 or float in [0, 1].
        params: default :meth:`CRFParams.pseudo_label` (``gt_prob`` 0.7, 12 iterations).

    Returns:
        [B, H, W] int64 labels in ``0..num_classes-1``.
    """
    params = params or CRFParams.pseudo_label()
    unary = unary_from_labels(labels, num_classes, params.gt_prob, ignore_index)
    return crf_labels(unary, image_rgb, params=params, valid=valid, input_type="unary")


def refine_probs_with_crf(
    probs: Tensor, image: Tensor, params: CRFParams | None = None, valid: Tensor | None = None
) -> Tensor:
    """Inference-time hook (``evaluate --crf`` / ``predict --crf``): CRF-refined class probabilities.

    Args:
        probs: [B, K, h, w] softmax probabilities (e.g. after multi-scale/flip averaging); resized
            bilinearly to the image size when ``(h, w)`` differs from it.
        image: [B, 3, H, W] the image, float in [0, 1] (the dataset's ``image``) or uint8.
        params: default :meth:`CRFParams.postprocess`.
        valid: optional [B, H, W] bool mask of real (non-padding) pixels.

    Returns:
        [B, K, H, W] fp32 probabilities on ``probs``' device.

    Cost: 2 kernel applications per iteration; with the default ``backend="auto"`` they run on the
    permutohedral lattice (linear in H·W, full resolution on a CPU in about pydensecrf2's time) except
    on small grids, where the exact O((H·W)²) kernels are faster.
    """
    if probs.shape[-2:] != image.shape[-2:]:
        probs = F.interpolate(probs.float(), size=image.shape[-2:], mode="bilinear", align_corners=False)
        probs = probs.clamp_min(0.0)
        probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
    return dense_crf(probs, image, params=params, valid=valid, input_type="probs")


# --------------------------------------------------------------------------------------------------
# pydensecrf reference (CPU, permutohedral lattice)
# --------------------------------------------------------------------------------------------------
def _import_pydensecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise ImportError(
            "pydensecrf_reference needs the optional package pydensecrf2 "
            "(`pip install -c constraints.txt pydensecrf2`, or the `crf` extra)"
        ) from err
    return dcrf


def pydensecrf_reference(
    scores: Tensor,
    image_rgb: Tensor,
    *,
    params: CRFParams | None = None,
    num_iters: int | None = None,
    input_type: InputType = "probs",
) -> Tensor:
    """The same CRF through pydensecrf2 (permutohedral lattice, CPU, one image at a time).

    Same arguments and result as :func:`dense_crf`, except that there is no ``valid`` mask. The unary,
    the ``scale`` resizing and the upsampling are shared with :func:`dense_crf`; colours on the CRF grid
    are rounded to uint8 as pydensecrf requires, and the spatial bandwidths are given in grid pixels
    (``sxy · scale``), like psa's ``crf_inference(scale_factor=...)``. ``include_self`` and
    ``gaussian_truncate`` do not apply (the lattice always includes the self term).
    """
    dcrf = _import_pydensecrf()
    params = params or CRFParams.postprocess()
    iters = params.num_iters if num_iters is None else num_iters
    size = tuple(scores.shape[-2:])
    unary, image255, _ = _prepare(scores.cpu(), image_rgb.cpu(), None, params, input_type)
    grid_scale = unary.shape[-1] / size[1]
    b, k, h, w = unary.shape
    rgb = image255.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    outs = []
    for n in range(b):
        crf = dcrf.DenseCRF2D(w, h, k)
        crf.setUnaryEnergy(np.ascontiguousarray(unary[n].reshape(k, -1).numpy(), dtype=np.float32))
        if params.gaussian_compat != 0:
            crf.addPairwiseGaussian(sxy=params.gaussian_sxy * grid_scale, compat=params.gaussian_compat)
        if params.bilateral_compat != 0:
            crf.addPairwiseBilateral(
                sxy=params.bilateral_sxy * grid_scale,
                srgb=params.bilateral_srgb,
                rgbim=np.ascontiguousarray(rgb[n]),
                compat=params.bilateral_compat,
            )
        outs.append(torch.from_numpy(np.array(crf.inference(iters), dtype=np.float32)).reshape(k, h, w))
    q = torch.stack(outs)
    if q.shape[-2:] != size:
        q = resize_bilinear(q, size, antialias=True)
        q = q / q.sum(1, keepdim=True)
    return q.to(scores.device)
