"""The scaling benchmark's arithmetic and report (bench_scale.py), on made-up measurements."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_scale  # noqa: E402
import run_all  # noqa: E402
import scale_data  # noqa: E402


def _run(n: int, c: int) -> dict:
    # time ~ N^1 * C^0, memory above a 500 MiB baseline ~ N^0.5 * C^1
    return {
        "n": n,
        "c": c,
        "image_size": 64,
        "stages": {
            "build": {"seconds": 0.01 * n, "peak_rss_mb": 500 + 0.2 * n**0.5 * c, "load_average": 1.0},
            "evaluation": {"seconds": 2.0, "peak_rss_mb": 500 + 10.0 * c / 100},
        },
    }


def test_fit_exponent_recovers_a_power_law():
    xs = [1000, 10000, 50000]
    assert bench_scale.fit_exponent(xs, [3 * x**1.5 for x in xs]) == pytest.approx(1.5)
    assert bench_scale.fit_exponent(xs, [7.0, 7.0, 7.0]) == pytest.approx(0.0)
    assert bench_scale.fit_exponent([10, 10], [1.0, 2.0]) is None
    assert bench_scale.fit_exponent([10, 100], [0.0, 2.0]) is None


def test_exponents_use_each_sweep_and_memory_above_the_baseline():
    runs = [_run(2000, 1000), _run(10000, 1000), _run(50000, 1000), _run(10000, 100)]
    fits = bench_scale.exponents(runs, baseline_mb=500)
    assert fits["n"]["build"]["time"] == pytest.approx(1.0)
    assert fits["n"]["build"]["memory"] == pytest.approx(0.5)
    assert fits["n"]["evaluation"]["time"] == pytest.approx(0.0)
    assert fits["c"]["build"]["memory"] == pytest.approx(1.0)
    assert fits["c"]["build"]["time"] == pytest.approx(0.0)


def test_markdown_and_run_all_section_show_every_stage_and_configuration():
    runs = [_run(2000, 1000), _run(10000, 1000), _run(10000, 100)]
    results = {
        "image_size": 64,
        "import_baseline_mb": 500.0,
        "runs": runs,
        "failed": [{"n": 50000, "c": 1000, "error": "scale_stages.py exited 1"}],
        "exponents": bench_scale.exponents(runs, 500.0),
        "command": "python benchmarks/bench_scale.py --preset small",
    }
    table = bench_scale.markdown(results)
    assert "| build | 20.0 s / " in table and "N=10,000 C=100" in table
    assert table.split("\n\n")[0].count("\n") == 1 + 1 + 1 + 1  # header, rule, two stages, load
    assert "| load average (1 min, highest at a stage's end) | 1.0 | 1.0 | 1.0 |" in table
    text = "\n".join(run_all._scale_md(results))
    assert "Failed: N=50,000 C=1,000" in text and "1.0-1.0" in text


def test_generated_layout_gives_every_species_a_sheet_and_field_photos_to_a_tenth():
    rows = scale_data.assign(2000, 100)
    species = {s for s, _, _ in rows}
    herbarium = {s for s, d, _ in rows if d == "herbarium"}
    field_train = {s for s, d, split in rows if d == "field" and split == "train"}
    field_test = {s for s, d, split in rows if d == "field" and split == "test"}
    assert species == herbarium and len(species) == 100
    assert field_train == field_test and len(field_test) == 10
    assert sum(d == "field" for _, d, _ in rows) == 400
    with pytest.raises(ValueError, match="fewer than the 100 species"):
        scale_data.assign(100, 100)


def test_an_uncounted_evaluation_pass_moves_from_save_to_evaluation():
    trainer = {
        "stages": {
            "evaluation": {"seconds": 10.0, "peak_rss_mb": 1.0},
            "save": {"seconds": 50.0, "peak_rss_mb": 1.0},
        },
        "facts": {
            "untimed": ["Embedder.embed_and_logits"],
            "save_outputs_calls": {
                "outputs.save_arcface_model": 1.5,
                "outputs.publish": 0.5,
                "outputs.calibrate": 3.0,
            },
        },
    }
    bench_scale.attribute_evaluation_pass(trainer)
    assert trainer["stages"]["evaluation"]["seconds"] == pytest.approx(58.0)
    assert trainer["stages"]["save"]["seconds"] == pytest.approx(2.0)
    assert trainer["facts"]["reattributed_seconds"] == pytest.approx(48.0)
    bench_scale.attribute_evaluation_pass(trainer)  # once only
    assert trainer["stages"]["evaluation"]["seconds"] == pytest.approx(58.0)


def test_each_stage_is_fitted_above_its_own_process_baseline():
    runs = [_run(2000, 1000), _run(10000, 1000), _run(50000, 1000)]
    for run in runs:  # a data_prep process starts at 200 MiB, not at the trainer's 500
        run["stages"]["build"]["peak_rss_mb"] = 200 + 0.01 * run["n"]
    fits = bench_scale.exponents(runs, {"build": 200.0, "default": 500.0})
    assert fits["n"]["build"]["memory"] == pytest.approx(1.0)
    assert fits["n"]["evaluation"]["memory"] == pytest.approx(0.0)
