"""Dense CRF post-processing at full resolution on CPU: the torch lattice mean field vs pydensecrf2.

On CamVid val (360×480, 11 classes) and VOC val (``voc-real``, ~500×375, 21 classes) images, with a
synthetic unary from the ground-truth mask (softmax of 2·one-hot + 2·N(0, 1), void uniform), measures
side by side in one run, per image and interleaved (``--repeats`` rounds, best and median kept):

* the time of ``pydensecrf_reference`` (pydensecrf2: its C++ permutohedral lattice, one image at a time);
* the time of ``weakseg.postprocess.dense_crf(params=CRFParams.postprocess(backend="lattice"))``, warm
  (the smoothness kernel's lattice, which depends on the image size only, cached from an earlier image
  of that size: the steady state of a pipeline) and cold (that cache cleared first);
* the argmax agreement of the two and their pixel accuracy (void excluded).

Times are process CPU seconds (both run single-threaded: set ``OMP_NUM_THREADS=1``) and wall seconds;
the ratio is ours ÷ pydensecrf2 of the per-image medians. With ``--json-dir`` the CamVid ratio (warm) is
written as ``crf_cpu_vs_pydensecrf.json`` (name, ratio, baseline, ours, unit, command, machine; plus the
cold and wall-clock ratios and the VOC figures).

    OMP_NUM_THREADS=1 python benchmarks/crf_lattice_vs_pydensecrf.py --json-dir benchmarks/results/speed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.io import read_image, read_label
from weakseg.postprocess import CRFParams, dense_crf, pydensecrf_reference
from weakseg.postprocess import crf as crf_module

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DATASETS = {"camvid": 11, "voc-real": 21}
IGNORE = 255


def machine() -> str:
    """CPU model, cores, torch version and threads, and the load average when the run started."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"load average {load} (shared machine)"
    )


def _scene(folder: Path, sample: str, num_classes: int, seed: int):
    image = torch.from_numpy(np.array(read_image(folder / "images" / f"{sample}.jpg"))).permute(2, 0, 1)[None]
    mask = torch.from_numpy(read_label(folder / "masks" / f"{sample}.png").astype(np.int64))
    void = mask == IGNORE
    onehot = F.one_hot(mask.masked_fill(void, 0), num_classes).permute(2, 0, 1).float()[None]
    onehot[:, :, void] = 1.0 / num_classes
    gen = torch.Generator().manual_seed(seed)
    return image, mask, (2.0 * onehot + 2.0 * torch.randn(onehot.shape, generator=gen)).softmax(1)


def _timed(fn, *args, **kwargs):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def _accuracy(labels: torch.Tensor, mask: torch.Tensor) -> float:
    keep = mask != IGNORE
    return (labels[keep] == mask[keep]).double().mean().item()


def run_dataset(root: Path, dataset: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Per-image medians (over the repeats) of each figure."""
    folder = root / dataset
    ids = (folder / "splits" / "val.txt").read_text().split()[: args.num_images]
    params = CRFParams.postprocess(backend="lattice")
    rows: dict[str, list[float]] = {}
    for n, sample in enumerate(ids):
        image, mask, probs = _scene(folder, sample, DATASETS[dataset], seed=n)
        per: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            ref, cpu, wall = _timed(pydensecrf_reference, probs, image, params=params)
            per.setdefault("pyd_cpu", []).append(cpu)
            per.setdefault("pyd_wall", []).append(wall)
            ours, cpu, wall = _timed(dense_crf, probs, image, params=params)  # grid lattice cached
            per.setdefault("warm_cpu", []).append(cpu)
            per.setdefault("warm_wall", []).append(wall)
            crf_module._GRID_LATTICES.clear()
            _, cpu, wall = _timed(dense_crf, probs, image, params=params)
            per.setdefault("cold_cpu", []).append(cpu)
            per.setdefault("cold_wall", []).append(wall)
        ours_labels, ref_labels = ours.argmax(1)[0], ref.argmax(1)[0]
        for key, values in per.items():
            rows.setdefault(key, []).append(statistics.median(values))
        rows.setdefault("agreement", []).append((ours_labels == ref_labels).double().mean().item())
        rows.setdefault("acc_unary", []).append(_accuracy(probs.argmax(1)[0], mask))
        rows.setdefault("acc_pyd", []).append(_accuracy(ref_labels, mask))
        rows.setdefault("acc_ours", []).append(_accuracy(ours_labels, mask))
        print(f"[{dataset} {n + 1}/{len(ids)}] {sample} {tuple(image.shape[-2:])} done", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="folder holding camvid/ and voc-real/"
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--num-images", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per image (median kept)")
    parser.add_argument("--json-dir", type=Path, default=None, help="write crf_cpu_vs_pydensecrf.json here")
    args = parser.parse_args()
    pytest_like_skip = [d for d in args.datasets if not (args.root / d / "splits" / "val.txt").is_file()]
    if pytest_like_skip:
        parser.error(f"no val split for {pytest_like_skip} under {args.root}")
    torch.manual_seed(0)
    started = machine()
    command = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in sys.argv)
    results = {d: run_dataset(args.root, d, args) for d in args.datasets}
    print(f"\n{started}; {args.num_images} images per dataset, {args.repeats} interleaved rounds each")
    header = (
        "dataset",
        "pydensecrf2 s (cpu / wall)",
        "ours warm s (cpu / wall)",
        "ours cold s (cpu / wall)",
        "ours ÷ pydensecrf2 warm (cpu / wall)",
        "cold (cpu / wall)",
        "argmax agreement",
        "pixel acc unary / pydensecrf2 / ours",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    summary = {}
    for dataset, rows in results.items():
        mean = {key: float(np.mean(values)) for key, values in rows.items()}
        ratio = {
            f"{kind}_{clock}": mean[f"{kind}_{clock}"] / mean[f"pyd_{clock}"]
            for kind in ("warm", "cold")
            for clock in ("cpu", "wall")
        }
        summary[dataset] = (mean, ratio)
        print(
            f"| {dataset} | {mean['pyd_cpu']:.3f} / {mean['pyd_wall']:.3f} | {mean['warm_cpu']:.3f} / "
            f"{mean['warm_wall']:.3f} | {mean['cold_cpu']:.3f} / {mean['cold_wall']:.3f} | "
            f"{ratio['warm_cpu']:.2f} / {ratio['warm_wall']:.2f} | {ratio['cold_cpu']:.2f} / "
            f"{ratio['cold_wall']:.2f} | {min(rows['agreement']):.4f} (min) | {mean['acc_unary']:.4f} / "
            f"{mean['acc_pyd']:.4f} / {mean['acc_ours']:.4f} |"
        )
    print(f"\ncommand: {command}")
    if args.json_dir is not None and "camvid" in summary:
        mean, ratio = summary["camvid"]
        args.json_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "name": "crf_cpu_vs_pydensecrf",
            "ratio": round(ratio["warm_cpu"], 3),
            "baseline": round(mean["pyd_cpu"], 4),
            "ours": round(mean["warm_cpu"], 4),
            "unit": "s/image (process CPU, 1 thread; ratio = ours ÷ pydensecrf2, full CamVid 360×480)",
            "command": command,
            "machine": started,
            "cold_ratio": round(ratio["cold_cpu"], 3),
            "wall_ratio": round(ratio["warm_wall"], 3),
            "min_agreement": round(min(results["camvid"]["agreement"]), 5),
        }
        if "voc-real" in summary:  # the same figures at VOC size (~500×375, 21 classes)
            voc_mean, voc_ratio = summary["voc-real"]
            record["voc_ratio"] = round(voc_ratio["warm_cpu"], 3)
            record["voc_cold_ratio"] = round(voc_ratio["cold_cpu"], 3)
            record["voc_min_agreement"] = round(min(results["voc-real"]["agreement"]), 5)
        path = args.json_dir / "crf_cpu_vs_pydensecrf.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
