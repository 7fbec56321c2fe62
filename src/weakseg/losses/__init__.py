"""Loss functions, one module per idea. A loss never knows which method uses it."""

from weakseg.losses.dense_crf import dense_crf_loss
from weakseg.losses.dfr import dfr_regularized_loss, normalized_potts_loss
from weakseg.losses.dice import soft_dice_loss
from weakseg.losses.feature_consistency import pairwise_consistency_loss
from weakseg.losses.gated_crf import GatedCRFKernel, gated_crf_loss
from weakseg.losses.multilabel import multilabel_soft_margin_loss
from weakseg.losses.partial_ce import partial_cross_entropy

__all__ = [
    "GatedCRFKernel",
    "dense_crf_loss",
    "dfr_regularized_loss",
    "gated_crf_loss",
    "multilabel_soft_margin_loss",
    "normalized_potts_loss",
    "pairwise_consistency_loss",
    "partial_cross_entropy",
    "soft_dice_loss",
]
