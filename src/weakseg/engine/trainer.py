"""The training loop shared by every method: :class:`Trainer`, run by :func:`train`.

One step (:meth:`Trainer.step`): load a batch → model forward → method turns outputs + labels into named
loss terms → backward on their sum → optimiser step. Around it: per-step learning rate, autocast, gradient
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
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from weakseg.builders import build_dataset, build_method_for, build_model, check_model_config, method_requires
from weakseg.config import Config, config_to_dict, to_yaml
from weakseg.data.base import SegDataset
from weakseg.data.sample import Batch
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
from weakseg.engine.optim import apply_lr, build_optimizer, training_param_groups
from weakseg.engine.preflight import preflight
from weakseg.engine.run_folder import check_run_dir, claim_run_dir
from weakseg.engine.sampling import EpochIndexed, StepBatchSampler
from weakseg.io import WeaksegWarning, append_text, atomic_write_json, atomic_write_text, safe_join
from weakseg.methods import (
    AdaptsEvaluation,
    AddsSampleMaps,
    BindsModel,
    FitsDataset,
    LogsValues,
    Method,
    run_model,
)
from weakseg.models.outputs import ModelOutputs


class TrainModule(nn.Module):
    """Network + method in one module, so DDP sees every trainable parameter."""

    def __init__(self, model: nn.Module, method: Method):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        batch, outputs = run_model(self.method, self.model, batch)
        logits = outputs.get("logits")
        if isinstance(logits, torch.Tensor) and not logits.is_contiguous():
            # channels-last logits (K channels at the head's stride: a small copy) back to NCHW, where
            # the losses' upsampling, softmax and cross-entropy run faster on CPU
            outputs = cast(ModelOutputs, {**outputs, "logits": logits.contiguous()})
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


def move_batch(batch: Batch, device: torch.device) -> Batch:
    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return cast(Batch, moved)


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
    if isinstance(method, AdaptsEvaluation):
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
            trainer = Trainer(
                cfg, info, resume=resume, overwrite=overwrite, progress=progress and info.is_main
            )
            trainer.setup(cleanup)
            return trainer.run()
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


#: Columns every training row of ``metrics.jsonl`` has; a loss term or diagnostic of the same name would
#: silently overwrite one (AAL's label-reassign term was once logged as ``lr``, hiding the learning rate).
RESERVED_LOG_COLUMNS = frozenset({"step", "lr", "loss", "images_per_s"})


def check_log_names(method: str, names: set[str]) -> None:
    """Raise if a method's loss terms or diagnostics (``names``) take a reserved log column's name."""
    clash = sorted(RESERVED_LOG_COLUMNS & names)
    if clash:
        raise ValueError(
            f"method '{method}' returns loss terms or diagnostics named {clash}, which are metrics.jsonl "
            f"columns the trainer writes itself ({sorted(RESERVED_LOG_COLUMNS)}); rename them in the method"
        )


@dataclass
class StepResult:
    """What one optimisation step leaves on the device for logging (nothing is read back to the host)."""

    loss: torch.Tensor  # the optimised sum, float32 scalar
    losses: dict[str, torch.Tensor]  # the method's weighted terms
    lr: float  # the backbone's learning rate of this step
    images: int  # images in this process's batch


@dataclass
class Throughput:
    """Images per second between two log rows, leaving out the time spent validating."""

    start: float = field(default_factory=time.monotonic)
    images: int = 0
    paused: float = 0.0

    def rate(self) -> float:
        return self.images / max(time.monotonic() - self.start - self.paused, 1e-9)

    def restart(self) -> None:
        self.start, self.images, self.paused = time.monotonic(), 0, 0.0


class Trainer:
    """One training run in named steps: :meth:`setup` (checks, data, network and method, optimiser,
    resumed state, outputs, loader, speed settings), :meth:`step` (one optimisation step),
    :meth:`validate`, :meth:`checkpoint` / :meth:`restore` (save / resume) and :meth:`finish` (final
    validation and reports); :meth:`run` is the loop. :func:`train` runs one inside the distributed
    setup (``info``)."""

    def __init__(
        self,
        cfg: Config,
        info: DistInfo,
        *,
        resume: str | Path | None = None,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        self.cfg, self.info, self.dev = cfg, info, info.device
        self.run_dir = cfg.run_dir
        self.resume_path, self.overwrite, self.progress = resume, overwrite, progress
        self.start_step = self.global_step = 0
        self.best_score = -math.inf
        self.last_saved: int | None = None  # step of the newest last.ckpt written
        self.log: MetricsLog | None = None

    # ------------------------------------------------------------------ setup

    def setup(self, cleanup: contextlib.ExitStack) -> None:
        """Everything before the first step, in an order that keeps resumes exact; the run folder's
        lock is released by ``cleanup``."""
        self._check_and_seed()
        self._build_data()
        ckpt = self._read_checkpoint()
        if self.info.is_main:
            lock = claim_run_dir(self.run_dir, resume=self.resume_path is not None, overwrite=self.overwrite)
            cleanup.callback(lock.release)
        self._build_module(pretrained=ckpt is None)
        self._build_optimizer()
        if ckpt is not None:
            self.restore(ckpt)
        self._open_outputs(resumed=ckpt is not None)
        self._build_loader()
        self._apply_speed_settings()
        if ckpt is not None:
            set_rng_state(ckpt["rng"])  # last, so nothing above consumes the restored stream
            self.last_saved = self.start_step
        self.guard = NonFiniteGuard(self.dev, check_grads=not self.use_scaler)  # fp16: the scaler handles inf
        self.hint = nonfinite_hint(self.cfg.train.amp, self.cfg.optim.lr, self.cfg.optim.grad_clip)
        self.trainable = [p for p in self.module.parameters() if p.requires_grad]

    def _check_and_seed(self) -> None:
        check_model_config(self.cfg)  # unknown backbone / head: stop before any work
        if self.info.is_main:  # refuse a clobbered or busy folder before any work (nothing is written yet)
            check_run_dir(self.run_dir, resume=self.resume_path is not None, overwrite=self.overwrite)
        seed_everything(self.cfg.train.seed)
        if self.cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _build_data(self) -> None:
        cfg = self.cfg
        self.train_set = build_dataset(cfg, cfg.data.train_split, train=True, requires=method_requires(cfg))
        self.train_set.cache_decoded(cfg.data.cache_mb / max(1, cfg.data.num_workers))  # per loading process
        self.val_set = build_dataset(cfg, cfg.data.val_split, train=False, requires=("mask",))
        preflight(cfg, self.train_set, self.val_set, world_size=self.info.world_size)

    def _read_checkpoint(self) -> dict[str, Any] | None:
        if not self.resume_path:
            return None
        ckpt = load_checkpoint(self.resume_path, map_location="cpu")
        check_resume_compatible(ckpt, self.cfg, self.train_set, self.resume_path)
        return ckpt

    def _build_module(self, pretrained: bool) -> None:
        """The network and the method as one module on the device."""
        cfg, data = self.cfg, self.train_set
        model = build_model(cfg, data.num_classes, background=data.background, pretrained=pretrained)
        method = build_method_for(cfg, data)
        self._prepare_method(method, model)
        self.module = TrainModule(model, method).to(self.dev)
        self.channels_last = use_channels_last(cfg, self.dev)
        if self.channels_last:
            # Module.to takes memory_format at run time; torch's overloads leave it out
            self.module = self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def _prepare_method(self, method: Method, model: nn.Module) -> None:
        """The method's capabilities that act before training: sample maps, binding to the network and
        dataset statistics (written to ``dataset_statistics.json``)."""
        if isinstance(method, AddsSampleMaps):
            for key, map_fn in method.dataset_maps().items():
                self.train_set.add_map(key, map_fn)
        if isinstance(method, BindsModel):
            method.setup(model)
        if not isinstance(method, FitsDataset):
            return
        fitted = method.fit_dataset(
            self.train_set, batch_size=self.cfg.train.batch_size, progress=self.progress
        )
        if fitted is not None and self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run_dir / "dataset_statistics.json", fitted)

    def _build_optimizer(self) -> None:
        groups = training_param_groups(self.module.model, self.module.method)
        self.optimizer = build_optimizer(groups, self.cfg.optim)
        self.autocast, self.use_scaler = autocast_context(self.cfg.train.amp, self.dev)
        self.scaler = torch.amp.GradScaler(self.dev.type, enabled=self.use_scaler)

    def _open_outputs(self, resumed: bool) -> None:
        """The main process writes ``config.yaml`` and opens ``metrics.jsonl`` (cut back to the resumed
        step)."""
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", to_yaml(self.cfg))
        resume_step = self.start_step if resumed else None
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", resume_step, self.cfg.train.tensorboard)

    def _build_loader(self) -> None:
        """Batches whose order is a function of the step (exact resume), this process's share under DDP."""
        cfg, info = self.cfg, self.info
        sampler = StepBatchSampler(
            len(self.train_set),
            cfg.train.batch_size,
            cfg.train.steps,
            seed=cfg.train.seed,
            start_step=self.start_step,
            rank=info.rank,
            world_size=info.world_size,
        )
        self.loader = DataLoader(
            EpochIndexed(self.train_set),
            batch_sampler=sampler,
            num_workers=cfg.data.num_workers,
            pin_memory=self.dev.type == "cuda",
            persistent_workers=cfg.data.num_workers > 0,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )

    def _apply_speed_settings(self) -> None:
        """DDP, ``torch.compile``, the CPU allocator setting and the faster depthwise backward."""
        t, dev = self.cfg.train, self.dev
        self.train_module: nn.Module = self.module
        if self.info.enabled:
            self.train_module = DistributedDataParallel(
                self.module,
                device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=t.find_unused_parameters,
            )
        if t.compile:
            self.train_module = torch.compile(self.train_module)  # type: ignore[assignment]
        if t.keep_freed_memory and dev.type == "cpu":
            keep_freed_memory()
        # CPU: depthwise convolutions take the faster backward of weakseg.engine.depthwise (same forward,
        # gradients equal to rounding); not under torch.compile, which traces the plain call
        self.fast_depthwise = t.fast_depthwise and dev.type == "cpu" and not t.compile

    # ------------------------------------------------------------------ checkpoints

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Resume: the network, method, optimiser and loss-scaler state, the step and the best score
        (the random state is restored last, by :meth:`setup`)."""
        path = self.resume_path
        assert path is not None
        load_state(self.module.model, ckpt["model"], path, "model")
        load_state(self.module.method, ckpt.get("method", {}), path, f"method '{self.cfg.method['name']}'")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"cannot resume from {path}: its optimiser state does not fit ({err}); "
                "was it trained with another optim.name or model?"
            ) from None
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_step = self.global_step = int(ckpt["step"])
        self.best_score = float(ckpt.get("best_score", -math.inf))

    def checkpoint(self, name: str) -> None:
        """Save the state at the current step as ``run_dir/name`` (main process)."""
        data = self.train_set
        save_checkpoint(
            self.run_dir / name,
            model=self.module.model.state_dict(),
            method=self.module.method.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            step=self.global_step,
            best_score=self.best_score,
            config=config_to_dict(self.cfg),
            classes=list(data.classes),
            ignore_index=data.ignore_index,
            background=data.background,
            image_mode=data.image_mode,
        )
        if name == "last.ckpt":
            self.last_saved = self.global_step

    # ------------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        """Steps until ``train.steps`` (or ``train.max_minutes``), then :meth:`finish`."""
        total = self.cfg.train.steps
        self.started = time.monotonic()
        self.window = Throughput()
        self.bar = tqdm(
            total=total,
            initial=self.start_step,
            desc=f"train {self.cfg.name}",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        stopped_early = False
        self.train_module.train()
        for batch in reraise_worker_errors(self.loader):
            result = self.step(batch)
            self.window.images += result.images * self.info.world_size
            self.bar.update(1)
            out_of_time = self._out_of_time()
            self._after_step(result, finished=self.global_step == total or out_of_time)
            if out_of_time and self.global_step < total:
                stopped_early = True
                break
        self.bar.close()
        metrics = self.finish(stopped_early)
        barrier(self.info)
        return TrainResult(
            run_dir=self.run_dir, step=self.global_step, metrics=metrics, stopped_early=stopped_early
        )

    def step(self, batch: Batch) -> StepResult:
        """One optimisation step on a loader batch: forward, the method's loss terms, backward, gradient
        clipping and checks, optimiser update. Nothing is read back to the host."""
        step, total = self.global_step, self.cfg.train.steps
        batch = move_batch(batch, self.dev)
        if self.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        lr = apply_lr(self.optimizer, step, total, self.cfg.optim)
        self.module.method.set_progress(step, total)
        with self.autocast, FastDepthwise() if self.fast_depthwise else contextlib.nullcontext():
            losses = self.train_module(batch)
        loss = torch.stack([v.float() for v in losses.values()]).sum()
        self.guard.observe_losses(step + 1, losses)  # device flags only: no host sync
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._clip_and_check_gradients(step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        return StepResult(loss=loss, losses=losses, lr=lr, images=batch["image"].shape[0])

    def _clip_and_check_gradients(self, step: int) -> None:
        grad_norm = None
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.optim.grad_clip)
        elif self.guard.check_grads:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.trainable if p.grad is not None])
        if self.guard.check_grads and grad_norm is not None:
            self.guard.observe_grad_norm(step + 1, grad_norm)

    def _out_of_time(self) -> bool:
        """``train.max_minutes`` reached (every process agrees under DDP)."""
        limit = self.cfg.train.max_minutes
        out_of_time = limit is not None and (time.monotonic() - self.started) / 60 >= limit
        if self.info.enabled and limit is not None:
            flag = torch.tensor(float(out_of_time), device=self.dev)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        return out_of_time

    def _after_step(self, result: StepResult, finished: bool) -> None:
        """Logging, validation and checkpoints due at this step, after the non-finite check."""
        step, t = self.global_step, self.cfg.train
        log_now = step % t.log_every == 0 or step == t.steps
        validate_now = step % t.val_every == 0 and not finished
        save_now = step % t.ckpt_every == 0 or finished
        keep_now = bool(t.keep_every and step % t.keep_every == 0)
        if log_now or validate_now or save_now or keep_now:
            self.guard.check(step, self.info, self.last_saved, self.hint)  # before anything is written
        if log_now:
            self.log_step(result)
        if validate_now:
            self.validate()
        if save_now and self.info.is_main:
            self.checkpoint("last.ckpt")
        if keep_now and self.info.is_main:
            self.checkpoint(f"step_{step:07d}.ckpt")

    def log_step(self, result: StepResult) -> None:
        """A training row: loss, terms, the method's diagnostics (averaged over processes), lr, speed."""
        method = self.module.method
        diagnostics = (
            {k: v.detach().float() for k, v in method.log_values().items()}
            if isinstance(method, LogsValues)
            else {}
        )
        check_log_names(method.name, set(result.losses) | set(diagnostics))
        terms = {"loss": result.loss.detach(), **{k: v.detach() for k, v in result.losses.items()}}
        values = {k: float(v) for k, v in reduce_mean({**terms, **diagnostics}, self.info).items()}
        row = {"step": self.global_step, "lr": result.lr, **values, "images_per_s": self.window.rate()}
        self.window.restart()
        if self.log is not None:
            self.log.write(row)
        self.bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{result.lr:.2e}")

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Validation during training on the main process (a log row; ``best.ckpt`` when the score
        improves); its time is left out of the throughput."""
        began = time.monotonic()
        if self.info.is_main:
            metrics = _run_validation(
                self.module.model, self.val_set, self.cfg, self.dev, progress=False, method=self.module.method
            )
            self.train_module.train()
            self._record_validation(metrics)
        barrier(self.info)
        self.window.paused += time.monotonic() - began

    def _record_validation(self, metrics: dict[str, Any]) -> None:
        assert self.log is not None
        self.log.write(_validation_row(metrics, self.global_step))
        score = selection_score(metrics)
        if score > self.best_score:
            self.best_score = score
            self.checkpoint("best.ckpt")

    def finish(self, stopped_early: bool) -> dict[str, Any]:
        """The final validation, checkpoints and reports (main process; {} elsewhere)."""
        if not self.info.is_main:
            return {}
        model, val_set, run_dir = self.module.model, self.val_set, self.run_dir
        metrics = _run_validation(
            model, val_set, self.cfg, self.dev, progress=self.progress, method=self.module.method
        )
        self._record_validation(metrics)
        assert self.log is not None
        self.log.close()
        self.checkpoint("last.ckpt")
        metrics["step"] = self.global_step
        metrics["stopped_early"] = stopped_early
        write_evaluation_report(metrics, run_dir, list(val_set.classes))
        from weakseg.viz import plot_training_curves

        plot_training_curves(run_dir / "metrics.jsonl", run_dir / "training_curves.png")
        write_overlays(model, val_set, run_dir / "overlays", self.cfg, self.dev)
        return metrics


def load_trained_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """The network (segmentor, CAM classifier or single-stage network, as its config's method builds)
    restored from a weakseg checkpoint, in eval mode, with its config and class info."""
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
