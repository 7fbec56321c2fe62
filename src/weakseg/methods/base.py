"""The method interface and its registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from weakseg.registry import Registry


@dataclass
class NoParams:
    """A method without hyperparameters."""


class Method(nn.Module):
    """Combines model outputs and batch labels into named, weighted loss terms.

    Subclasses set ``name``, ``Params`` (a dataclass whose defaults are the paper's), ``requires``
    (sample keys the dataset must provide, e.g. ``("scribble",)``) and implement :meth:`forward`.
    A method may own modules of its own (extra heads); their parameters train with the
    "new layers" learning rate. A method never reads files or touches the optimiser.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    requires: ClassVar[tuple[str, ...]] = ()
    # "segmentor", "classifier" (image-level CAM networks) or "single_stage" (CAM branch + segmentation head)
    model_kind: ClassVar[str] = "segmentor"

    def __init__(self, params: Any, num_classes: int, ignore_index: int = 255, background: int | None = 0):
        super().__init__()
        self.params = params
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.background = background
        self.step, self.total_steps = 0, 1

    def set_progress(self, step: int, total_steps: int) -> None:
        """Called by the engine before every training step (0-based ``step`` of ``total_steps``).

        Methods with schedules of their own (warm-ups, ramps) read ``self.step / self.total_steps``.
        """
        self.step, self.total_steps = step, total_steps

    @classmethod
    def model_kwargs(cls, spec: dict[str, Any]) -> dict[str, Any]:
        """Extra keyword arguments for the network factory, from the ``method`` config section
        (e.g. a CAM classifier's extra heads)."""
        return {}

    def fit_dataset(self, dataset: Any, *, batch_size: int, progress: bool = True) -> dict[str, Any] | None:
        """Called once with the training set before training (e.g. class statistics); returns what
        it measured (logged in the run folder) or None."""
        return None

    def log_values(self) -> dict[str, torch.Tensor]:
        """Diagnostics of the last training step to log beside the loss terms: detached scalar tensors
        (not optimised, no host synchronisation), e.g. SFC's collapse statistics. Default: none."""
        return {}

    def dataset_maps(self) -> dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]]:
        """Float maps this method needs in its training samples, ``{key: fn(raw_sample) -> float32 [H, W]}``.

        The engine attaches them with ``SegDataset.add_map``: each is computed on the untransformed
        sample (image and label maps loaded) and then follows the augmentations, arriving in the batch
        as ``batch[key]`` ``[B, H, W]`` (e.g. CDSP's distance maps). Functions must be picklable.
        """
        return {}

    def run_model(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """The network outputs of one training step (default: one forward pass on ``batch["image"]``)."""
        return model(batch["image"])

    def setup(self, model: nn.Module) -> None:
        """Called once with the freshly built network, before it moves to the device, the optimiser
        is built or a checkpoint is loaded (e.g. to size lazily built layers of method-owned heads)."""

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Called on the device batch before the model's forward (e.g. to append image-bank samples)."""
        return batch

    def validate(
        self, model: nn.Module, dataset: Any, eval_cfg: Any, device: torch.device
    ) -> dict[str, Any] | None:
        """Validation metrics for this method, or None to use the engine's segmentation evaluation.

        Image-level methods override this (e.g. CAM seed mIoU with the ground-truth tags); the
        returned dict must hold "mIoU" (used to pick ``best.ckpt``) and "per_class_IoU".
        """
        return None

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Return ``{term_name: weighted scalar loss}``; the engine optimises their sum.

        Args:
            outputs: the segmentor's dict ("logits" [B, K, h, w], "features", "embedding", ...).
            batch: the collated samples ("image" [B, 3, H, W] in [0, 1], "scribble"/"mask" [B, H, W], ...).
        """
        raise NotImplementedError


#: name -> method class
METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name`` (described by the first line
    of its docstring)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return METHODS.add(cls.name, cls)


def available_methods() -> list[str]:
    return METHODS.names()


def get_method_class(name: str) -> type[Method]:
    """The method class registered as ``name`` (:class:`~weakseg.registry.UnknownNameError`, a KeyError,
    listing the names otherwise)."""
    return METHODS[name]


def build_method(
    spec: dict[str, Any], num_classes: int, ignore_index: int = 255, background: int | None = 0
) -> Method:
    """Build a method from its config section ``{"name": ..., <Params fields>...}``."""
    spec = dict(spec)
    cls = get_method_class(spec.pop("name"))
    field_names = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = set(spec) - field_names
    if unknown:
        raise KeyError(
            f"method '{cls.name}' has no parameter(s) {sorted(unknown)}; "
            f"its parameters: {sorted(field_names)}"
        )
    params = cls.Params(**spec)
    return cls(params, num_classes=num_classes, ignore_index=ignore_index, background=background)


def create_method(
    name: str, *, num_classes: int, ignore_index: int = 255, background: int | None = 0, **params: Any
) -> Method:
    """Build the method registered as ``name`` with ``params`` over its defaults."""
    spec = {"name": name, **params}
    return build_method(spec, num_classes, ignore_index=ignore_index, background=background)
