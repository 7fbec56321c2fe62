"""Batching samples of different sizes: a collate function that keeps them as a list, and size groups.

Evaluation, CAM inference and the CAM tools read whole images, whose sizes differ; their DataLoaders
use :func:`keep_as_list` and stack each run of equal-sized samples found by :func:`group_by_shape`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

__all__ = ["group_by_shape", "keep_as_list"]

T = TypeVar("T")


def keep_as_list(batch: list[Any]) -> list[Any]:
    """DataLoader ``collate_fn`` that leaves the samples as they are, in a list (sizes differ between
    images; they are grouped later, not stacked here)."""
    return batch


def group_by_shape(samples: Iterable[T], shape_of: Callable[[T], Hashable]) -> list[list[T]]:
    """Split ``samples`` into groups with equal ``shape_of(sample)`` (e.g. the image's shape), so each group
    stacks into one batch; groups come in the order of their first sample, samples keep their order."""
    groups: dict[Hashable, list[T]] = {}
    for sample in samples:
        groups.setdefault(shape_of(sample), []).append(sample)
    return list(groups.values())
