"""The embedded default, end to end: sample -> DatasetDict -> the real training command with config.json.

Runs offline on CPU (several minutes on 2 cores), in a temporary folder, with the repository's own
``config.json``, and checks the trained model beats chance clearly on the field test photos.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return env


def _run(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_embedded_default_trains_above_chance(tmp_path):
    config = json.loads((REPO_ROOT / "config.json").read_text())
    for args in (
        ["-m", "data_prep", "sample", "--out", "data/sample"],
        ["-m", "data_prep", "build", "data/sample", "--out", config["data_path"]],
    ):
        result = _run(args, tmp_path, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    shutil.copy(REPO_ROOT / "config.json", tmp_path / "config.json")

    start = time.perf_counter()
    result = _run(
        ["-m", "autotrain.trainers.image_classification_custom", "--training_config", "config.json"],
        tmp_path,
        timeout=3000,
    )
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    project = tmp_path / config["project_name"]
    metrics = json.loads((project / "metrics.json").read_text())
    classes = metrics["classes"]["num_classes"]
    field = metrics["test"]["field"]
    print(
        f"embedded default: {wall:.0f}s wall, test field {field}, throughput {metrics['training']['throughput']}"
    )
    assert field["top1"] >= 3 / classes, field  # chance is 1/classes
    assert field["mrr"] > metrics["baseline_prototypes"]["test"]["field"]["mrr"]
    for name in (
        "model.safetensors",
        "README.md",
        "tsne.png",
        "preprocessor_config.json",
        "modeling_arcface.py",
    ):
        assert (project / name).is_file(), name
