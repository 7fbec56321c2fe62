"""From a :class:`~weakseg.config.Config` to datasets, a segmentor and a method.

The one place where config sections meet constructors, so the CLI, the engine and the Python API
build every object the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from weakseg.config import Config, ConfigError
from weakseg.data import SegDataset
from weakseg.data.formats import create_dataset
from weakseg.data.transforms import IMAGENET_MEAN_RGB, build_eval_transform, build_train_transform
from weakseg.methods import Method, build_method, get_method_class
from weakseg.methods.base import BuildsModel, model_kind
from weakseg.models import create_segmentor


def build_dataset(cfg: Config, split: str, *, train: bool, requires: Iterable[str] = ()) -> SegDataset:
    """The dataset of ``split`` with training augmentation (``train=True``) or none.

    ``requires`` names sample keys the method needs ("scribble", "mask", "pseudo"); a dataset that
    cannot provide one is an error that names the key and the dataset root.
    """
    d = cfg.data
    requires = set(requires)
    dataset = create_dataset(
        d.format,
        d.root,
        split,
        load_masks=not train or "mask" in requires,
        scribbles="load" if (not train or "scribble" in requires) else None,
        pseudo=train and "pseudo" in requires,
        tags_source=d.tags,
        scribble_format=d.scribbles,
        scribble_width=d.scribble_width,
    )
    dataset.seed = cfg.train.seed
    if train:
        # grey images (MRI, CT) are padded with black, their background; colour images with the
        # ImageNet mean, which normalises to ~0
        dataset.transform = build_train_transform(
            crop_size=tuple(d.crop_size),
            scale_range=tuple(d.scale_range),
            hflip=d.hflip,
            rotate=d.rotate,
            color_jitter=d.color_jitter,
            resize=tuple(d.resize) if d.resize else None,
            pad_value=(0, 0, 0) if dataset.image_mode == "L" else IMAGENET_MEAN_RGB,
        )
    else:
        dataset.transform = build_eval_transform()
    if d.pseudo_dir and train and "pseudo" in requires:  # pseudo-labels exist for the training split
        dataset.add_label_dir("pseudo", Path(d.pseudo_dir))
    for key in sorted(requires):
        if not dataset.has(key):
            raise ConfigError(
                f"method '{cfg.method['name']}' needs '{key}' labels but the dataset at {d.root} "
                f"(split '{split}') has none; {_label_recipe(key, d.root, split)}"
            )
    return dataset


def _label_recipe(key: str, root: str, split: str) -> str:
    """How to make the label maps ``key`` that a method needs (part of the missing-labels error)."""
    recipes = {
        "scribble": f"simulate scribbles from its masks with `weakseg data simulate {root} {root}-scribbles` "
        f"and train with data.root={root}-scribbles",
        "pseudo": "make pseudo-labels with `weakseg cam <classifier checkpoint> --split "
        f"{split} --out cams/` and `weakseg pseudo-labels cams/ --out pl/`, "
        "then set data.pseudo_dir=pl/pseudo",
        "tags": f"write tags with `weakseg data tags {root} --source masks --out {root}/tags.csv` and set "
        f"data.tags={root}/tags.csv",
        "mask": "it needs dense masks (layout 'masks'); "
        "train a method for weak labels instead (e.g. method.name=pce)",
    }
    return recipes.get(key, f"add '{key}' label maps to the dataset")


def method_requires(cfg: Config) -> tuple[str, ...]:
    """Sample keys the configured method needs from the training set."""
    method = build_method(cfg.method, num_classes=2)
    return tuple(method.requires)


def build_model(
    cfg: Config, num_classes: int, *, background: int | None = 0, pretrained: bool = True
) -> nn.Module:
    """The network the configured method trains: a segmentor, or the network of a method that
    :class:`~weakseg.methods.base.BuildsModel` (a CAM classifier for image-level methods, where
    ``model.head`` is ignored; a single-stage network: shared backbone, CAM branch and segmentation head).

    ``pretrained=False`` skips weight loading (when a checkpoint's weights follow).
    """
    m = cfg.model
    check_model_config(cfg)
    head_kwargs = aspp_head_kwargs(cfg)
    if m.head_channels is not None:
        head_kwargs["channels"] = m.head_channels
    options: dict[str, Any] = dict(
        backbone=m.backbone,
        head=m.head,
        head_kwargs=head_kwargs,
        num_classes=num_classes,
        pretrained=m.pretrained if pretrained else None,
        output_stride=m.output_stride,
        frozen_stages=m.frozen_stages,
        freeze_bn=m.freeze_bn,
    )
    method_cls = get_method_class(cfg.method["name"])
    try:
        if isinstance(method_cls, BuildsModel):
            return method_cls.build_model(cfg.method, background=background, **options)
        return create_segmentor(**options)
    except TypeError as err:
        if head_kwargs and "channels" in str(err):
            raise ConfigError(
                f"model.head_channels is set but head '{m.head}' has no configurable width "
                "(set model.head_channels=null)"
            ) from err
        raise
    except ValueError as err:  # a combination the factories reject (e.g. a ViT at output stride 8)
        raise ConfigError(f"model (backbone '{m.backbone}', head '{m.head}'): {err}") from None


def check_model_config(cfg: Config) -> None:
    """An unknown ``model.backbone`` / ``model.head`` is a config error naming the key and the choices."""
    from weakseg.models import BACKBONES, HEADS

    m = cfg.model
    if m.backbone not in BACKBONES:
        raise ConfigError(
            f"config key 'model.backbone' is '{m.backbone}'; expected one of {', '.join(sorted(BACKBONES))}"
        )
    if model_kind(get_method_class(cfg.method["name"])) != "classifier" and m.head not in HEADS:
        raise ConfigError(
            f"config key 'model.head' is '{m.head}'; expected one of {', '.join(sorted(HEADS))}"
        )


def aspp_head_kwargs(cfg: Config) -> dict[str, object]:
    """Dilation options for a head with ASPP branches (none for other heads).

    ``model.aspp_rates`` set: those rates, unchanged. Unset: the head's published rates scaled by
    ``min(crop) / 513`` when the training crop is smaller than DeepLab's (see
    :func:`weakseg.models.heads.fit_aspp_rates`), so small CPU crops keep branches that see the image.
    """
    from weakseg.models.heads import ASPP_REFERENCE_CROP, HEADS

    factory = HEADS.get(cfg.model.head)
    if factory is None or "rates" not in inspect.signature(factory).parameters:
        return {}
    if cfg.model.aspp_rates is not None:
        return {"rates": list(cfg.model.aspp_rates)}
    return {"rate_scale": min(1.0, min(cfg.data.crop_size) / ASPP_REFERENCE_CROP)}


def build_method_for(cfg: Config, dataset: SegDataset) -> Method:
    return build_method(
        cfg.method,
        num_classes=dataset.num_classes,
        ignore_index=dataset.ignore_index,
        background=dataset.background,
    )


__all__ = [
    "build_dataset",
    "build_method_for",
    "build_model",
    "check_model_config",
    "get_method_class",
    "method_requires",
]
