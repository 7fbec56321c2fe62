"""What every weakseg network shares: a backbone (built in one place, :class:`BackboneSpec`), input
normalisation and parameter groups."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from weakseg.models.backbones import Backbone, Pretrained, create_backbone
from weakseg.models.heads import create_head


@dataclass(frozen=True)
class BackboneSpec:
    """How a network's backbone is built from the registry: the one place the network factories
    (segmentor, CAM classifier, single stage) share.

    ``name``: a registered backbone (CNNs optionally ``<name>.<timm weight tag>``); ``pretrained``,
    ``output_stride``, ``frozen_stages``, ``freeze_bn`` and ``kwargs`` as in
    :func:`~weakseg.models.backbones.create_backbone`.
    """

    name: str
    pretrained: Pretrained = None
    output_stride: int = 16
    frozen_stages: int = 0
    freeze_bn: bool = False
    kwargs: Mapping[str, Any] | None = None

    def build(self) -> Backbone:
        """The backbone."""
        return create_backbone(
            self.name,
            pretrained=self.pretrained,
            output_stride=self.output_stride,
            frozen_stages=self.frozen_stages,
            freeze_bn=self.freeze_bn,
            **dict(self.kwargs or {}),
        )

    def build_with_head(
        self, head: str, num_classes: int, head_kwargs: Mapping[str, Any] | None = None
    ) -> tuple[Backbone, nn.Module]:
        """The backbone and the registered segmentation ``head`` sized to its levels (``num_classes``
        logits channels)."""
        body = self.build()
        return body, create_head(head, body.channels, body.strides, num_classes, **dict(head_kwargs or {}))


class BackboneNetwork(nn.Module):
    """Base of :class:`~weakseg.models.segmentor.Segmentor` and the CAM classifier.

    Holds ``backbone`` and its ``mean``/``std`` (buffers, not saved in checkpoints: they follow from
    the backbone); inputs are RGB images in [0, 1] and are normalised inside the network.
    """

    mean: Tensor  # [1, 3, 1, 1] buffer
    std: Tensor  # [1, 3, 1, 1] buffer

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.output_stride = backbone.output_stride
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, image: Tensor) -> Tensor:
        """RGB float ``[B, 3, H, W]`` in [0, 1] -> ``(image - mean) / std``, same shape."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"expected a float image in [0, 1], got dtype {image.dtype}")
        return (image - self.mean) / self.std

    def param_groups(self, trainable_only: bool = False) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": pretrained parameters, "head": every other (new) parameter}``.

        Every parameter lands in exactly one group; modules added by subclasses count as ``"head"``.
        With ``trainable_only`` the frozen ones (``requires_grad=False``) are left out.
        """
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "head": []}
        for p in self.parameters():
            if trainable_only and not p.requires_grad:
                continue
            groups["backbone" if id(p) in backbone_ids else "head"].append(p)
        return groups
