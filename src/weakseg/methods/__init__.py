"""Training methods: which model outputs and losses each one combines, with the paper's defaults.

A method is a small :class:`~weakseg.methods.base.Method` subclass registered under a name in
:data:`METHODS` (``@register_method``; ``weakseg methods`` lists them); the engine builds it from
``cfg.method`` and calls it once per step with the model's outputs and the batch. What a method needs
beyond that (its own network, dataset statistics, sample maps, its own validation, ...) it declares by
implementing the capability protocols of :mod:`weakseg.methods.base`.
"""

from weakseg.methods import aal, cam, cdsp, dfr, full, gatedcrf, pce, rloss, sfc  # noqa: F401  (registration side effect)
from weakseg.methods.base import (
    METHODS,
    AdaptsEvaluation,
    AddsSampleMaps,
    BindsModel,
    BuildsModel,
    FitsDataset,
    LogsValues,
    Method,
    PreparesBatch,
    RunsModel,
    TrainsOwnLayers,
    available_methods,
    build_method,
    create_method,
    get_method_class,
    model_kind,
    register_method,
    run_model,
)

__all__ = [
    "METHODS",
    "AdaptsEvaluation",
    "AddsSampleMaps",
    "BindsModel",
    "BuildsModel",
    "FitsDataset",
    "LogsValues",
    "Method",
    "PreparesBatch",
    "RunsModel",
    "TrainsOwnLayers",
    "available_methods",
    "build_method",
    "create_method",
    "get_method_class",
    "model_kind",
    "register_method",
    "run_model",
]
