"""Training images/s of two versions of weakseg side by side on the CPU protocols (issue 12, part 2).

Each run is the real trainer (``weakseg.engine.trainer.train``) of one version, imported from that
version's ``src`` and configured by that version's ``configs/<method>/...yaml`` plus the protocol's
overrides, for ``--steps`` steps; old and new alternate (old, new, then new, old, ...) for ``--rounds``
rounds, per protocol and method, in this one invocation. The old version is extracted from git
(``git archive <rev> src configs``) into a temporary folder; the new one is this checkout (or
``--new <rev>``, extracted the same way).

The protocols (one thread: ``OMP_NUM_THREADS=1``; ``data.num_workers=1``):

==========  =================================================================================
acdc        ``configs/<method>/acdc_effnetlite0-v3p_256x256_2k.yaml`` with ``data.resize=[128,128]
            data.crop_size=[128,128] eval.resize=[128,128] train.batch_size=8`` (dfr also
            ``method.shallow_scale=0.5``) on ACDC's real scribbles
voc-real    ``configs/<method>/camvid_effnetlite0-v3p_256x256_3k.yaml`` with
            ``data.crop_size=[192,192] data.scale_range=[0.5,1.0] train.batch_size=8`` on VOC
            images with scribbles simulated by ``weakseg data simulate`` (``--voc-root``)
voc-real-   the image-level ladder's ``configs/<method>/vocreal_effnetlite0-v3p_224x224_500.yaml``
image       (``aal``: crops 224, batch 8) on voc-real's tags (``--voc-image-root``), with
            ``method.cls_warmup=0 method.lr_start=0``: every step in AAL's joint phase
==========  =================================================================================

A version from before the configs were renamed has the same files as ``acdc_effnetlite0.yaml`` and
``camvid_effnetlite0.yaml``; each version runs the first name its ``configs`` holds.

Measured: every training log row gets the CPU seconds of the training process and its DataLoader
workers and the wall time (the trainer's ``MetricsLog.write`` is wrapped in the child); between two
rows, ``batch x steps`` images took that much CPU and wall time. The rows before the first log row
(start-up, first batches) are not counted. On a shared machine whose other jobs run at a higher
priority, wall time mostly measures the other jobs, so the ratio is taken on CPU time (images per
CPU-second); the wall-time ratio is reported beside it. The training runs read the protocol's files
through a view folder whose val split holds ``--val-images`` ids, so the final validation is short;
every training setting is the protocol's, and so is the training split unless ``--train-images N``
keeps its first N ids: then the timed steps fall in later epochs, like most steps of a long run (where
``data.cache_mb`` serves decoded samples from memory).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/train_speed_cpu.py --old 7fe8104 --new HEAD \\
        --voc-root runs/data/voc-real-scribbles --train-images 64 --steps 24 --log-every 8 --rounds 3 \\
        --json-dir benchmarks/results/speed

writes ``train_cpu_speedup_<method>.json`` (name, ratio, baseline, ours, unit, command, machine, and
per protocol and round figures). ``--_child`` is the internal entry point of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: protocol -> (config patterns with {method}: the current name, then the name in versions from before
#: the configs were renamed; overrides for every method; extra overrides per method)
PROTOCOLS: dict[str, tuple[tuple[str, ...], list[str], dict[str, list[str]]]] = {
    "acdc": (
        ("configs/{method}/acdc_effnetlite0-v3p_256x256_2k.yaml", "configs/{method}/acdc_effnetlite0.yaml"),
        [
            "data.root=../shared/data/acdc-scribble",
            "data.resize=[128,128]",
            "data.crop_size=[128,128]",
            "eval.resize=[128,128]",
            "train.batch_size=8",
            "data.num_workers=1",
        ],
        {"dfr": ["method.shallow_scale=0.5"]},
    ),
    "voc-real": (
        (
            "configs/{method}/camvid_effnetlite0-v3p_256x256_3k.yaml",
            "configs/{method}/camvid_effnetlite0.yaml",
        ),
        [
            "data.root=runs/data/voc-real-scribbles",
            "data.crop_size=[192,192]",
            "data.scale_range=[0.5,1.0]",
            "train.batch_size=8",
            "data.num_workers=1",
        ],
        {},
    ),
    "voc-real-image": (
        ("configs/{method}/vocreal_effnetlite0-v3p_224x224_500.yaml",),
        ["train.batch_size=8", "data.num_workers=1"],
        # every timed step in AAL's joint phase, label reassignment on
        {"aal": ["method.cls_warmup=0", "method.lr_start=0"]},
    ),
}


def protocol_methods(protocol: str, root: Path = ROOT) -> list[str]:
    """The methods of ``root/configs`` that have a config under the protocol's current name."""
    pattern = PROTOCOLS[protocol][0][0]
    folders = sorted(path.name for path in (root / "configs").iterdir() if path.is_dir())
    return [method for method in folders if (root / pattern.format(method=method)).is_file()]


def protocol_overrides(
    protocol: str, method: str, extra: Sequence[str] = (), root: Path = ROOT
) -> tuple[str, list[str]]:
    """(config path relative to the checkout at ``root``: the first of the protocol's names that it holds,
    overrides) of ``method`` on ``protocol``; ``extra`` last."""
    patterns, common, per_method = PROTOCOLS[protocol]
    paths = [pattern.format(method=method) for pattern in patterns]
    config = next((path for path in paths if (root / path).is_file()), paths[0])
    return config, [*common, *per_method.get(method, []), *extra]


# --------------------------------------------------------------------------------------------------
# the child: one training run of one version
# --------------------------------------------------------------------------------------------------
def _ticks(pid: int) -> int:
    """utime + stime of process ``pid`` in clock ticks (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted after the name


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (the DataLoader workers of the trainer)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                kids.append(int(entry.name))
    return kids


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live children."""
    ticks = sum(_ticks(pid) for pid in _children(os.getpid()))
    return time.process_time() + ticks / os.sysconf("SC_CLK_TCK")


def run_child(spec_path: str) -> None:
    """Train the version at ``spec["src"]`` with ``spec["config"]`` + ``spec["overrides"]``."""
    spec = json.loads(Path(spec_path).read_text())
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [spec["src"]] + [p for p in sys.path if p != here]  # (benchmarks/tabulate.py shadows)
    import weakseg.engine.trainer as trainer
    from weakseg.config import load_config

    if not Path(trainer.__file__).resolve().is_relative_to(Path(spec["src"]).resolve()):
        raise SystemExit(f"imported {trainer.__file__}, not the version under {spec['src']}")
    write = trainer.MetricsLog.write

    def timed_write(self: Any, row: dict[str, Any]) -> None:
        extra = {"cpu_s": tree_cpu_seconds(), "cpu_main_s": time.process_time(), "wall_s": time.monotonic()}
        write(self, {**row, **extra})

    trainer.MetricsLog.write = timed_write
    cfg = load_config(spec["config"], spec["overrides"])
    trainer.train(cfg, overwrite=True, device="cpu", progress=False)


# --------------------------------------------------------------------------------------------------
# the parent: versions, views, alternation, figures
# --------------------------------------------------------------------------------------------------
def extract(rev: str, into: Path) -> Path:
    """``src`` and ``configs`` of commit ``rev`` under ``into`` (no work tree, index or lock touched)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src", "configs"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def commit_of(rev: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True
    )
    return out.stdout.strip() or rev


def make_view(source: Path, view: Path, val_images: int, train_images: int | None = None) -> Path:
    """A folder-format dataset at ``view`` reading ``source``'s files: its train split (the first
    ``train_images`` ids when given) and the first ``val_images`` ids of its val split."""
    meta = json.loads((source / "dataset.json").read_text())
    back = os.path.relpath(source.resolve(), view.resolve())
    meta["layout"] = {key: f"{back}/{pattern}" for key, pattern in meta["layout"].items()}
    (view / "splits").mkdir(parents=True, exist_ok=True)
    (view / "dataset.json").write_text(json.dumps(meta, indent=1))
    train = (source / "splits" / "train.txt").read_text().split()[:train_images]
    (view / "splits" / "train.txt").write_text("\n".join(train) + "\n")
    val = (source / "splits" / "val.txt").read_text().split()[:val_images]
    (view / "splits" / "val.txt").write_text("\n".join(val) + "\n")
    return view


def run_once(
    version: dict[str, Any], config: str, overrides: list[str], out: Path, log: Path
) -> dict[str, Any]:
    """One training run; returns its timed windows summed: images, CPU seconds, wall seconds."""
    spec = {
        "src": str(version["src"]),
        "config": str(version["root"] / config),
        "overrides": [*overrides, f"out_dir={out}"],
    }
    spec_path = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with log.open("a") as sink:
        sink.write(f"\n=== {version['name']}: {config} {' '.join(spec['overrides'])}\n")
        sink.flush()
        subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--_child", str(spec_path)],
            cwd=str(ROOT), env=env, stdout=sink, stderr=subprocess.STDOUT, check=True,
        )  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "images_per_s" in r and "cpu_s" in r]
    batch = next(int(o.split("=", 1)[1]) for o in reversed(overrides) if o.startswith("train.batch_size="))
    images = batch * (rows[-1]["step"] - rows[0]["step"])
    return {
        "images": images,
        "cpu_s": rows[-1]["cpu_s"] - rows[0]["cpu_s"],
        "cpu_main_s": rows[-1]["cpu_main_s"] - rows[0]["cpu_main_s"],
        "wall_s": rows[-1]["wall_s"] - rows[0]["wall_s"],
        "steps": [rows[0]["step"], rows[-1]["step"]],
    }


def machine() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread per run, "
        f"load average {load} (shared machine; runs at nice {os.nice(0)})"
    )


def compare(args: argparse.Namespace, versions: dict[str, dict[str, Any]], work: Path) -> dict[str, Any]:
    """Per method and protocol: the rounds' figures and the pooled ratios (new ÷ old)."""
    roots = {
        "acdc": Path(args.acdc_root),
        "voc-real": Path(args.voc_root),
        "voc-real-image": Path(args.voc_image_root),
    }
    results: dict[str, Any] = {}
    log = work / "runs.log"
    for protocol in args.protocols:
        view = make_view(
            roots[protocol].resolve(), work / f"view-{protocol}", args.val_images, args.train_images
        )
        for method in args.methods:
            configs = {
                name: protocol_overrides(protocol, method, root=version["root"])[0]
                for name, version in versions.items()
            }
            config, protocol_set = protocol_overrides(protocol, method, root=versions["new"]["root"])
            timing_set = [
                f"train.steps={args.steps}",
                f"train.log_every={args.log_every}",
                f"train.val_every={args.steps + 1}",
                f"train.ckpt_every={args.steps}",
                "train.num_overlays=0",
            ]
            overrides = [*protocol_set, f"data.root={view}", *timing_set]
            rounds = []
            for r in range(args.rounds):
                order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
                figures = {}
                for name in order:
                    out = work / f"{protocol}-{method}-{name}-{r}"
                    figures[name] = run_once(versions[name], configs[name], overrides, out, log)
                    f = figures[name]
                    print(
                        f"[{protocol} {method} round {r + 1}] {name}: "
                        f"{f['images'] / f['cpu_s']:.2f} images/CPU-s "
                        f"(DataLoader worker {1 - f['cpu_main_s'] / f['cpu_s']:.0%} of the CPU), "
                        f"{f['images'] / f['wall_s']:.2f} images/s wall",
                        flush=True,
                    )
                rounds.append(figures)
            pooled = {
                name: {
                    key: sum(f[name][key] for f in rounds)
                    for key in ("images", "cpu_s", "cpu_main_s", "wall_s")
                }
                for name in ("old", "new")
            }
            old_cpu = pooled["old"]["images"] / pooled["old"]["cpu_s"]
            new_cpu = pooled["new"]["images"] / pooled["new"]["cpu_s"]
            old_wall = pooled["old"]["images"] / pooled["old"]["wall_s"]
            new_wall = pooled["new"]["images"] / pooled["new"]["wall_s"]
            results.setdefault(method, {})[protocol] = {
                "ratio": round(new_cpu / old_cpu, 3),
                "baseline": round(old_cpu, 3),
                "ours": round(new_cpu, 3),
                "wall_ratio": round(new_wall / old_wall, 3),
                "wall_baseline": round(old_wall, 3),
                "wall_ours": round(new_wall, 3),
                "round_ratios": [
                    round(
                        (f["new"]["images"] / f["new"]["cpu_s"]) / (f["old"]["images"] / f["old"]["cpu_s"]), 3
                    )
                    for f in rounds
                ],
                "worker_cpu_share": {
                    name: round(1 - pooled[name]["cpu_main_s"] / pooled[name]["cpu_s"], 3) for name in pooled
                },
                "images_timed_per_run": rounds[0]["old"]["images"],
                "config": config,
                **({"old_config": configs["old"]} if configs["old"] != config else {}),
                "protocol_overrides": protocol_set,
                "run_overrides": [f"data.root=<view of {roots[protocol]}>", *timing_set],
                "train_images": args.train_images,
            }
            entry = results[method][protocol]
            entry["median_round_ratio"] = round(statistics.median(entry["round_ratios"]), 3)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--old", default="7fe8104", help="the baseline commit (issue 12 starts from 7fe8104)")
    p.add_argument("--new", default=None, help="a commit to compare; default: this checkout's src")
    p.add_argument("--protocols", nargs="+", default=["acdc", "voc-real"], choices=list(PROTOCOLS))
    p.add_argument("--methods", nargs="+", default=["pce", "dfr"])
    p.add_argument("--steps", type=int, default=16, help="steps per run (the first log window is not timed)")
    p.add_argument("--log-every", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2, help="old/new pairs per protocol and method")
    p.add_argument("--val-images", type=int, default=4)
    p.add_argument(
        "--train-images",
        type=int,
        default=None,
        help="train on the first N ids of the split (default: all); with few, the timed steps lie in later "
        "epochs, as most steps of a long run do (decoded samples cached)",
    )
    p.add_argument("--acdc-root", default=str(ROOT.parent / "shared" / "data" / "acdc-scribble"))
    p.add_argument("--voc-root", default=str(ROOT / "runs" / "data" / "voc-real-scribbles"))
    p.add_argument("--voc-image-root", default=str(ROOT.parent / "shared" / "data" / "voc-real"))
    p.add_argument("--work", default=None, help="folder for the extracted versions and runs (default: temp)")
    p.add_argument("--json-dir", default=None, help="write train_cpu_speedup_<method>.json here")
    args = p.parse_args()
    if args._child:
        run_child(args._child)
        return
    for protocol in args.protocols:
        known_methods = protocol_methods(protocol)
        unknown = sorted(set(args.methods) - set(known_methods))
        if unknown:
            known = ", ".join(known_methods)
            p.error(f"protocol {protocol} has no config for {unknown}; its methods: {known}")
    work = Path(args.work or tempfile.mkdtemp(prefix="weakseg-speed-"))
    versions = {
        "old": {"name": f"old {commit_of(args.old)}", "root": extract(args.old, work / "old")},
        "new": (
            {"name": f"new {commit_of(args.new)}", "root": extract(args.new, work / "new")}
            if args.new
            else {"name": "new (this checkout)", "root": ROOT}
        ),
    }
    for version in versions.values():
        version["src"] = version["root"] / "src"
    print(f"# {versions['old']['name']} vs {versions['new']['name']}; runs and logs in {work}", flush=True)
    results = compare(args, versions, work)
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={threads} " if threads is not None else ""
    if os.nice(0):
        prefix += f"nice -n {os.nice(0)} "
    command = prefix + "python benchmarks/train_speed_cpu.py " + shlex.join(sys.argv[1:])
    where = machine()
    for method, per_protocol in results.items():
        worst = min(per_protocol, key=lambda k: per_protocol[k]["ratio"])
        record = {
            "name": f"train_cpu_speedup_{method}",
            "ratio": per_protocol[worst]["ratio"],
            "baseline": per_protocol[worst]["baseline"],
            "ours": per_protocol[worst]["ours"],
            "unit": (
                "training images per CPU-second of the trainer and its DataLoader worker (OMP_NUM_THREADS=1, "
                f"data.num_workers=1); ratio = ours ÷ baseline on the protocol where it is smallest ({worst})"
            ),
            "command": command,
            "machine": where,
            "old": versions["old"]["name"],
            "new": versions["new"]["name"],
            "protocols": per_protocol,
        }
        print(json.dumps(record, indent=1), flush=True)
        if args.json_dir:
            path = Path(args.json_dir) / f"train_cpu_speedup_{method}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
