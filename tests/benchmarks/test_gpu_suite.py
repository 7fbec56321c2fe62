"""benchmarks/gpu_suite.py keeps working: its --quick mode on CPU writes every section, and a failing
section is recorded without stopping the others."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_suite", None)


@pytest.mark.slow
def test_quick_run_writes_every_section(suite, tmp_path):
    # a large budget: on a loaded CI machine the soft budgets must not cut rows short
    report = suite.main(["--quick", "--device", "cpu", "--budget-scale", "100", "--out", str(tmp_path)])
    stem = report["date"] + "-quick"
    saved = json.loads((tmp_path / f"{stem}.json").read_text())
    assert saved["quick"] is True and list(saved["sections"]) == list(suite.SECTIONS)
    for name, section in saved["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("traceback"))
        assert section["seconds"] >= 0
    kernel = saved["sections"]["kernel"]["rows"]
    assert [r["size"] for r in kernel] == [16, 24]
    assert all(r["exact_vs_naive_rel_diff"] < 1e-4 for r in kernel)  # the fused kernel is exact
    assert all(r["lattice_vs_exact_cosine"] > 0.9 for r in kernel)
    lorm = saved["sections"]["lorm"]["rows"][0]
    assert lorm["rel_diff"] < 1e-4 and any("scaled_dot_product" in op for op in lorm["sdpa_ops"])
    crf = saved["sections"]["crf"]["rows"]
    assert crf["torch exact cpu"]["pixel_accuracy"] > 0.5
    segmentor = saved["sections"]["segmentor"]
    assert segmentor["images_per_s"] > 0 and segmentor["tflop_per_step"] > 0 and segmentor["mfu"] is None
    overhead = saved["sections"]["overhead"]["rows"]
    assert set(overhead) >= {"pce", "rloss", "gatedcrf", "dfr"}
    assert overhead["pce"]["over_pce"] == 1.0 and all(r.get("step_ms") for r in overhead.values())
    assert overhead["rloss"]["target"] == 1.15
    text = (tmp_path / f"{stem}.md").read_text()
    assert all(f"## {name} (ok" in text for name in suite.SECTIONS)


def test_a_failing_section_is_recorded_and_the_rest_run(suite, tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("no such kernel on this device")

    monkeypatch.setitem(suite.SECTIONS, "kernel", broken)
    monkeypatch.setitem(suite.SECTIONS, "lorm", lambda ctx: {"rows": [{"dtype": "float32", "skipped": "x"}]})
    report = suite.main(
        ["--quick", "--device", "cpu", "--sections", "kernel", "lorm", "--out", str(tmp_path)]
    )
    kernel, lorm = report["sections"]["kernel"], report["sections"]["lorm"]
    assert kernel["status"] == "error" and "no such kernel" in kernel["error"] and kernel["traceback"]
    assert lorm["status"] == "ok"
    text = (tmp_path / f"{report['date']}-quick.md").read_text()
    assert "> RuntimeError: no such kernel on this device" in text and "| float32 |" in text


def test_budget_and_hard_limit(suite):
    budget = suite.Budget(0.0)
    assert budget.left() <= 0
    with pytest.raises(suite.SectionTimeout):
        with suite.hard_limit(0.05):
            while True:
                pass
    with suite.hard_limit(0):  # 0 = no limit (CPU runs)
        pass


def test_peak_table_covers_the_lent_devices(suite):
    peaks = dict(suite.BF16_PEAK_TFLOPS)
    assert peaks["H100"] == peaks["H200"] == 989.4
    # a more specific name must come before "H100" (first match wins)
    names = [name for name, _ in suite.BF16_PEAK_TFLOPS]
    assert names.index("H100 PCIe") < names.index("H100")
