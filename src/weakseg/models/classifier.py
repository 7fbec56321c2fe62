"""The image-level CAM classifier (IRN / SIPE / SFC stage 1): backbone + 1x1 classifier, no decoder.

``create_cam_classifier("resnet50", num_classes=21)`` builds one. ``num_classes`` counts every class of
the dataset, background included; the classifier has one output per *foreground* class (``C = K - 1``
when the dataset has a background class, ``C = K`` when it has none, e.g. CamVid).

``forward(image)`` (RGB in [0, 1]; normalisation is inside, as in :class:`~weakseg.models.Segmentor`)
returns a dict:

* ``"cls_logits"`` ``[B, C]``: image-level scores, the global average of the class maps.
* ``"cam"`` ``[B, C, h, w]``: raw class activation maps ``W^T F`` of the deepest level (before ReLU).
* ``"features"``: the backbone levels, shallow to deep.
* ``"logits"`` ``[B, K, h, w]``: a tag-free CAM segmentation for the segmentation tools (evaluate,
  predict, overlays): foreground channels are the max-normalised ``ReLU(cam)`` in [0, 1], the
  background channel is the constant ``bg_threshold``; see :func:`cam_seed_logits`.
* with ``pcm=True``: ``"pcm_embedding"`` ``[B, D, h, w]``, the pixel-correlation features
  ``Conv1x1([image resized to the grid; F_deep])`` (SFC's ``f9``; gradient reaches ``F_deep``).
* with ``side_channels``: ``"side_embedding"`` ``[B, sum(side_channels), h, w]``, SFC's hierarchical
  feature: every level, **detached**, through its own 1x1 conv, L2-normalised per pixel, bilinearly
  resized to the CAM grid and concatenated. Only the side convs receive gradient through it.

The CAM grid ``h x w`` is that of the deepest level (stride 16 for the ResNet-50 of SFC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weakseg.models.backbones import Backbone, Pretrained
from weakseg.models.network import BackboneNetwork, BackboneSpec
from weakseg.models.outputs import ModelOutputs
from weakseg.ops.class_maps import foreground_indices, insert_background, max_normalize

__all__ = [
    "DEFAULT_BG_THRESHOLD",
    "CAMClassifier",
    "cam_seed_logits",
    "class_activation",
    "create_cam_classifier",
    "fix_bn_statistics",
    "remove_dilation",
]

#: Background score of the tag-free ``"logits"`` and of CAM seeds: IRN's ``cam_eval_thres`` (0.15), the
#: threshold its CAM seeds on VOC are evaluated with.
DEFAULT_BG_THRESHOLD = 0.15


def cam_seed_logits(
    cam: Tensor,
    *,
    num_classes: int,
    background: int | None,
    bg_threshold: float = DEFAULT_BG_THRESHOLD,
    tags: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """Class scores whose arg-max is the CAM seed: ``[B, C, h, w]`` foreground maps -> ``[B, K, h, w]``.

    Foreground channels: ``ReLU(cam)`` divided by each channel's spatial max (``normalize``; values in
    [0, 1]); with ``tags`` (``[B, K]`` multi-hot over all classes) classes that are not tagged score
    -1, so only tagged classes (and the background) can win. The background channel (absent when
    ``background`` is None) is the constant ``bg_threshold``: a pixel is foreground where the
    strongest normalised CAM exceeds it. The sum of the raw maps of several scales/flips can be passed
    (normalisation comes after the sum, as in IRN).
    """
    fg_index = foreground_indices(num_classes, background)
    if cam.ndim != 4 or cam.shape[1] != len(fg_index):
        raise ValueError(
            f"expected foreground maps [B, {len(fg_index)}, h, w] for {num_classes} classes with "
            f"background {background}, got shape {tuple(cam.shape)}"
        )
    fg = F.relu(cam.float())
    if normalize:
        fg = max_normalize(fg)
    if tags is not None:
        present = tags[:, fg_index].to(fg.dtype)[:, :, None, None]
        fg = fg * present + (present - 1.0)  # absent classes: -1
    if background is None:
        return fg
    return insert_background(fg, torch.full_like(fg[:, :1], float(bg_threshold)), background)


def class_activation(classifier: nn.Module, deep: Tensor) -> tuple[Tensor, Tensor]:
    """The CAM and the image scores of a bias-free 1x1 ``classifier`` over the deepest feature.

    ``deep`` ``[B, D, h, w]`` -> ``(cam, cls_logits)``: the raw class maps ``W^T F`` ``[B, C, h, w]``
    (before ReLU) and their global average ``[B, C]`` (equal to classifying the pooled feature, as the
    1x1 convolution is linear). Shared by :class:`CAMClassifier` and the single-stage network.
    """
    cam = classifier(deep)
    return cam, cam.mean(dim=(2, 3))


def remove_dilation(module: nn.Module) -> int:
    """Turn every dilated convolution in ``module`` into an undilated one (same weights); returns how many.

    timm reaches output stride 16/8 by dilating the stride-capped stages; IRN/SIPE/SFC instead run their
    last stage at stride 1 *without* dilation (``strides=(2, 2, 2, 1)``, dilation 1). A convolution with
    kernel ``k``, dilation ``d`` and the matching static padding ``d (k - 1) / 2`` gets dilation 1 and
    padding ``(k - 1) / 2``, so every feature map keeps its size.
    """
    changed = 0
    for conv in module.modules():
        if not isinstance(conv, nn.Conv2d) or conv.dilation == (1, 1):
            continue
        expected = tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
        if tuple(conv.padding) != expected:
            raise ValueError(
                f"cannot undilate {conv}: padding {conv.padding} is not the static 'same' padding {expected}"
            )
        conv.dilation = (1, 1)
        conv.padding = tuple((k - 1) // 2 for k in conv.kernel_size)
        changed += 1
    return changed


def fix_bn_statistics(backbone: Backbone) -> Backbone:
    """Keep every BatchNorm of ``backbone`` in eval mode (running statistics fixed, IRN's
    ``FixedBatchNorm``) without freezing its affine parameters: γ and β of the trainable stages still
    learn, as in IRN / SIPE / SFC, whose optimisers include the BatchNorm weights of ``layer3`` and
    ``layer4`` (only ``conv1``/``bn1`` are frozen, and ``layer1``/``layer2`` through the detach, i.e.
    ``frozen_stages``). Returns ``backbone``."""
    backbone.freeze_bn = True  # Backbone.train() keeps its BatchNorms in eval mode from now on
    backbone.train(backbone.training)
    return backbone


class CAMClassifier(BackboneNetwork):
    """Backbone + bias-free 1x1 classifier over the deepest level, with optional SFC heads.

    Args:
        backbone: a :class:`~weakseg.models.backbones.Backbone`.
        num_classes: ``K``, every class of the dataset (background included when there is one).
        background: the background class index (0 for VOC/COCO), or None when the dataset has none.
        bg_threshold: background score of the tag-free ``"logits"``.
        pcm: add SFC's pixel-correlation conv (``3 + C_deep -> C_deep``, no bias).
        side_channels: output widths of SFC's side 1x1 convs, one per backbone level (SFC on ResNet-50:
            128, 128, 256, 256); None: no side features.

    Attributes: ``num_classes`` (K), ``num_foreground`` (C), ``background``, ``fg_index`` (long buffer
    ``[C]``), ``bg_threshold``, ``output_stride`` and ``logits_stride`` (stride of the CAM grid).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        background: int | None = 0,
        bg_threshold: float = DEFAULT_BG_THRESHOLD,
        pcm: bool = False,
        side_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__(backbone)
        fg_index = foreground_indices(num_classes, background)
        if not fg_index:
            raise ValueError(
                f"a CAM classifier needs at least one foreground class (num_classes={num_classes})"
            )
        self.num_classes = int(num_classes)
        self.background = background
        self.num_foreground = len(fg_index)
        self.bg_threshold = float(bg_threshold)
        self.logits_stride = backbone.strides[-1]
        self.register_buffer("fg_index", torch.tensor(fg_index, dtype=torch.long), persistent=False)
        deep = backbone.channels[-1]
        self.classifier = nn.Conv2d(deep, self.num_foreground, 1, bias=False)
        self.pcm = nn.Conv2d(3 + deep, deep, 1, bias=False) if pcm else None
        self.side: nn.ModuleList | None = None
        if side_channels is not None:
            if len(side_channels) != len(backbone.channels):
                raise ValueError(
                    f"side_channels has {len(side_channels)} widths but backbone '{backbone.name}' has "
                    f"{len(backbone.channels)} levels ({backbone.channels})"
                )
            self.side = nn.ModuleList(
                nn.Conv2d(c_in, int(c_out), 1, bias=False)
                for c_in, c_out in zip(backbone.channels, side_channels)
            )

    def forward(self, image: Tensor) -> ModelOutputs:
        """``image`` float ``[B, 3, H, W]`` in [0, 1] -> the outputs described in the module doc
        (:class:`~weakseg.models.outputs.ModelOutputs`)."""
        x = self.normalize(image)
        features = self.backbone(x)
        deep = features[-1]
        cam, cls_logits = class_activation(self.classifier, deep)
        out: ModelOutputs = {
            "cls_logits": cls_logits,
            "cam": cam,
            "features": features,
            "logits": cam_seed_logits(
                cam.detach(),
                num_classes=self.num_classes,
                background=self.background,
                bg_threshold=self.bg_threshold,
            ),
        }
        grid = tuple(deep.shape[-2:])
        if self.pcm is not None:
            small = F.interpolate(x, size=grid, mode="bilinear", align_corners=True)
            out["pcm_embedding"] = self.pcm(torch.cat([small.to(deep.dtype), deep], dim=1))
        if self.side is not None:
            out["side_embedding"] = self.side_embedding(features, grid)
        return out

    def side_embedding(self, features: Sequence[Tensor], grid: tuple[int, int]) -> Tensor:
        """SFC's hierarchical feature ``[B, sum(side_channels), *grid]`` from detached backbone levels."""
        assert self.side is not None
        parts = []
        for conv, feature in zip(self.side, features):
            s = conv(feature.detach())
            s = s / (s.norm(dim=1, keepdim=True) + 1e-5)
            if tuple(s.shape[-2:]) != grid:
                s = F.interpolate(s, size=grid, mode="bilinear", align_corners=False)
            parts.append(s)
        return torch.cat(parts, dim=1)


def create_cam_classifier(
    backbone: str = "resnet50",
    num_classes: int = 21,
    pretrained: Pretrained = None,
    output_stride: int = 16,
    *,
    frozen_stages: int = 0,
    freeze_bn: bool = False,
    background: int | None = 0,
    bg_threshold: float = DEFAULT_BG_THRESHOLD,
    dilated: bool = False,
    pcm: bool = False,
    side_channels: Sequence[int] | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> CAMClassifier:
    """Build a :class:`CAMClassifier`.

    Args:
        backbone: a registered backbone name (``resnet50`` for SFC, ``efficientnet_lite0`` for CPU runs),
            optionally with a timm weight tag: ``resnet50.tv_in1k`` / ``resnet101.tv_in1k`` are the
            torchvision ImageNet weights IRN and SFC start from.
        num_classes: ``K``, all classes of the dataset including the background.
        pretrained: ``None``, ``"imagenet"`` or a local weights file for the backbone.
        output_stride: deepest-level stride (16 for IRN/SIPE/SFC).
        frozen_stages: frozen leading stages (see :class:`~weakseg.models.backbones.Backbone`).
            IRN/SIPE/SFC detach the output of ResNet ``layer2``, so stem, ``layer1`` and ``layer2`` never
            learn: ``frozen_stages=3`` reproduces that.
        freeze_bn: fix the BatchNorm *statistics* only (:func:`fix_bn_statistics`, IRN's
            ``FixedBatchNorm``); the affine γ/β of the stages that are not frozen keep training, as in
            the reference code. (Segmentors' ``freeze_bn`` also freezes γ/β.)
        background: background class index, or None (then every class has a CAM channel).
        bg_threshold: background score of the tag-free ``"logits"``.
        dilated: keep timm's dilated stride-capped stages; False (default) removes the dilation as in
            IRN/SIPE/SFC (see :func:`remove_dilation`).
        pcm, side_channels: SFC's heads (see :class:`CAMClassifier`).
        backbone_kwargs: extra backbone options.
    """
    # freeze_bn: the statistics only, below
    body = BackboneSpec(backbone, pretrained, output_stride, frozen_stages, False, backbone_kwargs).build()
    if freeze_bn:
        fix_bn_statistics(body)
    if not dilated:
        remove_dilation(body)
    return CAMClassifier(
        body,
        num_classes,
        background=background,
        bg_threshold=bg_threshold,
        pcm=pcm,
        side_channels=side_channels,
    )
