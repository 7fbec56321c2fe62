"""The single-stage image-level network: one shared backbone, a CAM classification branch and a
segmentation branch, trained together (``aal``).

``create_single_stage("resnet101", "deeplabv2", num_classes=21)`` builds one. ``num_classes`` counts
every class of the dataset, background included; the classification branch has one output per
*foreground* class (``C = K - 1`` with a background class, ``C = K`` without, e.g. CamVid), exactly as
:class:`~weakseg.models.classifier.CAMClassifier`, whose helpers it reuses.

``forward(image)`` (RGB in [0, 1]; normalisation inside) returns a dict:

* ``"logits"`` ``[B, K, h_s, w_s]``: the segmentation branch's class scores at the head's stride (not
  upsampled), so the engine's evaluation, inference and ``weakseg predict`` work unchanged;
* ``"embedding"`` ``[B, E, h_s', w_s']``: the segmentation head's last hidden feature map (the same grid
  as ``"logits"`` for every registered head);
* ``"cam"`` ``[B, C, h, w]``: raw class activation maps ``W^T F`` of the deepest backbone level (before
  ReLU), what ``weakseg cam`` and :func:`weakseg.cam.pseudo_labels.cam_pseudo_labels` read;
* ``"cls_logits"`` ``[B, C]``: image scores, the global average of ``"cam"``;
* ``"features"``: the backbone levels, shallow to deep.

Unlike the CAM classifier, the backbone keeps timm's dilation: it is a segmentation backbone
(output stride 8 or 16) whose deepest level also feeds the classifier, as in single-stage methods
built on dilated ResNets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from weakseg.models.backbones import Backbone, Pretrained
from weakseg.models.classifier import class_activation
from weakseg.models.network import BackboneNetwork, BackboneSpec
from weakseg.models.outputs import ModelOutputs
from weakseg.ops.class_maps import foreground_indices

__all__ = ["SingleStageNetwork", "create_single_stage"]


class SingleStageNetwork(BackboneNetwork):
    """Backbone + bias-free 1x1 CAM classifier on the deepest level + a segmentation head.

    Args:
        backbone: a :class:`~weakseg.models.backbones.Backbone`.
        head: a head from :func:`~weakseg.models.heads.create_head` with ``num_classes = K`` outputs.
        num_classes: ``K``, every class of the dataset (background included when there is one).
        background: the background class index, or None when the dataset has none.

    Attributes: ``num_classes`` (K), ``num_foreground`` (C), ``background``, ``fg_index`` (long buffer
    ``[C]``), ``output_stride`` (backbone), ``logits_stride`` (segmentation head), ``cam_stride``
    (deepest level), ``embed_dim``.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, num_classes: int, *, background: int | None = 0):
        super().__init__(backbone)
        fg_index = foreground_indices(num_classes, background)
        if not fg_index:
            raise ValueError(
                f"a single-stage network needs at least one foreground class (num_classes={num_classes})"
            )
        if getattr(head, "num_classes", num_classes) != num_classes:
            raise ValueError(f"the head predicts {head.num_classes} classes, the dataset has {num_classes}")
        self.num_classes = int(num_classes)
        self.background = background
        self.num_foreground = len(fg_index)
        self.register_buffer("fg_index", torch.tensor(fg_index, dtype=torch.long), persistent=False)
        self.classifier = nn.Conv2d(backbone.channels[-1], self.num_foreground, 1, bias=False)
        self.head = head
        self.logits_stride = head.output_stride
        self.cam_stride = backbone.strides[-1]
        self.embed_dim = head.embed_dim

    def forward(self, image: Tensor) -> ModelOutputs:
        """``image`` float ``[B, 3, H, W]`` in [0, 1] -> the outputs described in the module doc
        (:class:`~weakseg.models.outputs.ModelOutputs`)."""
        features = self.backbone(self.normalize(image))
        cam, cls_logits = class_activation(self.classifier, features[-1])
        logits, embedding = self.head(features)
        return {
            "logits": logits,
            "embedding": embedding,
            "cam": cam,
            "cls_logits": cls_logits,
            "features": features,
        }


def create_single_stage(
    backbone: str = "resnet101",
    head: str = "deeplabv2",
    num_classes: int = 21,
    pretrained: Pretrained = None,
    output_stride: int = 8,
    *,
    frozen_stages: int = 0,
    freeze_bn: bool = False,
    background: int | None = 0,
    backbone_kwargs: Mapping[str, Any] | None = None,
    head_kwargs: Mapping[str, Any] | None = None,
) -> SingleStageNetwork:
    """Build a :class:`SingleStageNetwork` from registry names.

    Args:
        backbone: a registered backbone name (``resnet101`` for VOC, ``efficientnet_lite0`` on a CPU).
        head: a registered segmentation head name.
        num_classes: ``K``, all classes of the dataset including the background.
        pretrained: ``None``, ``"imagenet"`` or a local weights file for the backbone.
        output_stride: backbone output stride (8 or 16, dilated).
        frozen_stages, freeze_bn: backbone freezing (see :class:`~weakseg.models.backbones.Backbone`).
        background: background class index, or None (every class then has a CAM channel).
        backbone_kwargs, head_kwargs: extra options (e.g. ``{"channels": 64}`` for the head).
    """
    spec = BackboneSpec(backbone, pretrained, output_stride, frozen_stages, freeze_bn, backbone_kwargs)
    body, decoder = spec.build_with_head(head, num_classes, head_kwargs)
    return SingleStageNetwork(body, decoder, num_classes, background=background)
