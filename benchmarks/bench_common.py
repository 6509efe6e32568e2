"""Shared pieces of the benchmark harness: the machine description, the sample dataset, statistics."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stock_harness import REPO_ROOT, BenchError, bench_env

# `data_prep sample` sizes for --quick (a dozen training images); full runs use the CLI's defaults.
SAMPLE_QUICK = {"n_species": 3, "n_herbarium": 3, "n_field": 2, "n_test": 2, "no_field_every": 3}


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, memory, load, library versions and the GPU (when there is one)."""
    import importlib.metadata as md

    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    for package in (
        "torch",
        "transformers",
        "timm",
        "datasets",
        "accelerate",
        "autotrain-advanced",
        "gradio",
    ):
        try:
            info[package] = md.version(package)
        except md.PackageNotFoundError:
            info[package] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    return info


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']} (CUDA {info.get('cuda')})" if info.get("gpu") else ", no GPU"
    return (
        f"{info['cpu']}, {info['cores']} cores, {info.get('memory_gib', '?')} GiB RAM{gpu}; torch {info['torch']}, "
        f"transformers {info['transformers']}, timm {info['timm']}, autotrain-advanced {info['autotrain-advanced']}"
    )


def run_cli(args: Sequence[str], log: Path, cwd: Path | None = None, timeout: float = 900) -> float:
    """Run ``python -m ...`` (args after the interpreter); return its wall time; raise BenchError on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        try:
            proc = subprocess.run(
                [sys.executable, *args],
                cwd=cwd or REPO_ROOT,
                env=bench_env(),
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"`python {' '.join(args)}` timed out; log: {log}") from None
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise BenchError(f"`python {' '.join(args)}` failed (exit {proc.returncode}); log: {log}\n{tail}")
    return time.perf_counter() - start


def sample_dataset(workdir: Path, quick: bool) -> Path:
    """The sample dataset as a saved DatasetDict (built once per working folder), via the data_prep CLI.

    Full mode runs ``python -m data_prep sample`` with its defaults (the embedded sample); quick mode
    with ``SAMPLE_QUICK``'s sizes. Then ``python -m data_prep build``.
    """
    root = workdir / ("sample-quick" if quick else "sample")
    images, dataset = root / "images", root / "dataset"
    done = root / "done.json"
    if done.is_file() and (dataset / "dataset_dict.json").is_file():
        return dataset
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in (SAMPLE_QUICK if quick else {}).items()]
    run_cli(["-m", "data_prep", "sample", "--out", str(images), "--quiet", *flags], root / "sample.log")
    run_cli(["-m", "data_prep", "build", str(images), "--out", str(dataset), "--quiet"], root / "build.log")
    done.write_text(json.dumps({"quick": quick, "at": now_iso()}) + "\n")
    return dataset


def subset_dataset(
    source: Path, out: Path, n_train: int, repeat_to: int | None = None, seed: int = 0
) -> Path:
    """A DatasetDict with only a ``train`` split: ``n_train`` images of ``source``'s train split.

    ``repeat_to`` repeats the split until it has that many images (GPU throughput needs more images than
    the sample has; repetition does not change the cost per image).
    """
    from datasets import DatasetDict, concatenate_datasets, load_from_disk

    if (out / "dataset_dict.json").is_file():
        return out
    train = load_from_disk(str(source))["train"].shuffle(seed=seed)
    n = min(n_train, len(train))
    train = train.select(range(n))
    if repeat_to and repeat_to > n:
        parts = [train] * (repeat_to // n) + [train.select(range(repeat_to % n))]
        train = concatenate_datasets([p for p in parts if len(p)])
    DatasetDict(train=train).save_to_disk(str(out))
    return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    mean = float(statistics.fmean(values))
    return mean, float(statistics.stdev(values)) if len(values) > 1 else 0.0
