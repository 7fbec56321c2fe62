"""Segmentation heads on a backbone's feature list.

Every head is built as ``Head(in_channels, strides, num_classes, **options)`` from the backbone's
per-level ``channels`` and ``strides`` (shallow to deep), and its ``forward(features)`` returns
``(logits [B, K, h, w], embedding [B, embed_dim, h', w'])``: class scores at the head's
``output_stride`` (not upsampled) and the last hidden feature map before the classifier, which
feature-space losses (dense CRF on deep features, prototypes, ...) work on.

``HEADS`` (a :class:`~weakseg.registry.Registry`; :func:`register_head`, ``weakseg models`` lists it) maps
names to the head classes; :func:`create_head` is the entry point:

- ``deeplabv2``: the classic DeepLab-v2 ASPP classifier.
- ``deeplabv2_aspp_bn``: the BatchNorm ASPP head that later DeepLab-v2 re-implementations use.
- ``deeplabv2_cdsp``: the CDSP authors' variant of it, with ``num_classes``-wide branches fused by a 1x1
  conv + norm (their R50-V2 ablation model).
- ``deeplabv3plus``: DeepLab-v3+ (ASPP + low-level decoder).
- ``upernet``: UperNet (PPM + FPN, :mod:`weakseg.models.upernet`).

Normalisation of hidden layers is configurable with ``norm`` (:mod:`weakseg.models.layers`): ``"bn"``
(BatchNorm2d), ``"syncbn"`` (SyncBatchNorm; behaves as BatchNorm outside ``torch.distributed``) or ``"gn"``
(GroupNorm, up to 32 groups). Heads with an image-pooling branch normalise a 1x1 map over the batch, so
with ``"bn"`` training needs batch size >= 2 (as in torchvision's DeepLab).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weakseg.models.layers import ConvNormAct, init_classifier, init_hidden, make_norm
from weakseg.models.upernet import UperNetHead
from weakseg.registry import Registry

HeadFactory = Callable[..., nn.Module]


class HeadAttributes(Protocol):
    """What every head states besides its ``forward``: the stride of its logits, the number of classes
    and the width of its embedding (the segmentor and the methods read them)."""

    output_stride: int
    num_classes: int
    embed_dim: int


#: name -> head class / factory ``(in_channels, strides, num_classes, **options)``
HEADS: Registry[HeadFactory] = Registry("head")


def register_head(name: str, *, description: str | None = None) -> Callable[[HeadFactory], HeadFactory]:
    """Decorator adding a head class (or factory) to :data:`HEADS` under ``name``."""
    return HEADS.register(name, description=description)


#: Crop side the published ASPP dilation rates were designed for (DeepLab: 513-pixel crops, a 33x33 map
#: at output stride 16). Smaller crops scale the rates down with :func:`fit_aspp_rates`.
ASPP_REFERENCE_CROP = 513


def fit_aspp_rates(rates: Sequence[int], scale: float) -> list[int]:
    """Dilation ``rates`` multiplied by ``scale`` (rounded, at least 1), for crops smaller than the reference.

    A 3x3 branch of dilation ``r`` on an ``n x n`` map reads only zero padding with its outer taps when
    ``r >= n``: on a 128-pixel crop (8x8 map at stride 16) the usual 6/12/18 degenerate to 1x1 convolutions.
    Scaling by ``crop / 513`` keeps each branch's reach the same fraction of the image as in the paper
    (128 -> 1/3/4, 256 -> 3/6/9). ``scale >= 1`` returns the rates unchanged.
    """
    if scale >= 1.0:
        return [int(r) for r in rates]
    return [max(1, round(r * scale)) for r in rates]


class ImagePooling(nn.Module):
    """Global average pool -> 1x1 ConvNormAct -> broadcast back to the input size: ``[B, cout, H, W]``."""

    def __init__(self, cin: int, cout: int, norm: str = "bn") -> None:
        super().__init__()
        self.project = ConvNormAct(cin, cout, 1, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.project(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel branches, concatenated, fused by a 1x1 ConvNormAct.

    Branches: an optional 1x1 conv, one 3x3 conv per dilation ``rate`` and an image-pooling branch, each
    mapping ``cin`` to ``channels``. Output ``[B, channels, H, W]`` (same size as the input), or with
    ``fuse=False`` the concatenation ``[B, channels * branches, H, W]``.
    """

    def __init__(
        self,
        cin: int,
        channels: int,
        rates: Sequence[int],
        *,
        with_1x1: bool,
        norm: str = "bn",
        dropout: float = 0.0,
        fuse: bool = True,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvNormAct(cin, channels, 1, norm=norm)] if with_1x1 else []
        branches += [ConvNormAct(cin, channels, 3, dilation=r, norm=norm) for r in rates]
        branches.append(ImagePooling(cin, channels, norm=norm))
        self.branches = nn.ModuleList(branches)
        # fuse=False keeps the concatenation [B, channels * branches, H, W] (the CDSP authors' head)
        self.project = (
            ConvNormAct(channels * len(branches), channels, 1, norm=norm) if fuse else nn.Identity()
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.project(torch.cat([branch(x) for branch in self.branches], dim=1)))


@register_head("deeplabv2", description="DeepLab-v2 ASPP classifier: sum of four dilated 3x3 convs")
class DeepLabV2Head(nn.Module):
    """The classic DeepLab-v2 ASPP classifier (Chen et al., TPAMI 2018).

    Four parallel 3x3 convolutions with dilations ``rates`` (6, 12, 18, 24) read the deepest feature and
    each predicts ``num_classes`` logits directly (with bias); their sum is the output, at the deepest
    stride. There is no hidden layer, so the embedding is the deepest backbone feature itself.
    ``rate_scale`` < 1 shrinks the rates for small crops (:func:`fit_aspp_rates`).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        *,
        rates: Sequence[int] = (6, 12, 18, 24),
        rate_scale: float = 1.0,
    ) -> None:
        super().__init__()
        cin = in_channels[-1]
        rates = fit_aspp_rates(rates, rate_scale)
        self.rates = rates
        branches = [nn.Conv2d(cin, num_classes, 3, padding=r, dilation=r) for r in rates]
        for conv in branches:
            init_classifier(conv)
        self.branches = nn.ModuleList(branches)
        self.num_classes = num_classes
        self.embed_dim = cin
        self.output_stride = strides[-1]

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``features``: backbone levels -> (logits ``[B, K, h, w]``, deepest feature ``[B, C, h, w]``)."""
        x = features[-1]
        logits = self.branches[0](x)
        for conv in self.branches[1:]:
            logits = logits + conv(x)
        return logits, x


@register_head(
    "deeplabv2_aspp_bn", description="DeepLab-v2 ASPP with BatchNorm and image pooling (later code)"
)
class DeepLabV2ASPPBNHead(nn.Module):
    """DeepLab-v2-style head with BatchNorm ASPP, as found in later re-implementations (not the paper's).

    Four 3x3 branches with dilations ``rates`` (6, 12, 18, 24) plus an image-pooling branch, each
    conv -> norm -> ReLU to ``channels`` (256); concatenated, fused by a 1x1 conv -> norm -> ReLU (the
    embedding), then dropout (0.5) and a 1x1 classifier. Output at the deepest stride.
    ``rate_scale`` < 1 shrinks the rates for small crops (:func:`fit_aspp_rates`).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        *,
        rates: Sequence[int] = (6, 12, 18, 24),
        channels: int = 256,
        dropout: float = 0.5,
        norm: str = "bn",
        rate_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.rates = fit_aspp_rates(rates, rate_scale)
        self.aspp = ASPP(in_channels[-1], channels, self.rates, with_1x1=False, norm=norm)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_hidden(self.aspp)
        init_classifier(self.classifier)
        self.num_classes = num_classes
        self.embed_dim = channels
        self.output_stride = strides[-1]

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``features``: backbone levels -> (logits ``[B, K, h, w]``, embedding ``[B, 256, h, w]``)."""
        embedding = self.aspp(features[-1])
        return self.classifier(self.dropout(embedding)), embedding


@register_head(
    "deeplabv2_cdsp", description="the CDSP authors' ASPP: num_classes-wide branches fused by 1x1 conv + norm"
)
class CDSPASPPHead(nn.Module):
    """The ASPP head of the CDSP authors' ResNet "DeepLabV2" models (their R50-V2 ablation), whose branches
    are as wide as the number of classes.

    Branches on the deepest feature, each conv (no bias) -> norm -> ReLU to ``num_classes`` channels: a 1x1
    conv (the first of the four rates is unused by a 1x1 kernel), 3x3 convs with dilations ``rates[1:]``
    (12, 18, 24) and an image-pooling branch. The ``5·K`` concatenation is the embedding; a 1x1 conv (no
    bias) -> norm fuses it into the logits, with no ReLU or dropout after it. Output at the deepest stride.
    ``rate_scale`` < 1 shrinks the rates for small crops (:func:`fit_aspp_rates`).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        *,
        rates: Sequence[int] = (6, 12, 18, 24),
        norm: str = "bn",
        rate_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.rates = fit_aspp_rates(rates, rate_scale)
        k = num_classes
        self.aspp = ASPP(in_channels[-1], k, self.rates[1:], with_1x1=True, norm=norm, fuse=False)
        self.embed_dim = k * (len(self.rates) + 1)  # 1x1 + 3x3 branches + image pooling
        self.fuse = nn.Sequential(nn.Conv2d(self.embed_dim, k, 1, bias=False), make_norm(norm, k))
        init_hidden(self)
        self.num_classes = num_classes
        self.output_stride = strides[-1]

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``features``: backbone levels -> (logits ``[B, K, h, w]``, branches ``[B, 5K, h, w]``)."""
        embedding = self.aspp(features[-1])
        return self.fuse(embedding), embedding


@register_head("deeplabv3plus", description="DeepLab-v3+: ASPP on the deepest level + low-level decoder")
class DeepLabV3PlusHead(nn.Module):
    """DeepLab-v3+ (Chen et al., ECCV 2018) on the deepest and the shallowest backbone levels.

    ASPP on the deepest level: a 1x1 branch, 3x3 branches at ``rates`` (default 6/12/18 when the deepest
    stride is 16, scaled to 12/24/36 at stride 8; ``rate_scale`` < 1 shrinks them for small crops,
    :func:`fit_aspp_rates`) and image pooling, fused to ``channels`` (256) with
    dropout ``aspp_dropout``. The decoder projects the shallowest level to ``low_level_channels`` (48),
    upsamples the ASPP output to it (bilinear), concatenates, and applies two 3x3 ConvNormAct (256, the
    embedding) and a 1x1 classifier. Output at the shallowest stride (4 for the CNN backbones).

    A single-level backbone (a ViT) uses its only level both as the ASPP input and as the low-level
    feature, so the output stays at stride 16.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        *,
        rates: Sequence[int] | None = None,
        channels: int = 256,
        low_level_channels: int = 48,
        aspp_dropout: float = 0.1,
        norm: str = "bn",
        rate_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if rates is None:
            rates = [r * 16 // strides[-1] for r in (6, 12, 18)]
        self.rates = fit_aspp_rates(rates, rate_scale)
        self.aspp = ASPP(
            in_channels[-1], channels, self.rates, with_1x1=True, norm=norm, dropout=aspp_dropout
        )
        self.low_level = ConvNormAct(in_channels[0], low_level_channels, 1, norm=norm)
        self.decoder = nn.Sequential(
            ConvNormAct(channels + low_level_channels, channels, 3, norm=norm),
            ConvNormAct(channels, channels, 3, norm=norm),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        for module in (self.aspp, self.low_level, self.decoder):
            init_hidden(module)
        init_classifier(self.classifier)
        self.num_classes = num_classes
        self.embed_dim = channels
        self.output_stride = strides[0]

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``features``: backbone levels -> (logits ``[B, K, h0, w0]``, embedding ``[B, 256, h0, w0]``)."""
        low = self.low_level(features[0])
        context = self.aspp(features[-1])
        if context.shape[-2:] != low.shape[-2:]:
            context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        embedding = self.decoder(torch.cat([context, low], dim=1))
        return self.classifier(embedding), embedding


# UperNet lives in its own module, which imports nothing of this one (no cycle)
HEADS.add(
    "upernet", UperNetHead, description="UperNet: PPM + FPN decoder (its own pyramid for single-level ViTs)"
)


def available_heads() -> list[str]:
    """Registered head names, sorted."""
    return HEADS.names()


def create_head(
    name: str, in_channels: Sequence[int], strides: Sequence[int], num_classes: int, **kwargs
) -> nn.Module:
    """Build the head registered as ``name`` for a backbone with these per-level channels and strides."""
    factory = HEADS[name]  # an unknown name: UnknownNameError (a ValueError) listing the names
    if len(in_channels) != len(strides) or not in_channels:
        raise ValueError(f"{name}: in_channels {list(in_channels)} and strides {list(strides)} must match")
    if num_classes < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
    return factory(list(in_channels), list(strides), num_classes, **kwargs)
