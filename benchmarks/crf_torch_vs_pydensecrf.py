"""Dense CRF post-processing: batched torch mean field (exact kernels) vs pydensecrf2 (permutohedral, CPU).

On CamVid images (360×480, 11 classes) with a synthetic unary made from the ground-truth mask (``noise``:
softmax of 2·one-hot + σ·N(0, 1); ``blur``: a box-blurred one-hot mixed with 20% uniform), measures side
by side in one run, per image:

* the time of pydensecrf2 at full resolution (the usual CPU post-processing) and at each ``--scales``
  grid (same unary and resizing as the torch path);
* the time of ``weakseg.postprocess.dense_crf`` at each ``--scales`` grid on ``--device``;
* argmax agreement of the torch result with pydensecrf2 at full resolution and on the same grid, and the
  pixel accuracy (void excluded) of the unary alone, of pydensecrf2 and of the torch CRF.

The torch CRF costs O(N²) work per kernel application (fused attention, O(N) memory), so on a CPU use
a reduced grid (``--scales 0.25``); on a GPU full resolution (``--scales 1``) is the intended use.

    python benchmarks/crf_torch_vs_pydensecrf.py --num-images 5 --scales 0.25 0.5
    python benchmarks/crf_torch_vs_pydensecrf.py --device cuda --num-images 20 --scales 1 0.5
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.io import read_image, read_label
from weakseg.postprocess import CRFParams, dense_crf, pydensecrf_reference

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"
NUM_CLASSES = 11
IGNORE = 255


def _unary_probs(mask: torch.Tensor, kind: str, noise: float, seed: int) -> torch.Tensor:
    """[1, K, H, W] probabilities from a [H, W] mask (void pixels get the uniform distribution)."""
    void = mask == IGNORE
    onehot = F.one_hot(mask.masked_fill(void, 0), NUM_CLASSES).permute(2, 0, 1).float()[None]
    onehot[:, :, void] = 1.0 / NUM_CLASSES
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        return (2.0 * onehot + noise * torch.randn(onehot.shape, generator=gen)).softmax(1)
    if kind == "blur":
        blurred = F.avg_pool2d(onehot, 15, stride=1, padding=7, count_include_pad=False)
        return 0.8 * blurred + 0.2 / NUM_CLASSES
    raise ValueError(f"unknown unary kind '{kind}'")


def _timed(device: str, fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``, synchronising CUDA around the call."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _accuracy(pred: torch.Tensor, mask: torch.Tensor) -> float:
    keep = mask != IGNORE
    return (pred[keep] == mask[keep]).double().mean().item()


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).double().mean().item()


def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Per-row lists of per-image figures: time, agreement with pydensecrf@1 and @same grid, accuracy."""
    ids = (args.root / "splits" / f"{args.split}.txt").read_text().split()[: args.num_images]
    params = getattr(CRFParams, args.preset)(gaussian_truncate=args.gaussian_truncate)
    rows: dict[str, dict[str, list[float]]] = {}

    def record(name: str, **figures: float) -> None:
        for key, value in figures.items():
            rows.setdefault(name, {}).setdefault(key, []).append(value)

    if args.device == "cuda":  # warm-up: CUDA context and kernels
        dense_crf(
            torch.rand(1, NUM_CLASSES, 64, 64, device="cuda").softmax(1),
            torch.rand(1, 3, 64, 64, device="cuda"),
            params=params,
            num_iters=1,
        )
    for n, sample in enumerate(ids):
        image = torch.from_numpy(read_image(args.root / "images" / f"{sample}.jpg").copy()).permute(2, 0, 1)[
            None
        ]
        mask = torch.from_numpy(read_label(args.root / "masks" / f"{sample}.png").astype(np.int64))
        probs = _unary_probs(mask, args.unary, args.noise, seed=n)
        record("unary alone", accuracy=_accuracy(probs.argmax(1)[0], mask))
        ref_full, seconds = _timed("cpu", pydensecrf_reference, probs, image, params=params)
        ref_full = ref_full.argmax(1)[0]
        record("pydensecrf2 @1", seconds=seconds, accuracy=_accuracy(ref_full, mask))
        for scale in args.scales:
            grid_params = replace(params, scale=scale)
            if scale != 1.0:
                ref, seconds = _timed("cpu", pydensecrf_reference, probs, image, params=grid_params)
                ref = ref.argmax(1)[0]
                record(
                    f"pydensecrf2 @{scale:g}",
                    seconds=seconds,
                    agree_full=_agree(ref, ref_full),
                    accuracy=_accuracy(ref, mask),
                )
            else:
                ref = ref_full
            dev_probs, dev_image = probs.to(args.device), image.to(args.device)
            ours, seconds = _timed(args.device, dense_crf, dev_probs, dev_image, params=grid_params)
            ours = ours.argmax(1)[0].cpu()
            record(
                f"torch {args.device} @{scale:g}",
                seconds=seconds,
                agree_full=_agree(ours, ref_full),
                agree_same=_agree(ours, ref),
                accuracy=_accuracy(ours, mask),
            )
        print(f"[{n + 1}/{len(ids)}] {sample} done", flush=True)
    return rows


def _fmt(values: list[float] | None, pattern: str) -> str:
    return "-" if not values else pattern.format(float(np.mean(values)))


def report(rows: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    base = float(np.mean(rows["pydensecrf2 @1"]["seconds"]))
    print(
        f"\nCamVid {args.split}, {args.num_images} images 360x480, preset {args.preset}, unary {args.unary}"
        f" (noise {args.noise}), torch threads {torch.get_num_threads()}, device {args.device}"
    )
    header = (
        "row",
        "s/image",
        "× pydensecrf@1",
        "agree pydensecrf@1",
        "agree pydensecrf same grid",
        "pixel acc",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, figs in rows.items():
        secs = figs.get("seconds")
        ratio = "-" if not secs else f"{float(np.mean(secs)) / base:.2f}"
        cells = (
            name,
            _fmt(secs, "{:.3f}"),
            ratio,
            _fmt(figs.get("agree_full"), "{:.4f}"),
            _fmt(figs.get("agree_same"), "{:.4f}"),
            _fmt(figs.get("accuracy"), "{:.4f}"),
        )
        print("| " + " | ".join(cells) + " |")
    print("\ncommand: python " + " ".join(shlex.quote(a) for a in sys.argv))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="CamVid folder (dataset.json layout)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--num-images", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25], help="torch CRF grid factors")
    parser.add_argument("--preset", default="postprocess", choices=["postprocess", "pseudo_label"])
    parser.add_argument("--unary", default="noise", choices=["noise", "blur"])
    parser.add_argument("--noise", type=float, default=2.0, help="σ of the logit noise (--unary noise)")
    parser.add_argument(
        "--gaussian-truncate",
        type=float,
        default=None,
        help="local window for the spatial kernel, in σ (default: all pairs)",
    )
    args = parser.parse_args()
    if not (args.root / "splits" / f"{args.split}.txt").is_file():
        parser.error(f"no CamVid split at {args.root}/splits/{args.split}.txt (see --root)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    torch.manual_seed(0)
    report(run(args), args)


if __name__ == "__main__":
    main()
