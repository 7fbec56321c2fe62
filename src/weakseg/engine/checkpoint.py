"""Checkpoints that are written atomically and resume exactly.

A checkpoint holds everything that determines the next step: model and method weights, optimiser
state (momentum buffers), the grad scaler, the step count (the learning-rate schedule and the data
order are pure functions of it), the resolved config and every random generator's state.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakseg.io import DataError, atomic_torch_save

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, **payload: Any) -> Path:
    """Write ``payload`` (plus the format version and RNG states) to ``path`` atomically."""
    payload = {"format_version": FORMAT_VERSION, "rng": rng_state(), **payload}
    return atomic_torch_save(path, payload)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise DataError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise DataError(f"{path} is not a weakseg checkpoint (expected keys 'model' and 'config')")
    return ckpt


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(module, "module") and isinstance(module.module, torch.nn.Module):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module
