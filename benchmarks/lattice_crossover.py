"""Where the exact fused Gaussian kernel beats the permutohedral lattice, and where it does not.

For grids of N = side² pixels, measures side by side in one run the time of one kernel product ``W·v``
(C value channels, one image) through ``gaussian_affinity_apply(backend="exact")`` (fused attention,
O(N²) work) and ``backend="lattice"`` (build the lattice + one application: the cost a loss pays per
step), for XY features (d = 2, σ 3 px, the CRF's smoothness kernel), RGBXY features (d = 5, rloss's
σ_rgb 15, σ_xy 100 at scale 0.5) on a CamVid image resized to the grid, and RGBXY plus three smooth
random channels (d = 8). Prints the best of
``--repeats`` process-CPU times, their ratio, and the smallest side where the lattice wins per
feature kind: the basis of ``weakseg.ops.lattice.choose_backend`` on CPU.

    OMP_NUM_THREADS=1 python benchmarks/lattice_crossover.py
    python benchmarks/lattice_crossover.py --device cuda --sides 32 64 128 256 384
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.io import read_image
from weakseg.ops.pairwise_kernel import gaussian_affinity_apply, kernel_features_rgbxy

DEFAULT_IMAGE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"


def _image(root: Path, side: int) -> torch.Tensor:
    """[1, 3, side, side] colours 0..255: the first CamVid val image, or smooth noise without it."""
    split = root / "splits" / "val.txt"
    if split.is_file():
        sample = split.read_text().split()[0]
        pixels = np.array(read_image(root / "images" / f"{sample}.jpg"))
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    else:
        image = F.interpolate(torch.rand(1, 3, 8, 8) * 255, size=(64, 64), mode="bilinear")
    return F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)


def _features(kind: str, image: torch.Tensor) -> torch.Tensor:
    if kind == "xy":
        return kernel_features_rgbxy(image, 1.0, 3.0)[:, :2]
    rgbxy = kernel_features_rgbxy(image, 15.0, 100.0, scale=0.5)
    if kind == "rgbxy":
        return rgbxy
    # d = 8: RGBXY plus three smooth "deep" channels (unit scale), for the cost at a larger d
    side = image.shape[-1]
    gen = torch.Generator().manual_seed(side)
    deep = F.interpolate(torch.randn(1, 3, 6, 6, generator=gen), size=(side, side), mode="bilinear")
    return torch.cat([rgbxy, 2.0 * deep], dim=1)


def _best(call, device: str, repeats: int) -> float:
    """Best process-CPU seconds (CUDA: synchronised wall seconds) of ``call`` over ``repeats`` runs."""
    clock = time.perf_counter if device == "cuda" else time.process_time
    call()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = clock()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--sides", type=int, nargs="+", default=[16, 24, 32, 40, 48, 64, 96])
    parser.add_argument("--channels", type=int, default=12, help="value channels (classes + 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}, device {args.device}, C = {args.channels}")
    print("| features | side | N | exact ms | lattice ms (build + apply) | exact ÷ lattice |")
    print("|---|---|---|---|---|---|")
    crossover: dict[str, int | None] = {}
    for kind in ("xy", "rgbxy", "rgbxy+3"):
        crossover[kind] = None
        for side in args.sides:
            feats = _features(kind, _image(args.root, side)).to(args.device)
            values = torch.rand(1, args.channels, side, side, device=args.device)
            times = {}
            for backend in ("exact", "lattice"):

                def call(f=feats, v=values, b=backend) -> torch.Tensor:
                    return gaussian_affinity_apply(f, v, include_self=True, backend=b)

                times[backend] = _best(call, args.device, args.repeats)
            ratio = times["exact"] / times["lattice"]
            if ratio > 1 and crossover[kind] is None:
                crossover[kind] = side * side
            print(
                f"| {kind} (d={feats.shape[1]}) | {side} | {side * side} | {1e3 * times['exact']:.2f} | "
                f"{1e3 * times['lattice']:.2f} | {ratio:.2f} |"
            )
    for kind, n in crossover.items():
        print(f"{kind}: lattice faster from N = {n} pixels" if n else f"{kind}: exact faster at every size")
    print("\ncommand: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
