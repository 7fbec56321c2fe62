"""Tools that read and write files around the library: CAM folders, seed reports, pseudo-label datasets.

* :mod:`weakseg.tools.cam_store` — the CAM folder format (``{id}.npz`` per image, ``cams.json``) and the
  dataset a folder belongs to;
* :mod:`weakseg.tools.cam_folder` — writing a CAM folder from a network (:func:`infer_cams`) or from an
  image-level checkpoint (:func:`make_cams`, ``weakseg cam``);
* :mod:`weakseg.tools.seed_report` — the seed threshold sweep of a CAM folder against the masks, with its
  report (``weakseg cam evaluate``);
* :mod:`weakseg.tools.pseudo_dataset` — pseudo-labels of a CAM folder as a trainable dataset
  (``weakseg pseudo-labels``).

The tensor operations they apply are :mod:`weakseg.cam`; the command-line modules (``weakseg.cli*``) only
parse arguments and call these functions.
"""

from weakseg.tools.cam_folder import infer_cams, make_cams
from weakseg.tools.cam_store import (
    cam_file,
    check_dataset_matches,
    load_cam_meta,
    load_cams,
    open_cam_dataset,
    save_cams,
    write_cam_meta,
)
from weakseg.tools.pseudo_dataset import derived_dataset_json, make_pseudo_labels
from weakseg.tools.seed_report import evaluate_seeds, write_seed_report

__all__ = [
    "cam_file",
    "check_dataset_matches",
    "derived_dataset_json",
    "evaluate_seeds",
    "infer_cams",
    "load_cam_meta",
    "load_cams",
    "make_cams",
    "make_pseudo_labels",
    "open_cam_dataset",
    "save_cams",
    "write_cam_meta",
    "write_seed_report",
]
