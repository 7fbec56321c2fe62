"""The training loop shared by every method.

One step: load a batch → model forward → method turns outputs + labels into named loss terms →
backward on their sum → optimiser step. Around it: per-step learning rate, autocast, gradient
clipping, periodic logging / validation / checkpoints, exact resume and DDP under torchrun.
Nothing in the step reads values back to the host except on logging steps.

Safety around it (docs/reliability.md): the run folder is checked and locked before anything is
written (:mod:`weakseg.engine.run_folder`), the data is checked before the first step
(:mod:`weakseg.engine.preflight`), non-finite losses and gradients are flagged on the device every
step and checked at each log / validation / checkpoint boundary before anything is written
(:mod:`weakseg.engine.guards`), and a DataLoader worker's data error arrives as its one-line message.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from weakseg.builders import build_dataset, build_method_for, build_model, check_model_config, method_requires
from weakseg.config import Config, config_to_dict, to_yaml
from weakseg.data.base import SegDataset
from weakseg.engine.checkpoint import (
    CheckpointError,
    NonFiniteWeightsError,
    check_classes,
    first_nonfinite,
    load_checkpoint,
    load_state,
    save_checkpoint,
    set_rng_state,
)
from weakseg.engine.depthwise import FastDepthwise
from weakseg.engine.distributed import DistInfo, barrier, cleanup_distributed, reduce_mean, setup_distributed
from weakseg.engine.evaluation import evaluate, write_evaluation_report
from weakseg.engine.guards import NonFiniteGuard, nonfinite_hint, reraise_worker_errors
from weakseg.engine.inference import inference_options, predict_labels
from weakseg.engine.optim import apply_lr, build_optimizer
from weakseg.engine.preflight import preflight
from weakseg.engine.run_folder import check_run_dir, claim_run_dir
from weakseg.engine.sampling import EpochIndexed, StepBatchSampler
from weakseg.io import WeaksegWarning, append_text, atomic_write_json, atomic_write_text, safe_join
from weakseg.methods import Method
from weakseg.models import Segmentor


class TrainModule(nn.Module):
    """Segmentor + method in one module, so DDP sees every trainable parameter."""

    def __init__(self, model: Segmentor, method: Method):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        batch = self.method.prepare_batch(batch)
        outputs = self.method.run_model(self.model, batch)
        logits = outputs.get("logits")
        if isinstance(logits, torch.Tensor) and not logits.is_contiguous():
            # channels-last logits (K channels at the head's stride: a small copy) back to NCHW, where
            # the losses' upsampling, softmax and cross-entropy run faster on CPU
            outputs = {**outputs, "logits": logits.contiguous()}
        return self.method(outputs, batch)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(amp: str, device: torch.device) -> tuple[contextlib.AbstractContextManager, bool]:
    """The autocast context for ``train.amp`` and whether fp16 loss scaling is needed."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if amp == "none":
        return contextlib.nullcontext(), False
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), amp == "fp16"


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse: blocks up to 32 MB come from the heap instead of
    fresh ``mmap`` pages, and the heap is not trimmed. A CPU training step frees and allocates the same
    activation sizes every step, and handing them back to the OS costs page faults each time (~5 % of a
    step on the CPU protocols). Process-wide and lasting; returns False where glibc's ``mallopt`` is not
    available (nothing changes then)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """``model.channels_last``; null means on for CPU training, where oneDNN's channels-last
    convolutions and batch norm are faster (benchmarks/train_step_profile.py), and off elsewhere."""
    if cfg.model.channels_last is None:
        return device.type == "cpu"
    return bool(cfg.model.channels_last)


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def selection_score(metrics: dict[str, Any]) -> float:
    """The number that picks ``best.ckpt``: mean per-volume Dice when present, else mIoU."""
    if "volume_Dice" in metrics:
        return float(metrics["volume_Dice"]["mean_Dice"])
    return float(metrics["mIoU"])


def read_log_rows(path: Path, up_to_step: int | None = None) -> list[str]:
    """The complete JSON lines of ``metrics.jsonl`` (with ``step <= up_to_step`` when given).

    A line that is not a complete JSON object (a write cut short by a crash or a full disk) is
    dropped with a warning naming the file and line, so it can never block a resume.
    """
    kept = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            warnings.warn(
                f"{path}: dropped line {number}, which is not a complete log row (a write cut short?)",
                WeaksegWarning,
                stacklevel=2,
            )
            continue
        if up_to_step is None or row["step"] <= up_to_step:
            kept.append(line)
    return kept


class MetricsLog:
    """Append-only JSON-lines log of training and validation rows (``metrics.jsonl``)."""

    def __init__(self, path: Path, resume_step: int | None, tensorboard: bool):
        self.path = path
        if resume_step is not None and path.exists():
            kept = read_log_rows(path, resume_step)
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif path.exists():
            path.unlink()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "train.tensorboard is on but tensorboard is not installed; logging to JSON only",
                    stacklevel=2,
                )

    def write(self, row: dict[str, Any]) -> None:
        append_text(self.path, json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _validation_row(metrics: dict[str, Any], step: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "step": step,
        "val/mIoU": metrics["mIoU"],
        "val/pixel_accuracy": metrics["pixel_accuracy"],
    }
    if "mean_Dice" in metrics:
        row["val/mean_Dice"] = metrics["mean_Dice"]
    if "volume_Dice" in metrics:
        row["val/volume_mean_Dice"] = metrics["volume_Dice"]["mean_Dice"]
    return row


def write_overlays(
    model: nn.Module, dataset: SegDataset, out_dir: Path, cfg: Config, device: torch.device
) -> None:
    """Prediction overlays (image | prediction | ground truth) of the first validation samples."""
    from weakseg.viz import save_overlay

    count = min(cfg.train.num_overlays, len(dataset))
    model.eval()
    for i in range(count):
        sample = dataset[i]
        pred = predict_labels(model, sample["image"][None].to(device), **inference_options(cfg.eval))[0].cpu()
        image = (sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        gt = sample["mask"].numpy() if "mask" in sample else None
        save_overlay(safe_join(out_dir, f"{sample['id']}.jpg"), image, pred.numpy(), gt=gt)


def _run_validation(
    model: nn.Module,
    dataset: SegDataset,
    cfg: Config,
    device: torch.device,
    progress: bool,
    method: Method | None = None,
) -> dict[str, Any]:
    """The method's own validation when it has one, else segmentation metrics of ``model``."""
    if method is not None:
        metrics = method.validate(model, dataset, cfg.eval, device)
        if metrics is not None:
            return metrics
    return evaluate(
        model,
        dataset,
        device=device,
        **inference_options(cfg.eval),
        volume_dice=cfg.eval.volume_dice,
        batch_size=cfg.eval.batch_size,
        progress=progress,
    )


def train(
    cfg: Config,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg`` to ``cfg.train.steps`` (or ``train.max_minutes``) and write the run folder.

    The run folder (``cfg.run_dir``) receives ``config.yaml``, ``metrics.jsonl``, ``last.ckpt`` and
    ``best.ckpt``, and at the end ``metrics.json`` (final validation), ``per_class_iou.png``,
    ``training_curves.png`` and ``overlays/``. ``resume`` is a checkpoint path; the loop continues
    from its step with identical data order, learning rate and random state.

    A folder that already holds a run is refused (:class:`~weakseg.engine.run_folder.RunFolderError`)
    unless ``resume`` is given or ``overwrite`` is set, which first deletes the old run's outputs; a
    folder another training is using is always refused. Before the first step the data is checked
    (:func:`~weakseg.engine.preflight.preflight`); a loss term or gradient that becomes NaN / inf
    stops the run with :class:`~weakseg.engine.guards.TrainingDivergedError` before anything of the
    diverged state is written.
    """
    info = setup_distributed(device)
    try:
        with contextlib.ExitStack() as cleanup:
            return _train(
                cfg,
                info,
                resume=resume,
                overwrite=overwrite,
                progress=progress and info.is_main,
                cleanup=cleanup,
            )
    finally:
        cleanup_distributed(info)


def check_resume_compatible(
    ckpt: dict[str, Any], cfg: Config, train_set: SegDataset, path: str | Path
) -> None:
    """Refuse resuming from a checkpoint of another method or with other classes (one line each)."""
    theirs = (ckpt.get("config") or {}).get("method", {}).get("name")
    ours = cfg.method["name"]
    if theirs is not None and theirs != ours:
        raise CheckpointError(
            f"cannot resume from {path}: it was trained with method '{theirs}' but the config trains "
            f"'{ours}'; resume with the config it was trained with, or start a new run without --resume"
        )
    check_classes(ckpt.get("classes"), train_set, path)


def _train(
    cfg: Config,
    info: DistInfo,
    *,
    resume: str | Path | None,
    overwrite: bool,
    progress: bool,
    cleanup: contextlib.ExitStack,
) -> TrainResult:
    dev = info.device
    run_dir = cfg.run_dir
    check_model_config(cfg)  # unknown backbone / head: stop before any work
    if info.is_main:  # refuse a clobbered or busy folder before any work (nothing is written yet)
        check_run_dir(run_dir, resume=resume is not None, overwrite=overwrite)
    seed_everything(cfg.train.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    requires = method_requires(cfg)
    train_set = build_dataset(cfg, cfg.data.train_split, train=True, requires=requires)
    train_set.cache_decoded(cfg.data.cache_mb / max(1, cfg.data.num_workers))  # per loading process
    val_set = build_dataset(cfg, cfg.data.val_split, train=False, requires=("mask",))
    preflight(cfg, train_set, val_set, world_size=info.world_size)

    ckpt = load_checkpoint(resume, map_location="cpu") if resume else None
    if ckpt is not None:
        assert resume is not None
        check_resume_compatible(ckpt, cfg, train_set, resume)
    if info.is_main:
        lock = claim_run_dir(run_dir, resume=resume is not None, overwrite=overwrite)
        cleanup.callback(lock.release)
    model = build_model(cfg, train_set.num_classes, background=train_set.background, pretrained=ckpt is None)
    method = build_method_for(cfg, train_set)
    for key, map_fn in method.dataset_maps().items():
        train_set.add_map(key, map_fn)
    method.setup(model)
    fitted = method.fit_dataset(train_set, batch_size=cfg.train.batch_size, progress=progress)
    if fitted is not None and info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "dataset_statistics.json", fitted)
    module = TrainModule(model, method).to(dev)
    channels_last = use_channels_last(cfg, dev)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    groups = model.param_groups()
    groups["method"] = list(method.parameters())
    optimizer = build_optimizer(groups, cfg.optim)
    autocast, use_scaler = autocast_context(cfg.train.amp, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)

    start_step, best_score = 0, -math.inf
    if ckpt is not None:
        assert resume is not None
        load_state(module.model, ckpt["model"], resume, "model")
        load_state(module.method, ckpt.get("method", {}), resume, f"method '{cfg.method['name']}'")
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"cannot resume from {resume}: its optimiser state does not fit ({err}); "
                "was it trained with another optim.name or model?"
            ) from None
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start_step = int(ckpt["step"])
        best_score = float(ckpt.get("best_score", -math.inf))

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    log = (
        MetricsLog(run_dir / "metrics.jsonl", start_step if ckpt else None, cfg.train.tensorboard)
        if info.is_main
        else None
    )

    total = cfg.train.steps
    sampler = StepBatchSampler(
        len(train_set),
        cfg.train.batch_size,
        total,
        seed=cfg.train.seed,
        start_step=start_step,
        rank=info.rank,
        world_size=info.world_size,
    )
    loader = DataLoader(
        EpochIndexed(train_set),
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    train_module: nn.Module = module
    if info.enabled:
        train_module = DistributedDataParallel(
            module,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=cfg.train.find_unused_parameters,
        )
    if cfg.train.compile:
        train_module = torch.compile(train_module)
    if cfg.train.keep_freed_memory and dev.type == "cpu":
        keep_freed_memory()
    # CPU: depthwise convolutions take the faster backward of weakseg.engine.depthwise (same forward,
    # gradients equal to rounding); not under torch.compile, which traces the plain call
    fast_depthwise = cfg.train.fast_depthwise and dev.type == "cpu" and not cfg.train.compile
    if ckpt is not None:
        set_rng_state(ckpt["rng"])  # last, so nothing above consumes the restored stream

    last_saved = start_step if ckpt is not None else None  # step of the newest last.ckpt written
    guard = NonFiniteGuard(dev, check_grads=not use_scaler)  # fp16: the grad scaler handles inf grads
    hint = nonfinite_hint(cfg.train.amp, cfg.optim.lr, cfg.optim.grad_clip)
    trainable = [p for p in module.parameters() if p.requires_grad]

    def checkpoint(name: str, step: int) -> None:
        nonlocal last_saved
        save_checkpoint(
            run_dir / name,
            model=module.model.state_dict(),
            method=module.method.state_dict(),
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
            step=step,
            best_score=best_score,
            config=config_to_dict(cfg),
            classes=list(train_set.classes),
            ignore_index=train_set.ignore_index,
            background=train_set.background,
            image_mode=train_set.image_mode,
        )
        if name == "last.ckpt":
            last_saved = step

    started = time.monotonic()
    window_start, window_images, paused = time.monotonic(), 0, 0.0
    stopped_early = False
    step = start_step
    bar = tqdm(
        total=total, initial=start_step, desc=f"train {cfg.name}", disable=not progress, dynamic_ncols=True
    )
    train_module.train()
    for batch in reraise_worker_errors(loader):
        batch = move_batch(batch, dev)
        if channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        lr = apply_lr(optimizer, step, total, cfg.optim)
        module.method.set_progress(step, total)
        with autocast, FastDepthwise() if fast_depthwise else contextlib.nullcontext():
            losses = train_module(batch)
        loss = torch.stack([v.float() for v in losses.values()]).sum()
        guard.observe_losses(step + 1, losses)  # device flags only: no host sync
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        grad_norm = None
        if cfg.optim.grad_clip:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.grad_clip)
        elif guard.check_grads:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
        if guard.check_grads and grad_norm is not None:
            guard.observe_grad_norm(step + 1, grad_norm)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        window_images += batch["image"].shape[0] * info.world_size
        bar.update(1)

        out_of_time = (
            cfg.train.max_minutes is not None and (time.monotonic() - started) / 60 >= cfg.train.max_minutes
        )
        if info.enabled and cfg.train.max_minutes is not None:  # every process must agree on stopping
            flag = torch.tensor(float(out_of_time), device=dev)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        finished = step == total or out_of_time
        log_now = step % cfg.train.log_every == 0 or step == total
        validate_now = step % cfg.train.val_every == 0 and not finished
        save_now = step % cfg.train.ckpt_every == 0 or finished
        keep_now = bool(cfg.train.keep_every) and step % cfg.train.keep_every == 0
        if log_now or validate_now or save_now or keep_now:
            guard.check(step, info, last_saved, hint)  # before anything of this state is written

        if log_now:
            diagnostics = {k: v.detach().float() for k, v in module.method.log_values().items()}
            values = {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}, **diagnostics}
            values = reduce_mean(values, info)
            values = {k: float(v) for k, v in values.items()}
            elapsed = time.monotonic() - window_start - paused
            row = {"step": step, "lr": lr, **values, "images_per_s": window_images / max(elapsed, 1e-9)}
            window_start, window_images, paused = time.monotonic(), 0, 0.0
            if log is not None:
                log.write(row)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")

        if validate_now:
            val_started = time.monotonic()
            if info.is_main:
                metrics = _run_validation(
                    module.model, val_set, cfg, dev, progress=False, method=module.method
                )
                train_module.train()
                assert log is not None
                log.write(_validation_row(metrics, step))
                score = selection_score(metrics)
                if score > best_score:
                    best_score = score
                    checkpoint("best.ckpt", step)
            barrier(info)
            paused += time.monotonic() - val_started  # throughput excludes validation time
        if save_now and info.is_main:
            checkpoint("last.ckpt", step)
        if keep_now and info.is_main:
            checkpoint(f"step_{step:07d}.ckpt", step)
        if out_of_time and step < total:
            stopped_early = True
            break
    bar.close()

    metrics: dict[str, Any] = {}
    if info.is_main:
        metrics = _run_validation(module.model, val_set, cfg, dev, progress=progress, method=module.method)
        assert log is not None
        log.write(_validation_row(metrics, step))
        log.close()
        if selection_score(metrics) > best_score:
            best_score = selection_score(metrics)
            checkpoint("best.ckpt", step)
        checkpoint("last.ckpt", step)
        metrics["step"] = step
        metrics["stopped_early"] = stopped_early
        write_evaluation_report(metrics, run_dir, list(val_set.classes))
        from weakseg.viz import plot_training_curves

        plot_training_curves(run_dir / "metrics.jsonl", run_dir / "training_curves.png")
        write_overlays(module.model, val_set, run_dir / "overlays", cfg, dev)
    barrier(info)
    return TrainResult(run_dir=run_dir, step=step, metrics=metrics, stopped_early=stopped_early)


def load_trained_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Segmentor, Config, dict[str, Any]]:
    """A segmentor restored from a weakseg checkpoint, in eval mode, with its config and class info."""
    from weakseg.config import config_from_dict

    ckpt = load_checkpoint(path, map_location="cpu")
    bad = first_nonfinite(ckpt["model"])
    if bad is not None:
        raise NonFiniteWeightsError(
            f"checkpoint {path} holds NaN/inf weights (e.g. {bad!r}): it was written after training "
            "diverged; use an earlier checkpoint, or train again with a lower optim.lr or optim.grad_clip=1.0"
        )
    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg, len(ckpt["classes"]), background=ckpt.get("background", 0), pretrained=False)
    load_state(model, ckpt["model"], path, "model")
    model.to(device).eval()
    meta = {k: ckpt.get(k) for k in ("classes", "ignore_index", "background", "step", "image_mode")}
    return model, cfg, meta
