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
* :meth:`CAM.fit_dataset`: counts the training tags and warns (:func:`check_tag_variety`, shared by
  every image-level method) when some foreground class is tagged in nearly every image.
* :meth:`CAM.run_model`: the forward pass(es) of one training step (SFC runs two scales).
* :meth:`CAM.class_maps`: per-image class maps for CAM inference tools.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weakseg.data.sample import Batch
from weakseg.losses.multilabel import multilabel_soft_margin_loss
from weakseg.methods.base import Method, register_method
from weakseg.metrics import ConfusionMatrix
from weakseg.models.classifier import DEFAULT_BG_THRESHOLD, cam_seed_logits, create_cam_classifier
from weakseg.models.outputs import ModelOutputs
from weakseg.ops.class_maps import foreground_indices


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


# ---------------------------------------------------------------------------------------------- tags


PIXEL_SOURCES = ("mask", "pseudo", "scribble")
#: A foreground class tagged in more than this share of the training images makes tags nearly constant.
DOMINANT_TAG_SHARE = 0.95


@dataclass
class ClassCounts:
    """Training-set statistics over all ``K`` classes: ``images[k]`` samples tagged with ``k``;
    ``pixels[k]`` labelled pixels of ``k`` in ``pixel_source`` label maps (None when not counted)."""

    num_images: int
    images: np.ndarray
    pixels: np.ndarray | None = None
    pixel_source: str | None = None


def count_classes(dataset: Any, pixels: bool = False, progress: bool = True, workers: int = 8) -> ClassCounts:
    """Count, over every sample of ``dataset``, the images tagged with each class and (``pixels``) the
    labelled pixels of each class in its first available label maps (masks, pseudo-labels, scribbles).

    Tags come from :meth:`~weakseg.data.base.SegDataset.tags_of` (a tags file, else label maps); label
    maps are read raw, without transforms, by ``workers`` threads (file decoding releases the GIL;
    COCO's 82k label maps would take minutes one by one). No CAM or model is involved.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from weakseg.io import read_label

    k = int(dataset.num_classes)
    n = len(dataset)
    source = _pixel_source(dataset) if pixels else None

    def count(i: int) -> tuple[np.ndarray, np.ndarray | None]:
        tagged = np.asarray(dataset.tags_of(i)) > 0.5
        if source is None:
            return tagged, None
        label = read_label(dataset.label_path(source, i))
        return tagged, np.bincount(label.ravel(), minlength=256)[:k]

    images = np.zeros(k, dtype=np.int64)
    pixel_counts = np.zeros(k, dtype=np.int64) if source is not None else None
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(count, range(n), chunksize=64)
        for tagged, pix in tqdm(results, total=n, desc="class statistics", disable=not progress or n < 2000):
            images += tagged
            if pixel_counts is not None and pix is not None:
                pixel_counts += pix
    return ClassCounts(num_images=n, images=images, pixels=pixel_counts, pixel_source=source)


def _pixel_source(dataset: Any) -> str | None:
    """The first of masks / pseudo-labels / scribbles the dataset has files for (None: none)."""
    for key in PIXEL_SOURCES:
        try:
            dataset.label_path(key, 0)
        except (KeyError, AttributeError):
            continue
        return key
    return None


def dominant_tags(
    counts: ClassCounts,
    background: int | None,
    class_names: Sequence[str] | None = None,
    share: float = DOMINANT_TAG_SHARE,
) -> dict[str, float]:
    """Foreground classes tagged in more than ``share`` of the training images -> their share, by name
    (class index as a string when ``class_names`` is None), most frequent first."""
    if counts.num_images == 0:
        return {}
    names = list(class_names) if class_names is not None else [str(c) for c in range(len(counts.images))]
    fg = foreground_indices(len(counts.images), background)
    shares = {names[c]: float(counts.images[c]) / counts.num_images for c in fg}
    return dict(sorted(((n, v) for n, v in shares.items() if v > share), key=lambda item: -item[1]))


def check_tag_variety(
    method: str,
    dataset: Any,
    background: int | None,
    counts: ClassCounts | None = None,
    *,
    share: float = DOMINANT_TAG_SHARE,
    progress: bool = True,
) -> dict[str, float]:
    """Warn when the training tags hardly vary; returns :func:`dominant_tags` of the training set.

    An image-level method learns where a class is by contrasting images tagged with it against images
    without it. A foreground class tagged in more than ``share`` of the training images (CamVid's sky,
    road and pole; 3 of ACDC's structures on most slices) gives it nothing to contrast, so its CAMs
    (and the seeds and pseudo-labels made from them) are meaningless for that class. Called once with
    the training set from the ``fit_dataset`` hook of every image-level method (``cam``, ``sfc``,
    ``aal``); ``counts`` reuses a :func:`count_classes` result.
    """
    counts = counts if counts is not None else count_classes(dataset, progress=progress)
    found = dominant_tags(counts, background, getattr(dataset, "classes", None), share)
    if found:
        listed = ", ".join(f"{name} ({100 * v:.0f}%)" for name, v in found.items())
        warnings.warn(
            f"{method}: the training tags hardly vary: {listed} tagged in more than {100 * share:.0f}% of "
            f"the {counts.num_images} training images. An image-level method learns to localise a class only "
            "from images without it, so the CAMs, seeds and pseudo-labels of these classes will be "
            "meaningless (check the training split and data.tags)",
            UserWarning,
            stacklevel=3,
        )
    return found


@register_method
class CAM(Method):
    """Multi-label soft-margin classification of the foreground tags (term ``cls``)."""

    name = "cam"
    Params: ClassVar[type] = CAMParams
    requires = ("tags",)
    model_kind = "classifier"
    fg_index: Tensor  # long [C]: the foreground classes' indices (a buffer)

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
    def build_model(
        cls, spec: Mapping[str, Any], *, head: str, head_kwargs: Mapping[str, Any], **options: Any
    ) -> nn.Module:
        """A :class:`~weakseg.models.classifier.CAMClassifier` (``head`` and ``head_kwargs`` are not used)
        with the options of :meth:`model_kwargs` (:class:`~weakseg.methods.base.BuildsModel`)."""
        return create_cam_classifier(**options, **cls.model_kwargs(spec))

    @classmethod
    def model_kwargs(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``create_cam_classifier`` from the ``method`` config section."""
        return {"bg_threshold": float(params_from_spec(cls, spec).bg_threshold)}

    def fit_dataset(self, dataset: Any, *, batch_size: int, progress: bool = True) -> dict[str, Any]:
        """Count the training tags and warn when they hardly vary (:func:`check_tag_variety`).

        Returns ``{"num_images", "images": [...] (per foreground class), "dominant_tags": {name: share}}``.
        """
        counts = count_classes(dataset, progress=progress)
        dominant = check_tag_variety(self.name, dataset, self.background, counts, progress=progress)
        return {
            "num_images": counts.num_images,
            "images": counts.images[self.fg_index.cpu().numpy()].astype(int).tolist(),
            "dominant_tags": dominant,
        }

    def run_model(self, model: nn.Module, batch: Batch) -> ModelOutputs:
        """The model outputs of one training step: one forward pass on ``batch["image"]``."""
        return model(batch["image"])

    # ------------------------------------------------------------------ loss

    def foreground_tags(self, tags: Tensor) -> Tensor:
        """``[B, K]`` tags over all classes -> ``[B, C]`` foreground tags."""
        return tags.index_select(1, self.fg_index.to(tags.device))

    def forward(self, outputs: ModelOutputs, batch: Batch) -> dict[str, Tensor]:
        target = self.foreground_tags(batch["tags"])
        return {"cls": self.params.weight * multilabel_soft_margin_loss(outputs["cls_logits"], target)}

    # ------------------------------------------------------------------ CAMs

    def class_maps(self, outputs: ModelOutputs, tags: Tensor | None = None) -> dict[str, Tensor]:
        """Non-negative class maps on the CAM grid, not normalised.

        ``"cam"``: ``ReLU(cam)`` ``[B, C, h, w]``, the foreground classes only (a CAM has no background
        score of its own: the seed rules put a constant beside the normalised maps). ``tags`` is not used.
        """
        return {"cam": F.relu(outputs["cam"].float())}

    def raw_cam_scores(self, outputs: dict[str, Any], tags: Tensor, size: tuple[int, int]) -> Tensor:
        """IRN's seed scores ``[B, K, *size]`` of the raw classifier CAM: the foreground CAMs upsampled to
        ``size`` (bilinear), max-normalised, untagged classes excluded, background = ``bg_threshold``
        (:func:`~weakseg.models.classifier.cam_seed_logits`). The same rule for every image-level method."""
        fg = F.interpolate(F.relu(outputs["cam"].float()), size=size, mode="bilinear", align_corners=False)
        return cam_seed_logits(
            fg,
            num_classes=self.num_classes,
            background=self.background,
            bg_threshold=self.params.bg_threshold,
            tags=tags,
        )

    def seed_scores(self, outputs: dict[str, Any], tags: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        """Scores ``[B, K, *size]`` whose arg-max is the CAM seed, by map name (the first picks checkpoints).

        ``"cam"``: :meth:`raw_cam_scores`.
        """
        return {"cam": self.raw_cam_scores(outputs, tags, size)}

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
                size = (mask.shape[-2], mask.shape[-1])
                for name, scores in self.seed_scores(model(image), tags, size).items():
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
