"""Segmentor = backbone + head, with input normalisation inside.

``create_segmentor("resnet101", "deeplabv3plus", num_classes=21)`` builds one from the two registries.
Its ``forward(image)`` takes RGB images in [0, 1] and returns a dict (see :meth:`Segmentor.forward`);
logits stay at the head's stride, :func:`weakseg.ops.resize.resize_bilinear` brings them to image size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from torch import Tensor, nn

from weakseg.models.backbones import Backbone, Pretrained, available_backbones
from weakseg.models.heads import HeadAttributes, available_heads
from weakseg.models.network import BackboneNetwork, BackboneSpec
from weakseg.models.outputs import ModelOutputs

__all__ = ["Segmentor", "available_backbones", "available_heads", "create_segmentor"]


class Segmentor(BackboneNetwork):
    """A backbone and a head; normalises its input with the backbone's ``mean``/``std``.

    Attributes:
        output_stride: stride of the backbone's deepest level (8 or 16 for dilated CNNs, 16 for ViTs).
        logits_stride: stride of the logits (the head's ``output_stride``: 4 for DeepLab-v3+ on a CNN).
        num_classes, embed_dim: logits channels and embedding channels.
    """

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__(backbone)
        self.head = head
        attributes = cast(HeadAttributes, head)  # an nn.Module to the registry; every head sets these
        self.logits_stride = attributes.output_stride
        self.num_classes = attributes.num_classes
        self.embed_dim = attributes.embed_dim

    def forward(self, image: Tensor) -> ModelOutputs:
        """Run the network.

        Args:
            image: float ``[B, 3, H, W]``, RGB in [0, 1].

        Returns:
            :class:`~weakseg.models.outputs.ModelOutputs` with
            ``"logits"``: ``[B, K, ceil(H/s), ceil(W/s)]`` with ``s = logits_stride`` (not upsampled);
            ``"features"``: the backbone levels, ``[B, C_i, ~H/stride_i, ~W/stride_i]`` each;
            ``"embedding"``: ``[B, embed_dim, h, w]``, the head's last hidden feature map.
        """
        features = self.backbone(self.normalize(image))
        logits, embedding = self.head(features)
        return {"logits": logits, "features": features, "embedding": embedding}


def create_segmentor(
    backbone: str = "resnet101",
    head: str = "deeplabv3plus",
    num_classes: int = 21,
    pretrained: Pretrained = None,
    output_stride: int = 16,
    *,
    frozen_stages: int = 0,
    freeze_bn: bool = False,
    backbone_kwargs: Mapping[str, Any] | None = None,
    head_kwargs: Mapping[str, Any] | None = None,
) -> Segmentor:
    """Build a :class:`Segmentor` from registry names.

    Args:
        backbone: a name from :func:`available_backbones`.
        head: a name from :func:`available_heads`.
        num_classes: logits channels (background included).
        pretrained: ``None``, ``"imagenet"`` or a local weights file for the backbone.
        output_stride: backbone output stride (8/16 for CNNs, 16 for ViTs).
        frozen_stages, freeze_bn: backbone freezing (see :class:`~weakseg.models.backbones.Backbone`).
        backbone_kwargs: extra backbone options (e.g. ``{"out_indices": [3, 7, 11]}`` for a ViT).
        head_kwargs: extra head options (e.g. ``{"norm": "syncbn"}``).
    """
    spec = BackboneSpec(backbone, pretrained, output_stride, frozen_stages, freeze_bn, backbone_kwargs)
    return Segmentor(*spec.build_with_head(head, num_classes, head_kwargs))
