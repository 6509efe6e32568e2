"""End to end: the real ``python -m autotrain.trainers.image_classification_custom`` in a subprocess.

Tiny generated DatasetDict (4 classes, both domains, one class without field photos), tiny local timm
and transformers backbones, 32 px images. Checks the model folder loads with a plain
``pipeline(..., trust_remote_code=True)`` in a fresh process, that metrics.json and the card agree, that
failures exit non-zero, that a killed run resumes, and that the Hub upload holds no token.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotrain.trainers.image_classification_custom.model_card import format_metric

MODULE = "autotrain.trainers.image_classification_custom"


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return env


def _write_config(tmp_path: Path, config: dict, name: str = "cfg.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def _run(tmp_path: Path, config: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    cfg = _write_config(tmp_path, config)
    return subprocess.run(
        [sys.executable, "-m", MODULE, "--training_config", str(cfg)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


PIPELINE_CODE = """
import json, sys
from PIL import Image
from transformers import pipeline
clf = pipeline("image-classification", model=sys.argv[1], trust_remote_code=True)
out = clf(Image.open(sys.argv[2]), top_k=3)
assert not [m for m in sys.modules if m.startswith("autotrain") or m.startswith("data_prep")], "project imported"
print(json.dumps(out))
"""


def _check_pipeline_loads(tmp_path: Path, folder: Path, class_names: list[str]) -> list:
    from datasets import load_from_disk

    image_path = tmp_path / "probe.png"
    load_from_disk(str(tmp_path / "data"))["test"][0]["image"].save(image_path)
    fresh = tmp_path / "fresh"
    fresh.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE_CODE, str(folder.resolve()), str(image_path)],
        cwd=fresh,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(predictions) == 3 and {p["label"] for p in predictions} <= set(class_names)
    return predictions


def _card_row(card: str, section: str, subset: str) -> list[str]:
    block = card.split(f"## Metrics: {section} split", 1)[1]
    row = next(line for line in block.splitlines() if f"(`{subset}`)" in line)
    return [cell.strip() for cell in row.strip("|").split("|")][1:]


def _check_outputs(project: Path, class_names: list[str], token: str = None) -> dict:
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_arcface.py",
        "preprocessor_config.json",
        "training_params.json",
        "metrics.json",
        "README.md",
        "tsne.png",
    ):
        assert (project / name).is_file(), name
    config = json.loads((project / "config.json").read_text())
    assert config["id2label"] == {str(i): n for i, n in enumerate(class_names)}
    assert config["auto_map"]["AutoModelForImageClassification"].startswith("modeling_arcface.")
    metrics = json.loads((project / "metrics.json").read_text())
    assert set(metrics["validation"]) >= {"all", "field", "with_field"}
    assert "herbarium_only" not in metrics["validation"]  # no field photo of class 3: normal
    assert metrics["test"]["herbarium_only"]["n"] == 2
    assert metrics["classes"] == {"num_classes": 4, "with_field": 3, "herbarium_only": 1}
    card = (project / "README.md").read_text()
    for split in ("validation", "test"):
        for subset, values in metrics[split].items():
            expected = [format_metric(values[k]) for k in ("n", "top1", "top5", "mrr", "macro_f1", "ece")]
            assert _card_row(card, split, subset) == expected, (split, subset)
    assert "library_name: transformers" in card and "pipeline_tag: image-classification" in card
    assert not list(project.glob("cache"))  # temporary image cache removed
    return metrics


@pytest.mark.slow
def test_timm_backbone_end_to_end(tmp_path, make_tiny_dataset, make_tiny_timm, tiny_config, class_names):
    make_tiny_dataset(tmp_path / "data")
    make_tiny_timm(tmp_path / "tiny-timm")
    result = _run(tmp_path, tiny_config("tiny-timm-run", "data", "tiny-timm"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    project = tmp_path / "tiny-timm-run"
    metrics = _check_outputs(project, class_names)
    assert metrics["training"]["throughput"]["head_images_per_second"] > 0
    assert "baseline_prototypes" in metrics
    _check_pipeline_loads(tmp_path, project, class_names)
    assert list(project.glob("checkpoint-*"))  # kept, like the stock trainer


@pytest.mark.slow
def test_transformers_backbone_end_to_end(
    tmp_path, make_tiny_dataset, make_tiny_vit, tiny_config, class_names
):
    make_tiny_dataset(tmp_path / "data")
    make_tiny_vit(tmp_path / "tiny-vit")
    config = tiny_config(
        "tiny-vit-run",
        "data",
        "tiny-vit",
        sampling="class_balanced",
        arcface_subcenters=2,
        head_init="random",
        augmentation_device="gpu",  # batched augmentation; without CUDA it runs on the CPU (same path)
    )
    result = _run(tmp_path, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    project = tmp_path / "tiny-vit-run"
    _check_outputs(project, class_names)
    saved = json.loads((project / "config.json").read_text())
    assert saved["backbone_source"] == "transformers" and saved["arcface_subcenters"] == 2
    _check_pipeline_loads(tmp_path, project, class_names)


@pytest.mark.slow
def test_missing_data_path_exits_non_zero_naming_it(tmp_path):
    result = _run(tmp_path, {"project_name": "p", "data_path": "no-such-dir/autotrain-data"}, timeout=300)
    assert result.returncode != 0
    assert "no-such-dir/autotrain-data" in result.stdout + result.stderr


@pytest.mark.slow
def test_invalid_config_exits_non_zero_naming_the_key(tmp_path):
    result = _run(tmp_path, {"project_name": "p", "epoch": 3}, timeout=300)
    assert result.returncode != 0
    assert "epoch: unknown parameter" in result.stdout + result.stderr


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tmp_path, make_tiny_dataset, make_tiny_timm, tiny_config):
    make_tiny_dataset(tmp_path / "data", train_per_class=12)
    make_tiny_timm(tmp_path / "tiny-timm")
    epochs, batch = 8, 8
    config = tiny_config(
        "resume-run", "data", "tiny-timm", epochs=epochs, batch_size=batch, early_stopping_patience=None
    )
    cfg = _write_config(tmp_path, config)
    project = tmp_path / "resume-run"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", MODULE, "--training_config", str(cfg)],
        cwd=tmp_path,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 600
        first = None
        while time.time() < deadline and proc.poll() is None:
            done = [p for p in project.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
            if done:
                first = done[0]
                time.sleep(0.5)  # let the checkpoint finish (rng state)
                break
            time.sleep(0.1)
        assert first is not None, (tmp_path / "first.log").read_text()[-3000:]
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert not (project / "metrics.json").exists()
    # the newest *complete* checkpoint: the kill can land while a later one is half written, and
    # resume_from_checkpoint skips such a folder (no trainer_state.json)
    checkpoints = sorted(
        (p for p in project.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    step = int(checkpoints[-1].name.split("-")[1])

    result = _run(tmp_path, {**config, "resume_from_checkpoint": True})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert re.search(rf"Resuming from .*checkpoint-{step}", output)
    assert "ArcFace centres initialised" not in output  # prototypes are not recomputed when resuming
    metrics = json.loads((project / "metrics.json").read_text())
    steps_per_epoch = -(-(4 * 12 + 3 * 6) // batch)
    assert metrics["training"]["resumed_from_step"] == step
    assert metrics["training"]["global_step"] == epochs * steps_per_epoch
    # the resumed run trained only the remaining epochs
    assert (
        sum(e["steps"] for e in metrics["training"]["throughput"]["epochs"])
        == epochs * steps_per_epoch - step
    )


@pytest.mark.slow
def test_push_to_hub_uploads_the_folder_and_no_token(
    tmp_path, monkeypatch, make_tiny_dataset, make_tiny_timm, tiny_config
):
    """In-process run with HfApi replaced by a fake: what would be uploaded, and no token on disk."""
    from autotrain import logger
    from autotrain.trainers.image_classification_custom import callbacks, outputs
    from autotrain.trainers.image_classification_custom.__main__ import train

    calls = []

    class FakeHfApi:
        def __init__(self, token=None, **kwargs):
            calls.append(("init", token))

        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            folder = Path(kwargs["folder_path"])
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            calls.append(("upload_folder", {**kwargs, "files": files}))

    token = "hf_SECRETtoken1234567890"
    monkeypatch.setattr(outputs, "HfApi", FakeHfApi)  # the final upload
    monkeypatch.setattr(callbacks, "HfApi", FakeHfApi)  # the TensorBoard logs during training
    monkeypatch.chdir(tmp_path)
    make_tiny_dataset(tmp_path / "data")
    make_tiny_timm(tmp_path / "tiny-timm")
    messages = []
    sink = logger.add(lambda m: messages.append(str(m)))
    try:
        train(
            tiny_config(
                "pushed", "data", "tiny-timm", push_to_hub=True, username="me", token=token, log="tensorboard"
            )
        )
    finally:
        logger.remove(sink)
    uploads = [c[1] for c in calls if c[0] == "upload_folder"]
    creates = [c[1] for c in calls if c[0] == "create_repo"]
    assert creates and all(c["repo_id"] == "me/pushed" and c["private"] is True for c in creates)
    final = uploads[-1]
    assert final["repo_id"] == "me/pushed" and final["folder_path"] == "pushed"
    assert "checkpoint-*" in final["ignore_patterns"]
    assert {"model.safetensors", "config.json", "README.md", "metrics.json", "tsne.png"} <= set(
        final["files"]
    )
    for path in (tmp_path / "pushed").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert not any(token in m for m in messages)


# two-process launchers; on a machine without CUDA the trainer's ranks form a gloo group. `accelerate
# launch --multi_gpu` is the README's multi-GPU command (`--cpu` would start a single process)
LAUNCHERS = {
    "torchrun": ["torch.distributed.run", "--nproc_per_node", "2", "--master_port"],
    "accelerate": [
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_process_ddp_run_writes_outputs_once(
    tmp_path, make_tiny_dataset, make_tiny_timm, tiny_config, class_names, launcher
):
    """`torchrun --nproc_per_node 2` and `accelerate launch --multi_gpu --num_processes 2` (the Trainer's
    DDP), here on CPU with gloo: both ranks train, only the main process writes the folder, card and metrics."""
    from inference_app.testing import free_port

    make_tiny_dataset(tmp_path / "data")
    make_tiny_timm(tmp_path / "tiny-timm")
    config = tiny_config("ddp-run", "data", "tiny-timm", tsne=False, epochs=1, warmup_epochs=0)
    cfg = _write_config(tmp_path, config)
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            *LAUNCHERS[launcher],
            str(free_port()),
            "-m",
            MODULE,
            "--training_config",
            str(cfg),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    project = tmp_path / "ddp-run"
    metrics = json.loads((project / "metrics.json").read_text())
    assert metrics["training"]["num_processes"] == 2
    assert (project / "model.safetensors").is_file() and (project / "README.md").is_file()
    assert not list(tmp_path.glob("ddp-run*/**/*.tmp"))
    _check_pipeline_loads(tmp_path, project, class_names)
