"""Host<->device bytes per training step: SFC's image bank as the reference holds it vs ours.

The reference (``train_resnet50_SFC.py``) keeps the bank in host memory: every step it copies each batch
image and its 21-channel float valid mask back to the host (``img1[i].cpu()``, ``valid_mask[i].cpu()``),
writes them into the slots of the sample's classes, and then copies the *whole* bank to the GPU
(``slot.cuda()``, ``vm.cuda()``, ``sltarget.cuda()``) to pick four samples. Ours
(:class:`weakseg.methods.image_bank.ImageBank` through ``SFC.prepare_batch``) keeps the slots as device
buffers and updates / draws them with device operations only.

Both designs run the same steps on the same host batches, moved to the device with the engine's
``move_batch``. A ``TorchDispatchMode`` counts the bytes of every dispatched copy between devices
(``aten._to_copy`` / ``aten.copy_`` whose source and destination devices differ), per direction and per
phase (moving the batch vs the bank's own work). Nothing is estimated: the counts are the copies the
code issues. With CUDA the steps run for real and are also timed; without it the accelerator is
simulated by the ``meta`` device under ``FakeTensorMode`` (tensors keep their shapes and every copy is
dispatched and counted, but no data moves and no time is reported).

Arithmetic at SFC's setting (crop 512, batch 16, 20 classes, 21-channel float valid masks), per step:
bank H2D = slots 20*3*512*512*4 B (62.9 MB) + valid masks 20*21*512*512*4 B (440.4 MB, the "~440 MB")
+ labels 20*20*4 B = 503.3 MB; bank D2H = 16 * (3 + 21) * 512*512*4 B = 402.7 MB. Ours: 0 and 0.

    python benchmarks/sfc_image_bank_transfer.py                  # SFC's setting (simulated without CUDA)
    python benchmarks/sfc_image_bank_transfer.py --crop 256 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from weakseg.engine.trainer import move_batch
from weakseg.methods import build_method

MB = 1e6


class TransferCounter(TorchDispatchMode):
    """Bytes of cross-device copies keyed ``(phase, "h2d" | "d2h" | "d2d")``; the caller sets ``phase``."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: dict[tuple[str, str], int] = defaultdict(int)
        self.phase = "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._to_copy.default:
            src, dst = args[0], out
        elif func is torch.ops.aten.copy_.default:
            src, dst = args[1], args[0]
        else:
            return out
        if src.device != dst.device:
            direction = "h2d" if src.device.type == "cpu" else "d2h" if dst.device.type == "cpu" else "d2d"
            self.bytes[(self.phase, direction)] += src.numel() * src.element_size()
        return out

    @contextlib.contextmanager
    def in_phase(self, name: str) -> Iterator[None]:
        previous, self.phase = self.phase, name
        try:
            yield
        finally:
            self.phase = previous


def host_batches(steps: int, batch: int, classes: int, crop: int, seed: int) -> list[dict[str, Any]]:
    """Random multi-label host batches: tags over background + ``classes`` (1-3 classes per image)."""
    rng = random.Random(seed)
    out = []
    for _ in range(steps):
        tags = torch.zeros(batch, classes + 1)
        tags[:, 0] = 1.0
        for i in range(batch):
            for c in rng.sample(range(1, classes + 1), rng.randint(1, 3)):
                tags[i, c] = 1.0
        out.append(
            {
                "image": torch.zeros(batch, 3, crop, crop),
                "valid": torch.ones(batch, crop, crop, dtype=torch.bool),
                "tags": tags,
            }
        )
    return out


class ReferenceBank:
    """The reference's data movement: host slots, per-sample device->host copies, whole-bank uploads.

    The reference's batch carries a 21-channel float valid mask per sample (``[K, H, W]``), and its bank
    stores that mask per slot; both are reproduced. Which slots a sample writes comes from its tags (the
    reference finds them with ``nonzero`` on the GPU); the bytes moved do not depend on it.
    """

    def __init__(self, classes: int, crop: int) -> None:
        k = classes + 1
        self.classes = classes
        self.slot = torch.zeros(classes, 3, crop, crop)
        self.vm = torch.zeros(classes, k, crop, crop)
        self.target = torch.zeros(classes, classes)

    def step(self, batch: dict[str, Any], members: list[list[int]], device: torch.device) -> dict[str, Any]:
        image, label, valid_mask = batch["image"], batch["tags"][:, 1:], batch["valid_mask"]
        for i, slots in enumerate(members):
            idx = torch.tensor(slots)
            self.slot[idx] = image[i].cpu()
            self.vm[idx] = valid_mask[i].cpu()
            self.target[idx] = label[i].cpu()
        slot, vm, target = self.slot.to(device), self.vm.to(device), self.target.to(device)
        pick = [random.randint(0, self.classes - 1) for _ in range(4)]  # Python ints, as the reference
        return {
            "image": torch.cat([image, *(slot[j : j + 1] for j in pick)]),
            "tags": torch.cat([label, *(target[j : j + 1] for j in pick)]),
            "valid_mask": torch.cat([valid_mask, *(vm[j : j + 1] for j in pick)]),
        }


def reference_batch(host: dict[str, Any], classes: int) -> dict[str, Any]:
    """The reference's batch format: 21-channel float valid mask instead of one bool map."""
    k = classes + 1
    vm = host["valid"][:, None].float().expand(-1, k, -1, -1).contiguous()
    return {"image": host["image"], "tags": host["tags"], "valid_mask": vm}


def run(
    args: argparse.Namespace, device: torch.device, fake: bool
) -> dict[str, dict[tuple[str, str], float]]:
    """Per-step bytes (and seconds, when real) of both designs."""
    batches = host_batches(args.steps, args.batch, args.classes, args.crop, args.seed)
    members = [[[c - 1 for c in range(1, args.classes + 1) if b["tags"][i, c] > 0] for i in range(args.batch)]
               for b in batches]  # fmt: skip
    results: dict[str, dict[tuple[str, str], float]] = {}
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with mode:
        if fake:  # fake copies of the host batches, so nothing real is allocated at this size
            batches = [{k: torch.empty_like(v) for k, v in b.items()} for b in batches]
        method = build_method({"name": "sfc"}, num_classes=args.classes + 1).to(device).train()
        reference = ReferenceBank(args.classes, args.crop)
        for name in ("reference (host bank)", "weakseg (device bank)"):
            counter = TransferCounter()
            seconds = 0.0
            with counter:
                for step, host in enumerate(batches):
                    sync(device, fake)
                    start = time.perf_counter()
                    if name.startswith("reference"):
                        host = reference_batch(host, args.classes)
                        with counter.in_phase("batch"):
                            batch = move_batch(host, device)
                        with counter.in_phase("bank"):
                            reference.step(batch, members[step], device)
                    else:
                        with counter.in_phase("batch"):
                            batch = move_batch(host, device)
                        with counter.in_phase("bank"):
                            method.prepare_batch(batch)
                    sync(device, fake)
                    seconds += time.perf_counter() - start if step > 0 else 0.0  # step 0 warms up
            row = {key: value / args.steps for key, value in counter.bytes.items()}
            row[("time", "s")] = seconds / max(args.steps - 1, 1)
            results[name] = row
    return results


def sync(device: torch.device, fake: bool) -> None:
    if device.type == "cuda" and not fake:
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=20, help="foreground classes (bank slots)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="auto", help="auto (cuda when available, else simulated), cuda, meta"
    )
    args = parser.parse_args()
    real_cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if real_cuda else "meta")
    fake = not real_cuda
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    results = run(args, device, fake)
    where = (
        str(device) if real_cuda else "meta under FakeTensorMode (no CUDA here: copies counted, not timed)"
    )
    print(f"SFC image bank, crop {args.crop}, batch {args.batch}+4, {args.classes} slots, {args.steps} steps")
    print(f"device: {where}")
    header = f"{'design':<24}{'batch H2D':>12}{'bank H2D':>12}{'bank D2H':>12}{'total':>12}"
    print(header + ("" if fake else f"{'ms/step':>10}"))
    totals = {}
    for name, row in results.items():
        batch_h2d = row.get(("batch", "h2d"), 0.0)
        bank_h2d = row.get(("bank", "h2d"), 0.0)
        bank_d2h = row.get(("bank", "d2h"), 0.0)
        total = sum(v for k, v in row.items() if k[0] != "time")
        totals[name] = (bank_h2d + bank_d2h, total, row[("time", "s")])
        cells = "".join(f"{v / MB:>9.1f} MB" for v in (batch_h2d, bank_h2d, bank_d2h, total))
        line = f"{name:<24}{cells}"
        print(line + ("" if fake else f"{1e3 * row[('time', 's')]:>10.2f}"))
    (ref_bank, ref_total, ref_t), (our_bank, our_total, our_t) = totals.values()
    print(f"bank bytes per step: reference {ref_bank / MB:.1f} MB, ours {our_bank / MB:.1f} MB")
    print(f"all host<->device bytes per step: reference / ours = {ref_total / max(our_total, 1):.1f}x")
    if not fake:
        print(f"time per step (batch move + bank): reference / ours = {ref_t / max(our_t, 1e-12):.1f}x")


if __name__ == "__main__":
    main()
