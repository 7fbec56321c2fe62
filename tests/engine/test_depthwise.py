"""The faster depthwise backward: same forward bit for bit, the same gradients to float rounding, and
the function mode routes only the calls it can handle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.engine import depthwise
from weakseg.engine.depthwise import FastDepthwise, depthwise_conv2d, is_depthwise
from weakseg.models import create_segmentor

# (channels, size, kernel, stride, padding, dilation): the EfficientNet / MobileNet cases (3x3 and 5x5,
# strided with explicit padding as timm's Conv2dSame, dilated at output stride 16) and odd ones
CASES = [
    (6, 9, 3, 1, 1, 1),
    (6, 9, 5, 1, 2, 1),
    (5, 11, 5, 2, 0, 1),
    (4, 10, 3, 2, 1, 1),
    (7, 8, 5, 1, 4, 2),
    (7, 8, 3, 1, 2, 2),
    (3, 12, 5, 1, 1, 2),  # dilated "valid"-ish padding: the output is smaller than the input
    (3, 13, (3, 5), (1, 2), (1, 2), (2, 1)),
]


def _reference(x, w, b, stride, padding, dilation):
    x, w = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    b = None if b is None else b.detach().clone().requires_grad_(True)
    out = F.conv2d(x, w, b, stride, padding, dilation, x.shape[1])
    return x, w, b, out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_gradients_match_aten(case, bias):
    c, size, kernel, stride, padding, dilation = case
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, size, size, generator=gen)
    w = torch.randn(c, 1, kh, kw, generator=gen)
    b = torch.randn(c, generator=gen) if bias else None
    rx, rw, rb, ref = _reference(x, w, b, stride, padding, dilation)
    fx, fw, fb, _ = _reference(x, w, b, stride, padding, dilation)
    pair = depthwise._pair
    # the custom backward itself, also for the cases depthwise_conv2d leaves to ATen
    out = depthwise._DepthwiseConv2d.apply(fx, fw, fb, pair(stride), pair(padding), pair(dilation))
    assert torch.equal(out, ref)  # the forward is the same call
    grad = torch.randn(ref.shape, generator=gen)
    ref.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(fx.grad, rx.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fw.grad, rw.grad, rtol=1e-5, atol=1e-4)
    if bias:
        torch.testing.assert_close(fb.grad, rb.grad, rtol=1e-5, atol=1e-5)


def test_channels_last_and_partial_gradients():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 10, 10, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 5, 5, generator=gen)
    _, rw, _, ref = _reference(x, w, None, 1, 4, 2)
    frozen_input = x.detach()  # no input gradient wanted (a first layer)
    fw = w.detach().clone().requires_grad_(True)
    out = depthwise_conv2d(frozen_input, fw, None, 1, 4, 2)
    assert torch.equal(out, ref)
    grad = torch.randn(out.shape, generator=gen).contiguous(memory_format=torch.channels_last)
    ref.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(fw.grad, rw.grad, rtol=1e-5, atol=1e-4)
    assert frozen_input.grad is None


def test_only_slow_layers_are_routed(monkeypatch):
    """5x5 and dilated filters take the custom backward; 3x3 undilated ones, and strided ones on
    channels-last inputs, stay with ATen (as fast or faster there)."""
    routed = []
    real = depthwise._DepthwiseConv2d.apply
    monkeypatch.setattr(depthwise._DepthwiseConv2d, "apply", lambda *a: routed.append(a[1].shape) or real(*a))
    nchw = torch.randn(1, 4, 9, 9, requires_grad=True)
    nhwc = torch.randn(1, 4, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    cases = [  # (input, kernel, stride, padding, dilation, routed)
        (nchw, 5, 1, 2, 1, True),
        (nchw, 3, 1, 2, 2, True),
        (nchw, 3, 1, 1, 1, False),
        (nchw, 5, 2, 0, 1, True),
        (nhwc, 5, 1, 2, 1, True),
        (nhwc, 5, 2, 0, 1, False),
        (nhwc, 3, 2, 0, 1, False),
    ]
    for x, kernel, stride, padding, dilation, expected in cases:
        before = len(routed)
        w = torch.randn(4, 1, kernel, kernel, requires_grad=True)
        assert depthwise.worthwhile(x, w, (stride, stride), (dilation, dilation)) is expected
        depthwise_conv2d(x, w, None, stride, padding, dilation).sum().backward()
        assert (len(routed) > before) is expected, (kernel, stride, dilation)


def test_eligibility():
    x = torch.randn(1, 4, 6, 6)
    assert is_depthwise(x, torch.randn(4, 1, 3, 3), 4)
    assert not is_depthwise(x, torch.randn(8, 1, 3, 3), 4)  # channel multiplier 2
    assert not is_depthwise(x, torch.randn(4, 2, 3, 3), 2)  # grouped, not depthwise
    assert not is_depthwise(x, torch.randn(4, 4, 3, 3), 1)
    assert not is_depthwise(x.double(), torch.randn(4, 1, 3, 3).double(), 4)


def test_mode_routes_depthwise_calls_only(monkeypatch):
    routed = []
    real = depthwise._DepthwiseConv2d.apply
    monkeypatch.setattr(depthwise._DepthwiseConv2d, "apply", lambda *a: routed.append(a[1].shape) or real(*a))
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    dw = torch.randn(4, 1, 5, 5, requires_grad=True)
    full = torch.randn(6, 4, 3, 3, requires_grad=True)
    with FastDepthwise():
        y = F.conv2d(x, dw, padding=2, groups=4)
        z = F.conv2d(y, full, padding=1)
        with torch.no_grad():
            F.conv2d(x, dw, padding=2, groups=4)  # no gradient: the plain call
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.conv2d(x, dw, padding=2, groups=4)  # autocast: the plain call
        F.conv2d(x, dw, padding="same", groups=4)  # string padding: the plain call
    assert routed == [torch.Size([4, 1, 5, 5])]
    z.sum().backward()
    assert dw.grad is not None and full.grad is not None


def test_segmentor_gradients_unchanged_under_the_mode():
    """A whole EfficientNet-lite0 + DeepLabV3+ at output stride 16 (dilated 5x5 depthwise layers)."""
    torch.manual_seed(0)
    model = create_segmentor(
        "efficientnet_lite0", "deeplabv3plus", num_classes=3, head_kwargs={"channels": 16}
    )
    model.train()
    image = torch.rand(2, 3, 64, 64)

    def grads(fast: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same stochastic-depth draws
        with FastDepthwise() if fast else torch.enable_grad():
            logits = model(image)["logits"]
        logits.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, fast = grads(False), grads(True)
    assert ref.keys() == fast.keys()
    assert torch.equal(grads(False)["head.classifier.weight"], ref["head.classifier.weight"])  # repeatable
    # sums that cancel to ~0 (e.g. the bias gradient of a BatchNorm before another one) differ only at
    # rounding level, so the tolerance is relative to the largest gradient of the network
    scale = max(g.abs().max().item() for g in ref.values())
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
