"""Depthwise convolutions with a faster backward pass on CPU, for training.

On CPU, ``F.conv2d`` runs depthwise convolutions (``groups == channels``, one filter per channel) through
oneDNN, whose forward is fast but whose backward is not at the feature-map sizes of a CPU-sized
segmentor: for EfficientNet-lite0 at 128x128 crops, the dilated 5x5 depthwise layers of the last stage
(1152 channels on an 8x8 map) take ~10x their forward time to backpropagate, and depthwise backward
was the largest single cost of a training step (``benchmarks/train_step_profile.py``).

:func:`depthwise_conv2d` takes the layers where that backward is slow: filters larger than 3x3 or
dilated (undilated 3x3 layers backpropagate as fast through ATen), except strided ones on channels-last
inputs (there oneDNN's own backward is the faster). It keeps the forward call and computes:

* the weight gradient as one grouped convolution of the input, seen as ``N * C`` single-channel maps,
  with the output gradient as its filters (stride and dilation swap roles), summed over the batch;
* the input gradient of a dilated, stride-1 layer as the convolution of the output gradient with the
  180-degree rotated filters, padded by ``dilation * (k - 1) - padding``; other input gradients come
  from ATen's own ``convolution_backward``.

The gradients are the same sums in another order, so they agree with ATen's to float rounding
(``tests/engine/test_depthwise.py``); the forward output is bit-identical. :class:`FastDepthwise` is a
``TorchFunctionMode`` that sends every eligible ``F.conv2d`` call made inside it (whichever module makes
it: ``nn.Conv2d``, timm's ``Conv2dSame``, ...) through :func:`depthwise_conv2d`; the trainer enters it
around the forward pass on CPU (``train.fast_depthwise``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["FastDepthwise", "depthwise_conv2d", "is_depthwise", "worthwhile"]


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = (int(v) for v in value)
    return first, second


def is_depthwise(x: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether ``F.conv2d(x, weight, groups=groups)`` is a plain depthwise convolution on a CPU tensor
    of float32 (one filter per input channel) that :func:`depthwise_conv2d` handles."""
    return (
        x.dim() == 4
        and weight.dim() == 4
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and groups > 1
        and x.shape[1] == groups
        and weight.shape[0] == groups
        and weight.shape[1] == 1
    )


def worthwhile(x: Tensor, weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int]) -> bool:
    """Whether :func:`depthwise_conv2d` takes this depthwise layer (see the module doc): a filter larger
    than 3x3 or dilated, and not strided on a channels-last input (measured on AVX-512, one thread)."""
    large = max(weight.shape[-2:]) > 3 or max(dilation) > 1
    return large and (stride == (1, 1) or _memory_format(x) != torch.channels_last)


def _input_grad(
    grad: Tensor,
    x: Tensor,
    weight: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    kh, kw = weight.shape[-2:]
    back = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
    if stride == (1, 1) and max(dilation) > 1 and min(back) >= 0:
        return F.conv2d(grad, weight.flip(-2, -1), None, 1, back, dilation, x.shape[1])
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, stride, padding, dilation, False, [0, 0], x.shape[1], [True, False, False]
    )[0]


def _weight_grad(
    grad: Tensor,
    x: Tensor,
    weight: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    # gw[c, i, j] = sum_{n, y, x} grad[n, c, y, x] * x_padded[n, c, y * s + i * d, x * s + j * d]:
    # a convolution of the map (n, c) with the filter grad[n, c], stride d and dilation s. Maps are
    # image-major (index n * C + c), so both reshapes are views of contiguous tensors.
    maps = x.reshape(1, n * c, h, w)
    filters = grad.reshape(n * c, 1, grad.shape[-2], grad.shape[-1])
    out = F.conv2d(maps, filters, None, dilation, padding, stride, n * c)
    return out[..., :kh, :kw].reshape(n, c, kh, kw).sum(0).unsqueeze(1)


class _DepthwiseConv2d(torch.autograd.Function):
    """``F.conv2d`` of a depthwise convolution with the backward described in the module doc."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad = grad.contiguous(memory_format=_memory_format(x))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(grad, x, weight, stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(grad, x, weight, stride, padding, dilation)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels_last for a channels-last (and not also contiguous) ``x``, else contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def depthwise_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[1])`` for a depthwise
    ``weight`` ``[C, 1, kh, kw]``, with the faster CPU backward of the module doc.

    The plain call is made instead when no gradient is needed, under autocast, for string padding,
    for anything :func:`is_depthwise` refuses and for layers that are not :func:`worthwhile`."""
    groups = x.shape[1] if x.dim() == 4 else 1
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if (
        not needs_grad
        or not is_depthwise(x, weight, groups)
        or isinstance(padding, str)
        or torch.is_autocast_enabled(x.device.type)  # autocast would change the dtype inside
        or not worthwhile(x, weight, _pair(stride), _pair(dilation))
    ):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return _DepthwiseConv2d.apply(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation))


def _conv2d_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


class FastDepthwise(TorchFunctionMode):
    """Inside ``with FastDepthwise():`` every ``F.conv2d`` that is a depthwise convolution on a CPU
    float32 tensor needing a gradient runs through :func:`depthwise_conv2d`; every other call is
    unchanged."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            a = _conv2d_arguments(args, kwargs)
            x, weight, groups = a.get("input"), a.get("weight"), a.get("groups", 1)
            padding = a.get("padding", 0)
            if (
                isinstance(x, Tensor)
                and isinstance(weight, Tensor)
                and not isinstance(padding, str)
                and is_depthwise(x, weight, int(groups))
            ):
                return depthwise_conv2d(
                    x, weight, a.get("bias"), a.get("stride", 1), padding, a.get("dilation", 1)
                )
        return func(*args, **kwargs)
