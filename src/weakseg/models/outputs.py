"""What networks return: :class:`ModelOutputs`, the dict a method's losses read.

A plain dict at run time; the TypedDict names the keys and documents their shapes. ``B`` is the batch
size, ``K`` the number of classes (background included), ``C`` the number of foreground classes (``K - 1``
with a background class, ``K`` without), ``s`` a head's logits stride.
"""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor


class _OutputsBase(TypedDict):
    logits: Tensor  # float [B, K, ceil(H/s), ceil(W/s)], not upsampled


class ModelOutputs(_OutputsBase, total=False):
    """The outputs of one forward pass (:class:`~weakseg.models.segmentor.Segmentor`, the CAM classifier
    or the single-stage network); which keys are present depends on the network.

    * ``logits`` (always) ``[B, K, h, w]``: class scores at the head's stride (the CAM classifier: a
      tag-free CAM segmentation);
    * ``features``: the backbone levels, shallow to deep, ``[B, C_i, ~H/stride_i, ~W/stride_i]`` each;
    * ``embedding`` ``[B, E, h', w']``: the segmentation head's last hidden feature map;
    * ``cam`` ``[B, C, h, w]``: raw class activation maps of the deepest level (CAM classifier, single
      stage); ``cls_logits`` ``[B, C]``: image-level scores, the global average of ``cam``;
    * ``pcm_embedding`` ``[B, D, h, w]`` and ``side_embedding`` ``[B, S, h, w]``: the CAM classifier's SFC
      heads (when built with them);
    * ``aux_scale``: the outputs of a second, rescaled pass (SFC's ``run_model``).
    """

    features: list[Tensor]
    embedding: Tensor
    cam: Tensor
    cls_logits: Tensor
    pcm_embedding: Tensor
    side_embedding: Tensor
    aux_scale: ModelOutputs


__all__ = ["ModelOutputs"]
