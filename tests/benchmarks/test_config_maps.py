"""The benchmark scripts name configs that exist: their config maps follow the files under configs/."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from weakseg.config import load_config

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = (
    "results_io",
    "quality_equal_budget",
    "scribble_ladder",
    "image_level_ladder",
    "aal_ladder",
    "camvid_cam_seeds",
    "train_speed_cpu",
    "gpu_suite",
)


@pytest.fixture(scope="module")
def bench():
    """The scripts as modules (they import each other by name from benchmarks/)."""
    modules = {}
    try:
        for name in SCRIPTS:
            sys.path.insert(0, str(BENCHMARKS))  # the ladders take it off again once imported
            modules[name] = importlib.import_module(name)
        yield modules
    finally:
        # benchmarks/tabulate.py must not shadow the tabulate package
        sys.path[:] = [p for p in sys.path if p != str(BENCHMARKS)]
        for name in SCRIPTS:
            sys.modules.pop(name, None)


def _config(method: str, file: str, fallback: bool = False) -> Path:
    """configs/<method>/<file>, or pce's where a script swaps the method into pce's config."""
    path = ROOT / "configs" / method / file
    if fallback and not path.is_file():
        path = ROOT / "configs" / "pce" / file
    assert path.is_file(), path
    load_config(path)
    return path


def test_quality_and_scribble_ladders(bench):
    quality = bench["quality_equal_budget"]
    methods = {method for method, _ in quality.VARIANTS.values()}
    for seg_file, cam_file in quality.CONFIG_FILES.values():
        for method in methods:
            _config(method, seg_file, fallback=True)
        _config("cam", cam_file)
    for proto in bench["scribble_ladder"].PROTOCOLS.values():
        for method in methods:
            _config(method, proto["config"], fallback=True)
        _config("cam", proto["cam_config"])


def test_image_level_scripts(bench):
    for cls_file, aal_file, _, _ in bench["image_level_ladder"].DATASETS.values():
        _config("cam", cls_file)
        _config("sfc", cls_file)
        _config("aal", aal_file)
    for file in bench["aal_ladder"].CONFIG_FILES.values():
        _config("aal", file)
    for method in ("cam", "sfc"):
        _config(method, bench["camvid_cam_seeds"].CONFIG_FILE)


def test_gpu_suite_and_cpu_speed_protocols(bench):
    for method in ("pce", "rloss", "gatedcrf", "dfr"):
        _config(method, bench["gpu_suite"].VOC_CONFIG)
    speed = bench["train_speed_cpu"]
    assert {"pce", "dfr"} <= set(speed.protocol_methods("acdc"))
    assert {"pce", "dfr"} <= set(speed.protocol_methods("voc-real"))
    assert speed.protocol_methods("voc-real-image") == ["aal"]
    for protocol, (patterns, _, _) in speed.PROTOCOLS.items():
        for method in speed.protocol_methods(protocol):
            config, _ = speed.protocol_overrides(protocol, method)
            assert config == patterns[0].format(method=method)  # this checkout: the current name
            assert (ROOT / config).is_file(), config
