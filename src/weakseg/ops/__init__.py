"""Shared tensor operators (pure PyTorch, CPU and CUDA)."""

from weakseg.ops.lattice import (
    BACKENDS,
    MAX_LATTICE_DIM,
    PermutohedralLattice,
    choose_backend,
    lattice_gaussian_filter,
    resolve_backend,
)

__all__ = [
    "BACKENDS",
    "MAX_LATTICE_DIM",
    "PermutohedralLattice",
    "choose_backend",
    "lattice_gaussian_filter",
    "resolve_backend",
]
