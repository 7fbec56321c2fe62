"""Dense CRF loss (rloss) forward + backward on CPU: permutohedral lattice vs the exact fused kernel.

At rloss's setting (σ_rgb 15, σ_xy 100, predictions at ×0.5, VOC's 21 classes) on real VOC photos
resized to ``--input``² (512 by default: a 256² loss grid, 65,536 pixels), measures side by side in one
run the time of ``dense_crf_loss(..., backend=b)`` plus its backward to the logits for ``b = "exact"``
and ``"lattice"``, their ratio (exact ÷ lattice), and how the lattice's loss relates to the exact one:
the value ratio, the cosine between the two gradients, and the relative residual of the gradient
after the best single scale (the lattice's kernel sums are a lumpy fraction of the exact ones; the
stated tolerance: value ratio 0.5–0.7, cosine ≥ 0.98, docs/lattice.md). Times are process CPU seconds
(single-threaded with ``OMP_NUM_THREADS=1``), best of ``--repeats`` (the exact form runs once per image
unless ``--exact-repeats``). With ``--json-dir`` the figure is written as
``loss_lattice_vs_exact_256.json`` (name, ratio, baseline, ours, unit, command, machine).

    OMP_NUM_THREADS=1 python benchmarks/loss_lattice_vs_exact.py --json-dir benchmarks/results/speed
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crf_lattice_vs_pydensecrf import machine
from weakseg.io import read_image
from weakseg.losses.dense_crf import dense_crf_loss

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "voc-real"


def _inputs(root: Path, sample: str, size: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The photo resized to ``size``² (0..255) and smooth random logits [1, K, size, size]."""
    photo = torch.from_numpy(np.array(read_image(root / "images" / f"{sample}.jpg"))).permute(2, 0, 1)
    image = F.interpolate(photo[None].float(), size=(size, size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, classes, 8, 8, generator=gen) * 3
    return image, F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def _forward_backward(
    logits: torch.Tensor, image: torch.Tensor, backend: str
) -> tuple[float, torch.Tensor, float]:
    """(loss value, gradient to the logits, process CPU seconds) of one forward + backward."""
    x = logits.clone().requires_grad_()
    start = time.process_time()
    loss = dense_crf_loss(
        x.softmax(1), image, None, sigma_rgb=15.0, sigma_xy=100.0, scale=0.5, weight=1.0, backend=backend
    )
    loss.backward()
    return loss.item(), x.grad, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="voc-real folder")
    parser.add_argument("--input", type=int, default=512, help="input side; the loss grid is half of it")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--num-images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="lattice runs per image (best kept)")
    parser.add_argument("--exact-repeats", type=int, default=1)
    parser.add_argument("--json-dir", type=Path, default=None)
    args = parser.parse_args()
    split = args.root / "splits" / "val.txt"
    if not split.is_file():
        parser.error(f"no val split at {split} (see --root)")
    started = machine()
    command = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in sys.argv)
    grid = args.input // 2
    rows = []
    for n, sample in enumerate(split.read_text().split()[: args.num_images]):
        image, logits = _inputs(args.root, sample, args.input, args.classes, seed=n)
        _forward_backward(logits[..., :64, :64], image[..., :64, :64], "lattice")  # warm-up
        lattice = [_forward_backward(logits, image, "lattice") for _ in range(args.repeats)]
        exact = [_forward_backward(logits, image, "exact") for _ in range(args.exact_repeats)]
        value_l, grad_l = lattice[0][:2]
        value_e, grad_e = exact[0][:2]
        gl, ge = grad_l.flatten().double(), grad_e.flatten().double()
        scale = float(gl @ ge / (gl @ gl))
        rows.append(
            {
                "exact_s": min(t for *_, t in exact),
                "lattice_s": min(t for *_, t in lattice),
                "value_ratio": value_l / value_e,
                "cosine": float(gl @ ge / (gl.norm() * ge.norm())),
                "residual": float((scale * gl - ge).norm() / ge.norm()),
            }
        )
        print(f"[{n + 1}/{args.num_images}] {sample}: {rows[-1]}", flush=True)
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    ratio = mean["exact_s"] / mean["lattice_s"]
    print(f"\n{started}")
    print(f"VOC photos at {args.input}², loss grid {grid}² ({grid * grid} px), K = {args.classes}, fwd + bwd")
    print(
        "| backend | s (process CPU) | exact ÷ lattice | lattice/exact value | grad cosine | grad residual |"
    )
    print("|---|---|---|---|---|---|")
    print(f"| exact | {mean['exact_s']:.2f} | 1 | - | - | - |")
    print(
        f"| lattice | {mean['lattice_s']:.3f} | {ratio:.0f}× | {mean['value_ratio']:.3f} | "
        f"{min(r['cosine'] for r in rows):.4f} (min) | {max(r['residual'] for r in rows):.3f} (max) |"
    )
    print(f"\ncommand: {command}")
    if args.json_dir is not None:
        args.json_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "name": f"loss_lattice_vs_exact_{grid}",
            "ratio": round(ratio, 1),
            "baseline": round(mean["exact_s"], 3),
            "ours": round(mean["lattice_s"], 4),
            "unit": (
                f"s per forward+backward (process CPU, 1 thread; ratio = exact ÷ lattice; loss grid {grid}², "
                f"K = {args.classes}, rloss σ_rgb 15 σ_xy 100 scale 0.5)"
            ),
            "command": command,
            "machine": started,
            "value_ratio": round(mean["value_ratio"], 4),
            "min_gradient_cosine": round(min(r["cosine"] for r in rows), 5),
        }
        path = args.json_dir / f"loss_lattice_vs_exact_{grid}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
