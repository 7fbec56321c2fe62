"""The method interface: the :class:`Method` base class, the optional capabilities as protocols, and
the method registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from weakseg.data.sample import Batch
from weakseg.models.outputs import ModelOutputs
from weakseg.registry import Registry


@dataclass
class NoParams:
    """A method without hyperparameters."""


class Method(nn.Module):
    """Combines model outputs and batch labels into named, weighted loss terms.

    What every method has: ``name``, ``Params`` (a dataclass whose defaults are the paper's), ``requires``
    (sample keys the dataset must provide, e.g. ``("scribble",)``), the training progress
    (:meth:`set_progress`) and :meth:`forward`. A method never reads files or touches the optimiser.

    Anything more is an optional capability, declared by implementing one of the protocols below
    (checked with ``isinstance`` where the engine and the builders use it): :class:`BuildsModel`,
    :class:`BindsModel`, :class:`TrainsOwnLayers`, :class:`FitsDataset`, :class:`AddsSampleMaps`,
    :class:`PreparesBatch`, :class:`RunsModel`, :class:`AdaptsEvaluation` and :class:`LogsValues`.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    # the class's sample keys; an instance may narrow them from its params (full: method.label)
    requires: tuple[str, ...] = ()

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

    def forward(self, outputs: ModelOutputs, batch: Batch) -> dict[str, torch.Tensor]:
        """Return ``{term_name: weighted scalar loss}``; the engine optimises their sum.

        Args:
            outputs: the network's outputs ("logits" [B, K, h, w], "features", "embedding", ...).
            batch: the collated samples ("image" [B, 3, H, W] in [0, 1], "scribble"/"mask" [B, H, W], ...).
        """
        raise NotImplementedError


# ------------------------------------------------------------------------------ optional capabilities


@runtime_checkable
class BuildsModel(Protocol):
    """A method that trains a network of its own kind instead of a :class:`~weakseg.models.Segmentor`
    (checked on the method class, before any instance exists).

    ``model_kind``: "classifier" (an image-level CAM network; ``model.head`` is not used) or
    "single_stage" (CAM branch + segmentation head on one backbone).
    """

    model_kind: ClassVar[str]

    @classmethod
    def build_model(cls, spec: Mapping[str, Any], **options: Any) -> nn.Module:
        """The network from the ``method`` config section ``spec`` and the model options
        :func:`weakseg.builders.build_model` passes as keywords: ``backbone``, ``head``, ``head_kwargs``,
        ``num_classes``, ``background``, ``pretrained``, ``output_stride``, ``frozen_stages`` and
        ``freeze_bn``."""
        ...


@runtime_checkable
class BindsModel(Protocol):
    """A method that needs the freshly built network once, before it moves to the device, the optimiser
    is built or a checkpoint is loaded (e.g. to size lazily built layers of method-owned heads)."""

    def setup(self, model: nn.Module) -> None: ...


@runtime_checkable
class TrainsOwnLayers(Protocol):
    """A method with parameters of its own (extra heads): they train in the groups it names, with the
    "new layers" learning rate (every group but "backbone" does)."""

    def param_groups(self) -> dict[str, list[nn.Parameter]]: ...


@runtime_checkable
class FitsDataset(Protocol):
    """A method that measures the training set once before training (e.g. class statistics)."""

    def fit_dataset(self, dataset: Any, *, batch_size: int, progress: bool = True) -> dict[str, Any] | None:
        """Returns what it measured (written to ``dataset_statistics.json`` in the run folder) or None."""
        ...


@runtime_checkable
class AddsSampleMaps(Protocol):
    """A method that needs float maps in its training samples."""

    def dataset_maps(self) -> dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]]:
        """``{key: fn(raw_sample) -> float32 [H, W]}``, attached with ``SegDataset.add_map``: each is
        computed on the untransformed sample and then follows the augmentations, arriving as
        ``batch[key]`` ``[B, H, W]`` (e.g. CDSP's distance maps). Functions must be picklable."""
        ...


@runtime_checkable
class PreparesBatch(Protocol):
    """A method that changes the device batch before the forward pass (e.g. appends image-bank samples)."""

    def prepare_batch(self, batch: Batch) -> Batch: ...


@runtime_checkable
class RunsModel(Protocol):
    """A method whose training step runs the network itself (e.g. twice, at two scales); without it the
    step is one forward pass on ``batch["image"]``."""

    def run_model(self, model: nn.Module, batch: Batch) -> ModelOutputs: ...


@runtime_checkable
class AdaptsEvaluation(Protocol):
    """A method that validates in its own way (image-level methods: CAM seed mIoU with the true tags)."""

    def validate(
        self, model: nn.Module, dataset: Any, eval_cfg: Any, device: torch.device
    ) -> dict[str, Any] | None:
        """Validation metrics holding "mIoU" (which picks ``best.ckpt``) and "per_class_IoU", or None to
        use the engine's segmentation evaluation."""
        ...


@runtime_checkable
class LogsValues(Protocol):
    """A method with diagnostics of the last training step to log beside the loss terms."""

    def log_values(self) -> dict[str, torch.Tensor]:
        """Detached scalar tensors (not optimised, no host synchronisation), e.g. SFC's collapse
        statistics."""
        ...


def model_kind(method: Method | type[Method]) -> str:
    """The network a method (instance or class) trains: "segmentor" unless it :class:`BuildsModel`."""
    return method.model_kind if isinstance(method, BuildsModel) else "segmentor"


def run_model(method: Method, model: nn.Module, batch: Batch) -> tuple[Batch, ModelOutputs]:
    """One training step's forward pass: the batch after :class:`PreparesBatch` and the network's
    outputs (:class:`RunsModel`, else ``model(batch["image"])``)."""
    if isinstance(method, PreparesBatch):
        batch = method.prepare_batch(batch)
    if isinstance(method, RunsModel):
        return batch, method.run_model(model, batch)
    return batch, model(batch["image"])


# ------------------------------------------------------------------------------ registry

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
