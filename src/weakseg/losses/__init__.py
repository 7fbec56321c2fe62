"""Loss functions, one module per idea. A loss never knows which method uses it.

Only losses live here; the operators they share (Gaussian pairwise kernels, resizing, CAM algebra) are in
:mod:`weakseg.ops`, trainable modules in :mod:`weakseg.models`.

* supervision on labelled pixels: :mod:`~weakseg.losses.partial_ce` (scribbles, pseudo-labels),
  :mod:`~weakseg.losses.dice`, :mod:`~weakseg.losses.multilabel` (image-level tags);
* pairwise regularisers of the prediction: :mod:`~weakseg.losses.dense_crf` (dense CRF / Potts),
  :mod:`~weakseg.losses.gated_crf` (windowed, gated Potts), :mod:`~weakseg.losses.normalized_potts`
  (Potts normalised by the kernel mass, shallow and deep kernels);
* feature and embedding terms: :mod:`~weakseg.losses.feature_consistency` (pairwise embedding agreement),
  :mod:`~weakseg.losses.feature_rectification` (features vs their self-attended rectification),
  :mod:`~weakseg.losses.affinity` (adaptive pairwise affinities), :mod:`~weakseg.losses.label_reassign`
  (pseudo-labels reassigned to the nearest class centre);
* CAM terms: :mod:`~weakseg.losses.cam_consistency` (distribution-weighted prototype and scale consistency);
* confidence: :mod:`~weakseg.losses.distance_entropy` (entropy weighted by a distance map).
"""

from weakseg.losses.dense_crf import dense_crf_loss
from weakseg.losses.dice import soft_dice_loss
from weakseg.losses.feature_consistency import pairwise_consistency_loss
from weakseg.losses.gated_crf import GatedCRFKernel, gated_crf_loss
from weakseg.losses.multilabel import multilabel_soft_margin_loss
from weakseg.losses.normalized_potts import dfr_regularized_loss, normalized_potts_loss
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
