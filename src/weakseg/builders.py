"""From a :class:`~weakseg.config.Config` to datasets, a segmentor and a method.

The one place where config sections meet constructors, so the CLI, the engine and the Python API
build every object the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch import nn

from weakseg.config import Config, ConfigError
from weakseg.data import COCODataset, FolderDataset, SegDataset, VOCDataset
from weakseg.data.transforms import build_eval_transform, build_train_transform
from weakseg.methods import Method, build_method, get_method_class
from weakseg.models import create_segmentor


def build_dataset(cfg: Config, split: str, *, train: bool, requires: Iterable[str] = ()) -> SegDataset:
    """The dataset of ``split`` with training augmentation (``train=True``) or none.

    ``requires`` names sample keys the method needs ("scribble", "mask", "pseudo"); a dataset that
    cannot provide one is an error that names the key and the dataset root.
    """
    d = cfg.data
    requires = set(requires)
    if train:
        transform = build_train_transform(
            crop_size=tuple(d.crop_size),
            scale_range=tuple(d.scale_range),
            hflip=d.hflip,
            rotate=d.rotate,
            color_jitter=d.color_jitter,
            resize=tuple(d.resize) if d.resize else None,
        )
    else:
        transform = build_eval_transform()
    load_masks = not train or "mask" in requires
    if d.format == "folder":
        dataset: SegDataset = FolderDataset(
            d.root,
            split,
            transform=transform,
            load_masks=load_masks,
            load_pseudo=train and "pseudo" in requires,
            tags_source=d.tags,
        )
    elif d.format == "voc":
        dataset = VOCDataset(
            d.root,
            split,
            transform=transform,
            scribbles=d.scribbles if (not train or "scribble" in requires) else None,
            scribble_width=d.scribble_width,
            load_masks=load_masks,
            tags_source=d.tags,
        )
    else:
        dataset = COCODataset(d.root, split, transform=transform, load_masks=load_masks, tags_source=d.tags)
    dataset.seed = cfg.train.seed
    if d.pseudo_dir and train and "pseudo" in requires:  # pseudo-labels exist for the training split
        dataset.add_label_dir("pseudo", Path(d.pseudo_dir))
    for key in sorted(requires):
        if not dataset.has(key):
            raise ConfigError(
                f"method '{cfg.method['name']}' needs '{key}' labels but the dataset at {d.root} "
                f"(split '{split}') has none" + (" (set data.pseudo_dir)" if key == "pseudo" else "")
            )
    return dataset


def method_requires(cfg: Config) -> tuple[str, ...]:
    """Sample keys the configured method needs from the training set."""
    method = build_method(cfg.method, num_classes=2)
    return tuple(method.requires)


def build_model(
    cfg: Config, num_classes: int, *, background: int | None = 0, pretrained: bool = True
) -> nn.Module:
    """The network the configured method trains: a segmentor, a CAM classifier for
    image-level methods (``Method.model_kind == "classifier"``; ``model.head`` is then ignored), or a
    single-stage network (``"single_stage"``: shared backbone, CAM branch and segmentation head).

    ``pretrained=False`` skips weight loading (when a checkpoint's weights follow).
    """
    m = cfg.model
    common = dict(
        num_classes=num_classes,
        pretrained=m.pretrained if pretrained else None,
        output_stride=m.output_stride,
        frozen_stages=m.frozen_stages,
        freeze_bn=m.freeze_bn,
    )
    method_cls = get_method_class(cfg.method["name"])
    if method_cls.model_kind == "classifier":
        from weakseg.models.classifier import create_cam_classifier

        return create_cam_classifier(
            backbone=m.backbone, background=background, **common, **method_cls.model_kwargs(cfg.method)
        )
    head_kwargs = {"channels": m.head_channels} if m.head_channels is not None else None
    try:
        if method_cls.model_kind == "single_stage":  # shared backbone: CAM branch + segmentation head
            from weakseg.models.single_stage import create_single_stage

            return create_single_stage(
                backbone=m.backbone, head=m.head, head_kwargs=head_kwargs, background=background, **common
            )
        return create_segmentor(backbone=m.backbone, head=m.head, head_kwargs=head_kwargs, **common)
    except TypeError as err:
        if head_kwargs and "channels" in str(err):
            raise ConfigError(
                f"model.head_channels is set but head '{m.head}' has no configurable width "
                "(set model.head_channels=null)"
            ) from err
        raise


def build_method_for(cfg: Config, dataset: SegDataset) -> Method:
    return build_method(
        cfg.method,
        num_classes=dataset.num_classes,
        ignore_index=dataset.ignore_index,
        background=dataset.background,
    )


__all__ = ["build_dataset", "build_method_for", "build_model", "get_method_class", "method_requires"]
