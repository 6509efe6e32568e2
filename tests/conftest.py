"""Shared test set-up: offline Hub, this checkout's code first, quiet threads, tiny models and data.

The tiny builders reach tests as fixtures that return plain functions, called with the folder to write
(``make_tiny_dataset``, ``make_tiny_timm``, ``make_tiny_vit``), or returning a config, model or trainer
(``tiny_config``, ``tiny_model``, ``make_trainer``); ``class_names`` is the tiny dataset's species.
"""

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TRAINER = "autotrain.trainers.image_classification_custom"
TRAINER_DIR = REPO_ROOT.joinpath(*TRAINER.split("."))


class _ThisCheckoutsTrainer(importlib.abc.MetaPathFinder):
    """Imports the trainer subpackage from this checkout.

    ``pip install -e .`` maps it to the checkout the install ran in; a second checkout (a git worktree)
    sharing that environment would otherwise test the first one's trainer in-process beside its own
    ``data_prep`` and ``inference_app`` (which the repository root on ``sys.path`` already makes win).
    Subprocesses see the installed mapping: ``tests/test_foundation.py`` checks it.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TRAINER:
            return None
        return importlib.util.spec_from_file_location(
            fullname, TRAINER_DIR / "__init__.py", submodule_search_locations=[str(TRAINER_DIR)]
        )


sys.meta_path.insert(0, _ThisCheckoutsTrainer())

CLASS_NAMES = ["acer", "betula", "carex", "dianthus"]
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where config.json and the trainer live)."""
    return REPO_ROOT


@pytest.fixture
def run_trainer_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run ``python -m autotrain.trainers.image_classification_custom`` in-process on a config dict.

    Returns a function ``run(config, *extra_args) -> (exit code, [(level, message), ...])`` that writes
    ``tmp_path/config.json``, runs the command line from ``tmp_path`` and captures every log message.
    """
    from autotrain import logger
    from autotrain.trainers.image_classification_custom.__main__ import main

    monkeypatch.setenv("PAUSE_ON_FAILURE", "0")
    monkeypatch.chdir(tmp_path)

    def run(config: dict, *extra_args: str) -> tuple[int, list[tuple[str, str]]]:
        import json

        (tmp_path / "config.json").write_text(json.dumps(config))
        messages: list[tuple[str, str]] = []
        sink = logger.add(
            lambda m: messages.append((m.record["level"].name, str(m).rstrip("\n"))), level="DEBUG"
        )
        try:
            with pytest.raises(SystemExit) as exc:
                main(["--training_config", str(tmp_path / "config.json"), *extra_args])
        finally:
            logger.remove(sink)
        return exc.value.code, messages

    return run


# --- tiny data, backbones, configs and models (plain functions; the fixtures below hand them out) --------


def make_tiny_dataset(folder: Path, train_per_class: int = 6, seed: int = 0) -> Path:
    """A DatasetDict like data_prep's: 4 colour-coded classes, herbarium + field, class 3 herbarium-only.

    validation: field photos of classes 0-2; test: field photos of all 4 classes.
    """
    import numpy as np
    from datasets import Dataset, DatasetDict
    from PIL import Image as PILImage

    from data_prep.contract import dataset_features

    rng = np.random.default_rng(seed)
    features = dataset_features(CLASS_NAMES)  # the schema data_prep writes

    def image(label: int, domain: int):
        base = np.empty((48, 64, 3), np.float32)
        base[:] = COLOURS[label]
        base = base * (0.7 if domain == 0 else 1.0) + rng.normal(0, 25, base.shape)
        return PILImage.fromarray(np.clip(base, 0, 255).astype(np.uint8))

    def split(spec):
        rows = {k: [] for k in features}
        for label, domain, n in spec:
            for i in range(n):
                rows["image"].append(image(label, domain))
                rows["label"].append(label)
                rows["domain"].append(domain)
                rows["path"].append(f"{['herbarium', 'field'][domain]}/{CLASS_NAMES[label]}/{i}.jpg")
        return Dataset.from_dict(rows, features=features)

    n = train_per_class
    train = split([(c, 0, n) for c in range(4)] + [(c, 1, max(1, n // 2)) for c in range(3)])
    validation = split([(c, 1, 2) for c in range(3)])
    test = split([(c, 1, 2) for c in range(4)])
    DatasetDict({"train": train, "validation": validation, "test": test}).save_to_disk(str(folder))
    return folder


def make_tiny_timm(folder: Path, name: str = "test_efficientnet") -> Path:
    """A tiny random timm backbone saved as a local folder (config.json + weights)."""
    import timm
    import torch

    torch.manual_seed(0)
    timm.models.save_for_hf(timm.create_model(name, pretrained=False, num_classes=0), str(folder))
    return folder


def make_tiny_vit(folder: Path, num_labels: int | None = None) -> Path:
    """A tiny random transformers ViT saved with save_pretrained (+ its image processor).

    With ``num_labels``, a ``ViTForImageClassification`` with that many classes (for the stock trainer).
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        **({} if num_labels is None else {"num_labels": num_labels}),
    )
    (ViTModel if num_labels is None else ViTForImageClassification)(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def tiny_config(project: str, data: str, model: str, **overrides) -> dict:
    """A training config that runs in seconds on CPU."""
    config = {
        "project_name": project,
        "data_path": data,
        "model": model,
        "image_size": 32,
        "embedding_dim": 32,
        "epochs": 2,
        "warmup_epochs": 1,
        "batch_size": 8,
        "lr": 1e-3,
        "dataloader_num_workers": 0,
        "tsne": True,
        "seed": 0,
    }
    config.update(overrides)
    return config


def tiny_model(num_classes: int = 4):
    """A random ArcFace model on the tiny timm test backbone: first ``num_classes`` species, 16-d, 32 px."""
    import torch

    from autotrain.trainers.image_classification_custom.model_io import create_arcface_model

    torch.manual_seed(0)
    return create_arcface_model(
        "test_efficientnet", CLASS_NAMES[:num_classes], pretrained=False, embedding_dim=16, image_size=32
    )


def make_arcface_trainer(tmp_path: Path, model, **kwargs):
    """An ArcFaceTrainer for ``model`` on CPU, one step, outputs under ``tmp_path/out``; ``kwargs`` go to it."""
    from transformers import TrainingArguments

    from autotrain.trainers.image_classification_custom.arcface_trainer import ArcFaceTrainer
    from autotrain.trainers.image_classification_custom.dataset import NormalizeCollator

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, weight_decay=0.1, max_steps=1
    )
    return ArcFaceTrainer(
        model=model,
        args=args,
        data_collator=NormalizeCollator(model.config.image_mean, model.config.image_std),
        sampler_factory=lambda: None,
        backbone_lr=1e-5,
        head_lr=1e-3,
        **kwargs,
    )


@pytest.fixture
def class_names() -> list[str]:
    """The tiny dataset's species, in label order."""
    return list(CLASS_NAMES)


def _handed_out(function, name: str | None = None):
    """A fixture named ``name`` (default: the function's name) whose value is ``function`` itself."""

    def fixture():
        return function

    fixture.__doc__ = f"``{function.__name__}``: {function.__doc__.splitlines()[0]}"
    return pytest.fixture(name=name or function.__name__)(fixture)


_make_tiny_dataset = _handed_out(make_tiny_dataset)
_make_tiny_timm = _handed_out(make_tiny_timm)
_make_tiny_vit = _handed_out(make_tiny_vit)
_tiny_config = _handed_out(tiny_config)
_tiny_model = _handed_out(tiny_model)
_make_trainer = _handed_out(make_arcface_trainer, "make_trainer")


@pytest.fixture
def run_app_script(tmp_path):
    """``run_app_script(env)``: ``inference_app/app.py --model <missing folder>`` run as a script in
    ``tmp_path`` (offline, ``env`` over this environment; a value None removes the variable); returns the
    ``subprocess.CompletedProcess`` with text output."""
    import subprocess

    def run(env: dict[str, str | None] | None = None):
        full = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for name, value in (env or {}).items():
            if value is None:
                full.pop(name, None)
            else:
                full[name] = value
        return subprocess.run(
            [sys.executable, str(REPO_ROOT / "inference_app" / "app.py"), "--model", str(tmp_path / "nope")],
            cwd=tmp_path,
            env=full,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run
