"""Field accuracy on the sample dataset: ArcFace vs margin 0 vs the stock AutoTrain trainer.

Three variants, trained for the same number of epochs with the same seeds, batch size, image size and
pretrained backbone, then evaluated by the *same* code (``stock_harness.evaluate_folder``: each model's
saved ``ViTImageProcessor`` and logits, the project's metrics module) on the field photos of the test
split (the validation split when there is no test split):

- ``ours_arcface``: this project's trainer with the embedded default ``config.json`` (its ArcFace margin,
  its epochs and head-only warm-up epochs);
- ``ours_margin0``: the same with ``arcface_margin: 0`` (normalised softmax), to isolate the margin;
- ``stock``: ``autotrain.trainers.image_classification`` on the same backbone (TimmWrapper folder).

Neither trainer uses the validation split: the stock trainer raises when validation lacks a training
class (species without field photos have none there), so it runs with ``valid_split: null``; ours runs
without validation too (no best-epoch selection, no early stopping) so that both train exactly
``epochs`` epochs and are scored once, on the same images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import stock_harness as sh
from bench_common import mean_sd, sample_dataset

_DEFAULT = sh.default_config()
FULL = {
    "epochs": int(_DEFAULT.get("epochs", 3)),
    "batch_size": int(_DEFAULT.get("batch_size", 32)),
    "timeout": 3600,
}
QUICK = {"epochs": 1, "batch_size": 4, "timeout": 300, "image_size": 64}
VARIANTS = ("ours_arcface", "ours_margin0", "stock")
METRICS = ("top1", "top5", "mrr")
GROUPS = ("all", "herbarium_only")


def warmup_for(epochs: int) -> int:
    """Head-only epochs: the embedded default's ``warmup_epochs``, at most a third of ``epochs`` (>= 1)."""
    return min(int(_DEFAULT.get("warmup_epochs", 1)), max(1, epochs // 3))


def run(
    workdir: str | Path,
    quick: bool = False,
    seeds: int = 1,
    epochs: int | None = None,
    stock_lr: float = 1e-3,
    deadline: float | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Train and evaluate the three variants for ``seeds`` seeds; return per-run metrics and mean/sd.

    ``deadline`` (a ``time.monotonic()`` value): after each seed, stop early when another seed, as long
    as the slowest one so far, would end after it (the report says how many seeds ran and why).
    """
    from datasets import load_from_disk

    workdir = Path(workdir) / (("accuracy-quick" if quick else "accuracy") + (f"-{tag}" if tag else ""))
    s = dict(QUICK if quick else FULL)
    if epochs:
        s["epochs"] = epochs
    s["warmup_epochs"] = warmup_for(s["epochs"])
    dataset = sample_dataset(workdir.parent, quick)
    splits = load_from_disk(str(dataset))
    split = "test" if "test" in splits else "validation"
    if quick:
        backbone = sh.random_backbone_folders(workdir / "backbone", "test_efficientnet", s["image_size"])
    else:
        backbone = sh.embedded_backbone_folders(workdir / "backbone")
    runs_dir = workdir / "runs"
    per_run: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    models: dict[str, list[str]] = {v: [] for v in VARIANTS}
    sequence = []
    seed_seconds: list[float] = []
    stopped = None
    for seed in range(seeds):
        if seed_seconds and deadline is not None and time.monotonic() + max(seed_seconds) > deadline:
            stopped = f"stopped after {seed} of {seeds} seeds: another would pass the time budget"
            break
        t_seed = time.monotonic()
        order = VARIANTS[seed % 3 :] + VARIANTS[: seed % 3]
        for variant in order:
            name = f"{variant.replace('_', '-')}-s{seed}"
            sequence.append(name)
            if variant == "stock":
                sh.link_dataset(runs_dir / name, dataset)
                cfg = sh.stock_config(
                    name,
                    backbone["stock"],
                    epochs=s["epochs"],
                    batch_size=s["batch_size"],
                    lr=stock_lr,
                    seed=seed,
                )
                kind = "stock"
            else:
                extra = {"arcface_margin": 0.0} if variant == "ours_margin0" else {}
                cfg = sh.ours_config(
                    name,
                    dataset,
                    backbone["ours_model"],
                    epochs=s["epochs"],
                    warmup_epochs=s["warmup_epochs"],
                    batch_size=s["batch_size"],
                    seed=seed,
                    image_size=backbone["image_size"],
                    **extra,
                )
                kind = "ours"
            res = sh.run_trainer(kind, cfg, runs_dir, s["timeout"])
            report = sh.evaluate_folder(kind, res["project_dir"], dataset, split)
            report["seed"] = seed
            report["command_wall_s"] = res["command_wall_s"]
            per_run[variant].append(report)
            models[variant].append(res["project_dir"])
        seed_seconds.append(time.monotonic() - t_seed)
    seeds_run = len(seed_seconds)
    summary: dict[str, Any] = {}
    for variant, reports in per_run.items():
        row: dict[str, Any] = {}
        for group in GROUPS:
            for metric in METRICS:
                values = [r[group][metric] for r in reports if group in r]
                if values:
                    mean, sd = mean_sd(values)
                    row[f"{group}_{metric}"] = {"mean": mean, "sd": sd, "values": values}
            row[f"{group}_n"] = reports[0].get(group, {}).get("n", 0)
        row["median_command_wall_s"] = sorted(r["command_wall_s"] for r in reports)[len(reports) // 2]
        summary[variant] = row
    train = splits["train"]
    return {
        "setup": {
            "arcface_margin": float(_DEFAULT.get("arcface_margin", 0.5)),
            "ours_lr": float(_DEFAULT.get("lr", 1e-4)),
            "dataset": "quick tiny sample" if quick else "`python -m data_prep sample` defaults",
            "eval_split": split,
            "eval_images": len(splits[split]),
            "train_images": len(train),
            "num_classes": len(train.features["label"].names),
            "backbone": backbone["architecture"],
            "image_size": backbone["image_size"],
            "batch_size": s["batch_size"],
            "epochs": s["epochs"],
            "ours_warmup_epochs": s["warmup_epochs"],
            "seeds": seeds_run,
            "seeds_requested": seeds,
            "seed_seconds": seed_seconds,
            "budget_note": stopped,
            "stock_lr": stock_lr,
            "run_order": sequence,
        },
        "summary": summary,
        "runs": per_run,
        "models": models,
    }


def app_model(workdir: str | Path, quick: bool = False, stock_lr: float = 1e-3) -> str:
    """A trained ArcFace model folder for the app benchmark: the accuracy section's seed-0 model when it
    exists in ``workdir``, else one trained now with the same settings."""
    del stock_lr  # same signature as run(); only our trainer is needed here
    root = Path(workdir) / ("accuracy-quick" if quick else "accuracy")
    existing = root / "runs" / "ours-arcface-s0"
    if list(existing.glob("*.safetensors")):
        return str(existing)
    s = dict(QUICK if quick else FULL)
    dataset = sample_dataset(Path(workdir), quick)
    if quick:
        backbone = sh.random_backbone_folders(root / "backbone", "test_efficientnet", s["image_size"])
    else:
        backbone = sh.embedded_backbone_folders(root / "backbone")
    cfg = sh.ours_config(
        "ours-arcface-s0",
        dataset,
        backbone["ours_model"],
        epochs=s["epochs"],
        warmup_epochs=warmup_for(s["epochs"]),
        batch_size=s["batch_size"],
        seed=0,
        image_size=backbone["image_size"],
    )
    return sh.run_trainer("ours", cfg, root / "runs", s["timeout"])["project_dir"]
