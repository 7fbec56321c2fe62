"""CDSP's LoRM: fused attention (``lorm_attention``) vs the explicit (HW)×(HW) matrix form.

For a batch of B feature maps ``[B, C, h, w]`` with a random foreground row mask, measures side by side
the time of forward + backward (gradients to q, k and the features, as training needs) and the peak
memory of each form, and their maximum difference. The paper's setting is B = 16, 59×59, C = 2048
(ResNet at output stride 8 on 465-pixel crops), where the explicit form holds 16 × 3481² attention
weights (776 MB in fp32) plus their gradient; run it with ``--device cuda``. On CPU each measurement
runs in a fresh process (peak RSS is a per-process high-water mark; see ``measure.py``).

    python benchmarks/lorm_fused_vs_explicit.py                                   # CPU-sized settings
    python benchmarks/lorm_fused_vs_explicit.py --device cuda --batch 16 --grids 59 --channels 2048
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from measure import time_and_peak
from weakseg.models.lorm import lorm_attention, lorm_attention_explicit

FORMS = {"fused": lorm_attention, "explicit": lorm_attention_explicit}


def _inputs(batch: int, channels: int, grid: int, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(grid * 1000 + channels)
    q, k, v = (torch.randn(batch, channels, grid, grid, generator=gen) for _ in range(3))
    mask = torch.rand(batch, grid, grid, generator=gen) > 0.5
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)] + [mask.to(device)]


def _measure(form: str, args: argparse.Namespace, grid: int) -> dict:
    dtype = getattr(torch, args.dtype)
    q, k, v, mask = _inputs(args.batch, args.channels, grid, args.device, dtype)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    weights = torch.randn_like(v)

    def call() -> torch.Tensor:
        for t in leaves:
            t.grad = None
        out = FORMS[form](q, k, v, mask)
        (out * weights).sum().backward()
        return out.detach()

    best, peak_mib, out = time_and_peak(call, args.device, args.repeats)
    return {"time_s": best, "peak_mib": peak_mib}


def _isolated(form: str, grid: int, args: argparse.Namespace) -> dict:
    if args.device.startswith("cuda"):
        return _measure(form, args, grid)
    cmd = [
        sys.executable, __file__, "--_worker", form, "--grids", str(grid), "--batch", str(args.batch),
        "--channels", str(args.channels), "--device", args.device, "--repeats", str(args.repeats),
        "--dtype", args.dtype, "--threads", str(args.threads),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _max_diff(grid: int, args: argparse.Namespace) -> float:
    q, k, v, mask = _inputs(args.batch, args.channels, grid, args.device, torch.float32)
    with torch.no_grad():
        return (lorm_attention(q, k, v, mask) - lorm_attention_explicit(q, k, v, mask)).abs().max().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", type=int, nargs="+", default=[17, 33, 45], help="feature grid sides h = w")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args._worker:
        print(json.dumps(_measure(args._worker, args, args.grids[0])))
        return
    print(
        f"# LoRM forward+backward: B={args.batch}, C={args.channels}, {args.dtype}, {args.device}, "
        f"{args.threads} threads, torch {torch.__version__}; time: best of 1 + {args.repeats}; "
        "memory: peak growth during the first call"
    )
    print(f"{'grid':>6} {'HW':>6} | {'explicit ms':>11} {'MiB':>8} | {'fused ms':>9} {'MiB':>8} | "
          f"{'t ratio':>7} {'mem ratio':>9} | {'max|diff|':>9}")  # fmt: skip
    for grid in args.grids:
        exp = _isolated("explicit", grid, args)
        fus = _isolated("fused", grid, args)
        print(
            f"{grid:>5}² {grid * grid:>6} | {exp['time_s'] * 1e3:>11.1f} {exp['peak_mib']:>8.1f} | "
            f"{fus['time_s'] * 1e3:>9.1f} {fus['peak_mib']:>8.1f} | "
            f"{exp['time_s'] / fus['time_s']:>7.2f} {exp['peak_mib'] / max(fus['peak_mib'], 1e-3):>9.1f} | "
            f"{_max_diff(grid, args):>9.1e}"
        )
    print("# reproduce: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
