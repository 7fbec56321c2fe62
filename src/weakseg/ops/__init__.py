"""Shared tensor operators (pure PyTorch, CPU and CUDA), used by losses, CAMs, models and post-processing.

* :mod:`weakseg.ops.lattice` — the permutohedral lattice (fast approximate Gaussian filtering);
* :mod:`weakseg.ops.pairwise_kernel` — exact Gaussian pairwise kernels ``W·v`` without an N×N matrix;
* :mod:`weakseg.ops.resize` — every resize rule (bilinear, area, nearest, masks, scaled grids);
* :mod:`weakseg.ops.multiscale` — the multi-scale + flip summation behind evaluation and CAM inference;
* :mod:`weakseg.ops.class_maps` — CAM algebra (foreground channels, max-normalisation, background maps,
  PCM propagation, seeds and prototypes).
"""

from weakseg.ops.lattice import (
    BACKENDS,
    MAX_LATTICE_DIM,
    PermutohedralLattice,
    choose_backend,
    lattice_gaussian_filter,
    resolve_backend,
)
from weakseg.ops.pairwise_kernel import gaussian_affinity_apply, kernel_features_rgbxy
from weakseg.ops.resize import (
    bilinear_at,
    resize_area,
    resize_bilinear,
    resize_gate,
    resize_mask,
    resize_nearest,
    scaled_size,
)

__all__ = [
    "BACKENDS",
    "MAX_LATTICE_DIM",
    "PermutohedralLattice",
    "bilinear_at",
    "choose_backend",
    "gaussian_affinity_apply",
    "kernel_features_rgbxy",
    "lattice_gaussian_filter",
    "resize_area",
    "resize_bilinear",
    "resize_gate",
    "resize_mask",
    "resize_nearest",
    "resolve_backend",
    "scaled_size",
]
