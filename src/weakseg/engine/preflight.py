"""A fast check of the data a training will read, before the first (possibly hours-long) step.

Building the datasets already checks what can be checked without reading samples: the split files
exist and list safe ids (duplicates are warned about), and the dataset has the label maps the
method ``requires`` (else :func:`weakseg.builders.build_dataset` names the missing data and the
command that makes it). :func:`preflight` adds the sizes (a training step needs ``batch_size``
samples per process) and reads a spread sample of each split's files (image and every label map:
readable, same size, label values inside the classes), so a broken dataset stops in seconds with
one line instead of at its first bad sample, deep into a run.
"""

from __future__ import annotations

import numpy as np

from weakseg.config import Config
from weakseg.data.base import SegDataset
from weakseg.io import DataError

SAMPLES_PER_SPLIT = 8


def spread_indices(size: int, count: int) -> list[int]:
    """Up to ``count`` sample indices spread evenly over ``0 .. size - 1`` (first and last included)."""
    if size <= 0 or count <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, size - 1, min(count, size)).round()})


def _verify_command(cfg: Config, split: str) -> str:
    fmt = f" --format {cfg.data.format}" if cfg.data.format != "folder" else ""
    return f"weakseg data verify {cfg.data.root} --split {split}{fmt}"


def preflight(
    cfg: Config,
    train_set: SegDataset,
    val_set: SegDataset,
    *,
    world_size: int = 1,
    samples_per_split: int = SAMPLES_PER_SPLIT,
) -> None:
    """Raise :class:`~weakseg.io.DataError` (one line) when the run cannot work on this data."""
    per_step = cfg.train.batch_size * world_size
    if len(train_set) < per_step:
        procs = f" x {world_size} processes" if world_size > 1 else ""
        raise DataError(
            f"train.batch_size={cfg.train.batch_size}{procs} needs at least {per_step} training samples, "
            f"but split '{train_set.split}' of {cfg.data.root} has {len(train_set)}; "
            "lower train.batch_size or use a larger split"
        )
    for dataset in (train_set, val_set):
        indices = spread_indices(len(dataset), samples_per_split)
        problems = dataset.check_samples(indices)
        if problems:
            raise DataError(
                f"pre-flight check of split '{dataset.split}' in {cfg.data.root}: {len(problems)} problem(s) "
                f"in {len(indices)} sampled samples, first: {problems[0].splitlines()[0]}; "
                f"list them all with: {_verify_command(cfg, dataset.split)}"
            )
