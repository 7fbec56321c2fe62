"""The sample contract: what datasets yield (:class:`Sample`) and what the engine hands a method after
collation and the move to the device (:class:`Batch`).

Both are plain dicts at run time; the TypedDicts name the keys and document the shapes for readers and
type checkers. ``H x W`` is the image size after the transforms (the training crop), ``K`` the number
of classes (background included), ``B`` the batch size. Label maps hold class indices with 255 =
ignore / unlabelled.

Float maps a method adds with :meth:`~weakseg.data.base.SegDataset.add_map` (e.g. CDSP's distance maps)
arrive under their own keys, float32 ``[H, W]`` per sample and ``[B, H, W]`` per batch; a TypedDict cannot
name them, so code reading them looks them up by key on the plain dict.
"""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor


class _SampleBase(TypedDict):
    image: Tensor  # float32 [3, H, W], RGB in [0, 1] (grey images replicated to 3 channels)
    valid: Tensor  # bool [H, W]: False on padding added by crops and rotations
    id: str  # the sample id (file stem)
    size: Tensor  # int64 [2]: (height, width) of the image before the transforms


class Sample(_SampleBase, total=False):
    """One sample of a :class:`~weakseg.data.base.SegDataset` (``dataset[i]``).

    Always: ``image`` float32 ``[3, H, W]`` in [0, 1]; ``valid`` bool ``[H, W]``; ``id`` str; ``size``
    int64 ``[2]`` = (H, W) before transforms. When the dataset provides them: ``mask`` (dense labels),
    ``scribble`` (255 = unlabelled) and ``pseudo`` (pseudo-labels, 255 = uncertain), int64 ``[H, W]``
    each; ``tags`` float32 ``[K]``, multi-hot over all classes (the background entry is 1 when the
    dataset has a background class).
    """

    mask: Tensor  # int64 [H, W], 255 = ignore
    scribble: Tensor  # int64 [H, W], 255 = unlabelled
    pseudo: Tensor  # int64 [H, W], 255 = uncertain
    tags: Tensor  # float32 [K], multi-hot


class _BatchBase(TypedDict):
    image: Tensor  # float32 [B, 3, H, W] in [0, 1] (channels-last memory on CPU training by default)
    valid: Tensor  # bool [B, H, W]
    id: list[str]
    size: Tensor  # int64 [B, 2]


class Batch(_BatchBase, total=False):
    """Collated samples on the training device, as methods receive them: every :class:`Sample` key with
    a leading batch dimension ``B`` (``image`` ``[B, 3, H, W]``, label maps int64 ``[B, H, W]``, ``tags``
    ``[B, K]``, ``id`` a list of ``B`` strings). A method that extends the batch (e.g. SFC's image bank
    in ``prepare_batch``) returns a Batch with more rows.
    """

    mask: Tensor  # int64 [B, H, W]
    scribble: Tensor  # int64 [B, H, W]
    pseudo: Tensor  # int64 [B, H, W]
    tags: Tensor  # float32 [B, K]
    num_bank: int  # image-bank samples appended at the end of image / tags / valid (SFC's prepare_batch)


__all__ = ["Batch", "Sample"]
