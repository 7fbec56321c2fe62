"""Post-processing of predicted class probabilities (dense CRF)."""

from weakseg.postprocess.crf import (
    CRFParams,
    crf_labels,
    crf_refine_labels,
    dense_crf,
    pydensecrf_reference,
    refine_probs_with_crf,
    unary_from_labels,
    unary_from_probs,
)

__all__ = [
    "CRFParams",
    "crf_labels",
    "crf_refine_labels",
    "dense_crf",
    "pydensecrf_reference",
    "refine_probs_with_crf",
    "unary_from_labels",
    "unary_from_probs",
]
