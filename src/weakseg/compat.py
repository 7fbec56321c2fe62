"""The one place that works around the environment.

PyPI's torchvision 0.28.0 wheel is a CUDA build: on a CPU-only torch its compiled ops library
(`torchvision/_C.so`) fails to load, and `import torchvision` then dies while registering fake
kernels for `torchvision::nms` / `torchvision::qnms`, operators that were never defined. timm
imports torchvision, so `import timm` dies with it.

:func:`import_timm` imports torchvision normally; only if that fails for this reason does it define
the two operator schemas (no kernels: calling them still raises), drop the half-imported modules
and import again. Nothing else in weakseg imports timm or torchvision directly.
"""

from __future__ import annotations

import sys
from types import ModuleType

_MISSING_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_schema_lib = None  # keeps the torch.library.Library alive for the life of the process


def _define_missing_torchvision_ops() -> None:
    global _schema_lib
    import torch

    if _schema_lib is not None:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _MISSING_OPS.items():
        if not torch._C._dispatch_has_kernel(f"torchvision::{name}") and not _has_schema(name):
            lib.define(schema)
    _schema_lib = lib


def _has_schema(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def import_torchvision() -> ModuleType:
    """Import torchvision, working around a CUDA wheel on a CPU-only torch (see module doc)."""
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err) or "does not exist" not in str(err):
            raise
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        _define_missing_torchvision_ops()
        import torchvision
    return torchvision


def import_timm() -> ModuleType:
    """Import timm (which imports torchvision) so that it works on CPU-only torch builds."""
    import_torchvision()
    import timm

    return timm
