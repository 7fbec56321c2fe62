"""Optimisers with separate learning rates for pretrained and new layers, and per-step schedules."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from weakseg.config import OptimConfig
from weakseg.methods.base import Method, TrainsOwnLayers


def build_optimizer(groups: dict[str, list[nn.Parameter]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over named parameter groups.

    ``groups["backbone"]`` trains at ``cfg.lr``; every other group ("head", "method", ...) at
    ``cfg.lr * cfg.head_lr_mult``. Each param group remembers its base lr in ``"base_lr"``.
    """
    param_groups: list[dict[str, Any]] = []
    for name, params in groups.items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        base_lr = cfg.lr if name == "backbone" else cfg.lr * cfg.head_lr_mult
        param_groups.append({"params": params, "lr": base_lr, "base_lr": base_lr, "name": name})
    if not param_groups:
        raise ValueError("no trainable parameters")
    # fused: one kernel per step instead of one per tensor; the same update up to float rounding
    fused = {"fused": True} if use_fused(cfg, [p for g in param_groups for p in g["params"]]) else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(
            param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused
        )
    beta1, beta2 = cfg.betas
    return torch.optim.AdamW(
        param_groups, lr=cfg.lr, betas=(beta1, beta2), weight_decay=cfg.weight_decay, **fused
    )


def training_param_groups(model: nn.Module, method: Method) -> dict[str, list[nn.Parameter]]:
    """The network's groups (``model.param_groups()``: "backbone", "head") and those of a method that
    :class:`~weakseg.methods.base.TrainsOwnLayers` (e.g. "method"), in that order."""
    groups: dict[str, list[nn.Parameter]] = model.param_groups()  # type: ignore[operator]
    if isinstance(method, TrainsOwnLayers):
        groups.update(method.param_groups())
    return groups


def use_fused(cfg: OptimConfig, params: list[nn.Parameter]) -> bool:
    """``optim.fused``; null means fused when every parameter is a floating-point CPU tensor (the
    fused CPU kernels of SGD and AdamW take a third of the per-tensor loop's time there)."""
    if cfg.fused is not None:
        return bool(cfg.fused)
    return all(p.device.type == "cpu" and p.is_floating_point() for p in params)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate at iteration ``step`` (0-based) of ``total_steps``.

    - ``poly``: ``(1 - t/T)^power`` after an optional linear warm-up (DeepLab's schedule).
    - ``warmup_cosine``: linear warm-up from 0 over ``warmup_steps``, then cosine to ``min_lr``.
    - ``constant``: 1 after the optional warm-up.
    ``min_lr`` is expressed as a fraction-free absolute floor in :func:`apply_lr`, not here.
    """
    warm = cfg.warmup_steps
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - warm)
    t = min(1.0, (step - warm) / span)
    if cfg.schedule == "poly":
        return (1.0 - t) ** cfg.poly_power
    return 0.5 * (1.0 + math.cos(math.pi * t))


def apply_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Set every group's lr for this step; returns the backbone (first group's) lr.

    The schedule is a pure function of ``step``, so resuming only needs the step count.
    """
    factor = lr_factor(step, total_steps, cfg)
    for group in optimizer.param_groups:
        floor = cfg.min_lr * group["base_lr"] / cfg.lr if cfg.lr > 0 else 0.0
        group["lr"] = floor + (group["base_lr"] - floor) * factor
    return optimizer.param_groups[0]["lr"]
