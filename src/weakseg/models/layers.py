"""Building blocks shared by the heads (:mod:`weakseg.models.heads`, :mod:`weakseg.models.upernet`,
:mod:`weakseg.models.consistency_head`): normalisation layers, conv-norm-ReLU and their initialisation.

Normalisation is one of ``"bn"`` (BatchNorm2d), ``"syncbn"`` (SyncBatchNorm; behaves as BatchNorm outside
``torch.distributed``) or ``"gn"`` (GroupNorm, up to 32 groups).
"""

from __future__ import annotations

import math

from torch import nn

__all__ = ["NORMS", "ConvNormAct", "init_classifier", "init_hidden", "make_norm"]

NORMS = ("bn", "syncbn", "gn")


def make_norm(norm: str, channels: int) -> nn.Module:
    """A normalisation layer for ``channels`` feature maps: ``"bn"``, ``"syncbn"`` or ``"gn"``."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "syncbn":
        return nn.SyncBatchNorm(channels)
    if norm == "gn":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"unknown norm '{norm}'; expected one of {NORMS}")


class ConvNormAct(nn.Sequential):
    """``k x k`` convolution (no bias, "same" padding for odd ``k``) -> norm -> ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int = 1, dilation: int = 1, norm: str = "bn"
    ) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, padding=padding, dilation=dilation, bias=False),
            make_norm(norm, cout),
            nn.ReLU(inplace=True),
        )


def init_hidden(module: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convolutions; unit-scale, zero-shift norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_classifier(conv: nn.Conv2d) -> None:
    """Small logits at the start: weights ~ N(0, 0.01^2), zero bias (the DeepLab-v2 initialisation)."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
