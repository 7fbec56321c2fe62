"""The feature consistency head: a light head mapping a segmentor feature to unit-length pixel embeddings.

Built for DFR (see ``docs/dfr.md``): ``num_convs`` x (3x3 conv -> norm -> ReLU) at ``hidden`` channels, a
1x1 convolution to ``out_dim`` and L2 normalisation over channels, so ``f_i . f_j`` is a cosine similarity
and ``|f_i - f_j|^2 = 2 - 2 f_i . f_j``. The input width may be left open (``in_channels=None``): the first
convolution is then lazy and takes its width from the first input (or from :meth:`materialize`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weakseg.models.layers import init_hidden, make_norm


class _KaimingLazyConv2d(nn.LazyConv2d):
    """A lazy convolution initialised like the other hidden layers (Kaiming-normal, fan-out) once sized."""

    cls_to_become = nn.Conv2d

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.in_channels != 0:
            nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")


class FeatureConsistencyHead(nn.Module):
    """``[B, in_channels, h, w]`` -> unit-norm embeddings ``[B, out_dim, h, w]`` (same spatial size).

    Args:
        in_channels: input width, or ``None`` to infer it from the first input (lazy first convolution).
        hidden: width of the hidden 3x3 layers (256, the usual light-head width).
        out_dim: embedding dimension ``d`` (64: enough to separate the classes of VOC, cheap in the kernel).
        num_convs: number of hidden 3x3 ConvNormAct layers (2).
        norm: ``"bn"``, ``"syncbn"`` or ``"gn"``.
    """

    def __init__(
        self,
        in_channels: int | None,
        *,
        hidden: int = 256,
        out_dim: int = 64,
        num_convs: int = 2,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        if num_convs < 1 or out_dim < 1 or hidden < 1:
            raise ValueError(f"need num_convs, hidden, out_dim >= 1; got {num_convs}, {hidden}, {out_dim}")
        layers: list[nn.Module] = []
        for i in range(num_convs):
            if i == 0 and in_channels is None:
                conv: nn.Module = _KaimingLazyConv2d(hidden, 3, padding=1, bias=False)
            else:
                conv = nn.Conv2d(hidden if i else in_channels, hidden, 3, padding=1, bias=False)  # type: ignore[arg-type]
            layers += [conv, make_norm(norm, hidden), nn.ReLU(inplace=True)]
        self.hidden = nn.Sequential(*layers)
        self.project = nn.Conv2d(hidden, out_dim, 1)
        init_hidden(nn.ModuleList(m for m in self.hidden if not isinstance(m, nn.LazyConv2d)))
        nn.init.normal_(self.project.weight, std=0.01)
        nn.init.zeros_(self.project.bias)
        self.out_dim = out_dim

    def materialize(self, in_channels: int) -> None:
        """Fix the input width of a lazy head now (no-op otherwise), e.g. before building an optimiser."""
        first = self.hidden[0]
        if isinstance(first, nn.LazyConv2d):
            weight = first.weight
            with torch.no_grad():  # a 1x1 zero input sizes the weight (the conv alone: no norm statistics)
                first(torch.zeros(1, in_channels, 1, 1, device=weight.device, dtype=weight.dtype))
        elif first.in_channels != in_channels:
            raise ValueError(f"consistency head takes {first.in_channels} input channels, not {in_channels}")

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, C, h, w]`` -> ``[B, out_dim, h, w]`` with unit L2 norm over channels."""
        return F.normalize(self.project(self.hidden(x)), dim=1)
