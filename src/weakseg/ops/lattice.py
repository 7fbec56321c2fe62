"""Gaussian filtering on the permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) in plain PyTorch.

For points with features ``f_i`` (already divided by their bandwidths) and values ``v_i`` the filter
approximates ``out_i = Σ_j exp(-|f_i - f_j|²/2) · v_j`` (the ``j == i`` term included) in time linear in
the number of points, for any feature dimension ``d`` (the cost grows as ``(d+1)²`` per point). It is
the approximation of the ``densecrf`` library that pydensecrf2 wraps, with its conventions, so that a
mean-field CRF through it reproduces pydensecrf2 (facts read from ``densecrf/src/permutohedral.cpp``;
the code here is written anew, vectorised with tensor ops, no compiled extension):

1. **Embedding.** Each feature vector is scaled by ``sqrt(2/3)·(d+1) / sqrt((k+1)(k+2))`` per
   coordinate ``k`` ("blur variance" convention: the three-tap blur below then has the variance of the
   nominal Gaussian) and elevated onto the hyperplane ``Σ x = 0`` of ``R^{d+1}``.
2. **Simplex.** The nearest remainder-0 lattice point comes from rounding every coordinate to a
   multiple of ``d+1``; the ranks of the residuals give the enclosing simplex, whose ``d+1`` vertices
   are that point plus the canonical simplex's vertices, with barycentric weights ``b_ir``.
3. **Splat** (``S^T``): every point adds ``b_ir·v_i`` to its ``d+1`` vertices.
4. **Blur** (``B = B_d ⋯ B_0``): along each of the ``d+1`` lattice directions ``g_j = (d+1)e_j - 1``,
   ``u ← u + (u[x + g_j] + u[x - g_j]) / 2`` (taps ``[1, 2, 1] / 2``); vertices absent from the sparse
   lattice hold 0.
5. **Slice** (``S``): each point reads ``α · Σ_r b_ir · u[vertex_r]`` with ``α = 1 / (1 + 2^-d)``, the
   constant that gives a point sitting on a vertex self weight exactly 1 in a full lattice (the blur
   carries a vertex back to itself with weight ``1 + 2·2^-(d+1)``: no step, or one step along every
   direction, all forwards or all backwards).

So the filter is the matrix ``α·S·B·Sᵀ``. Each ``B_j`` is symmetric, hence the transpose is
``α·S·B_0⋯B_d·Sᵀ`` (the blur in reverse order: densecrf's ``reverse`` flag) and the gradient of
``Σ g·out`` with respect to the values is that transposed filter applied to ``g``:
:func:`lattice_gaussian_filter` is differentiable with respect to the values, not the features (as
the reference losses that use densecrf's lattice).

**Implementation.** Lattice keys are integer vectors; a vertex of remainder ``r`` has all its
coordinates ``≡ r (mod d+1)``, so it is stored compactly as ``(image, r, (x - r)/(d+1))``. Points are
first grouped by simplex (points with the same remainder-0 vertex and ranks share all ``d+1``
vertices; on images there are several times fewer simplices than pixels), then the simplices'
vertex keys are packed into one int64 by mixed radix (after checking that the ranges fit; otherwise
an exact row-wise ``torch.unique(dim=0)`` takes over) and numbered through a dense table over the code
range (counting, no sort) or a sort. The blur neighbours ``x ± g_j`` are found by code arithmetic and
the same table or a binary search. Splat, blur and slice are then sparse CSR matrices (int32 indices),
built once per feature set and reused for every channel, mean-field iteration and backward pass;
every product runs through ``torch.addmm(..., out=...)`` into preallocated buffers. On a CPU the points
come in blocks of 16,384, each with its own splat matrix, so that loops can keep a block's values in
cache (:class:`LatticeOperator`; the mean field of :mod:`weakseg.postprocess.crf`). Images of a batch
share one lattice (the image index is part of the key), so they never interact, and pixels outside
the region of interest do not enter it at all.

**Approximation** (tests/ops/test_lattice.py states the tolerances). The lattice kernel is lumpy (its
weights depend on where points fall in their simplices), not symmetric (the blur runs along the
directions in one order; the backward pass uses the exact adjoint), and carries less mass than the exact
Gaussian: on natural images its kernel sums are ≈ 0.92× (d = 1), 0.87–0.88× (d = 2) and 0.4–0.6×
(RGBXY, d = 5) the exact ones, because a vertex's blur only reaches neighbours that exist in the sparse
lattice. The normalised filter ``W·v / W·1`` (what mean field and normalised losses use) stays within
≈ 0.005 (d = 2) and 0.01–0.02 (d = 5) of the exact one on average. Its self weight is ``≤ 1``
(:meth:`PermutohedralLattice.self_weights`).

**Where exact beats lattice.** The lattice has a fixed cost per build (sorting and numbering
``N·(d+1)`` keys) and ``O(N·(d+1)·C + M·(d+1)·C)`` work per application (``M`` vertices); the exact fused
kernel costs ``O(N²·(d+C))``. On one CPU thread the exact form wins below about 1,000–1,600 pixels for
d = 2, 1,600–2,300 for d = 5 and 4,100–6,400 for d = 8 (benchmarks/lattice_crossover.py); the lattice's
work grows with ``d²`` and it gets sparser and less accurate as ``d`` grows, so features of high
dimension (deep features) stay exact. :func:`choose_backend` encodes this.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "BACKENDS",
    "MAX_LATTICE_DIM",
    "LatticeOperator",
    "PermutohedralLattice",
    "choose_backend",
    "lattice_gaussian_filter",
    "resolve_backend",
]

MAX_LATTICE_DIM = 16  # d+1 vertices per point and (d+1)² work in the embedding; beyond this use "exact"
BACKENDS = ("exact", "lattice", "auto")
_SUPPORTED_DEVICES = ("cpu", "cuda")
_MAX_CODE = 2**62  # mixed-radix keys must stay below this to be packed into one int64
_TABLE_PER_KEY, _TABLE_SLACK = 4, 2**20  # dense code table when the range <= 4 × #keys + 2**20
_CPU_BLOCK = 16384  # points per block on a CPU: a block's [n, C] rows stay in cache (best of 2k–64k)

# "auto" on CPU: the lattice from max(1536, 64·(d+1)²) pixels per image (measured crossover, see
# choose_backend); on CUDA from 65,536 pixels (an estimate); never above _AUTO_MAX_DIM dimensions.
_AUTO_CPU_MIN_PIXELS = 1536
_AUTO_CPU_PIXELS_PER_DIM2 = 64
_AUTO_CUDA_MIN_PIXELS = 65536
_AUTO_MAX_DIM = 8


# --------------------------------------------------------------------------------------------------
# backend choice
# --------------------------------------------------------------------------------------------------
def choose_backend(num_pixels: int, dim: int, device: torch.device | str) -> str:
    """The backend ``"auto"`` resolves to for ``num_pixels`` per image and ``dim`` feature dimensions.

    ``"exact"`` for ``dim > 8`` or devices other than CPU/CUDA. On CPU ``"lattice"`` from
    ``max(1536, 64·(d+1)²)`` pixels per image: where the lattice (build + one application) overtook the
    fused exact kernel (benchmarks/lattice_crossover.py, one thread: about 1,000–1,600 pixels for
    d = 2, 1,600–2,300 for d = 5, 4,100–6,400 for d = 8). On CUDA from 65,536 pixels, a conservative
    estimate (the fused exact kernel is fast there) not yet measured in this project.
    """
    dev = torch.device(device).type
    if dim > _AUTO_MAX_DIM or dev not in _SUPPORTED_DEVICES:
        return "exact"
    if dev == "cuda":
        threshold = _AUTO_CUDA_MIN_PIXELS
    else:
        threshold = max(_AUTO_CPU_MIN_PIXELS, _AUTO_CPU_PIXELS_PER_DIM2 * (dim + 1) ** 2)
    return "lattice" if num_pixels >= threshold else "exact"


def resolve_backend(backend: str, num_pixels: int, dim: int, device: torch.device | str) -> str:
    """``"exact"`` or ``"lattice"`` for a requested ``backend`` in :data:`BACKENDS`.

    ``"auto"`` follows :func:`choose_backend`. ``"lattice"`` on a device other than CPU/CUDA falls back
    to ``"exact"`` with a one-line warning; a feature dimension above :data:`MAX_LATTICE_DIM` is left to
    :class:`PermutohedralLattice` to reject.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got '{backend}'")
    if backend == "auto":
        return choose_backend(num_pixels, dim, device)
    if backend == "lattice" and torch.device(device).type not in _SUPPORTED_DEVICES:
        warnings.warn(
            f"permutohedral lattice: device '{torch.device(device).type}' is not supported "
            f"(only {_SUPPORTED_DEVICES}); using the exact kernel",
            RuntimeWarning,
            stacklevel=3,
        )
        return "exact"
    return backend


# --------------------------------------------------------------------------------------------------
# the lattice
# --------------------------------------------------------------------------------------------------
class PermutohedralLattice:
    """The permutohedral lattice of a batch of feature maps: built once, applied to any values.

    Args:
        features: ``[B, d, *spatial]`` per-pixel features already divided by their bandwidths, so the
            approximated kernel is ``exp(-|f_i - f_j|²/2)``. ``1 <= d <= MAX_LATTICE_DIM``; must be
            finite. Detached (no gradient reaches the features). Images of the batch are independent.
        roi: ``[B, *spatial]`` bool or float, or ``None`` (every pixel). Pixels where it is 0 are left
            out of the lattice: they neither send nor receive. Float values weight a pixel on both
            sides, as in :func:`weakseg.ops.pairwise_kernel.gaussian_affinity_apply`.
        name: how error messages call ``features``.

    Attributes:
        dim: ``d``.
        num_points: ``P``, the pixels inside the ROI over the whole batch.
        num_vertices: ``M``, the lattice vertices those points touch.
    """

    def __init__(self, features: Tensor, roi: Tensor | None = None, *, name: str = "features") -> None:
        if features.dim() < 3:
            raise ValueError(
                f"permutohedral lattice: {name} must be [B, d, *spatial], got shape {tuple(features.shape)}"
            )
        b, d = features.shape[:2]
        if not 1 <= d <= MAX_LATTICE_DIM:
            raise ValueError(
                f"permutohedral lattice: {name} of shape {tuple(features.shape)} has d = {d} feature "
                f"dimensions; the lattice supports 1..{MAX_LATTICE_DIM} (use the exact backend)"
            )
        if features.device.type not in _SUPPORTED_DEVICES:
            raise ValueError(
                f"permutohedral lattice: {name} is on '{features.device.type}', "
                f"supported: {_SUPPORTED_DEVICES}"
            )
        if not features.is_floating_point():
            raise ValueError(f"permutohedral lattice: {name} must be floating point, got {features.dtype}")
        if not bool(torch.isfinite(features).all()):
            raise ValueError(
                f"permutohedral lattice: {name} of shape {tuple(features.shape)} holds NaN or inf values"
            )
        self.dim = d
        self.batch_shape = (b, *features.shape[2:])
        self.device = features.device
        n = math.prod(features.shape[2:])
        self._pixels_per_image = n
        # coordinate-major [d, B·N]: every step of the embedding is then a contiguous elementwise op
        feats = features.detach().float().reshape(b, d, n).transpose(0, 1).reshape(d, b * n)
        self._index: Tensor | None = None  # flat pixel index of each point (None: all pixels)
        self._weight: Tensor | None = None  # ROI weight of each point (None: all 1)
        if roi is not None:
            if tuple(roi.shape) != self.batch_shape:
                raise ValueError(f"roi must be {self.batch_shape}, got {tuple(roi.shape)}")
            w = roi.to(device=self.device, dtype=torch.float32).reshape(b * n)
            self._index = torch.nonzero(w != 0).squeeze(1)
            weight = w[self._index]
            self._weight = None if bool((weight == 1).all()) else weight.unsqueeze(1)
            feats = feats[:, self._index]
            image = torch.div(self._index, n, rounding_mode="floor")
        else:
            image = torch.arange(b, device=self.device).repeat_interleave(n)
        self.num_points = feats.shape[1]
        self._build(feats, image, b)

    # ---------------------------------------------------------------------------------------- build
    def _build(self, feats: Tensor, image: Tensor, num_images: int) -> None:
        d = self.dim
        d1 = d + 1
        p = self.num_points
        dev = self.device
        if p == 0:
            self.num_vertices = 0
            return
        rem, rank, bary = _embed(feats)  # [d+1, P] each
        # Points with the same remainder-0 vertex and ranks lie in the same simplex and share its d+1
        # vertices: find the distinct simplices first (far fewer than points on images), then their
        # vertices.
        simplex = _simplex_ids(image, rem, rank, num_images)  # [P]
        num_simplices = int(simplex.max()) + 1
        member = torch.empty(num_simplices, dtype=torch.long, device=dev)
        member[simplex] = torch.arange(p, device=dev)  # one point of each simplex
        rem_s, rank_s, image_s = rem[:, member], rank[:, member], image[member]
        # Vertex r of a simplex is its remainder-0 vertex moved by -1 (compact units) on every
        # coordinate whose rank exceeds d - r. Compact key: (image, r, (x - r)/(d+1)); digits get a
        # margin of 2 below (that -1, and a blur neighbour's -1) and 1 above (a neighbour's +1).
        lo = rem_s[:d].amin(dim=1) - 2
        span = rem_s[:d].amax(dim=1) - lo + 2
        radices = [num_images, d1, *span.tolist()]
        if math.prod(radices) < _MAX_CODE:
            codes = _vertex_codes(image_s, rem_s, rank_s, lo, radices).reshape(-1)
            vertex_s, vertex_codes, lookup = _index_codes(codes)
            neighbours = _neighbours_by_code(vertex_codes, radices, lookup)
        else:  # keys too wide for one int64: exact row-wise unique (slower, any range)
            rows = _vertex_rows(image_s, rem_s, rank_s)
            vertex_rows, vertex_s = torch.unique(rows, dim=0, return_inverse=True)
            neighbours = _neighbours_by_rows(vertex_rows)
        m = len(neighbours[0][0])
        self.num_vertices = m
        vertex_s = vertex_s.view(d1, num_simplices)
        # each point's d+1 vertex ids sorted (once per simplex), with their barycentric weights: [P, d+1]
        cols_s, perm_s = torch.sort(vertex_s.T, dim=1)
        self._cols = cols_s[simplex]
        self._weights = torch.gather(bary.T, 1, perm_s[simplex])
        # Points are processed in blocks: each block's slice rows and its splat matrix [M, block]
        # (entries grouped by vertex through a stable sort) are built once. On a CPU the blocks are
        # small enough for a block of values to stay in cache through a whole mean-field update.
        block = p if dev.type == "cuda" else _CPU_BLOCK
        self._blocks = []
        for start in range(0, p, block):
            stop = min(p, start + block)
            vertex = self._cols[start:stop].reshape(-1)
            order = torch.sort(vertex.int() if m < 2**31 else vertex, stable=True).indices
            crow = torch.zeros(m + 1, dtype=torch.long, device=dev)
            crow[1:] = torch.cumsum(torch.bincount(vertex, minlength=m), 0)
            crow, col = _index_dtype((crow, torch.div(order, d1, rounding_mode="floor")), order.numel(), m)
            self._blocks.append((start, stop, crow, col, order + start * d1))
        self._cols = _index_dtype((self._cols,), p * d1, m)[0]
        self._blur = [_csr(*_blur_entries(n1, n2, m), (m, m)) for n1, n2 in neighbours]
        self._bary = bary.T.contiguous()  # [P, d+1] in vertex order r (for self_weights)
        self._plain = self.operator()

    # ---------------------------------------------------------------------------------------- apply
    def operator(self, before: Tensor | None = None, after: Tensor | None = None) -> LatticeOperator:
        """``diag(after) · α·S·B·Sᵀ · diag(before)`` on the points, scalings folded into the matrices.

        Args:
            before, after: ``[P]`` or ``[P, 1]`` per-point factors (``None`` = 1), e.g. densecrf's
                symmetric normalisation ``1/sqrt(K·1)`` and a Potts weight. The lattice is shared.
        """
        d1 = self.dim + 1
        m = self.num_vertices
        alpha = 1.0 / (1.0 + 2.0 ** (-self.dim))
        splat_weights = self._weights if before is None else self._weights * before.reshape(-1, 1)
        slice_weights = alpha * (self._weights if after is None else self._weights * after.reshape(-1, 1))
        splat_flat, slice_flat = splat_weights.reshape(-1), slice_weights.reshape(-1)
        blocks = []
        for start, stop, crow, col, entries in self._blocks:
            n = stop - start
            splat = _csr(crow, col, splat_flat[entries], (m, n))
            rows = torch.arange(0, n * d1 + 1, d1, device=self.device)
            cols = self._cols[start:stop].reshape(-1)
            slice_ = _csr(rows, cols, slice_flat[start * d1 : stop * d1], (n, m))
            blocks.append((start, stop, splat, slice_))
        return LatticeOperator(blocks, self._blur, m)

    def filter_points(self, values: Tensor, *, transpose: bool = False) -> Tensor:
        """``α·S·B·Sᵀ·values`` on the lattice's points (no ROI weighting, no autograd).

        Args:
            values: ``[P, C]`` fp32 on the lattice's device, rows in the order of :meth:`to_points`.
            transpose: blur in reverse direction order (the exact transpose of the filter).

        Returns:
            ``[P, C]`` fp32.
        """
        if self.num_points == 0:
            return torch.zeros_like(values)
        return self._plain(values, transpose=transpose)

    def to_points(self, values: Tensor) -> Tensor:
        """``[B, C, *spatial]`` -> ``[P, C]`` fp32 rows of the ROI pixels, times their ROI weights."""
        b, c = values.shape[:2]
        if (b, *values.shape[2:]) != self.batch_shape:
            raise ValueError(f"values {tuple(values.shape)} do not match the lattice's {self.batch_shape}")
        rows = values.float().reshape(b, c, -1).transpose(1, 2).reshape(-1, c)
        if self._index is not None:
            rows = rows.index_select(0, self._index)
        if self._weight is not None:
            rows = rows * self._weight
        return rows

    def from_points(self, rows: Tensor, fill: Tensor | None = None) -> Tensor:
        """``[P, C]`` -> ``[B, C, *spatial]``, times the ROI weights.

        Pixels outside the ROI are 0, or taken from ``fill`` (``[B, C, *spatial]``) when given.
        """
        c = rows.shape[1]
        if self._weight is not None:
            rows = rows * self._weight
        b, n = self.batch_shape[0], self._pixels_per_image
        if self._index is not None:
            if fill is None:
                full = rows.new_zeros(b * n, c)
            else:
                full = fill.float().reshape(b, c, n).transpose(1, 2).reshape(b * n, c).clone()
            full.index_copy_(0, self._index, rows)
            rows = full
        return rows.reshape(b, n, c).transpose(1, 2).reshape(b, c, *self.batch_shape[1:])

    def filter(self, values: Tensor, *, transpose: bool = False) -> Tensor:
        """``out_i = r_i · Σ_j r_j · k_ij · v_j`` on the image grid (no autograd; see
        :func:`lattice_gaussian_filter`). values: ``[B, C, *spatial]``; returns the same shape, fp32."""
        return self.from_points(self.filter_points(self.to_points(values), transpose=transpose))

    def self_weights(self) -> Tensor:
        """Each point's lattice self weight ``k_ii`` (≤ 1) as in a full lattice: ``[P]`` fp32.

        ``k_ii = α Σ_{r,s} b_ir b_is β_|r-s|`` with ``β_0 = 1 + 2^-d`` and ``β_m = 2^-m + 2^-(d+1-m)``:
        vertices ``r`` and ``s`` of one simplex are ``|r - s|`` blur steps apart one way round and
        ``d + 1 - |r - s|`` the other (and a vertex returns to itself by no step or by one step along
        every direction, forwards or backwards). In the sparse lattice, blur paths through absent
        vertices are lost, so this is an upper bound: exact inside the point cloud, up to ~0.2 too high
        at its borders (tests/ops/test_lattice.py).
        """
        d = self.dim
        if self.num_points == 0:
            return torch.zeros(0, device=self.device)
        steps = torch.arange(d + 1, device=self.device, dtype=torch.float32)
        gap = (steps[:, None] - steps[None]).abs()
        beta = torch.pow(0.5, gap) + torch.pow(0.5, d + 1 - gap)
        beta.diagonal().fill_(1.0 + 2.0 ** (-d))  # gap 0: no step, or one step along every direction ±
        alpha = 1.0 / (1.0 + 2.0 ** (-d))
        return alpha * torch.einsum("pr,rs,ps->p", self._bary, beta, self._bary)

    def self_weight_map(self) -> Tensor:
        """:meth:`self_weights` on the image grid, times the squared ROI weight: ``[B, 1, *spatial]``."""
        w = self.self_weights().unsqueeze(1)
        if self._weight is not None:
            w = w * self._weight
        return self.from_points(w)


class LatticeOperator:
    """``slice · blur · splat`` as sparse CSR matrices (see :meth:`PermutohedralLattice.operator`).

    The points come in blocks (one on CUDA): per block a splat matrix ``[M, n]`` and the block's slice
    rows ``[n, M]``. Every product is ``torch.addmm(..., out=...)`` into a preallocated buffer: PyTorch's
    plain sparse ``@`` first fills or copies its result, which took as long as the product on the CPU.
    :meth:`splat`, :meth:`blur` and :meth:`slice` expose the three steps for loops that fuse them per
    block (the lattice mean field of :mod:`weakseg.postprocess.crf`).

    Args:
        blocks: ``(start, stop, splat [M, n], slice [n, M])`` per block of points.
        blur: the ``d+1`` blur matrices ``[M, M]`` in forward order.
        num_vertices: ``M``.
    """

    def __init__(self, blocks: list[tuple[int, int, Tensor, Tensor]], blur: list[Tensor], num_vertices: int):
        self.blocks, self.blur_matrices, self.num_vertices = blocks, blur, num_vertices
        self._buffers: dict[tuple[int, torch.dtype], tuple[Tensor, Tensor, Tensor]] = {}

    def buffers(self, channels: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Three ``[M, C]`` work buffers (splat accumulator and the blur's two), kept per ``C``."""
        key = (channels, like.dtype)
        if key not in self._buffers:
            self._buffers[key] = tuple(like.new_empty(self.num_vertices, channels) for _ in range(3))
        return self._buffers[key]

    def splat(self, block: int, values: Tensor, into: Tensor, first: bool) -> None:
        """Add block ``block``'s ``values`` ``[n, C]`` to the vertex values ``into`` (overwrite if first)."""
        torch.addmm(into, self.blocks[block][2], values, beta=0.0 if first else 1.0, out=into)

    def blur(self, values: Tensor, transpose: bool = False) -> Tensor:
        """The blur of vertex values ``[M, C]`` (one of this operator's buffers, which it leaves intact);
        returns a buffer that stays valid until the next call."""
        _, target, other = self.buffers(values.shape[1], values)
        source = values
        for matrix in reversed(self.blur_matrices) if transpose else self.blur_matrices:
            torch.addmm(target, matrix, source, beta=0.0, out=target)
            source, target, other = target, other, target  # ping-pong between the two blur buffers
        return source

    def slice(self, block: int, lattice: Tensor, out: Tensor, accumulate: bool) -> None:
        """Block ``block``'s rows of the result from blurred vertex values, into (or added to) ``out``."""
        torch.addmm(out, self.blocks[block][3], lattice, beta=1.0 if accumulate else 0.0, out=out)

    def __call__(
        self, values: Tensor, *, accumulate: Tensor | None = None, transpose: bool = False
    ) -> Tensor:
        """The operator applied to ``values`` ``[P, C]`` (fp32).

        Args:
            values: ``[P, C]``.
            accumulate: ``[P, C]`` to which the result is added in place (and returned), else a new
                tensor is returned.
            transpose: blur in reverse direction order (the transpose, for symmetric scalings).
        """
        p, c = values.shape
        if p == 0 or not self.blocks:
            return torch.zeros_like(values) if accumulate is None else accumulate
        vertex_values = self.buffers(c, values)[0]
        for k, (start, stop, _, _) in enumerate(self.blocks):
            self.splat(k, values[start:stop], vertex_values, first=k == 0)
        lattice = self.blur(vertex_values, transpose)
        out = values.new_empty(p, c) if accumulate is None else accumulate
        for k, (start, stop, _, _) in enumerate(self.blocks):
            self.slice(k, lattice, out[start:stop], accumulate=accumulate is not None)
        return out


def lattice_gaussian_filter(
    features: Tensor,
    values: Tensor,
    roi: Tensor | None = None,
    *,
    lattice: PermutohedralLattice | None = None,
    name: str = "features",
) -> Tensor:
    """``out_i ≈ r_i Σ_j r_j exp(-|f_i - f_j|²/2) v_j`` (``j == i`` included) through the lattice.

    Args:
        features: ``[B, d, *spatial]`` bandwidth-scaled features (ignored when ``lattice`` is given).
        values: ``[B, C, *spatial]``; the result is differentiable with respect to them.
        roi: ``[B, *spatial]`` bool/float or None (see :class:`PermutohedralLattice`).
        lattice: a lattice already built for these features and ROI (reused, e.g. across iterations).
        name: how error messages call ``features``.

    Returns:
        ``[B, C, *spatial]`` fp32, 0 outside the ROI. No gradient reaches the features.
    """
    if lattice is None:
        lattice = PermutohedralLattice(features, roi, name=name)
    return _LatticeFilter.apply(values, lattice)


class _LatticeFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, lattice: PermutohedralLattice) -> Tensor:  # type: ignore[override]
        ctx.lattice = lattice
        with torch.autocast(device_type=values.device.type, enabled=False):
            return lattice.filter(values)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        with torch.autocast(device_type=grad_out.device.type, enabled=False):
            return ctx.lattice.filter(grad_out, transpose=True), None  # the filter is its own adjoint


# --------------------------------------------------------------------------------------------------
# pieces of the build
# --------------------------------------------------------------------------------------------------
def _embed(feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Enclosing simplex of each point (Adams et al. 2010, §3; densecrf's conventions).

    Works coordinate-major (``[d+1, P]``) so that every step is an elementwise op over the points.

    Args:
        feats: ``[d, P]`` fp32 bandwidth-scaled features (coordinate-major).

    Returns:
        ``rem`` ``[d+1, P]`` int64: the remainder-0 vertex divided by ``d+1``; ``rank`` ``[d+1, P]``
        int64: the rank of each residual coordinate (0 = largest); ``bary`` ``[d+1, P]`` fp32: the
        barycentric weight of vertex ``r`` (``Σ_r = 1``).
    """
    d, p = feats.shape
    d1 = d + 1
    dev = feats.device
    inv_std = float(torch.tensor(math.sqrt(2.0 / 3.0) * d1, dtype=torch.float32))
    scale = torch.tensor([inv_std / math.sqrt((k + 1) * (k + 2)) for k in range(d)], device=dev)
    cf = feats * scale[:, None]  # [d, P]
    # elevated_0 = Σ_k cf_k, elevated_j = Σ_{k >= j} cf_k - j·cf_{j-1}: the point on the plane Σ x = 0
    elevated = torch.empty(d1, p, device=dev)
    tail = torch.zeros(p, device=dev)
    for j in range(d, 0, -1):
        elevated[j] = tail - j * cf[j - 1]
        tail = tail + cf[j - 1]
    elevated[0] = tail
    # nearest remainder-0 point (coordinates multiples of d+1); ties round to even as densecrf's SSE
    down = float(torch.tensor(1.0 / d1, dtype=torch.float32))
    rounded = torch.round(elevated * down)
    residual = elevated - rounded * d1
    # rank_i = #{j > i: res_j > res_i} + #{j < i: res_j >= res_i} (densecrf's tie-break)
    rank16 = torch.zeros(d1, p, dtype=torch.int16, device=dev)  # small counts: int16 adds are cheap
    for i in range(d):
        for j in range(i + 1, d1):
            i_below = residual[i] < residual[j]
            rank16[i] += i_below
            rank16[j] += ~i_below
    # a point off the plane (Σ rounded ≠ 0) is brought back by shifting the ranks cyclically (small
    # integers, exact in fp32, where the arithmetic is cheaper than in int64)
    rank_f = rank16.float() + rounded.sum(0)
    shift = (rank_f < 0).float() - (rank_f > d).float()
    rank = (rank_f + d1 * shift).long()
    rounded += shift
    # barycentric weights: coordinate i adds its residual/(d+1) to vertex d - rank_i and takes it from
    # vertex d - rank_i + 1; vertex d+1 wraps around to vertex 0 (plus the 1 that makes Σ_r b_r = 1)
    v = (elevated - rounded * d1) * down
    bary = torch.zeros(d + 2, p, device=dev)
    bary.scatter_add_(0, d - rank, v)
    bary.scatter_add_(0, d + 1 - rank, -v)
    bary[0] += 1.0 + bary[d + 1]
    return rounded.long(), rank, bary[:d1]


def _simplex_ids(image: Tensor, rem: Tensor, rank: Tensor, num_images: int) -> Tensor:
    """Id (0..S-1) of each point's simplex, from its image, remainder-0 vertex and ranks: [P] int64.

    ``rem_d`` and ``rank_d`` are implied by the others (``Σ rem = 0``; ranks are a permutation).
    """
    d = rem.shape[0] - 1
    lo = rem[:d].amin(dim=1)
    span = (rem[:d].amax(dim=1) - lo + 1).tolist()
    if num_images * math.prod(span) * (d + 1) ** d < _MAX_CODE:
        code = image.clone()
        for k in range(d):
            code = code * span[k] + (rem[k] - lo[k])
        for k in range(d):
            code = code * (d + 1) + rank[k]
        return _index_codes(code)[0]
    rows = torch.cat([image[None], rem[:d], rank[:d]]).T
    return torch.unique(rows, dim=0, return_inverse=True)[1]


def _vertex_codes(image: Tensor, rem: Tensor, rank: Tensor, lo: Tensor, radices: list[int]) -> Tensor:
    """Mixed-radix int64 codes ``[d+1, S]`` of the keys ``(image, r, (x - r)/(d+1))`` of the vertices
    of ``S`` simplices given by their images ``[S]``, remainder-0 vertices and ranks ``[d+1, S]``.

    Vertex ``r`` lowers (by one compact unit) the coordinates of ranks ``d-r+1 .. d``, so its code is
    the remainder-0 vertex's code plus ``r·stride_r`` minus a cumulative sum of the strides of the
    coordinates in decreasing rank order (coordinate ``d`` is implied by ``Σ x = 0`` and has none).
    """
    d1 = radices[1]
    d = d1 - 1
    strides = _strides(radices)
    base = image * strides[0]
    for k in range(d):
        base = base + (rem[k] - lo[k]) * strides[2 + k]
    # by_rank[ρ] = the stride of the coordinate holding rank ρ
    coord_stride = torch.tensor([*strides[2:], 0], device=rem.device)[:, None].expand_as(rem)
    by_rank = torch.empty_like(rem).scatter_(0, rank, coord_stride)
    lowered = by_rank.flip(0)[:d]  # ranks d, d-1, ..., 1
    codes = torch.empty_like(rem)
    codes[0] = base
    steps = strides[1] * torch.arange(1, d1, device=rem.device)[:, None]
    codes[1:] = base - torch.cumsum(lowered, 0) + steps
    return codes


def _vertex_rows(image: Tensor, rem: Tensor, rank: Tensor) -> Tensor:
    """The keys of :func:`_vertex_codes` as rows ``(image, r, c_0..c_{d-1})``: ``[(d+1)·P, d+2]``."""
    d1, p = rem.shape
    d = d1 - 1
    r = torch.arange(d1, device=rem.device)
    coords = rem[None, :d] - (rank[None, :d] > (d - r)[:, None, None]).long()  # [r, k, P]
    parts = [image[None, None].expand(d1, 1, p), r[:, None, None].expand(d1, 1, p), coords]
    return torch.cat(parts, dim=1).permute(0, 2, 1).reshape(d1 * p, d + 2)


def _strides(radices: list[int]) -> list[int]:
    strides = [1] * len(radices)
    for k in range(len(radices) - 2, -1, -1):
        strides[k] = strides[k + 1] * radices[k + 1]
    return strides


def _index_codes(codes: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """Distinct vertices of the entries' ``codes`` [E] int64.

    Returns:
        ``ids`` [E] int64 id of each entry's code (ids ascend with the codes), the distinct codes [M]
        ascending, and a function mapping any int64 codes to their id (-1 if absent).

    A dense table over the code range (counting: no sort) when that range is at most a few times the
    number of entries, else a sort and binary searches.
    """
    lo, hi = int(codes.min()), int(codes.max())
    size = hi - lo + 1
    dev = codes.device
    if size <= _TABLE_PER_KEY * codes.numel() + _TABLE_SLACK:
        present = torch.zeros(size, dtype=torch.bool, device=dev)
        present[codes - lo] = True
        table = torch.where(present, torch.cumsum(present, 0) - 1, -1)
        vertex_codes = torch.nonzero(present).squeeze(1) + lo

        def by_table(query: Tensor) -> Tensor:
            inside = (query >= lo) & (query <= hi)
            return torch.where(inside, table[(query - lo).clamp(0, size - 1)], -1)

        return table[codes - lo], vertex_codes, by_table
    narrow = (codes - lo).int() if size < 2**31 else codes  # int32 keys sort about twice as fast
    order = torch.sort(narrow).indices
    sorted_codes = codes[order]
    first = torch.ones_like(sorted_codes, dtype=torch.bool)
    first[1:] = sorted_codes[1:] != sorted_codes[:-1]
    vertex = torch.empty_like(codes)
    vertex[order] = torch.cumsum(first, 0) - 1
    vertex_codes = sorted_codes[first]
    m = vertex_codes.numel()

    def by_search(query: Tensor) -> Tensor:
        pos = torch.searchsorted(vertex_codes, query).clamp(max=m - 1)
        return torch.where(vertex_codes[pos] == query, pos, -1)

    return vertex, vertex_codes, by_search


def _neighbours_by_code(
    codes: Tensor, radices: list[int], lookup: Callable[[Tensor], Tensor]
) -> list[tuple[Tensor, Tensor]]:
    """Vertex ids of ``x + g_j`` and ``x - g_j`` (-1 where absent) for each direction ``j``.

    In compact coordinates ``(r, c)``, ``x + g_j`` has remainder ``r - 1 (mod d+1)``, ``c - [r = 0]``
    and ``+1`` on coordinate ``j`` (``j < d``); ``x - g_j`` has remainder ``r + 1``, ``c + [r = d]`` and
    ``-1`` on coordinate ``j``. No digit leaves its range (the ranges have margins), so the shifts are
    additions to the codes.

    Args:
        codes: [M] the vertices' codes; radices: the mixed radices; lookup: code -> vertex id.
    """
    d1 = radices[1]
    d = d1 - 1
    strides = _strides(radices)
    stride_r = strides[1]
    all_coords = sum(strides[2:])
    remainder = torch.div(codes, stride_r, rounding_mode="floor") % d1
    plus_base = torch.where(remainder == 0, d * stride_r - all_coords, -stride_r)
    minus_base = torch.where(remainder == d, all_coords - d * stride_r, stride_r)
    out = []
    for j in range(d1):
        step = strides[2 + j] if j < d else 0
        out.append((lookup(codes + plus_base + step), lookup(codes + minus_base - step)))
    return out


def _neighbours_by_rows(rows: Tensor) -> list[tuple[Tensor, Tensor]]:
    """:func:`_neighbours_by_code` for keys given as rows ``(image, r, c...)`` [M, d+2] (any range)."""
    m, width = rows.shape
    d = width - 2
    d1 = d + 1
    r = rows[:, 1]
    queries = []
    for j in range(d1):
        plus = rows.clone()
        plus[:, 1] = (r - 1) % d1
        plus[:, 2:] -= (r == 0).long()[:, None]
        minus = rows.clone()
        minus[:, 1] = (r + 1) % d1
        minus[:, 2:] += (r == d).long()[:, None]
        if j < d:
            plus[:, 2 + j] += 1
            minus[:, 2 + j] -= 1
        queries += [plus, minus]
    # one joint unique turns rows into comparable ids: the vertices' ids ascend (rows are sorted)
    _, ids = torch.unique(torch.cat([rows, *queries]), dim=0, return_inverse=True)
    vertex_ids, query_ids = ids[:m], ids[m:].view(2 * d1, m)
    pos = torch.searchsorted(vertex_ids, query_ids).clamp(max=m - 1)
    found = torch.where(vertex_ids[pos] == query_ids, pos, -1)
    return [(found[2 * j], found[2 * j + 1]) for j in range(d1)]


def _blur_entries(plus: Tensor, minus: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """CSR arrays (crow, col, val) of one blur direction [M, M]: 1 on the diagonal, 1/2 at each
    existing neighbour, columns ascending within rows."""
    dev = plus.device
    own = torch.arange(m, device=dev)
    a, b = torch.where(plus >= 0, plus, m), torch.where(minus >= 0, minus, m)  # absent: m, sorts last
    # three columns sorted by a min/max network (torch.sort along rows of three is far slower)
    low, high = torch.minimum(a, own), torch.maximum(a, own)
    first, upper = torch.minimum(low, b), torch.maximum(low, b)
    cols = torch.stack([first, torch.minimum(high, upper), torch.maximum(high, upper)], dim=1)  # [M, 3]
    keep = cols < m
    vals = torch.where(cols == own[:, None], 1.0, 0.5)
    crow = torch.zeros(m + 1, dtype=torch.long, device=dev)
    crow[1:] = torch.cumsum(keep.sum(1), 0)
    return crow, cols[keep], vals[keep]


def _index_dtype(indices: tuple[Tensor, Tensor], nnz: int, *dims: int) -> tuple[Tensor, ...]:
    """CSR index arrays as int32 when they fit (MKL's kernels take int32: no conversion per product)."""
    if nnz < 2**31 and max(dims) < 2**31:
        return tuple(i.int() for i in indices)
    return indices


def _csr(crow: Tensor, col: Tensor, val: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix; int32 indices when they fit (MKL's kernels take int32: no conversion per call)."""
    crow, col = _index_dtype((crow, col), col.numel(), *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, val, shape)
