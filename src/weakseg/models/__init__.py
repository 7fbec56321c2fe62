"""Models: timm backbones, segmentation heads and their assembly into a :class:`Segmentor`."""

from weakseg.models.backbones import BACKBONES, Backbone, available_backbones, create_backbone
from weakseg.models.heads import HEADS, available_heads, create_head
from weakseg.models.segmentor import Segmentor, create_segmentor
from weakseg.models.weights import LoadReport, WeightsError, load_pretrained

__all__ = [
    "BACKBONES",
    "HEADS",
    "Backbone",
    "LoadReport",
    "Segmentor",
    "WeightsError",
    "available_backbones",
    "available_heads",
    "create_backbone",
    "create_head",
    "create_segmentor",
    "load_pretrained",
]
