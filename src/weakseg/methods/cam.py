"""``cam``: the image-level CAM baseline (IRN's classification stage), trained on image tags only.

A :class:`~weakseg.models.classifier.CAMClassifier` (``model_kind = "classifier"``) is trained with the
multi-label soft-margin loss between its image scores (the global average of its class maps) and the
foreground tags. Its CAMs become seeds / pseudo-labels in later stages (``weakseg cam``).

Validation (:meth:`CAM.validate`) scores CAM seeds against the validation masks: single scale, no flip,
foreground restricted to the ground-truth tags, background wherever the strongest max-normalised CAM is
below ``bg_threshold`` (:func:`~weakseg.models.classifier.cam_seed_logits`; SFC overrides the rule with its
own, see :meth:`weakseg.methods.sfc.SFC.seed_scores`). The multi-scale sweep lives in :mod:`weakseg.cam`.

Hooks this family of methods offers the engine (besides :class:`~weakseg.methods.base.Method`'s):

* :meth:`CAM.model_kwargs` (classmethod): extra keyword arguments for ``create_cam_classifier``
  derived from the method section (``bg_threshold``; SFC adds its heads).
* :meth:`CAM.run_model`: the forward pass(es) of one training step (SFC runs two scales).
* :meth:`CAM.class_maps`: per-image class maps for CAM inference tools.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weakseg.losses.multilabel import multilabel_soft_margin_loss
from weakseg.methods.base import Method, register_method
from weakseg.metrics import ConfusionMatrix
from weakseg.models.classifier import DEFAULT_BG_THRESHOLD, cam_seed_logits, foreground_indices


@dataclass
class CAMParams:
    """Attributes:
    weight: weight of the multi-label soft-margin loss.
    bg_threshold: background score of the model's tag-free ``"logits"`` and of validation seeds
        (IRN's ``cam_eval_thres``, 0.15).
    """

    weight: float = 1.0
    bg_threshold: float = DEFAULT_BG_THRESHOLD


def params_from_spec(cls: type[Method], spec: Mapping[str, Any]) -> Any:
    """The method's ``Params`` built from a config section (``{"name": ..., **fields}``)."""
    names = {f.name for f in dataclasses.fields(cls.Params)}
    return cls.Params(**{k: v for k, v in spec.items() if k in names})


def tags_from_mask(mask: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Multi-hot ``[K]`` float of the classes present in ``mask`` ``[H, W]`` (``ignore_index`` skipped)."""
    values = mask[(mask != ignore_index) & (mask >= 0) & (mask < num_classes)]
    return torch.bincount(values.flatten(), minlength=num_classes)[:num_classes].gt(0).float()


@register_method
class CAM(Method):
    """Multi-label soft-margin classification of the foreground tags (term ``cls``)."""

    name = "cam"
    Params = CAMParams
    requires = ("tags",)
    model_kind = "classifier"

    @property
    def seed_rule(self) -> str:
        """How :meth:`seed_scores` decides background (reported with the validation metrics)."""
        return (
            f"max-normalised CAM of tagged classes; background where all are below {self.params.bg_threshold}"
        )

    def __init__(self, params: Any, **kw: Any) -> None:
        super().__init__(params, **kw)
        fg = foreground_indices(self.num_classes, self.background)
        self.num_foreground = len(fg)
        self.register_buffer("fg_index", torch.tensor(fg, dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------ engine hooks

    @classmethod
    def model_kwargs(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``create_cam_classifier`` from the ``method`` config section."""
        return {"bg_threshold": float(params_from_spec(cls, spec).bg_threshold)}

    def run_model(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """The model outputs of one training step: one forward pass on ``batch["image"]``."""
        return model(batch["image"])

    # ------------------------------------------------------------------ loss

    def foreground_tags(self, tags: Tensor) -> Tensor:
        """``[B, K]`` tags over all classes -> ``[B, C]`` foreground tags."""
        return tags.index_select(1, self.fg_index.to(tags.device))

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        target = self.foreground_tags(batch["tags"])
        return {"cls": self.params.weight * multilabel_soft_margin_loss(outputs["cls_logits"], target)}

    # ------------------------------------------------------------------ CAMs

    def class_maps(self, outputs: dict[str, Any], tags: Tensor | None = None) -> dict[str, Tensor]:
        """Non-negative class maps ``[B, K, h, w]`` on the CAM grid, not normalised.

        ``"cam"``: ``ReLU(cam)`` in the foreground channels; the background channel (if any) is 0 (a CAM
        has no background score: threshold the normalised maps). ``tags`` is not used here.
        """
        cam = F.relu(outputs["cam"].float())
        if self.background is None:
            return {"cam": cam}
        zero = torch.zeros_like(cam[:, :1])
        return {"cam": torch.cat([cam[:, : self.background], zero, cam[:, self.background :]], dim=1)}

    def seed_scores(self, outputs: dict[str, Any], tags: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        """Scores ``[B, K, *size]`` whose arg-max is the CAM seed, by map name (the first picks checkpoints).

        ``"cam"``: the foreground CAMs upsampled to ``size`` (bilinear), max-normalised, untagged classes
        excluded, background = ``bg_threshold`` (:func:`~weakseg.models.classifier.cam_seed_logits`).
        """
        fg = self.class_maps(outputs, tags)["cam"].index_select(1, self.fg_index)
        fg = F.interpolate(fg, size=size, mode="bilinear", align_corners=False)
        scores = cam_seed_logits(
            fg,
            num_classes=self.num_classes,
            background=self.background,
            bg_threshold=self.params.bg_threshold,
            tags=tags,
        )
        return {"cam": scores}

    @torch.no_grad()
    def validate(
        self, model: nn.Module, dataset: Any, eval_cfg: Any, device: torch.device
    ) -> dict[str, Any] | None:
        """CAM seed metrics on ``dataset`` (needs ``"mask"``; tags from the samples, else from the masks).

        Returns :func:`~weakseg.metrics.metrics_from_matrix`'s keys and ``confusion_matrix`` for the first
        map of :meth:`seed_scores` (per-class values by class name), plus ``mIoU_<map>`` for every map and
        ``"seed"`` describing the protocol. ``eval_cfg`` is not used (single scale, no flip).
        """
        names = [str(c) for c in dataset.classes]
        confusions: dict[str, ConfusionMatrix] = {}
        was_training = model.training
        model.eval()
        try:
            for i in range(len(dataset)):
                sample = dataset[i]
                mask = torch.as_tensor(sample["mask"]).long().to(device)
                image = torch.as_tensor(sample["image"]).float()[None].to(device)
                if "tags" in sample:
                    tags = torch.as_tensor(sample["tags"]).float()[None].to(device)
                else:
                    tags = tags_from_mask(mask, self.num_classes, self.ignore_index)[None]
                    if self.background is not None:
                        tags[:, self.background] = 1.0
                for name, scores in self.seed_scores(model(image), tags, tuple(mask.shape[-2:])).items():
                    pred = scores.argmax(dim=1)[0]
                    if name not in confusions:
                        confusions[name] = ConfusionMatrix(self.num_classes, self.ignore_index, device=device)
                    confusions[name].update(pred, mask)
        finally:
            model.train(was_training)
        results = {name: cm.compute() for name, cm in confusions.items()}
        primary = next(iter(results.values()))
        metrics: dict[str, Any] = dict(primary)
        metrics["confusion_matrix"] = next(iter(confusions.values())).matrix.cpu().tolist()
        metrics["per_class_IoU"] = dict(zip(names, primary["per_class_IoU"]))
        for key in ("per_class_accuracy", "per_class_Dice"):
            if key in metrics:
                metrics[key] = dict(zip(names, metrics[key]))
        for name, result in results.items():
            metrics[f"mIoU_{name}"] = result["mIoU"]
        metrics["num_samples"] = len(dataset)
        metrics["seed"] = {
            "maps": list(results),
            "rule": self.seed_rule,
            "tags": "ground truth",
            "scales": [1.0],
        }
        return metrics
