"""Where one training step's time goes, on the CPU protocols of ``train_speed_cpu.py``.

The step is rebuilt from the library's pieces exactly as :func:`weakseg.engine.trainer.train` builds it
(dataset with its training transform, segmentor, method, optimiser) and run in one process without
DataLoader workers, so every phase is timed on the same thread:

===============  ==============================================================================
phase            what it times
===============  ==============================================================================
data.read        ``SegDataset.load_raw``: image and label files decoded and checked (per batch)
data.tags        ``SegDataset.tags_of`` (cached per sample after its first read)
data.augment     the training transform (resize, scale, rotate, crop, flip, ...)
data.tensor      ``to_tensors`` and the default collate function
forward          ``weakseg.methods.run_model``: the method's batch preparation and forward pass(es)
loss             the method's loss terms (``method(outputs, batch)``)
backward         ``loss.backward()``
optimizer        learning rate, ``zero_grad``, gradient norm (clip or guard) and ``optimizer.step``
===============  ==============================================================================

Times are this process's CPU seconds (on a shared machine wall time mostly measures the other jobs).
With ``--ops`` the timed steps also run under ``torch.profiler`` and the most expensive operators are
listed. The data phases are the work a DataLoader worker does per batch; with ``data.num_workers=1``
they run beside the step, on a second core when one is free. The step takes the trainer's CPU speed-ups
(``train.fast_depthwise``, ``train.keep_freed_memory``, ``model.channels_last`` and ``optim.fused`` null =
on for CPU, ``data.cache_mb``); ``--set train.fast_depthwise=false train.keep_freed_memory=false
model.channels_last=false optim.fused=false data.cache_mb=0`` profiles the step as it was before them
(each profile runs in a fresh process: glibc's memory settings last for the life of a process).
Decoded samples come from the cache only from their second read on: ``--prefill`` reads every sample
once first, so the timed steps see the cache as the steps after a run's first epoch do.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_step_profile.py --protocol acdc --method dfr
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_step_profile.py --protocol voc-real --method pce \\
        --set data.root=/tmp/voc-real-scribbles --ops

``--json PATH`` writes the table (mean CPU seconds per step and share of each phase).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

ROOT = Path(__file__).resolve().parents[1]
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from train_speed_cpu import PROTOCOLS, protocol_overrides  # noqa: E402

# benchmarks/tabulate.py would shadow the ``tabulate`` package that torch._dynamo imports at exit
sys.path[:] = [p for p in sys.path if p != _HERE]

from weakseg.builders import build_dataset, build_method_for, build_model, method_requires  # noqa: E402
from weakseg.config import load_config  # noqa: E402
from weakseg.data.base import to_tensors  # noqa: E402
from weakseg.engine.depthwise import FastDepthwise  # noqa: E402
from weakseg.engine.optim import apply_lr, build_optimizer, training_param_groups  # noqa: E402
from weakseg.engine.sampling import StepBatchSampler  # noqa: E402
from weakseg.engine.trainer import (  # noqa: E402
    TrainModule,
    keep_freed_memory,
    move_batch,
    seed_everything,
    use_channels_last,
)
from weakseg.methods import AddsSampleMaps, BindsModel, run_model  # noqa: E402

PHASES = ("data.read", "data.tags", "data.augment", "data.tensor", "forward", "loss", "backward", "optimizer")


class Timer:
    """Accumulates this process's CPU time per phase name (one thread, synchronous CPU work; CPU time
    rather than wall time, which on a shared machine mostly measures the other jobs)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    def add(self, name: str, start: float) -> float:
        now = time.process_time()
        self.totals[name] += now - start
        return now


def load_batch(dataset: Any, keys: list[tuple[int, int]], timer: Timer) -> dict[str, Any]:
    """One batch as ``SegDataset.__getitem__`` + collate make it, phase by phase."""
    samples = []
    for epoch, index in keys:
        dataset.set_epoch(epoch)
        t = time.process_time()
        raw = dataset.load_raw(index)
        t = timer.add("data.read", t)
        tags = dataset.tags_of(index, raw) if dataset.has("tags") else None
        t = timer.add("data.tags", t)
        size = raw["image"].shape[:2]
        sample = dataset.transform(raw, rng=dataset.sample_rng(index))
        t = timer.add("data.augment", t)
        out = to_tensors(sample)
        if tags is not None:
            out["tags"] = torch.from_numpy(tags)
        out["id"] = dataset.ids[index]
        out["size"] = torch.tensor(size, dtype=torch.int64)
        samples.append(out)
        timer.add("data.tensor", t)
    t = time.process_time()
    batch = default_collate(samples)
    timer.add("data.tensor", t)
    return batch


def profile(
    cfg_path: str, overrides: list[str], steps: int, warmup: int, ops: bool, prefill: bool = False
) -> dict[str, Any]:
    """Mean seconds per step of every phase over ``steps`` steps after ``warmup`` untimed ones
    (``prefill``: after reading every sample once, which fills the decoded-sample cache)."""
    cfg = load_config(cfg_path, overrides)
    if cfg.train.keep_freed_memory:
        keep_freed_memory()
    seed_everything(cfg.train.seed)
    requires = method_requires(cfg)
    train_set = build_dataset(cfg, cfg.data.train_split, train=True, requires=requires)
    train_set.cache_decoded(cfg.data.cache_mb)  # as the trainer (one loading process here)
    if prefill:
        for index in range(len(train_set)):
            train_set.load_raw(index)
    model = build_model(cfg, train_set.num_classes, background=train_set.background, pretrained=True)
    method = build_method_for(cfg, train_set)
    if isinstance(method, AddsSampleMaps):
        for key, fn in method.dataset_maps().items():
            train_set.add_map(key, fn)
    if isinstance(method, BindsModel):
        method.setup(model)
    module = TrainModule(model, method)
    channels_last = use_channels_last(cfg, torch.device("cpu"))
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(training_param_groups(model, method), cfg.optim)
    trainable = [p for p in module.parameters() if p.requires_grad]
    total = cfg.train.steps
    sampler = iter(StepBatchSampler(len(train_set), cfg.train.batch_size, total, seed=cfg.train.seed))
    module.train()
    timer = Timer()
    step_times: list[float] = []
    prof = None
    for step in range(warmup + steps):
        if step == warmup:
            timer = Timer()
            if ops:
                prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                prof.__enter__()
        began = time.process_time()
        batch = move_batch(load_batch(train_set, next(sampler), timer), torch.device("cpu"))
        if channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        t = time.process_time()
        method.set_progress(step, total)
        with FastDepthwise() if cfg.train.fast_depthwise else contextlib.nullcontext():  # as the trainer
            batch, outputs = run_model(method, model, batch)
            t = timer.add("forward", t)
            losses = method(outputs, batch)
            loss = torch.stack([v.float() for v in losses.values()]).sum()
            t = timer.add("loss", t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t = timer.add("backward", t)
        apply_lr(optimizer, step, total, cfg.optim)
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
        else:
            torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
        optimizer.step()
        timer.add("optimizer", t)
        if step >= warmup:
            step_times.append(time.process_time() - began)
    top_ops = None
    if prof is not None:
        prof.__exit__(None, None, None)
        top_ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    mean = {name: timer.totals[name] / steps for name in PHASES}
    whole = sum(mean.values())
    return {
        "config": cfg_path,
        "overrides": overrides,
        "steps": steps,
        "prefill": prefill,
        "batch_size": cfg.train.batch_size,
        "threads": torch.get_num_threads(),
        "seconds_per_step": {k: round(v, 4) for k, v in mean.items()},
        "share": {k: round(v / whole, 3) for k, v in mean.items()},
        "step_s_median": round(statistics.median(step_times), 4),
        "data_share": round(sum(v for k, v in mean.items() if k.startswith("data.")) / whole, 3),
        "top_ops": top_ops,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="acdc")
    p.add_argument("--method", choices=["pce", "dfr"], default="pce")
    p.add_argument("--steps", type=int, default=6, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--prefill", action="store_true", help="read every sample once first (cache filled)")
    p.add_argument("--ops", action="store_true", help="also list the top operators (torch.profiler)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args()
    cfg_path, overrides = protocol_overrides(args.protocol, args.method, args.set)
    result = profile(str(ROOT / cfg_path), overrides, args.steps, args.warmup, args.ops, args.prefill)
    print(
        f"{args.protocol} / {args.method}: {result['step_s_median']:.3f} s per step (median), "
        f"batch {result['batch_size']}, {result['threads']} thread(s)"
    )
    for name in PHASES:
        print(f"  {name:<13} {result['seconds_per_step'][name]:8.4f} s  {100 * result['share'][name]:5.1f} %")
    if result["top_ops"]:
        print(result["top_ops"])
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in result.items() if k != "top_ops"}, indent=1))


if __name__ == "__main__":
    main()
