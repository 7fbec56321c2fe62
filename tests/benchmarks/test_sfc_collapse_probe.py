"""benchmarks/sfc_collapse_probe.py: the PCM reach and the seed statistics it reports."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location(
        "sfc_collapse_probe", ROOT / "benchmarks" / "sfc_collapse_probe.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sfc_collapse_probe"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("sfc_collapse_probe", None)


def test_pcm_reach_is_one_for_identical_features_and_one_pixel_for_orthogonal_ones(probe):
    same = torch.ones(1, 4, 3, 3)  # every pixel alike: each column of the affinity is uniform
    assert probe.pcm_reach(same) == pytest.approx(1.0, rel=1e-4)
    distinct = torch.eye(9).reshape(1, 9, 3, 3)  # pairwise orthogonal: each pixel draws on itself only
    assert probe.pcm_reach(distinct) == pytest.approx(1 / 9, rel=1e-4)
    # two groups of orthogonal features (sizes 3 and 6): a pixel draws on its own group
    grouped = torch.zeros(1, 2, 3, 3)
    grouped[0, 0, 0] = 1.0
    grouped[0, 1, 1:] = 1.0
    assert probe.pcm_reach(grouped) == pytest.approx((3 * 3 + 6 * 6) / 9 / 9, rel=1e-4)


def test_seed_statistics_counts_background_seeds_over_valid_cells(probe):
    seeds = torch.zeros(1, 3, 2, 2)
    seeds[0, 0, 0, 0] = 1.0  # one background seed
    seeds[0, 1, 0, 1] = seeds[0, 1, 1, 0] = 1.0
    valid = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    assert probe.seed_statistics(seeds, valid) == (0.0, pytest.approx(1 / 3))
    seeds[0, 0] = 0.0
    assert probe.seed_statistics(seeds, valid) == (1.0, 0.0)
