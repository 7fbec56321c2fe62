"""Checkpoints that are written atomically, resume exactly and can never run code when loaded.

A checkpoint holds everything that determines the next step: model and method weights, optimiser
state (momentum buffers), the grad scaler, the step count (the learning-rate schedule and the data
order are pure functions of it), the resolved config and every random generator's state.

Format 2 stores only tensors and plain Python values (dict,
list, tuple, str, int, float, bool, None), so it loads with ``torch.load(weights_only=True)``: the
restricted unpickler refuses any other global *before* anything of the file runs. Format 1 files
differ only in the numpy RNG state (a numpy array); they load through a four-entry allow-list of
numpy's array reconstruction, which builds arrays and nothing else. A file that needs anything more
is refused with the list of what it refers to and the command that converts a trusted old file
(:func:`convert_checkpoint`, ``weakseg convert-checkpoint``).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakseg.io import DataError, UserError, WeaksegWarning, atomic_torch_save, atomic_write

FORMAT_VERSION = 2


class CheckpointError(DataError):
    """A file that is not a loadable weakseg checkpoint; the message names it and says what to do."""


class NonFiniteWeightsError(UserError):
    """Weights with NaN or inf: never written to a checkpoint, never used for predictions."""


def _legacy_numpy_globals() -> list[Any]:
    """The allow-list for format-1 files: numpy's array reconstruction (under numpy 1 and 2 names)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved np.core to np._core
    reconstruct = core.multiarray._reconstruct
    return [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),  # files written under numpy 1
        (reconstruct, "numpy._core.multiarray._reconstruct"),  # files written under numpy 2
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),  # numpy.dtypes.UInt32DType: the MT19937 key's dtype
    ]


# ------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (also the format-1 form, whose numpy entry is numpy's legacy tuple)."""
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    if isinstance(np_state, Mapping):
        key = np.asarray(torch.as_tensor(np_state["key"]).numpy(), dtype=np.uint32)
        np_state = (np_state["bit_generator"], key, np_state["pos"], np_state["has_gauss"], np_state["gauss"])
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` needs tuples all the way down (a list in the state is rejected)."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


# ------------------------------------------------------------------------------------ save / load
def first_nonfinite(state: Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor in ``state`` holding NaN or inf, else None."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def save_checkpoint(path: str | Path, **payload: Any) -> Path:
    """Write ``payload`` (plus the format version and RNG states) to ``path`` atomically.

    ``payload`` must hold only tensors and plain values (see the module doc); ``model`` weights with
    NaN or inf are refused (:class:`NonFiniteWeightsError`) so a diverged state is never written.
    """
    bad = first_nonfinite(payload.get("model", {}))
    if bad is not None:
        raise NonFiniteWeightsError(
            f"refusing to write checkpoint {path}: model tensor {bad!r} holds NaN or inf "
            "(training diverged; lower optim.lr or set optim.grad_clip)"
        )
    payload = {"format_version": FORMAT_VERSION, "rng": rng_state(), **payload}
    return atomic_torch_save(path, payload)


def _convert_hint(path: Path) -> str:
    return f"weakseg convert-checkpoint {path} {path.with_name(path.stem + '.v2' + path.suffix)}"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error for anything else.

    Loading never runs code from the file (``torch.load(weights_only=True)``); a file that refers
    to anything outside tensors, plain values and numpy arrays is refused before any of it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_refusal(path, err)) from None
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a weakseg checkpoint (expected keys 'model' and 'config')")
    return ckpt


def _refusal(path: Path, err: Exception) -> str:
    """One line saying what the refused file refers to and how to convert it if it is trusted."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint, or unreadable: name nothing rather than guess
        names = []
    allowed = {
        f"{obj.__module__}.{obj.__qualname__}" if not isinstance(obj, tuple) else obj[1]
        for obj in _legacy_numpy_globals()
    }
    names = [n for n in names if n not in allowed]
    what = (
        f"Python objects outside weakseg's safe set ({', '.join(names[:5])})"
        if names
        else (f"content the safe loader cannot read ({str(err).splitlines()[0][:120]})")
    )
    return (
        f"refused to load checkpoint {path}: it refers to {what}, and loading it could run code; "
        f"nothing from it was executed. If it is an old checkpoint from a source you trust, convert it once "
        f"with: {_convert_hint(path)}"
    )


def _plain(value: Any) -> Any:
    """``value`` with numpy arrays and scalars turned into tensors / Python numbers, recursively."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def convert_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Rewrite a *trusted* older checkpoint in the current, safe format.

    This is the one place that loads with ``weights_only=False``, i.e. it runs whatever the file
    contains: call it only on files you made yourself or otherwise trust.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise CheckpointError(f"checkpoint not found: {src}")
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"convert-checkpoint: the output {dst} must differ from the input")
    ckpt = torch.load(src, map_location="cpu", weights_only=False)  # trusted by the caller, see above
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{src} is not a weakseg checkpoint (expected keys 'model' and 'config')")
    rng = ckpt.get("rng", {})
    if isinstance(rng.get("numpy"), tuple):  # format 1: numpy's legacy tuple
        name, key, pos, has_gauss, gauss = rng["numpy"]
        rng = {
            **rng,
            "numpy": {
                "bit_generator": str(name),
                "key": torch.from_numpy(np.asarray(key).astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
        }
    out = {**_plain(ckpt), "rng": rng, "format_version": FORMAT_VERSION}
    buffer = io.BytesIO()
    torch.save(out, buffer)
    try:  # prove the result loads safely before anything is written
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"cannot convert {src}: it holds objects without a safe form ({str(err).splitlines()[0][:160]})"
        ) from None
    atomic_write(dst, lambda p: p.write_bytes(buffer.getvalue()))
    return dst


def load_state(module: torch.nn.Module, state: Mapping[str, Any], path: str | os.PathLike, what: str) -> None:
    """``module.load_state_dict(state)``, or a one-line :class:`CheckpointError` saying which keys of
    checkpoint ``path`` do not fit (missing, unexpected, other shapes)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and torch.is_tensor(state[k]) and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = [
        f"{len(items)} {kind} (e.g. {items[0]})"
        for kind, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit the configured {what}: {'; '.join(problems)}; "
            "was it trained with another model.backbone / model.head / method?"
        )
    module.load_state_dict(state)


def check_classes(ckpt_classes: Any, dataset: Any, path: str | Path) -> None:
    """Raise :class:`CheckpointError` when checkpoint ``path`` predicts another number of classes than
    ``dataset`` has (it would otherwise fail deep in the metrics); warn when only the names differ."""
    if ckpt_classes is None:
        return
    ours, theirs = [str(c) for c in ckpt_classes], [str(c) for c in dataset.classes]

    def show(names: list[str]) -> str:
        return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")

    if len(ours) != len(theirs):
        raise CheckpointError(
            f"checkpoint {path} was trained on {len(ours)} classes ({show(ours)}) but the dataset at "
            f"{dataset.root} (split '{dataset.split}') has {len(theirs)} ({show(theirs)}); "
            "use the dataset it was trained on (data.root=...)"
        )
    if ours != theirs:
        warnings.warn(
            f"checkpoint {path} names its classes {show(ours)}, the dataset at {dataset.root} "
            f"{show(theirs)}; matching them by index",
            WeaksegWarning,
            stacklevel=2,
        )


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(module, "module", None)
        compiled = getattr(module, "_orig_mod", None)
        if isinstance(inner, torch.nn.Module):
            module = inner
        elif isinstance(compiled, torch.nn.Module):
            module = compiled
        else:
            return module
