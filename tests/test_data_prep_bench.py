"""Smoke test of benchmarks/bench_data_prep.py: ``run`` returns the documented figures (tiny sizes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_data_prep.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_data_prep", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_run_reports_both_builders(tmp_path: Path) -> None:
    bench = _load_bench()
    result = bench.run(tmp_path, n_small=6, n_large=2, num_proc=1, small_side=200, large_side=1500)
    for key in ("small_200px", "large_1500px"):
        part = result[key]
        assert (
            part["images"] in (6, 2) and part["data_prep_img_per_s"] > 0 and part["imagefolder_img_per_s"] > 0
        )
        assert part["findings"] == 0
    assert result["large_1500px"]["downsized"] == 2 and result["small_200px"]["downsized"] == 0
    assert isinstance(result["meets_target"], bool)
    assert list(tmp_path.iterdir()) == []  # inputs, outputs and caches are removed
