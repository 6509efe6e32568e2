"""The install: only our packages are importable, and our trainer joins autotrain-advanced without breaking it."""

import json
import os
import subprocess
import sys
import sysconfig
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_custom_trainer_module_runs_from_any_directory(where, tmp_path):
    cwd = REPO_ROOT if where == "repo_root" else tmp_path
    result = _run(["-m", "autotrain.trainers.image_classification_custom", "--help"], cwd)
    assert result.returncode == 0, result.stderr
    assert "--training_config" in result.stdout


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_trainer_joins_the_installed_upstream_package(where, tmp_path):
    """Upstream's regular package wins even from the repository root; only our subpackage comes from here."""
    cwd = REPO_ROOT if where == "repo_root" else tmp_path
    code = (
        "import json, autotrain, autotrain.trainers, autotrain.trainers.common as common\n"
        "import autotrain.trainers.image_classification_custom as custom, data_prep, inference_app\n"
        "from autotrain import logger\n"
        "print(json.dumps({'version': autotrain.__version__, 'init': autotrain.__file__,"
        " 'trainers': autotrain.trainers.__file__, 'common': common.__file__, 'custom': custom.__file__,"
        " 'data_prep': data_prep.__file__, 'inference_app': inference_app.__file__,"
        " 'logger': type(logger).__name__, 'monitor': callable(common.monitor)}))"
    )
    result = _run(["-c", code], cwd)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["version"] == version("autotrain-advanced")
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()  # may lie inside the checkout (.venv)
    for upstream in ("init", "trainers", "common"):
        assert Path(info[upstream]).resolve().is_relative_to(site_packages), info[upstream]
    for ours, folder in [
        ("custom", "autotrain"),
        ("data_prep", "data_prep"),
        ("inference_app", "inference_app"),
    ]:
        assert Path(info[ours]).resolve().is_relative_to(REPO_ROOT / folder), info[ours]
    assert info["logger"] == "Logger" and info["monitor"]


def test_checkout_has_no_autotrain_package_init():
    """Without these files upstream's regular package wins over the checkout's folder on sys.path."""
    assert not (REPO_ROOT / "autotrain" / "__init__.py").exists()
    assert not (REPO_ROOT / "autotrain" / "trainers" / "__init__.py").exists()


def test_other_top_level_folders_are_not_importable_elsewhere(tmp_path):
    """`import tests` (benchmarks, docs, ...) from another directory never reaches this checkout."""
    own = {"autotrain", "data_prep", "inference_app"}
    folders = sorted(p.name for p in REPO_ROOT.iterdir() if p.is_dir() and p.name.isidentifier())
    others = [name for name in folders if name not in own and not name.startswith((".", "_"))]
    assert "tests" in others and "benchmarks" in others
    code = (
        "import importlib.util, json, sys\n"
        "def where(name):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    return None if spec is None else [spec.origin, *(spec.submodule_search_locations or [])]\n"
        "print(json.dumps({name: where(name) for name in sys.argv[1:]}))"
    )
    result = _run(["-c", code, *others], tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for name, places in found.items():
        inside = [p for p in places or [] if p and Path(p).resolve().is_relative_to(REPO_ROOT)]
        assert not inside, f"`import {name}` from another directory reaches the checkout: {inside}"
    literal = _run(["-c", "import tests; print(list(tests.__path__))"], tmp_path)
    assert str(REPO_ROOT / "tests") not in literal.stdout
    assert literal.returncode == 0 or "No module named 'tests'" in literal.stderr, literal.stderr


def test_gradio_is_current():
    assert Version(version("gradio")) >= Version("5.31"), "gradio older than 5.31 has published advisories"
    listing = _run(["-m", "pip", "list", "--format=json"], REPO_ROOT)
    packages = {p["name"].lower(): p["version"] for p in json.loads(listing.stdout)}
    assert Version(packages["gradio"]) >= Version("5.31")
    assert packages["autotrain-advanced"] == "0.8.36"


def _tiny_dataset(folder: Path, n_classes: int = 3, per_class: int = 4) -> None:
    import numpy as np
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    features = Features(
        {"image": Image(), "target": ClassLabel(names=[f"species_{i}" for i in range(n_classes)])}
    )

    def split(n):
        rows = {"image": [], "target": []}
        for label in range(n_classes):
            for _ in range(n):
                array = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                rows["image"].append(PILImage.fromarray(array))
                rows["target"].append(label)
        return Dataset.from_dict(rows, features=features)

    DatasetDict({"train": split(per_class), "validation": split(2)}).save_to_disk(str(folder))


@pytest.mark.slow
def test_stock_image_classification_trainer_still_trains(tmp_path, make_tiny_vit):
    """The stock trainer, in the same environment, imports and trains one tiny epoch."""
    model_dir = tmp_path / "tiny-vit"
    make_tiny_vit(model_dir, num_labels=3)
    # The stock params want a bare project name; it resolves against the working directory.
    project = tmp_path / "stock-project"
    _tiny_dataset(project / "autotrain-data")
    config = {
        "data_path": "stock-project/autotrain-data",
        "model": str(model_dir),
        "project_name": "stock-project",
        "epochs": 1,
        "batch_size": 6,
        "lr": 1e-3,
        "train_split": "train",
        "valid_split": "validation",
        "image_column": "image",
        "target_column": "target",
        "logging_steps": 1,
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    result = _run(
        ["-m", "autotrain.trainers.image_classification", "--training_config", str(config_path)], tmp_path
    )
    # The stock @monitor logs exceptions and exits 0: check results, not the exit code.
    assert result.returncode == 0, result.stderr
    assert (project / "model.safetensors").is_file(), result.stderr[-3000:]
    assert (project / "preprocessor_config.json").is_file()
    saved = json.loads((project / "config.json").read_text())
    assert saved["id2label"] == {"0": "species_0", "1": "species_1", "2": "species_2"}
