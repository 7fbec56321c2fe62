"""Models: timm backbones, segmentation heads and their assembly into a :class:`Segmentor`.

Backbones and heads are built by name from two registries (:class:`weakseg.registry.Registry`):
``BACKBONES`` (:func:`register_backbone`, :func:`create_backbone`) and ``HEADS`` (:func:`register_head`,
:func:`create_head`); ``BACKBONES.descriptions()`` / ``HEADS.descriptions()`` list them (``weakseg models``).
"""

from weakseg.models.backbones import (
    BACKBONES,
    Backbone,
    available_backbones,
    create_backbone,
    register_backbone,
)
from weakseg.models.heads import HEADS, available_heads, create_head, register_head
from weakseg.models.network import BackboneSpec
from weakseg.models.segmentor import Segmentor, create_segmentor
from weakseg.models.weights import LoadReport, WeightsError, load_pretrained

__all__ = [
    "BACKBONES",
    "HEADS",
    "Backbone",
    "BackboneSpec",
    "LoadReport",
    "Segmentor",
    "WeightsError",
    "available_backbones",
    "available_heads",
    "create_backbone",
    "create_head",
    "create_segmentor",
    "load_pretrained",
    "register_backbone",
    "register_head",
]
