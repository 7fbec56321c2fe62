"""Class activation maps for image-level methods, on tensors (no files): used by methods and tools.

* :mod:`weakseg.cam.inference` — multi-scale + flip CAMs of any network that returns ``"cam"``, the
  tagged channels of one image, :class:`CamRecord`;
* :mod:`weakseg.cam.seeds` — combining CAM types, the seed rules (IRN, SFC) and the threshold sweep;
* :mod:`weakseg.cam.pseudo_labels` — the IR-label rule with dense-CRF refinement, offline and on the fly.

Reading and writing CAM folders, seed reports and pseudo-label datasets is :mod:`weakseg.tools`; the
command line is ``weakseg cam``, ``weakseg cam evaluate`` and ``weakseg pseudo-labels``.
"""

from weakseg.cam.inference import BG_SUFFIX, DEFAULT_SCALES, CamRecord, multiscale_cams, tagged_cams
from weakseg.cam.seeds import DEFAULT_THRESHOLDS, SeedSweep, combine_cams, rule_scores, seed_labels

__all__ = [
    "BG_SUFFIX",
    "DEFAULT_SCALES",
    "DEFAULT_THRESHOLDS",
    "CamRecord",
    "SeedSweep",
    "combine_cams",
    "multiscale_cams",
    "rule_scores",
    "seed_labels",
    "tagged_cams",
]
