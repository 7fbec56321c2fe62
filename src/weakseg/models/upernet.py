"""UperNet decode head (Xiao et al., "Unified Perceptual Parsing", ECCV 2018) for Swin/ViT/ResNet features.

The head follows mmsegmentation's ``UPerHead``, the decoder of the published UperNet-Swin results:

1. **PPM** (pyramid pooling module) on the deepest level: adaptive average pooling to 1x1, 2x2, 3x3 and
   6x6, a 1x1 ConvNormAct to ``channels`` each, bilinear upsampling back, concatenation with the input and a
   3x3 ConvNormAct ("bottleneck") to ``channels``.
2. **FPN**: a 1x1 ConvNormAct lateral on every other level, a top-down pathway (each lateral plus the
   bilinearly upsampled coarser one), then a 3x3 ConvNormAct on each merged level (the PPM output is the
   top of the pyramid as is).
3. **Fusion**: every FPN level upsampled to the finest one, concatenated, 3x3 ConvNormAct to ``channels``:
   the embedding. Dropout (0.1) and a 1x1 classifier give the logits at the finest stride.

**Single-stride backbones (ViT).** A plain ViT gives one stride-16 map (or several, one per chosen block).
UperNet needs a pyramid, so :class:`SimplePyramid` builds strides 4/8/16/32 from it as the BEiT/mmseg
ViT-UperNet recipes do: two stride-2 transposed convolutions (with norm + GELU in between) for x4, one for
x2, identity for x1 and 2x2 max pooling for x0.5. With one input map all four come from it; with four maps
(e.g. blocks 3/5/7/11) the i-th rescaler reads the i-th map. The logits are then at stride 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weakseg.models.layers import ConvNormAct, init_classifier, init_hidden, make_norm
from weakseg.ops.resize import resize_bilinear

#: the rescaling factors of :class:`SimplePyramid` (stride 16 -> 4, 8, 16, 32)
PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: ``[B, cin, h, w]`` -> ``[B, cin + len(scales) * channels, h, w]``.

    Each branch average-pools to ``s x s``, applies a 1x1 ConvNormAct and is upsampled back (bilinear).
    A branch pooling to 1x1 normalises over the batch only, so BatchNorm training needs batch size >= 2.
    """

    def __init__(self, cin: int, channels: int, scales: Sequence[int], norm: str = "bn") -> None:
        super().__init__()
        self.scales = [int(s) for s in scales]
        self.branches = nn.ModuleList(ConvNormAct(cin, channels, 1, norm=norm) for _ in self.scales)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            resize_bilinear(b(F.adaptive_avg_pool2d(x, s)), size) for s, b in zip(self.scales, self.branches)
        ]
        return torch.cat([x, *pooled], dim=1)


class SimplePyramid(nn.Module):
    """Strides 4/8/16/32 from stride-16 ViT maps: ``[B, C, h, w]`` -> ``[B, C, 4h|2h|h|ceil(h/2), ...]``.

    Args:
        channels: channels of every input map (unchanged by the rescalers).
        num_inputs: 1 (every level from the same map) or 4 (level i from map i).
        norm: normalisation between the two transposed convolutions of the x4 branch.
    """

    def __init__(self, channels: int, num_inputs: int, norm: str = "bn") -> None:
        super().__init__()
        if num_inputs not in (1, len(PYRAMID_SCALES)):
            raise ValueError(
                f"UperNet on a single-stride backbone needs 1 or {len(PYRAMID_SCALES)} levels, "
                f"got {num_inputs}"
            )
        self.num_inputs = num_inputs
        self.rescalers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(channels, channels, 2, stride=2),
                    make_norm(norm, channels),
                    nn.GELU(),
                    nn.ConvTranspose2d(channels, channels, 2, stride=2),
                ),
                nn.ConvTranspose2d(channels, channels, 2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
        )

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        maps = list(features) if self.num_inputs > 1 else [features[0]] * len(self.rescalers)
        return [rescale(x) for rescale, x in zip(self.rescalers, maps)]


class UperNetHead(nn.Module):
    """UperNet (PPM + FPN) decoder; ``forward(features) -> (logits, embedding)`` at the finest stride.

    Args:
        in_channels, strides: per backbone level, shallow to deep. Equal strides everywhere (a ViT) switch
            on :class:`SimplePyramid` (the logits are then at a quarter of that stride).
        num_classes: logits channels.
        channels: width of the PPM, FPN and fusion layers (512 in the UperNet-Swin/ViT recipes).
        pool_scales: PPM output sizes (1, 2, 3, 6 as in PSPNet/UperNet).
        dropout: before the classifier (0.1).
        norm: ``"bn"``, ``"syncbn"`` or ``"gn"`` for every hidden layer.

    Attributes:
        embed_dim: ``channels``; output_stride: stride of the finest pyramid level (4 for Swin/ResNet/ViT).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        *,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        in_channels, strides = list(in_channels), list(strides)
        self.pyramid: SimplePyramid | None = None
        if len(set(strides)) == 1 and len(strides) in (1, len(PYRAMID_SCALES)):
            if len(set(in_channels)) != 1:
                raise ValueError(f"single-stride levels must share one width, got {in_channels}")
            self.pyramid = SimplePyramid(in_channels[0], len(strides), norm=norm)
            strides = [int(strides[0] / s) for s in PYRAMID_SCALES]
            in_channels = [in_channels[0]] * len(PYRAMID_SCALES)
        elif len(strides) < 2 or any(b < a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"UperNet needs >= 2 levels with non-decreasing strides, got strides {strides}")

        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales, norm=norm)
        self.bottleneck = ConvNormAct(in_channels[-1] + len(pool_scales) * channels, channels, 3, norm=norm)
        self.laterals = nn.ModuleList(ConvNormAct(c, channels, 1, norm=norm) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(channels, channels, 3, norm=norm) for _ in in_channels[:-1]
        )
        self.fuse = ConvNormAct(len(in_channels) * channels, channels, 3, norm=norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        for module in (self.ppm, self.bottleneck, self.laterals, self.fpn_convs, self.fuse):
            init_hidden(module)
        if self.pyramid is not None:
            init_hidden(self.pyramid)
        init_classifier(self.classifier)
        self.num_classes = num_classes
        self.embed_dim = channels
        self.output_stride = strides[0]

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``features``: backbone levels -> (logits ``[B, K, h0, w0]``, embedding ``[B, channels, h0, w0]``).

        ``h0 x w0`` is the size of the finest (pyramid) level.
        """
        levels = self.pyramid(features) if self.pyramid is not None else list(features)
        top = self.bottleneck(self.ppm(levels[-1]))
        merged = [lateral(x) for lateral, x in zip(self.laterals, levels[:-1])] + [top]
        for i in range(len(merged) - 1, 0, -1):  # top-down: coarse into fine
            merged[i - 1] = merged[i - 1] + resize_bilinear(merged[i], merged[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, merged[:-1])] + [top]
        size = outs[0].shape[-2:]
        embedding = self.fuse(torch.cat([resize_bilinear(x, size) for x in outs], dim=1))
        return self.classifier(self.dropout(embedding)), embedding
