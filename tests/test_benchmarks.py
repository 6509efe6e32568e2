"""The benchmark harness (benchmarks/): step-timing arithmetic, the stock trainer's backbone folder, the
report, failure handling, and (slow) the whole harness on a tiny configuration so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_training  # noqa: E402
import run_all  # noqa: E402
import stock_harness as sh  # noqa: E402


def _steps(ends, batch=4, trainable=10, total=10, synced=True):
    return [
        {
            "end": e,
            "step_s": 0.5,
            "data_s": 0.1,
            "batch": batch,
            "image_size": [64, 64],
            "trainable": trainable,
            "total": total,
            "synced": synced,
        }
        for e in ends
    ]


def test_throughput_counts_steps_after_the_first():
    result = {"kind": "stock", "steps": _steps([10.0, 11.0, 12.0, 13.0]), "trainer_logs": []}
    t = sh.throughput(result, "full")
    assert t["steps"] == 3 and t["images"] == 12
    assert t["seconds"] == pytest.approx(3.0)
    assert t["images_per_s"] == pytest.approx(4.0)
    assert t["data_s"] == pytest.approx(0.1) and t["fwd_bwd_s"] == pytest.approx(0.5)
    assert t["other_s"] == pytest.approx(0.4)


def test_throughput_separates_stages_and_ends_on_a_synchronised_step():
    head = _steps([1.0, 1.5, 2.0], trainable=3)
    full = _steps([4.0, 6.0, 8.0, 9.0], synced=True)
    full[-1]["synced"] = False  # CUDA: only synchronised steps may end the interval
    result = {"kind": "ours", "steps": head + full, "trainer_logs": [{"train_samples_per_second": 3.3}]}
    assert sh.stage_of(head[0]) == "head" and sh.stage_of(full[0]) == "full"
    assert sh.throughput(result, "head")["images_per_s"] == pytest.approx(8 / 1.0)
    t = sh.throughput(result, "full")
    assert t["images"] == 8 and t["seconds"] == pytest.approx(4.0)
    assert t["trainer_samples_per_s"] == 3.3
    with pytest.raises(sh.BenchError):
        sh.throughput({"kind": "stock", "steps": _steps([1.0]), "trainer_logs": []}, "full")


def test_backbone_folders_load_in_transformers_and_timm(tmp_path):
    import timm
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    paths = sh.random_backbone_folders(tmp_path, "test_efficientnet", 64)
    stock = AutoModelForImageClassification.from_pretrained(
        paths["stock"], num_labels=3, ignore_mismatched_sizes=True
    )
    assert type(stock).__name__ == "TimmWrapperForImageClassification"
    processor = AutoImageProcessor.from_pretrained(paths["stock"])
    assert type(processor).__name__ == "ViTImageProcessor" and processor.size == {"height": 64, "width": 64}
    ours = timm.create_model(f"local-dir:{paths['timm']}", pretrained=True, num_classes=0)
    stock_sd = stock.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, stock_sd[f"timm_model.{key}"]), key
    assert stock(torch.zeros(1, 3, 64, 64)).logits.shape == (1, 3)


def test_gpu_section_is_skipped_without_cuda(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = bench_training.run_gpu(tmp_path)
    assert out == {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
    assert not any(tmp_path.iterdir())  # nothing was run


def test_report_round_trip_and_failed_section_has_no_numbers(tmp_path):
    meta = {
        "date": "2026-01-01T00:00:00",
        "machine_line": "test cpu",
        "command": "python x --only a",
        "sections": [],
    }
    sections = {
        "gpu": {"status": "ok", "result": {"skipped": "no CUDA device"}, "meta": meta, "seconds": 0.1},
        "training": {
            "status": "failed",
            "error": "BenchError: stock run failed",
            "meta": meta,
            "seconds": 1.0,
        },
    }
    text = run_all.render(sections, meta, quick=False)
    assert "Skipped: no CUDA device" in text
    assert "**FAILED** (no figures)" in text and "stock run failed" in text
    assert "x --only a" in text  # the command, in the visible text
    report = tmp_path / "B.md"
    report.write_text(text)
    assert run_all.load_previous(report) == json.loads(json.dumps(sections))


def test_only_flag_validation():
    args = run_all.parse_args(["--only", "training,gpu", "--only", "accuracy", "--quick", "--out", "/tmp/x"])
    assert args.sections == ["training", "accuracy", "gpu"] and args.seeds == 1
    with pytest.raises(SystemExit):
        run_all.parse_args(["--only", "nope"])


@pytest.mark.slow
def test_stock_failure_swallowed_by_monitor_is_detected(tmp_path):
    """The stock trainer's @monitor logs exceptions and exits 0: the harness must still fail."""
    paths = sh.random_backbone_folders(tmp_path / "bb", "test_efficientnet", 64)
    (tmp_path / "runs" / "stock-x").mkdir(parents=True)  # no autotrain-data: load_from_disk raises
    cfg = sh.stock_config("stock-x", paths["stock"], epochs=1, batch_size=2, lr=1e-3, seed=0)
    with pytest.raises(sh.BenchError, match="monitor|saved no model"):
        sh.run_trainer("stock", cfg, tmp_path / "runs", timeout=300)


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


@pytest.mark.slow
def test_run_all_quick_end_to_end(quick_out):
    report = quick_out / "BENCHMARKS.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run_all.py"),
            "--quick",
            "--out",
            str(quick_out),
            "--report",
            str(report),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    text = report.read_text()
    assert "QUICK RUN" in text
    sections = run_all.load_previous(report)
    assert set(sections) == set(run_all.SECTIONS)
    assert all(s["status"] == "ok" for s in sections.values())
    training = sections["training"]["result"]
    for kind in ("stock", "ours_full", "ours_head"):
        assert training[kind]["median_images_per_s"] > 0
        assert training[kind]["images_per_run"] > 0
    assert training["full_vs_stock"]["ratio_of_medians"] > 0
    summary = sections["accuracy"]["result"]["summary"]
    for variant in ("ours_arcface", "ours_margin0", "stock"):
        assert 0.0 <= summary[variant]["all_top1"]["mean"] <= 1.0
        assert summary[variant]["all_n"] > 0
    assert (
        "skipped" in sections["gpu"]["result"]
        or sections["gpu"]["result"]["ours_full"]["median_images_per_s"] > 0
    )
    for meta in (s["meta"] for s in sections.values()):
        assert meta["date"] and meta["machine"]["torch"] and "run_all.py" in meta["command"]


@pytest.mark.slow
def test_run_all_exits_non_zero_when_a_run_fails(quick_out):
    report = quick_out / "FAILED.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run_all.py"),
            "--quick",
            "--only",
            "training",
            "--stock-lr",
            "-1",  # torch's AdamW rejects it inside the stock trainer, whose @monitor exits 0
            "--out",
            str(quick_out),
            "--report",
            str(report),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = report.read_text()
    assert "**FAILED** (no figures)" in text and "images/s per run" not in text
    assert run_all.load_previous(report)["training"]["status"] == "failed"


@pytest.mark.slow
def test_gpu_code_path_runs_on_cpu_at_tiny_size(quick_out):
    out = bench_training.run_gpu(quick_out, quick=True, allow_cpu=True)
    assert out["device"] == "cpu" and "not a GPU measurement" in out["note"]
    assert out["ours_full"]["median_images_per_s"] > 0 and out["stock"]["median_images_per_s"] > 0
