"""Shared test set-up: offline Hub, repository root on the path, quiet threads."""

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


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where config.json and the overlay live)."""
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
