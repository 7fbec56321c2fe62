"""Dense Gaussian kernel product: fused attention (``gaussian_affinity_apply``) vs the explicit N×N matrix.

Measures, side by side in one run, the forward time and peak memory of ``W·v`` for a batch of B images
with C value channels and D = 5 RGBXY features (rloss's σ_rgb 15, σ_xy 100 on random colours), the
maximum absolute difference between the two, and the time of the fused forward + backward (gradient
to the values, as the CRF losses need). The naive matrix is only run where it fits in ``--naive-max-gb``.

Peak memory: on CPU the growth of the peak resident set size over the resident size before the call
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs``; ``ru_maxrss`` where that is unavailable), each
measurement in a fresh subprocess; on CUDA ``torch.cuda.max_memory_allocated``.

    python benchmarks/kernel_dense_vs_naive.py                      # CPU, 32² … 256²
    python benchmarks/kernel_dense_vs_naive.py --device cuda --sizes 64 128 256 384 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from measure import time_and_peak
from weakseg.ops.pairwise_kernel import (
    gaussian_affinity_apply,
    kernel_features_rgbxy,
    naive_gaussian_affinity_apply,
)


def _inputs(size: int, batch: int, channels: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(size)
    image = torch.rand(batch, 3, size, size, generator=gen) * 255
    feats = kernel_features_rgbxy(image, sigma_rgb=15.0, sigma_xy=100.0, scale=0.5).to(device)
    vals = torch.rand(batch, channels, size, size, generator=gen).softmax(1).to(device)
    return feats, vals


def _measure(kind: str, size: int, batch: int, channels: int, device: str, repeats: int) -> dict:
    """Best-of-``repeats`` time (s) and peak memory (MiB) of one evaluation; runs in this process."""
    feats, vals = _inputs(size, batch, channels, device)
    if kind == "fused_fwd_bwd":
        vals.requires_grad_()
    fn = naive_gaussian_affinity_apply if kind == "naive" else gaussian_affinity_apply

    def call() -> torch.Tensor:
        with torch.no_grad() if kind != "fused_fwd_bwd" else torch.enable_grad():
            out = fn(feats, vals, include_self=True)
            if kind == "fused_fwd_bwd":
                out.sum().backward()
        return out

    # the first call alone gives the peak memory; the time is the best of it and ``repeats`` more
    best, peak_mib, out = time_and_peak(call, device, repeats)
    return {"time_s": best, "peak_mib": peak_mib, "out": out.detach().double().sum().item()}


def _run_isolated(kind: str, size: int, args: argparse.Namespace) -> dict:
    """Run one measurement in a fresh interpreter (CPU peak RSS is a per-process high-water mark)."""
    cmd = [
        sys.executable, __file__, "--_worker", kind, "--sizes", str(size), "--batch", str(args.batch),
        "--channels", str(args.channels), "--device", args.device, "--repeats", str(args.repeats),
        "--threads", str(args.threads),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _max_diff(size: int, args: argparse.Namespace) -> tuple[float, float]:
    """Max |fused - naive| and the same relative to max |naive|."""
    feats, vals = _inputs(size, args.batch, args.channels, args.device)
    with torch.no_grad():
        fused = gaussian_affinity_apply(feats, vals, include_self=True)
        naive = naive_gaussian_affinity_apply(feats, vals, include_self=True)
    diff = (fused - naive).abs().max().item()
    return diff, diff / naive.abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64, 96, 128, 192, 256])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=21)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--naive-max-gb", type=float, default=6.0, help="skip the naive matrix above this size"
    )
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args._worker:  # child process: one measurement, printed as JSON
        print(
            json.dumps(
                _measure(args._worker, args.sizes[0], args.batch, args.channels, args.device, args.repeats)
            )
        )
        return

    measure = (
        _run_isolated
        if args.device == "cpu"
        else (lambda kind, size, a: _measure(kind, size, a.batch, a.channels, a.device, a.repeats))
    )
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"# dense Gaussian kernel W·v: B={args.batch}, C={args.channels}, D=5 (RGBXY), fp32, {name}")
    print(
        f"# torch {torch.__version__}; time: best of 1 + {args.repeats} calls; memory: peak growth in the 1st"
    )
    header = (
        f"{'size':>6} {'N':>7} | {'naive ms':>9} {'naive MiB':>10} | {'fused ms':>9} {'fused MiB':>10} | "
        f"{'t ratio':>8} {'mem ratio':>9} | {'max|diff|':>9} {'rel':>9} | {'fused fwd+bwd ms':>16}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        n = size * size
        naive_gb = n * n * 4 * 4 / 1e9  # one image's distance, difference and kernel matrices, roughly
        fused = measure("fused", size, args)
        both = measure("fused_fwd_bwd", size, args)
        if naive_gb <= args.naive_max_gb:
            naive = measure("naive", size, args)
            diff, rel = _max_diff(size, args)
            cells = (
                f"{naive['time_s'] * 1e3:9.1f} {naive['peak_mib']:10.1f} | {fused['time_s'] * 1e3:9.1f} "
                f"{fused['peak_mib']:10.1f} | {naive['time_s'] / fused['time_s']:8.1f} "
                f"{naive['peak_mib'] / max(fused['peak_mib'], 1e-3):9.1f} | {diff:9.1e} {rel:9.1e}"
            )
        else:
            cells = (
                f"{'-':>9} {'-':>10} | {fused['time_s'] * 1e3:9.1f} {fused['peak_mib']:10.1f} | "
                f"{'-':>8} {'-':>9} | {'-':>9} {'-':>9}"
            )
        print(f"{size:>5}² {n:>7} | {cells} | {both['time_s'] * 1e3:16.1f}", flush=True)
    print(f"# reproduce: python benchmarks/kernel_dense_vs_naive.py {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
