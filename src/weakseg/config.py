"""Experiment configuration: a typed schema, YAML files and dotted command-line overrides.

One YAML file describes one experiment (``configs/<method>/<dataset>_<backbone>-<head>_<crop>_<steps>.yaml``,
see ``configs/README.md``), built on a family file in ``configs/_base_/``. It is merged
onto the dataclass schema below, so a key that does not exist or a value of the wrong type stops with
an error naming the key. Overrides use dotted keys: ``train.batch_size=8 data.root=/data/VOC2012``.

The ``method`` section is typed by the method itself: every registered method declares a
``Params`` dataclass (with the paper's defaults), and :func:`load_config` validates ``method.*``
against the dataclass of the method named in ``method.name``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and file) and what was expected."""


@dataclass
class DataConfig:
    """Where the data is and how training samples are augmented."""

    format: str = "folder"  # a registered dataset format (weakseg datasets): folder | voc | coco
    root: str = "demo_data/synthetic"
    train_split: str = "train"
    val_split: str = "val"
    scribbles: str = "png"  # VOC only: png | xml
    scribble_width: int = 3  # VOC XML polylines: stroke width in pixels
    tags: str = "auto"  # auto | masks | scribbles | path to cls_labels.npy or tags.csv
    pseudo_dir: str | None = None  # folder of pseudo-label PNGs ({id}.png), loaded as "pseudo"
    crop_size: list[int] = field(default_factory=lambda: [96, 96])  # [H, W] of training crops
    resize: list[int] | None = None  # resize every training image to [H, W] before augmentation
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: float = 0.5
    rotate: float = 0.0  # maximum rotation in degrees (applied with probability 0.5)
    color_jitter: float = 0.0  # strength of brightness/contrast/saturation jitter; 0 disables
    num_workers: int = 2
    # decoded training samples kept in memory, in MB over all DataLoader workers (each holds
    # cache_mb / num_workers): files are read once, later epochs copy the arrays; 0 = off
    cache_mb: float = 1024.0


@dataclass
class ModelConfig:
    """The segmentor: a timm backbone and a segmentation head."""

    backbone: str = "efficientnet_lite0"
    head: str = "deeplabv3plus"
    pretrained: str | None = "imagenet"  # imagenet | a local weights file | null
    output_stride: int = 16
    head_channels: int | None = (
        None  # width of the head's hidden layers (DeepLabV3+ / UperNet); null = the head's default
    )
    # dilation rates of ASPP heads; null = the head's published rates, scaled by crop/513 for smaller crops
    aspp_rates: list[int] | None = None
    frozen_stages: int = 0  # freeze the stem (1) and the first stages (2, 3, ...) of the backbone
    freeze_bn: bool = False  # keep the backbone's BatchNorm statistics and affine parameters fixed
    # NHWC weights and inputs; null = on when training on CPU (faster with oneDNN), off on GPU
    channels_last: bool | None = None


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (stepped every iteration)."""

    name: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    head_lr_mult: float = 10.0  # new layers (head, method modules) learn this many times faster
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "poly"  # poly | warmup_cosine | constant
    poly_power: float = 0.9
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float | None = None  # max global gradient norm
    fused: bool | None = None  # torch's fused optimiser kernel; null = on for CPU training (faster there)


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 1000
    batch_size: int = 8
    max_minutes: float | None = (
        None  # stop early after this wall-clock budget (the step count still sets the schedule)
    )
    amp: str = "auto"  # auto (bf16 on CUDA, none on CPU) | none | bf16 | fp16
    compile: bool = False
    # CPU: depthwise convolutions backpropagate through weakseg.engine.depthwise (the same forward,
    # gradients equal to float rounding, several times faster for 5x5 and dilated filters)
    fast_depthwise: bool = True
    # CPU: glibc keeps freed memory for reuse (engine.trainer.keep_freed_memory), fewer page faults
    keep_freed_memory: bool = True
    find_unused_parameters: bool = (
        False  # DDP: set when some parameters get no gradient (e.g. Swin + DeepLab)
    )
    val_every: int = 500
    ckpt_every: int = 500
    keep_every: int | None = None  # also keep step_<N>.ckpt every this many steps (last.ckpt is overwritten)
    log_every: int = 10
    seed: int = 0
    deterministic: bool = False
    tensorboard: bool = False
    num_overlays: int = 8  # validation overlays written at the end of training


@dataclass
class EvalConfig:
    """Inference settings used for validation, ``weakseg evaluate`` and ``weakseg predict``."""

    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    window: int | None = None  # sliding-window size for large images (pixels); null = whole image
    window_stride: float = 0.6667  # window step as a fraction of the window
    resize: list[int] | None = None  # run the network at this [H, W] and map predictions back
    volume_dice: bool | None = None  # per-volume 3-D Dice (auto: on for slice ids like ACDC's)
    batch_size: int = 1
    crf: bool = False  # refine the averaged probabilities with a dense CRF before the arg-max
    crf_scale: float = 1.0  # run that CRF on a grid resized by this factor (< 1 is faster, e.g. on CPU)


@dataclass
class Config:
    """A whole experiment."""

    name: str = "experiment"
    out_dir: str | None = None  # default: runs/<name>
    method: Any = field(default_factory=lambda: {"name": "pce"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


def _error(err: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    if isinstance(err, ConfigKeyError):
        return ConfigError(f"{where}: unknown config key '{key}'")
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0]
        return ConfigError(f"{where}: wrong value for config key '{key}': {msg}")
    return ConfigError(f"{where}: {str(err).splitlines()[0]} (key '{key}')")


def _merge(base: DictConfig, other: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _error(err, where) from err


def _method_schema(method_section: Any, where: str) -> DictConfig:
    """Validate ``method.*`` against the named method's ``Params`` dataclass."""
    from weakseg.methods import get_method_class

    section = OmegaConf.create(method_section if method_section is not None else {})
    name = section.get("name", "pce")
    try:
        cls = get_method_class(name)
    except KeyError as err:
        raise ConfigError(f"{where}: method.name: {err.args[0]}") from None
    schema = OmegaConf.structured(cls.Params)
    schema_with_name = OmegaConf.merge({"name": name}, schema)
    OmegaConf.set_struct(schema_with_name, True)
    try:
        return OmegaConf.merge(schema_with_name, section)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        if isinstance(err, ConfigKeyError):
            valid = ", ".join(f.name for f in dataclasses.fields(cls.Params)) or "(none)"
            raise ConfigError(
                f"{where}: unknown config key 'method.{key}' for method '{name}'; its keys are: {valid}"
            ) from None
        raise ConfigError(f"{where}: wrong value for 'method.{key}': {str(err).splitlines()[0]}") from None


BASE_KEY = "_base_"


def _config_layers(path: Path, chain: tuple[Path, ...]) -> list[tuple[dict, str]]:
    """The raw sections of ``path`` and of its bases, bases first: ``[(sections, where), ...]``.

    A file may name the files it builds on with ``_base_: other.yaml`` or a list of them (paths relative
    to the file; later bases override earlier ones, the file overrides them all), so an experiment states
    only what differs. Cycles are an error.
    """
    if not path.is_file():
        where = f" (a base of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    resolved = path.resolve()
    if resolved in chain:
        raise ConfigError(
            f"{path}: '_base_' files form a cycle: {' -> '.join(str(p) for p in (*chain, path))}"
        )
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml errors come in several types
        raise ConfigError(f"cannot parse config file {path}: {err}") from err
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    raw_dict: dict = OmegaConf.to_container(raw)  # type: ignore[assignment]
    bases = raw_dict.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: '_base_' must be a file name or a list of file names, got {bases!r}")
    layers: list[tuple[dict, str]] = []
    for base in bases:
        layers += _config_layers(path.parent / base, (*chain, resolved))
    return [*layers, (raw_dict, str(path))]


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML experiment file (or start from defaults) and apply dotted ``key=value`` overrides.

    The file may build on others through ``_base_`` (see :func:`_config_layers`).

    Raises :class:`ConfigError` naming the offending key for unknown keys and wrong types.
    """
    schema = OmegaConf.structured(Config)
    merged = schema
    method_parts: list[tuple[Any, str]] = []
    if path is not None:
        for raw_dict, where in _config_layers(Path(path), ()):
            method_parts.append((raw_dict.pop("method", None), where))
            merged = _merge(merged, raw_dict, where)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value, e.g. train.batch_size=8")
        key = item.split("=", 1)[0]
        try:
            dot = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            raise ConfigError(f"override '{item}': {err}") from err
        if key == "method" or key.startswith("method."):
            container = OmegaConf.to_container(dot)
            assert isinstance(container, dict)  # a dotlist makes a mapping
            method_parts.append((container["method"], f"override '{item}'"))
        else:
            merged = _merge(merged, dot, f"override '{item}'")

    method = OmegaConf.create({"name": "pce"})
    where = "config"  # names the last place that set method keys, for error messages
    for part, part_where in method_parts:
        if part is not None:
            where = part_where
            if not isinstance(part, dict):
                part = {"name": part}  # "method=rloss" shorthand
            if "name" in part and part["name"] != method.get("name"):
                method = OmegaConf.create({})  # a new method starts from its own defaults
            merged_method = OmegaConf.merge(method, part)
            assert isinstance(merged_method, DictConfig)  # a mapping merged with a mapping
            method = merged_method
    method = _method_schema(method, where)
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    cfg.method = OmegaConf.to_container(method)
    _check_values(cfg)
    return cfg


def _check_values(cfg: Config) -> None:
    """Value checks that a type alone cannot express."""
    from weakseg.data.formats import DATASETS

    choices = {
        "data.format": (cfg.data.format, tuple(DATASETS.names())),
        "data.scribbles": (cfg.data.scribbles, ("png", "xml")),
        "optim.name": (cfg.optim.name, ("sgd", "adamw")),
        "optim.schedule": (cfg.optim.schedule, ("poly", "warmup_cosine", "constant")),
        "train.amp": (cfg.train.amp, ("auto", "none", "bf16", "fp16")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config key '{key}' is '{value}'; expected one of {', '.join(allowed)}")
    for key, size in {
        "data.crop_size": cfg.data.crop_size,
        "data.resize": cfg.data.resize,
        "eval.resize": cfg.eval.resize,
    }.items():
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise ConfigError(f"config key '{key}' is {size}; expected [height, width] of positive integers")
    if len(cfg.data.scale_range) != 2 or not 0 < cfg.data.scale_range[0] <= cfg.data.scale_range[1]:
        raise ConfigError(
            f"config key 'data.scale_range' is {cfg.data.scale_range}; "
            "expected [min, max] with 0 < min <= max"
        )
    for key, count in {
        "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size,
        "train.val_every": cfg.train.val_every,
        "train.ckpt_every": cfg.train.ckpt_every,
        "train.log_every": cfg.train.log_every,
    }.items():
        if count <= 0:
            raise ConfigError(f"config key '{key}' is {count}; expected a positive integer")
    if cfg.data.cache_mb < 0:
        raise ConfigError(f"config key 'data.cache_mb' is {cfg.data.cache_mb}; expected a size in MB >= 0")
    if cfg.model.output_stride not in (8, 16, 32):
        raise ConfigError(
            f"config key 'model.output_stride' is {cfg.model.output_stride}; expected 8, 16 or 32"
        )
    if not cfg.eval.scales or min(cfg.eval.scales) <= 0:
        raise ConfigError(f"config key 'eval.scales' is {cfg.eval.scales}; expected positive scale factors")


def to_yaml(cfg: Config) -> str:
    """The resolved configuration as YAML (what is saved in every run folder)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` from the dict stored in a checkpoint (validated like a file)."""
    data = dict(data)
    method = data.pop("method", None)
    merged = _merge(OmegaConf.structured(Config), data, "checkpoint config")
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    cfg.method = OmegaConf.to_container(_method_schema(method, "checkpoint config"))
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """``cfg`` (e.g. restored from a checkpoint) with dotted ``key=value`` overrides applied, validated
    like a file; ``cfg`` itself when there are none."""
    if not overrides:
        return cfg
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
    merged = OmegaConf.merge(OmegaConf.create(config_to_dict(cfg)), OmegaConf.from_dotlist(list(overrides)))
    return config_from_dict(OmegaConf.to_container(merged))  # type: ignore[arg-type]
