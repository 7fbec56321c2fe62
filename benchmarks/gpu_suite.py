"""Every GPU figure the project claims, in one command (issue 12, part 3).

    python benchmarks/gpu_suite.py                 # on a GPU machine: ~6-8 minutes on an H100/H200
    python benchmarks/gpu_suite.py --quick         # small sizes on CPU (what CI and the tests run)

Sections (each in its own ``try``, with a time budget; a failure or an overrun is recorded in the
report and the next section runs):

=============  =====================================================================================
``kernel``     the exact dense Gaussian kernel ``W·v`` (fused attention, ``gaussian_affinity_apply``)
               against the explicit N×N matrix and against the permutohedral lattice backend, rloss's
               RGBXY features, B = 2, C = 21, grids 64²-256²: time (forward; forward + backward to the
               values), peak memory, differences
``lorm``       CDSP's LoRM at the paper's size (B 16, 59², C 2048), fused vs explicit, forward +
               backward, fp32 and bf16, and which ``scaled_dot_product_attention`` kernel it runs
``crf``        the torch dense CRF (exact and lattice backends, on the device and the lattice on CPU)
               against pydensecrf2 on CPU at full VOC size (500×375, 21 classes, 10 iterations)
``segmentor``  a training step of DeepLabV3+-ResNet-101 (``configs/pce/voc_r101-v3p_465x465_33k.yaml``,
               random init) at batch 12, 512², bf16: images/s, FLOPs per step and MFU against the
               device's dense bf16 peak
``overhead``   the step time of rloss, gatedcrf and dfr (and rloss with the lattice backend) relative
               to pce in that setting (target for rloss: at most x1.15; rloss's own README reports x1.58)
=============  =====================================================================================

Nothing is downloaded: models start from random weights (``model.pretrained=null``) and the inputs are
synthetic. ``kernel``, ``lorm`` and ``crf`` need only torch (any version from 2.4) and numpy; the
segmentor sections also need the project's dependencies (timm, omegaconf, opencv), pydensecrf2 its CRF
row. A section whose imports fail records the error, and the report lists which packages were there.
``--quick`` runs every section at small sizes with an EfficientNet-lite0 segmentor, fp32, so it
finishes in a minute on a CPU; its report is named ``<date>-quick``. The report is
``benchmarks/results/gpu/<date>.json`` plus a markdown table ``<date>.md`` beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/tabulate.py would shadow the tabulate package torch._dynamo imports; nothing here needs it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
if str(ROOT / "src") not in sys.path:  # the device may run the checkout without installing it
    sys.path.insert(0, str(ROOT / "src"))

#: Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' data sheets; the first
#: name fragment found in ``torch.cuda.get_device_name()`` wins.
BF16_PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5
    ("H800", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("V100", 125.0),  # fp16 tensor cores (no bf16 on Volta)
]

#: Section budgets in seconds (full run; ``--quick`` scales them by 0.5). The sum stays under 8 minutes.
BUDGETS: dict[str, float] = {"kernel": 90.0, "lorm": 45.0, "crf": 100.0, "segmentor": 60.0, "overhead": 130.0}


class SectionTimeout(Exception):
    """A section ran past its hard limit (twice its budget, plus 20 s)."""


@dataclass
class Budget:
    """Seconds a section may spend; loops ask :meth:`left` before each further measurement."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


@dataclass
class Context:
    """What every section needs: the device, the mode and the budget."""

    device: torch.device
    quick: bool
    budget: Budget
    repeats: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# --------------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], ctx: Context, repeats: int | None = None, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones (device-synchronised).

    Stops early (at least one timed call) when the section's budget runs out.
    """
    for _ in range(warmup):
        fn()
    sync(ctx.device)
    times = []
    for _ in range(repeats or ctx.repeats):
        start = time.perf_counter()
        fn()
        sync(ctx.device)
        times.append(time.perf_counter() - start)
        if ctx.budget.left() < 0:
            break
    return statistics.median(times)


def peak_mib(fn: Callable[[], Any], ctx: Context) -> float | None:
    """Peak device memory (MiB) one call of ``fn`` allocates above what was allocated before (CUDA only)."""
    if not ctx.cuda:
        return None
    sync(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device)
    fn()
    sync(ctx.device)
    return round((torch.cuda.max_memory_allocated(ctx.device) - base) / 2**20, 1)


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors (1 = the same up to a positive scale)."""
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def sdpa_kernels(fn: Callable[[], Any]) -> list[str]:
    """The ``scaled_dot_product`` ATen ops (flash, efficient, cudnn, math, ...) one call of ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
    names = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key or "attention" in e.key}
    return sorted(names)


# --------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------
def _kernel_row(size: int, ctx: Context, naive_max_gb: float, lattice_ok: bool) -> dict[str, Any]:
    """Exact / naive / lattice figures of ``W·v`` on one ``size``² grid (B = 2, C = 21)."""
    from weakseg.ops.pairwise_kernel import (
        gaussian_affinity_apply,
        kernel_features_rgbxy,
        naive_gaussian_affinity_apply,
    )

    gen = torch.Generator().manual_seed(size)
    image = torch.rand(2, 3, size, size, generator=gen) * 255
    feats = kernel_features_rgbxy(image, sigma_rgb=15.0, sigma_xy=100.0, scale=0.5).to(ctx.device)
    vals = torch.rand(2, 21, size, size, generator=gen).softmax(1).to(ctx.device)
    grad_vals = vals.clone().requires_grad_(True)

    def forward(backend: str = "exact") -> torch.Tensor:
        kw = {} if backend == "exact" else {"backend": backend}  # no switch before the lattice landed
        with torch.no_grad():
            return gaussian_affinity_apply(feats, vals, include_self=True, **kw)

    def forward_backward(backend: str = "exact") -> None:
        grad_vals.grad = None
        kw = {} if backend == "exact" else {"backend": backend}
        gaussian_affinity_apply(feats, grad_vals, include_self=True, **kw).sum().backward()

    def naive() -> torch.Tensor:
        with torch.no_grad():
            return naive_gaussian_affinity_apply(feats, vals, include_self=True)

    row: dict[str, Any] = {"size": size, "pixels": size * size}
    exact = forward()
    row["exact_fwd_ms"] = ms(timed(forward, ctx))
    row["exact_fwd_bwd_ms"] = ms(timed(forward_backward, ctx))
    row["exact_peak_mib"] = peak_mib(forward, ctx)
    n = size * size
    row["naive_fwd_ms"] = None  # stays None where the explicit matrices would not fit (or time ran out)
    if n * n * 4 * 4 / 1e9 <= naive_max_gb and ctx.budget.left() > 0:
        row["exact_vs_naive_rel_diff"] = rel_diff(exact, naive())
        row["naive_fwd_ms"] = ms(timed(naive, ctx))
        row["naive_peak_mib"] = peak_mib(naive, ctx)
        row["naive_over_exact_time"] = round(row["naive_fwd_ms"] / row["exact_fwd_ms"], 4)
    if lattice_ok and ctx.budget.left() > 0:
        lattice = forward("lattice")  # an approximation: compare direction and scale, not values
        row["lattice_vs_exact_cosine"] = round(cosine(lattice, exact), 6)
        row["lattice_over_exact_norm"] = round(float(lattice.double().norm() / exact.double().norm()), 4)
        row["lattice_fwd_ms"] = ms(timed(lambda: forward("lattice"), ctx))
        row["lattice_fwd_bwd_ms"] = ms(timed(lambda: forward_backward("lattice"), ctx))
        row["lattice_peak_mib"] = peak_mib(lambda: forward("lattice"), ctx)
        row["exact_over_lattice_time"] = round(row["exact_fwd_ms"] / row["lattice_fwd_ms"], 4)
    return row


def section_kernel(ctx: Context) -> dict[str, Any]:
    """Exact fused kernel vs explicit matrix vs lattice, per grid size."""
    from weakseg.ops.pairwise_kernel import gaussian_affinity_apply

    sizes = [16, 24] if ctx.quick else [64, 96, 128, 192, 256]
    lattice_ok = "backend" in gaussian_affinity_apply.__code__.co_varnames
    rows = []
    for size in sizes:
        if ctx.budget.left() < 0:
            rows.append({"size": size, "skipped": "section budget spent"})
            continue
        rows.append(_kernel_row(size, ctx, 0.5 if ctx.quick else 32.0, lattice_ok))
        free_memory()
    return {
        "setting": "W·v, B=2, C=21, D=5 RGBXY (σ_rgb 15, σ_xy 100, scale 0.5), fp32",
        "lattice_backend": lattice_ok,
        "rows": rows,
    }


def _lorm_row(batch: int, grid: int, channels: int, dtype: torch.dtype, ctx: Context) -> dict[str, Any]:
    """Fused and explicit LoRM forward + backward at one setting, and the SDPA ops the fused one runs."""
    from weakseg.models.lorm import lorm_attention, lorm_attention_explicit

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, channels, grid, grid, generator=gen) for _ in range(3))
    mask = (torch.rand(batch, grid, grid, generator=gen) > 0.5).to(ctx.device)
    q, k, v = (t.to(ctx.device, dtype).requires_grad_(True) for t in (q, k, v))
    weights = torch.randn_like(v)

    def step(form: Callable[..., torch.Tensor]) -> torch.Tensor:
        for t in (q, k, v):
            t.grad = None
        out = form(q, k, v, mask)
        (out * weights).sum().backward()
        return out.detach()

    row: dict[str, Any] = {"dtype": str(dtype).replace("torch.", "")}
    row["fused_fwd_bwd_ms"] = ms(timed(lambda: step(lorm_attention), ctx))
    row["fused_peak_mib"] = peak_mib(lambda: step(lorm_attention), ctx)
    row["sdpa_ops"] = sdpa_kernels(lambda: step(lorm_attention))
    if ctx.budget.left() > 0:
        row["explicit_fwd_bwd_ms"] = ms(timed(lambda: step(lorm_attention_explicit), ctx))
        row["explicit_peak_mib"] = peak_mib(lambda: step(lorm_attention_explicit), ctx)
        row["explicit_over_fused_time"] = round(row["explicit_fwd_bwd_ms"] / row["fused_fwd_bwd_ms"], 4)
        with torch.no_grad():
            fused, explicit = lorm_attention(q, k, v, mask), lorm_attention_explicit(q, k, v, mask)
        row["rel_diff"] = rel_diff(fused.float(), explicit.float())
    return row


def section_lorm(ctx: Context) -> dict[str, Any]:
    """LoRM fused vs explicit at the paper's size, and the SDPA kernel it runs."""
    batch, grid, channels = (2, 9, 32) if ctx.quick else (16, 59, 2048)
    rows = []
    for dtype in [torch.float32] if ctx.quick else [torch.float32, torch.bfloat16]:
        if ctx.budget.left() < 0:
            rows.append({"dtype": str(dtype), "skipped": "section budget spent"})
            continue
        rows.append(_lorm_row(batch, grid, channels, dtype, ctx))
        free_memory()
    return {"setting": f"B={batch}, {grid}x{grid}, C={channels}, forward + backward to q, k, v", "rows": rows}


def _synthetic_scene(height: int, width: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 image [1, 3, H, W] of flat coloured regions with noise, and its label map [H, W]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (1, 1, 6, 8), generator=gen).float()
    labels = F.interpolate(coarse, size=(height, width), mode="nearest")[0, 0].long()
    palette = torch.rand(classes, 3, generator=gen) * 200 + 20
    image = palette[labels].permute(2, 0, 1)[None] + torch.randn(1, 3, height, width, generator=gen) * 12
    return image.clamp(0, 255).round().to(torch.uint8), labels


def section_crf(ctx: Context) -> dict[str, Any]:
    """Torch dense CRF (exact / lattice, device and CPU) vs pydensecrf2 (CPU) at full VOC size."""
    from dataclasses import fields, replace

    from weakseg.postprocess import CRFParams, dense_crf, pydensecrf_reference

    height, width, classes = (24, 32, 5) if ctx.quick else (375, 500, 21)
    params = CRFParams.postprocess(num_iters=3 if ctx.quick else 10)
    has_backend = any(f.name == "backend" for f in fields(CRFParams))
    image, labels = _synthetic_scene(height, width, classes, seed=1)
    gen = torch.Generator().manual_seed(2)
    logits = F.one_hot(labels, classes).permute(2, 0, 1)[None].float() * 2.0
    logits = logits + torch.randn(logits.shape, generator=gen) * 1.5
    probs = logits.softmax(1)
    rows: dict[str, dict[str, Any]] = {}
    outputs: dict[str, torch.Tensor] = {}

    def run(name: str, fn: Callable[[], torch.Tensor], device: torch.device, repeats: int = 2) -> None:
        if ctx.budget.left() < 0:
            rows[name] = {"skipped": "section budget spent"}
            return
        try:
            row_ctx = Context(device, ctx.quick, ctx.budget, repeats)
            outputs[name] = fn().argmax(1)[0].cpu()
            rows[name] = {"s_per_image": round(timed(fn, row_ctx, repeats, warmup=0), 4)}
        except ImportError as err:
            rows[name] = {"error": f"ImportError: {err}"}

    dev_probs, dev_image = probs.to(ctx.device), image.to(ctx.device)
    cpu = torch.device("cpu")
    run("pydensecrf2 cpu", lambda: pydensecrf_reference(probs, image, params=params), cpu)
    if has_backend:
        exact = replace(params, backend="exact")
        lattice = replace(params, backend="lattice")
        if ctx.cuda:  # warm-up: CUDA context and kernels on a small image
            dense_crf(dev_probs[..., :32, :32], dev_image[..., :32, :32], params=exact, num_iters=1)
            dense_crf(dev_probs[..., :32, :32], dev_image[..., :32, :32], params=lattice, num_iters=1)
        run(
            f"torch lattice {ctx.device.type}",
            lambda: dense_crf(dev_probs, dev_image, params=lattice),
            ctx.device,
        )
        run(
            f"torch exact {ctx.device.type}",
            lambda: dense_crf(dev_probs, dev_image, params=exact),
            ctx.device,
            1,
        )
        if ctx.cuda:
            run("torch lattice cpu", lambda: dense_crf(probs, image, params=lattice), cpu, 1)
    else:
        run(f"torch {ctx.device.type}", lambda: dense_crf(dev_probs, dev_image, params=params), ctx.device, 1)
    reference = outputs.get("pydensecrf2 cpu")
    for name, pred in outputs.items():
        rows[name]["pixel_accuracy"] = round(float((pred == labels).double().mean()), 5)
        if reference is not None and name != "pydensecrf2 cpu":
            rows[name]["agreement_with_pydensecrf2"] = round(float((pred == reference).double().mean()), 5)
    base = rows.get("pydensecrf2 cpu", {}).get("s_per_image")
    for row in rows.values():
        if base and row.get("s_per_image"):
            row["speedup_over_pydensecrf2"] = round(base / row["s_per_image"], 4)
    return {
        "setting": f"{width}x{height}, {classes} classes, {params.num_iters} iterations, postprocess preset",
        "cpu_threads": torch.get_num_threads(),
        "rows": rows,
    }


#: every method's VOC DeepLabV3+-ResNet-101 config has this name in its folder under configs/
VOC_CONFIG = "voc_r101-v3p_465x465_33k.yaml"


def _step_config(method: str, quick: bool, extra: list[str]) -> Any:
    """The VOC R101 DeepLabV3+ config of ``method`` at the suite's setting (random init, no data)."""
    from weakseg.config import load_config

    common = ["model.pretrained=null", "data.num_workers=0"]
    if quick:
        common += ["model.backbone=efficientnet_lite0", "model.head_channels=32", "data.crop_size=[64,64]",
                   "train.batch_size=2", "train.amp=none", "model.channels_last=false"]  # fmt: skip
        if method == "dfr":
            common += ["method.head_hidden=32"]
    else:
        common += ["data.crop_size=[512,512]", "train.batch_size=12", "train.amp=bf16"]
    return load_config(ROOT / "configs" / method / VOC_CONFIG, [*common, *extra])


def _synthetic_batch(cfg: Any, classes: int, device: torch.device) -> dict[str, Any]:
    """Images in [0, 1], dense masks and scribbles (strokes along every 24th row and column)."""
    b, (h, w) = cfg.train.batch_size, cfg.data.crop_size
    gen = torch.Generator().manual_seed(3)
    coarse = torch.randint(0, classes, (b, 1, 8, 8), generator=gen).float()
    mask = F.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    image = F.interpolate(torch.rand(b, 3, 16, 16, generator=gen), size=(h, w), mode="bilinear")
    image = (image + 0.05 * torch.randn(b, 3, h, w, generator=gen)).clamp(0, 1)
    strokes = torch.zeros(h, w, dtype=torch.bool)
    strokes[::24] = True
    strokes[:, ::24] = True
    scribble = torch.where(strokes, mask, torch.full_like(mask, 255))
    batch = {
        "image": image,
        "mask": mask,
        "scribble": scribble,
        "valid": torch.ones(b, h, w, dtype=torch.bool),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    if cfg.model.channels_last:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    return batch


class TrainStep:
    """One training step of ``cfg`` (the trainer's: method hooks, autocast, backward, optimiser)."""

    def __init__(self, cfg: Any, classes: int, device: torch.device) -> None:
        from weakseg.builders import build_model
        from weakseg.engine.optim import build_optimizer, training_param_groups
        from weakseg.engine.trainer import TrainModule, autocast_context
        from weakseg.methods import BindsModel, build_method

        self.cfg, self.device = cfg, device
        torch.manual_seed(0)
        model = build_model(cfg, classes, background=0, pretrained=False)
        method = build_method(cfg.method, num_classes=classes, background=0)
        if isinstance(method, BindsModel):
            method.setup(model)
        self.module = TrainModule(model, method).to(device)
        if cfg.model.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(training_param_groups(model, method), cfg.optim)
        self.autocast, _ = autocast_context(cfg.train.amp, device)
        self.batch = _synthetic_batch(cfg, classes, device)
        method.set_progress(1, 2)  # past every warm-up (dfr's deep kernel is on)
        self.module.train()

    def loss(self) -> torch.Tensor:
        with self.autocast:
            losses = self.module(self.batch)
        return torch.stack([v.float() for v in losses.values()]).sum()

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss().backward()
        self.optimizer.step()

    def flops(self) -> float:
        """FLOPs of one forward + backward (torch's FlopCounterMode: matmuls, convolutions, attention)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.loss().backward()
        self.optimizer.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())


def bf16_peak_tflops(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "no peak for a CPU"
    name = torch.cuda.get_device_name(device)
    for fragment, peak in BF16_PEAK_TFLOPS:
        if fragment in name:
            return peak, f"{fragment} dense bf16 data-sheet peak"
    return None, f"no peak known for {name!r}"


def section_segmentor(ctx: Context) -> dict[str, Any]:
    """Images/s and MFU of a DeepLabV3+-R101 pce training step."""
    cfg = _step_config("pce", ctx.quick, [])
    step = TrainStep(cfg, 21, ctx.device)
    seconds = timed(step, ctx, repeats=1 if ctx.quick else 10, warmup=1 if ctx.quick else 3)
    flops = step.flops()
    peak, peak_source = bf16_peak_tflops(ctx.device)
    achieved = flops / seconds / 1e12
    result = {
        "setting": f"{cfg.model.backbone} + {cfg.model.head}, batch {cfg.train.batch_size}, "
        f"{cfg.data.crop_size[0]}x{cfg.data.crop_size[1]}, amp {cfg.train.amp}, "
        f"channels_last {cfg.model.channels_last}, optimiser {cfg.optim.name}",
        "step_ms": ms(seconds),
        "images_per_s": round(cfg.train.batch_size / seconds, 2),
        "tflop_per_step": round(flops / 1e12, 4),
        "achieved_tflops": round(achieved, 2),
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": None if peak is None else round(achieved / peak, 4),
        "peak_mem_mib": peak_mib(step, ctx),
    }
    del step
    free_memory()
    return result


OVERHEAD_TARGETS = {"rloss": 1.15}


def section_overhead(ctx: Context) -> dict[str, Any]:
    """Step time of the regularised-loss methods over pce at the segmentor setting."""
    from dataclasses import fields

    from weakseg.methods import get_method_class

    variants: list[tuple[str, str, list[str]]] = [
        ("pce", "pce", []),
        ("rloss", "rloss", []),
        ("gatedcrf", "gatedcrf", []),
        ("dfr", "dfr", []),
    ]
    if any(f.name == "backend" for f in fields(get_method_class("rloss").Params)):
        variants.insert(2, ("rloss_lattice", "rloss", ["method.backend=lattice"]))
    rows: dict[str, dict[str, Any]] = {}
    for name, method, extra in variants:
        if ctx.budget.left() < 0:
            rows[name] = {"skipped": "section budget spent"}
            continue
        try:
            step = TrainStep(_step_config(method, ctx.quick, extra), 21, ctx.device)
            seconds = timed(step, ctx, repeats=1 if ctx.quick else 6, warmup=1 if ctx.quick else 2)
            rows[name] = {"step_ms": ms(seconds), "peak_mem_mib": peak_mib(step, ctx)}
            del step
        except Exception as err:  # one method failing leaves the others' figures
            rows[name] = {"error": f"{type(err).__name__}: {err}"}
        free_memory()
    base = rows.get("pce", {}).get("step_ms")
    for name, row in rows.items():
        if base and row.get("step_ms"):
            row["over_pce"] = round(row["step_ms"] / base, 3)
            target = OVERHEAD_TARGETS.get(name)
            if target is not None:
                row["target"] = target
                row["meets_target"] = row["over_pce"] <= target
    return {
        "setting": f"as the segmentor section, each method's configs/<method>/{VOC_CONFIG}",
        "rows": rows,
    }


SECTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "kernel": section_kernel,
    "lorm": section_lorm,
    "crf": section_crf,
    "segmentor": section_segmentor,
    "overhead": section_overhead,
}


# --------------------------------------------------------------------------------------------------
# running and reporting
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def hard_limit(seconds: float):
    """Raise :class:`SectionTimeout` in this (main) thread after ``seconds`` (SIGALRM; no-op elsewhere)."""
    usable = hasattr(signal, "SIGALRM") and seconds > 0
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"ran past its hard limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_section(name: str, fn: Callable[[Context], dict[str, Any]], ctx: Context) -> dict[str, Any]:
    """``fn(ctx)`` with its outcome: ``status`` ok / error, ``seconds``, and the error's last lines."""
    start = time.perf_counter()
    try:
        # a hard stop keeps a device run inside its window; CPU (--quick) runs only have the soft budget
        with hard_limit(2 * ctx.budget.seconds + 30 if ctx.cuda else 0):
            result = {"status": "ok", **fn(ctx)}
    except Exception as err:  # every section must leave a record, whatever fails
        result = {
            "status": "error",
            "error": f"{type(err).__name__}: {err}"[:2000],
            "traceback": traceback.format_exc().strip().splitlines()[-12:],
        }
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["budget_s"] = ctx.budget.seconds
    free_memory()
    return result


def package_versions() -> dict[str, str | None]:
    """Versions of the packages the sections import (None: not importable on this machine)."""
    import importlib

    versions: dict[str, str | None] = {}
    for name in ("numpy", "timm", "omegaconf", "cv2", "PIL", "pydensecrf"):
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "present"))
        except Exception:  # missing, or broken against this torch
            versions[name] = None
    return versions


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "packages": package_versions(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return env


def strict_json(value: Any) -> Any:
    """``value`` with NaN / inf as None and tuples as lists (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """A markdown table of ``columns``; rows that were skipped or failed say so in a last column."""
    notes = [r.get("skipped") or r.get("error") for r in rows]
    columns = columns + (["note"] if any(notes) else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row, note in zip(rows, notes):
        cells = [_fmt(row.get(c)) for c in columns if c != "note"] + ([_fmt(note)] if any(notes) else [])
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: one table per section, errors quoted."""
    env = report["environment"]
    out = [
        f"# GPU suite, {report['date']}{' (--quick)' if report['quick'] else ''}",
        "",
        f"{env.get('gpu', env['device'])}, torch {env['torch']}"
        + (f", CUDA {env.get('cuda')}" if env.get("cuda") else "")
        + f"; total {report['seconds']:.0f} s. Command: `{report['command']}`",
    ]
    keyed = {
        "crf": [
            "name",
            "s_per_image",
            "speedup_over_pydensecrf2",
            "agreement_with_pydensecrf2",
            "pixel_accuracy",
        ],
        "overhead": ["name", "step_ms", "over_pce", "target", "meets_target", "peak_mem_mib"],
    }
    listed = {
        "kernel": ["size", "exact_fwd_ms", "exact_fwd_bwd_ms", "exact_peak_mib", "naive_fwd_ms",
                   "naive_over_exact_time", "exact_vs_naive_rel_diff", "lattice_fwd_ms", "lattice_fwd_bwd_ms",
                   "exact_over_lattice_time", "lattice_vs_exact_cosine", "lattice_over_exact_norm"],
        "lorm": ["dtype", "fused_fwd_bwd_ms", "fused_peak_mib", "explicit_fwd_bwd_ms", "explicit_peak_mib",
                 "explicit_over_fused_time", "rel_diff", "sdpa_ops"],
    }  # fmt: skip
    for name, section in report["sections"].items():
        out += [
            "",
            f"## {name} ({section['status']}, {section['seconds']} s; budget {section['budget_s']:.0f} s)",
        ]
        if section.get("setting"):
            out += ["", section["setting"]]
        if section["status"] != "ok":
            out += ["", f"> {section['error']}"]
            continue
        out.append("")
        if name in listed:
            out += _table(section["rows"], listed[name])
        elif name in keyed:
            out += _table([{"name": k, **v} for k, v in section["rows"].items()], keyed[name])
        else:
            scalars = {k: v for k, v in section.items() if not isinstance(v, (dict, list))}
            skip = ("setting", "status", "seconds", "budget_s")
            out += _table([scalars], [k for k in scalars if k not in skip])
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (CPU / CI): about a minute")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every section's budget")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu"), help="report folder")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":  # fp32 stays fp32 (no TF32): the kernel and LoRM sections compare values
        torch.backends.cudnn.benchmark = True
    scale = args.budget_scale * (0.5 if args.quick else 1.0)
    repeats = min(args.repeats, 2) if args.quick else args.repeats
    date = dt.date.today().isoformat()
    report: dict[str, Any] = {
        "date": date,
        "quick": args.quick,
        "command": "python benchmarks/gpu_suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(device),
        "sections": {},
    }
    started = time.perf_counter()
    for name in args.sections:
        ctx = Context(device, args.quick, Budget(BUDGETS[name] * scale), repeats)
        print(f"[gpu_suite] {name} (budget {ctx.budget.seconds:.0f} s) ...", flush=True)
        report["sections"][name] = result = run_section(name, SECTIONS[name], ctx)
        print(f"[gpu_suite] {name}: {result['status']} in {result['seconds']} s", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = date + ("-quick" if args.quick else "")
    (out / f"{stem}.json").write_text(
        json.dumps(strict_json(report), indent=1, default=str, allow_nan=False) + "\n"
    )
    (out / f"{stem}.md").write_text(markdown(report))
    print(f"[gpu_suite] wrote {out / stem}.json and .md ({report['seconds']} s)", flush=True)
    return report


if __name__ == "__main__":
    main()
