"""Training throughput: this project's trainer against the stock AutoTrain image-classification trainer.

Both trainers run unchanged, as subprocesses under ``trainer_probe.py``, on the same training images,
the same backbone weights, image size, batch size and epochs, alternating (stock, ours, ours-head, then
the reverse order, ...) so that drift in the machine's load hits both alike. Throughput is images per
second of the training loop, measured the same way for both: from the end of the first training step
to the end of the last (data loading, forward/backward and optimizer steps included; model loading,
our decoded-image cache, and saving excluded). The whole command's wall time is reported beside it.

``run(workdir, quick)`` is the CPU section (EfficientNet-Lite0 at 224 px, batch 32, stage 2 = full
fine-tuning, and stage 1 = head only for ours). ``run_gpu(workdir, quick)`` is the GPU section (ViT-B/16,
random weights, bf16); it returns ``{"skipped": ...}`` without CUDA unless ``allow_cpu`` (tests only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import stock_harness as sh
from bench_common import BenchError, median, sample_dataset, subset_dataset

CPU_FULL = {"n_train": 224, "batch_size": 32, "epochs": 1, "reps": 3, "timeout": 1800}
CPU_QUICK = {"n_train": 12, "batch_size": 4, "epochs": 1, "reps": 1, "timeout": 300, "image_size": 64}
QUICK_BACKBONE = "test_efficientnet"

GPU_FULL = {
    "architecture": "vit_base_patch16_224",
    "image_size": 224,
    "n_train": 8192,
    "batch_size": 256,
    "epochs": 2,
    "reps": 3,
    "stock_reps": 1,
    "timeout": 1200,
    "workers": 10,
    "mixed_precision": "bf16",
    "optimizer": "adamw_torch_fused",
}
GPU_QUICK = {
    "architecture": "test_vit",
    "image_size": 160,
    "n_train": 12,
    "batch_size": 4,
    "epochs": 1,
    "reps": 1,
    "stock_reps": 1,
    "timeout": 300,
    "workers": 1,
    "mixed_precision": None,
    "optimizer": "adamw_torch",
}
# ViT-B/16 at 224 px: 17.6 GMAC forward = 35 GFLOP; training (forward + backward) about 3x.
VIT_B16_TRAIN_GFLOP_PER_IMAGE = 105.0
DENSE_BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _stage_numbers(result: dict[str, Any], stage: str) -> dict[str, Any]:
    numbers = sh.throughput(result, stage)
    numbers["log"] = result["log"]
    return numbers


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ips = [r["images_per_s"] for r in runs]
    out = {
        "runs_images_per_s": [round(x, 3) for x in ips],
        "median_images_per_s": median(ips),
        "min_images_per_s": min(ips),
        "max_images_per_s": max(ips),
        "median_step_s": median([r["step_s"] for r in runs]),
        "median_data_s": median([r["data_s"] for r in runs]),
        "median_fwd_bwd_s": median([r["fwd_bwd_s"] for r in runs]),
        "median_other_s": median([r["other_s"] for r in runs]),
        "median_command_wall_s": median([r["command_wall_s"] for r in runs]),
        "images_per_run": runs[0]["images"],
        "steps_per_run": runs[0]["steps"],
        "batch": runs[0]["batch"],
        "image_size": runs[0]["image_size"],
    }
    trainer_reported = [r["trainer_samples_per_s"] for r in runs if "trainer_samples_per_s" in r]
    if len(trainer_reported) == len(runs):
        out["median_trainer_samples_per_s"] = median(trainer_reported)
    return out


def _ratio(ours: list[dict[str, Any]], stock: list[dict[str, Any]]) -> dict[str, Any]:
    paired = [o["images_per_s"] / s["images_per_s"] for o, s in zip(ours, stock)]
    return {
        "ratio_of_medians": median([o["images_per_s"] for o in ours])
        / median([s["images_per_s"] for s in stock]),
        "paired_ratios": [round(x, 3) for x in paired],
        "median_paired_ratio": median(paired),
    }


def run(workdir: str | Path, quick: bool = False, reps: int | None = None, stock_lr: float = 1e-3) -> dict:
    """CPU training throughput, ours (full fine-tuning and head only) vs stock; see the module docstring."""
    workdir = Path(workdir) / ("training-quick" if quick else "training")
    s = dict(CPU_QUICK if quick else CPU_FULL)
    if reps:
        s["reps"] = reps
    sample = sample_dataset(workdir.parent, quick)
    data = subset_dataset(sample, workdir / "data", s["n_train"])
    if quick:
        backbone = sh.random_backbone_folders(workdir / "backbone", QUICK_BACKBONE, s["image_size"])
    else:
        backbone = sh.embedded_backbone_folders(workdir / "backbone")
    runs_dir = workdir / "runs"
    common = {"epochs": s["epochs"], "batch_size": s["batch_size"]}
    results: dict[str, list[dict[str, Any]]] = {"stock": [], "ours_full": [], "ours_head": []}
    order = ["stock", "ours_full", "ours_head"]
    sequence: list[str] = []
    for rep in range(s["reps"]):
        for kind in order if rep % 2 == 0 else order[::-1]:
            name = f"{kind.replace('_', '-')}-r{rep}"
            sequence.append(name)
            if kind == "stock":
                sh.link_dataset(runs_dir / name, data)
                cfg = sh.stock_config(name, backbone["stock"], lr=stock_lr, seed=rep, **common)
                res = sh.run_trainer("stock", cfg, runs_dir, s["timeout"])
                results[kind].append(_stage_numbers(res, "full"))
            else:
                head = kind == "ours_head"
                cfg = sh.ours_config(
                    name,
                    data,
                    backbone["ours_model"],
                    warmup_epochs=s["epochs"] if head else 0,
                    seed=rep,
                    image_size=backbone["image_size"],
                    **common,
                )
                res = sh.run_trainer("ours", cfg, runs_dir, s["timeout"])
                results[kind].append(_stage_numbers(res, "head" if head else "full"))
    out: dict[str, Any] = {
        "setup": {
            "backbone": backbone["architecture"] + ("" if quick else " (ImageNet weights, embedded default)"),
            "image_size": backbone["image_size"],
            "batch_size": s["batch_size"],
            "epochs": s["epochs"],
            "train_images": s["n_train"],
            "reps": s["reps"],
            "run_order": sequence,
            "stock_lr": stock_lr,
            "ours_dataloader_num_workers": "trainer default",
            "stock_dataloader_num_workers": 0,
        },
        "stock": _summarise(results["stock"]),
        "ours_full": _summarise(results["ours_full"]),
        "ours_head": _summarise(results["ours_head"]),
        "full_vs_stock": _ratio(results["ours_full"], results["stock"]),
        "head_vs_stock": _ratio(results["ours_head"], results["stock"]),
        "raw": results,
    }
    return out


def peak_tflops(gpu_name: str | None) -> float | None:
    for key, value in DENSE_BF16_PEAK_TFLOPS.items():
        if gpu_name and key in gpu_name:
            return value
    return None


GPU_KINDS = ("stock", "ours_full", "ours_compiled")


def model_ceiling(architecture: str, image_size: int, batch_size: int, quick: bool) -> dict[str, Any]:
    """Images/s of the bare timm model's training step (bf16 autocast, fused AdamW, synthetic data
    already on the device), eager and ``torch.compile``d: what the hardware and framework allow, with no
    data loading, head, sampler or Trainer. Quick (tests/CPU): a couple of eager float32 steps only."""
    import timm
    import torch

    device = "cuda" if torch.cuda.is_available() and not quick else "cpu"
    out: dict[str, Any] = {"device": device, "batch_size": batch_size}
    for compiled in (False,) if quick else (False, True):
        model = timm.create_model(architecture, num_classes=1000, img_size=image_size).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
        fn = torch.compile(model) if compiled else model
        x = torch.randn(batch_size, 3, image_size, image_size, device=device)
        y = torch.randint(0, 1000, (batch_size,), device=device)

        def step(fn=fn, opt=opt, x=x, y=y) -> None:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = torch.nn.functional.cross_entropy(fn(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        warm, steps = (1, 2) if quick else (3, 30)
        for _ in range(warm):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        out["compiled" if compiled else "eager"] = batch_size * steps / (time.perf_counter() - t0)
        del model, opt, fn
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def run_gpu(
    workdir: str | Path, quick: bool = False, allow_cpu: bool = False, reps: int | None = None
) -> dict:
    """GPU training throughput of ViT-B/16 (random weights, bf16), ours vs stock, data loading included.

    Without CUDA it returns ``{"skipped": "no CUDA device"}``; ``allow_cpu=True`` (tests) runs the same
    code path on CPU at the quick sizes, and the result says ``device: cpu`` (never a GPU figure).
    """
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not allow_cpu:
        return {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
    s = dict(GPU_QUICK if quick or not cuda else GPU_FULL)
    if reps:
        s["reps"] = reps
    workdir = Path(workdir) / ("gpu-quick" if quick else "gpu")
    sample = sample_dataset(workdir.parent, quick)
    data = subset_dataset(sample, workdir / "data", 10**9, repeat_to=s["n_train"])
    from datasets import load_from_disk

    n_train = len(load_from_disk(str(data))["train"])
    backbone = sh.random_backbone_folders(workdir / "backbone", s["architecture"], s["image_size"])
    runs_dir = workdir / "runs"
    # torch.compile on CPU needs a C++ toolchain and minutes: the CPU smoke run leaves the compiled kind out
    kinds_run = GPU_KINDS if cuda else ("stock", "ours_full")
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds_run}
    sequence = []
    for rep in range(max(s["reps"], s["stock_reps"])):
        kinds = list(kinds_run) if rep % 2 == 0 else list(reversed(kinds_run))
        for kind in kinds:
            if kind == "stock" and rep >= s["stock_reps"] or kind != "stock" and rep >= s["reps"]:
                continue
            name = f"gpu-{kind.replace('_', '-')}-r{rep}"
            sequence.append(name)
            if kind == "stock":
                sh.link_dataset(runs_dir / name, data)
                cfg = sh.stock_config(
                    name,
                    backbone["stock"],
                    epochs=s["epochs"],
                    batch_size=s["batch_size"],
                    lr=1e-4,
                    seed=rep,
                    mixed_precision=s["mixed_precision"],
                    optimizer=s["optimizer"],
                )
            else:
                cfg = sh.ours_config(
                    name,
                    data,
                    backbone["ours_model"],
                    epochs=s["epochs"],
                    warmup_epochs=0,
                    batch_size=s["batch_size"],
                    seed=rep,
                    image_size=s["image_size"],
                    mixed_precision=s["mixed_precision"],
                    optimizer=s["optimizer"],
                    dataloader_num_workers=s["workers"],
                    head_init="random",
                    torch_compile=kind == "ours_compiled",
                )
            res = sh.run_trainer("stock" if kind == "stock" else "ours", cfg, runs_dir, s["timeout"])
            results[kind].append(_stage_numbers(res, "full"))
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    ceiling = model_ceiling(s["architecture"], s["image_size"], s["batch_size"], quick or not cuda)
    out: dict[str, Any] = {
        "device": device,
        "setup": {
            "backbone": f"{s['architecture']} (random weights)",
            "image_size": s["image_size"],
            "batch_size": s["batch_size"],
            "epochs": s["epochs"],
            "train_images": n_train,
            "mixed_precision": s["mixed_precision"],
            "optimizer": s["optimizer"],
            "ours_dataloader_num_workers": s["workers"],
            "stock_dataloader_num_workers": 0,
            "run_order": sequence,
        },
        **{kind: _summarise(results[kind]) for kind in kinds_run},
        "ceiling": ceiling,
        "raw": results,
    }
    out["ours_vs_stock"] = out["ours_full"]["median_images_per_s"] / out["stock"]["median_images_per_s"]
    if "ours_compiled" in out:
        out["ours_compiled_vs_stock"] = (
            out["ours_compiled"]["median_images_per_s"] / out["stock"]["median_images_per_s"]
        )
    peak = peak_tflops(device) if cuda else None
    if peak and s["architecture"] == "vit_base_patch16_224" and s["image_size"] == 224:
        for kind in kinds_run:
            tflops = out[kind]["median_images_per_s"] * VIT_B16_TRAIN_GFLOP_PER_IMAGE / 1000
            out[kind]["achieved_tflops"] = tflops
            out[kind]["fraction_of_peak"] = tflops / peak
        out["peak_tflops"] = peak
    if not cuda:
        out["note"] = "CPU smoke run of the GPU code path (tests); not a GPU measurement"
    return out


__all__ = ["BenchError", "run", "run_gpu"]
