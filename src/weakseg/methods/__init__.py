"""Training methods: which model outputs and losses each one combines, with the paper's defaults.

A method is a small :class:`~weakseg.methods.base.Method` subclass registered under a name in
:data:`METHODS` (``@register_method``; ``weakseg methods`` lists them); the engine builds it from
``cfg.method`` and calls it once per step with the model's outputs and the batch.
"""

from weakseg.methods import aal, cam, cdsp, dfr, full, gatedcrf, pce, rloss, sfc  # noqa: F401  (registration side effect)
from weakseg.methods.base import (
    METHODS,
    Method,
    available_methods,
    build_method,
    create_method,
    get_method_class,
    register_method,
)

__all__ = [
    "METHODS",
    "Method",
    "available_methods",
    "build_method",
    "create_method",
    "get_method_class",
    "register_method",
]
