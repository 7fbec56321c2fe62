"""Class activation maps for image-level methods: inference, seed evaluation, pseudo-labels.

* :mod:`weakseg.cam.inference` — multi-scale + flip CAMs of any network that returns ``"cam"``;
* :mod:`weakseg.cam.store` — compact per-image CAM files (float16, tagged classes only);
* :mod:`weakseg.cam.seeds` — combining CAM types and the seed threshold sweep against masks;
* :mod:`weakseg.cam.pseudo_labels` — SFC/IRN IR-label rule, dense-CRF refinement, a label-PNG
  dataset in the folder format.

The command line is ``weakseg cam``, ``weakseg cam evaluate`` and ``weakseg pseudo-labels``.
"""

from weakseg.cam.inference import DEFAULT_SCALES, infer_cams, multiscale_cams
from weakseg.cam.seeds import DEFAULT_THRESHOLDS, SeedSweep, combine_cams, evaluate_seeds, seed_labels
from weakseg.cam.store import CamRecord, load_cam_meta, load_cams, save_cams

__all__ = [
    "DEFAULT_SCALES",
    "DEFAULT_THRESHOLDS",
    "CamRecord",
    "SeedSweep",
    "combine_cams",
    "evaluate_seeds",
    "infer_cams",
    "load_cam_meta",
    "load_cams",
    "multiscale_cams",
    "save_cams",
    "seed_labels",
]
