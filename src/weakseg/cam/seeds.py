"""CAM seeds and their scoring against the ground-truth masks, under two rules (on tensors; the
sweep over a CAM folder and its report are :mod:`weakseg.tools.seed_report`).

**Rule "irn"** (the default; IRN's, for every image-level method alike). An image's stored CAMs (one
``[n, H, W]`` map per type, a :class:`~weakseg.cam.inference.CamRecord`) are merged into one map as the
weighted *mean* ``M = Σ_k w_k M_k / Σ_k w_k`` (:func:`combine_cams`); by default the raw classifier CAM
``"cam"`` alone, which ``cam`` and ``sfc`` checkpoints both store, so both are scored by the same
rule. With a background class (VOC, COCO) the seed of threshold ``t`` puts a constant background score
``t`` beside the foreground maps and takes the arg-max: a pixel is the foreground class
``argmax_c M_c`` when ``max_c M_c > t`` and background otherwise (ties go to background, as
``np.argmax`` over ``[t, M…]`` does). The sweep reports the **fixed** entry ``t = 0.15`` (IRN's
``cam_eval_thres``, a rule) and the **oracle** best threshold (chosen on the very masks it is scored
against, so an upper bound, not a rule).

**Rule "sfc"** (SFC's ``make_cam.py`` / ``eval_cam.py``). Each map type has a background channel of
its own (``M_W``: ``1 - max_c M_c`` through the PCM; ``M_P``: the similarity to the background
prototype), stored beside it; after the per-channel max normalisation the background gets ``+ 0.4``
and the foreground channels ``× 2`` (the ``np.pad`` trick), types are combined with their weights
(default ``M_W + M_P``, the paper's; ``eval_cam.py`` scores ``M_P`` alone) and the seed is the
arg-max over the background and the tagged classes. It is scored as a sweep over an *extra*
background offset ``t`` (foreground where ``max_c 2 M_c - (B + 0.4) > t``) whose fixed entry
``t = 0`` is SFC's rule itself.

**Datasets without background** (CamVid, MSRC: every class is a foreground class). Every pixel
belongs to some tagged class, so the seed is the arg-max over the tagged classes; ``t`` becomes an
*uncertainty* threshold: pixels with ``max_c M_c ≤ t`` are left unlabelled (255). The seed is scored
as a labelling of the whole image: an unlabelled pixel counts as a miss (a false negative of its
true class, a false positive of none), so ``t = 0`` (the fixed entry) is the plain arg-max and a
larger ``t`` pays off only where abstaining beats a wrong guess. The sweep also reports the mIoU
over the labelled pixels alone ("precision_mIoU") and the labelled fraction ("coverage"). SFC's
rule has no background to bias here: it is the same arg-max over the weighted mean.

**One pass, every threshold.** Whether pixel p is foreground at threshold ``t_j`` depends only on
``m_p = max_c M_c(p)``: it is foreground exactly for the thresholds below ``m_p``. So each pixel is
counted once in a histogram over (ground truth, arg-max class, number of thresholds below ``m_p``),
and the confusion matrix of every threshold follows from cumulative sums over the last axis. This
costs one ``bincount`` per image however many thresholds are swept, and gives exactly the matrices
that one :class:`weakseg.metrics.ConfusionMatrix` per threshold would accumulate (the tests check
this); the metrics come from :mod:`weakseg.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from weakseg.cam.inference import CamRecord
from weakseg.io import DataError
from weakseg.metrics import metrics_from_matrix, nanmean, per_class_iou, pixel_accuracy

__all__ = [
    "DEFAULT_THRESHOLDS",
    "IRN_THRESHOLD",
    "RULES",
    "SFC_BG_OFFSET",
    "SFC_FG_SCALE",
    "SeedSweep",
    "choose_weights",
    "combine_cams",
    "resolve_weights",
    "rule_scores",
    "seed_labels",
]

IGNORE_INDEX = 255
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))  # 0.00 … 0.95
RULES = ("irn", "sfc")
#: IRN's ``cam_eval_thres``: the fixed background score its CAM seeds on VOC are reported at (equal to
#: :data:`weakseg.models.classifier.DEFAULT_BG_THRESHOLD`).
IRN_THRESHOLD = 0.15
#: SFC's ``make_cam.py``: background ``+ 0.4``, foreground ``x 2`` on max-normalised maps.
SFC_BG_OFFSET = 0.4
SFC_FG_SCALE = 2.0
#: Default CAM-type weights of each rule, for seeds and for pseudo-labels (SFC: the paper's
#: ``M_W + M_P`` for seeds, ``cam2ir.py``'s ``M_W + 0.7 M_P`` for IR labels).
RULE_WEIGHTS: dict[tuple[str, str], dict[str, float]] = {
    ("irn", "seeds"): {"cam": 1.0},
    ("irn", "pseudo"): {"cam": 1.0},
    ("sfc", "seeds"): {"M_W": 1.0, "M_P": 1.0},
    ("sfc", "pseudo"): {"M_W": 1.0, "M_P": 0.7},
}


# --------------------------------------------------------------------------------------------------
# Combining CAM types
# --------------------------------------------------------------------------------------------------
def resolve_weights(cam_keys: Sequence[str], weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """The CAM-type weights to combine: ``weights`` when given (every named type must exist), else
    1 for each of ``cam_keys``. Types with weight 0 are dropped; at least one weight must be > 0."""
    if weights is None:
        chosen = {key: 1.0 for key in cam_keys}
    else:
        unknown = sorted(set(weights) - set(cam_keys))
        if unknown:
            raise DataError(f"CAM weights name unknown CAM type(s) {unknown}; the CAMs hold {list(cam_keys)}")
        chosen = {key: float(w) for key, w in weights.items()}
    if any(w < 0 for w in chosen.values()):
        raise ValueError(f"CAM weights must be >= 0, got {chosen}")
    chosen = {k: w for k, w in chosen.items() if w > 0}
    if not chosen:
        raise ValueError("CAM weights: at least one weight must be positive")
    return chosen


def choose_weights(
    meta: Mapping[str, Any],
    rule: str,
    weights: Mapping[str, float] | None = None,
    purpose: str = "seeds",
) -> dict[str, float]:
    """The CAM-type weights a rule uses on a CAM folder: ``weights`` when given; else the folder's own
    ``cams.json`` "weights"; else the rule's default (:data:`RULE_WEIGHTS`) when the folder holds those
    types; else 1 for each type. ``purpose`` is "seeds" or "pseudo"."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    keys = list(meta["cam_keys"])
    if weights is None:
        weights = meta.get("weights")
    if weights is None:
        default = RULE_WEIGHTS[(rule, purpose)]
        if set(default) <= set(keys):
            weights = default
    return resolve_weights(keys, weights)


def combine_cams(cams: Mapping[str, Any], weights: Mapping[str, float]) -> torch.Tensor:
    """Weighted mean ``Σ_k w_k M_k / Σ_k w_k`` of CAM types (arrays or tensors ``[..., H, W]`` of one
    shape) -> float32 tensor of that shape."""
    total: torch.Tensor | None = None
    for key, weight in weights.items():
        if key not in cams:
            raise KeyError(f"no CAM {key!r} to combine (have {sorted(cams)})")
        term = torch.as_tensor(cams[key], dtype=torch.float32) * float(weight)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("combine_cams: no weights given")
    return total / float(sum(weights.values()))


def sfc_scores(
    record: CamRecord,
    weights: Mapping[str, float],
    *,
    bg_offset: float = SFC_BG_OFFSET,
    fg_scale: float = SFC_FG_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SFC's ``make_cam`` scores of one image: ``(fg [n, H, W], bg [H, W])`` float32.

    ``fg = Σ_k w_k · fg_scale · M_k / Σ w`` and ``bg = Σ_k w_k (B_k + bg_offset) / Σ w`` with ``B_k`` the
    stored own background of type ``k`` (SFC adds the biased maps of its types; dividing by ``Σ w``
    changes no arg-max and no ratio such as ``cam2ir``'s background ``x 0.5``).
    """
    missing = [key for key in weights if key not in record.backgrounds]
    if missing:
        raise DataError(
            f"SFC's rule needs each map's own background channel; {missing} have none (only SFC's M_W and "
            "M_P have one: use rule 'irn' for the raw classifier CAM, or remake the CAMs of an sfc "
            "checkpoint with this version of `weakseg cam`)"
        )
    fg = fg_scale * combine_cams(record.cams, weights)
    bg = combine_cams({k: v[None] for k, v in record.backgrounds.items()}, weights)[0] + bg_offset
    return fg, bg


def rule_scores(
    record: CamRecord, weights: Mapping[str, float], rule: str, background: int | None
) -> torch.Tensor:
    """The ``[n, H, W]`` maps whose peak the seed threshold is compared with, for one image.

    ``"irn"`` (and any rule on a dataset without background): the weighted mean of the CAM types;
    ``"sfc"``: the foreground scores minus the background score, ``SFC fg - SFC bg``
    (:func:`sfc_scores`), so a threshold ``t`` is an extra background offset and ``t = 0`` is SFC's rule.
    """
    if rule == "irn" or background is None:
        return combine_cams(record.cams, weights)
    if rule != "sfc":
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    fg, bg = sfc_scores(record, weights)
    return fg - bg[None]


def fixed_threshold_of(rule: str, background: int | None) -> float:
    """The threshold a rule itself uses: IRN's 0.15 with a background class, else 0 (SFC's own
    background offset; the plain arg-max without background)."""
    return IRN_THRESHOLD if rule == "irn" and background is not None else 0.0


# --------------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------------
def seed_labels(
    cams: torch.Tensor,
    keys: torch.Tensor | np.ndarray | Sequence[int],
    threshold: float,
    background: int | None,
) -> torch.Tensor:
    """The seed of one image (see the module doc) -> int64 ``[H, W]``.

    Args:
        cams: ``[n, H, W]`` combined CAM of the image's tagged foreground classes (n may be 0).
        keys: ``[n]`` their class indices.
        threshold: background score (with a background class) or uncertainty threshold (without).
        background: the background class index, or None (unlabelled pixels become 255).
    """
    alt = IGNORE_INDEX if background is None else background
    height, width = cams.shape[-2:]
    if cams.shape[0] == 0:
        return torch.full((height, width), alt, dtype=torch.long, device=cams.device)
    keys_t = torch.as_tensor(np.asarray(keys), dtype=torch.long, device=cams.device)
    peak, arg = cams.max(dim=0)
    return torch.where(peak > threshold, keys_t[arg], torch.full_like(arg, alt))


class SeedSweep:
    """Confusion matrices of the seeds at every threshold, accumulated image by image.

    Args:
        num_classes: K, the dataset's classes.
        background: the background class index, or None (then thresholds mark pixels uncertain).
        thresholds: increasing thresholds to sweep.
        ignore_index: ground-truth value that is not counted.
    """

    def __init__(
        self,
        num_classes: int,
        background: int | None,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | str | None = None,
    ) -> None:
        ts = np.asarray(thresholds, dtype=np.float64)
        if ts.ndim != 1 or ts.size == 0 or np.any(np.diff(ts) <= 0):
            raise ValueError(f"thresholds must be a non-empty increasing list, got {list(thresholds)}")
        self.num_classes = int(num_classes)
        self.background = background
        self.ignore_index = ignore_index
        self.thresholds = [float(t) for t in ts]
        # Prediction columns: the K classes, plus an "uncertain" column K when there is no background.
        self._alt = self.num_classes if background is None else int(background)
        self._cols = self.num_classes + (1 if background is None else 0)
        self._ts = torch.tensor(self.thresholds, dtype=torch.float32, device=device)
        bins = len(self.thresholds) + 1
        self._hist = torch.zeros(self.num_classes, self._cols, bins, dtype=torch.long, device=device)

    def update(
        self, cams: torch.Tensor, keys: torch.Tensor | np.ndarray | Sequence[int], mask: torch.Tensor
    ) -> None:
        """Add one image: combined CAM ``[n, H, W]``, its class indices ``[n]``, ground truth ``[H, W]``."""
        dev = self._hist.device
        cams = torch.as_tensor(cams, dtype=torch.float32).to(dev)
        gt = torch.as_tensor(mask).to(device=dev, dtype=torch.long).reshape(-1)
        if tuple(cams.shape[-2:]) != tuple(mask.shape[-2:]):
            raise DataError(
                f"CAM size {tuple(cams.shape[-2:])} differs from mask size {tuple(mask.shape[-2:])}"
            )
        if cams.shape[0] == 0:
            pred = torch.full_like(gt, self._alt)
            nbelow = torch.zeros_like(gt)  # background / uncertain at every threshold
        else:
            keys_t = torch.as_tensor(np.asarray(keys), dtype=torch.long, device=dev)
            peak, arg = cams.reshape(cams.shape[0], -1).max(dim=0)
            pred = keys_t[arg]
            # Number of thresholds strictly below the peak = thresholds at which p is foreground.
            nbelow = torch.searchsorted(self._ts, peak.contiguous(), right=False)
        bins = self._hist.shape[2]
        valid = (gt >= 0) & (gt < self.num_classes) & (gt != self.ignore_index)
        size = self._hist.numel()
        flat = (gt * self._cols + pred) * bins + nbelow
        flat = torch.where(valid, flat, torch.full_like(flat, size))  # invalid pixels to a dump bin
        self._hist += torch.bincount(flat, minlength=size + 1)[:size].view_as(self._hist)

    def matrices(self) -> torch.Tensor:
        """int64 ``[T, P, P]``: the confusion matrix (rows ground truth, columns prediction) of each
        threshold. P = K with a background class; P = K + 1 without, where the extra column counts
        unlabelled (uncertain) pixels and the extra row is zero."""
        hist = self._hist
        # tail[..., j] = Σ_{b ≥ j} hist[..., b]; at threshold j the foreground pixels are those with b > j.
        tail = hist.flip(-1).cumsum(-1).flip(-1)
        fg = tail[..., 1:].permute(2, 0, 1)  # [T, K, cols]
        total = hist.sum(-1)  # [K, cols]
        out = fg.clone()
        out[:, :, self._alt] += (total[None] - fg).sum(-1)
        if self.background is None:
            out = torch.cat([out, out.new_zeros(out.shape[0], 1, out.shape[2])], dim=1)
        return out

    def compute(
        self, class_names: Sequence[str] | None = None, fixed_threshold: float | None = None
    ) -> dict[str, Any]:
        """The sweep, the oracle best threshold and (``fixed_threshold``, one of the swept thresholds)
        the entry of a fixed rule.

        Returns a dict with "thresholds", "mIoU" (one per threshold), "best_threshold",
        "best_mIoU", "per_class_IoU" (at the best threshold; a dict by class name when
        ``class_names`` is given), "pixel_accuracy", "threshold_kind" ("background" or
        "uncertainty"), "oracle" (a note: the best threshold is picked on the evaluated masks), and
        without a background also "precision_mIoU" and "coverage" per threshold. With
        ``fixed_threshold``: "fixed_threshold", "fixed_mIoU", "fixed_per_class_IoU" (and without a
        background "fixed_coverage").
        """
        mats = self.matrices().cpu().numpy()
        k = self.num_classes
        ious = [per_class_iou(m)[:k] for m in mats]
        miou = [nanmean(iou) for iou in ious]
        scores = [-math.inf if math.isnan(v) else v for v in miou]
        best = int(np.argmax(scores))
        names = list(class_names) if class_names is not None else None
        per_class = ious[best].tolist()
        result: dict[str, Any] = {
            "threshold_kind": "background" if self.background is not None else "uncertainty",
            "thresholds": list(self.thresholds),
            "mIoU": miou,
            "best_threshold": self.thresholds[best],
            "best_mIoU": miou[best],
            "per_class_IoU": dict(zip(names, per_class)) if names else per_class,
            "pixel_accuracy": pixel_accuracy(mats[best]),
            "num_pixels": int(mats[best].sum()),
            "oracle": "best_threshold / best_mIoU: the threshold is chosen on the evaluated masks (an upper "
            "bound, not a rule)",
        }
        if self.background is None:
            labelled = [m[:k, :k] for m in mats]
            result["precision_mIoU"] = [nanmean(per_class_iou(m)) for m in labelled]
            result["coverage"] = [float(m.sum() / max(1, full.sum())) for m, full in zip(labelled, mats)]
        else:
            result["mean_accuracy"] = metrics_from_matrix(mats[best])["mean_accuracy"]
        if fixed_threshold is not None:
            matches = [j for j, t in enumerate(self.thresholds) if math.isclose(t, fixed_threshold)]
            if not matches:
                raise ValueError(f"fixed threshold {fixed_threshold} is not among {self.thresholds}")
            j = matches[0]
            result["fixed_threshold"] = self.thresholds[j]
            result["fixed_mIoU"] = miou[j]
            fixed = ious[j].tolist()
            result["fixed_per_class_IoU"] = dict(zip(names, fixed)) if names else fixed
            if self.background is None:
                result["fixed_coverage"] = result["coverage"][j]
        return result


# --------------------------------------------------------------------------------------------------
# Evaluating a CAM folder
# --------------------------------------------------------------------------------------------------
def check_rule_inputs(
    meta: Mapping[str, Any], rule: str, weights: Mapping[str, float], background: int | None
) -> None:
    """Raise :class:`DataError` when ``rule`` "sfc" needs own backgrounds the CAM folder lacks."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if rule != "sfc" or background is None:
        return
    missing = sorted(set(weights) - set(meta.get("backgrounds") or []))
    if missing:
        raise DataError(
            f"rule 'sfc' needs each weighted map's own background channel; the CAM folder has none for "
            f"{missing} (it has {meta.get('backgrounds') or 'none'}): SFC's M_W and M_P have one, the raw "
            "classifier CAM 'cam' has not (score it with rule 'irn')"
        )


def describe_rule(rule: str, background: int | None) -> str:
    """One line naming what a rule does (stored with the reports)."""
    if background is None:
        return "no background class: arg-max over the tagged classes of the weighted mean of the maps"
    if rule == "irn":
        return "IRN: weighted mean of max-normalised maps; background where no tagged class exceeds t"
    return (
        f"SFC make_cam/eval_cam: max-normalised maps with their own background, background "
        f"+{SFC_BG_OFFSET}, foreground x{SFC_FG_SCALE:g}, weighted; arg-max over background and tagged "
        "classes (t = an extra background offset)"
    )
