"""Run the benchmarks side by side and rewrite BENCHMARKS.md (``make bench``).

Usage::

    python benchmarks/run_all.py                       # everything, rewrites BENCHMARKS.md
    python benchmarks/run_all.py --only training --only accuracy --seeds 3
    python benchmarks/run_all.py --quick --out /tmp/b  # tiny sizes (the test); report in /tmp/b

Sections: ``real`` (real images from ``../shared/data``: frozen-feature prototypes vs the stock trainer vs
ours, ``bench_real.py``; skipped when the data is absent; ``--real-results DIR`` imports an earlier
``bench_real.py`` run instead of training), ``data_prep`` (``bench_data_prep.run``), ``training`` (CPU throughput, ours vs the stock
AutoTrain trainer), ``accuracy`` (field top-1/top-5/MRR: ArcFace, margin 0, stock), ``app``
(``bench_app.run`` on the ArcFace model trained by the accuracy section), ``gpu`` (ViT-B/16 bf16;
skipped without CUDA). A section that fails is reported as failed, without numbers, the other sections
still run, and the script exits with status 1. Sections not selected with ``--only`` keep their previous
results (each with its own date, machine and command), read back from the JSON embedded in the report;
so do the GPU sections when this machine has no GPU (``--import-report`` merges a report written on one).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
for path in (str(HERE), str(REPO_ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}.items():
    os.environ.setdefault(key, value)

from bench_common import machine_info, machine_line, now_iso  # noqa: E402

SECTIONS = (
    "real",
    "data_prep",
    "training",
    "accuracy",
    "app",
    "gpu",
    "accuracy_gpu",
    "enroll",
    "audit",
    "scale",
)
# make bench's real-data run on 2 CPU cores: 160 px (about 3x cheaper than 224 here), the shipped default
REAL_FULL = {"image_size": 160, "systems": ["frozen", "stock", "ours"], "tasks": ("leafsnap", "plantclef")}
REAL_QUICK = {"image_size": 64, "epochs": 1, "systems": ["frozen", "stock", "ours"], "tasks": ("plantclef",)}
DEFAULT_SEEDS = 3  # at most; without --seeds, seeds stop when another would overrun --budget-min
DEFAULT_BUDGET_MIN = 30.0
APP_RESERVE_MIN = 3.0  # time kept for the app section, which runs after accuracy
DEFAULT_STOCK_LR = 1e-3
RESULTS_MARKER = "<!-- bench-results"
CPU_TARGET_RATIO = 2.0
GPU_TARGET_IMAGES_PER_S = 4000.0


# ------------------------------------------------------------------------------------------------------
# Running the sections
# ------------------------------------------------------------------------------------------------------


def _external(module: str):
    """Import a benchmark module written by another component (``bench_data_prep``, ``bench_app``)."""
    if not (HERE / f"{module}.py").is_file():
        raise FileNotFoundError(f"benchmarks/{module}.py does not exist")
    return importlib.import_module(module)


def _app_model(args: argparse.Namespace, results: dict[str, Any]) -> str:
    """The ArcFace model of the accuracy section (this run's, or an earlier one in --out), else train one."""
    acc = results.get("accuracy", {})
    if acc.get("status") == "ok" and acc["meta"].get("quick", args.quick) == args.quick:
        model = Path(acc["result"]["models"]["ours_arcface"][0])
        if list(model.glob("*.safetensors")):
            return str(model)
    import bench_accuracy

    return bench_accuracy.app_model(args.out, quick=args.quick, stock_lr=args.stock_lr)


def _run_real(args: argparse.Namespace) -> dict[str, Any]:
    """The real-image section: import ``--real-results`` (bench_real.py outputs) or run bench_real."""
    import bench_real

    out: dict[str, Any] = {"default_system": "ours", "tasks": {}}
    if args.real_results:
        for results in sorted(Path(args.real_results).glob("*/results.json")):
            out["tasks"][results.parent.name] = json.loads(results.read_text())
        out["imported_from"] = str(args.real_results)
        out["default_system"] = args.real_default or "ours"
        if not out["tasks"]:
            raise FileNotFoundError(f"--real-results {args.real_results}: no */results.json in it")
        return out
    if not bench_real.real_data.SHARED_DATA.is_dir():
        return {
            "skipped": f"{bench_real.real_data.SHARED_DATA} not found (the real images are not committed)"
        }
    plan = REAL_QUICK if args.quick else REAL_FULL
    settings = {
        "epochs": plan.get("epochs", args.epochs),
        "batch_size": None,
        "image_size": plan["image_size"],
        "stock_lr": 5e-4,
        "timeout": 7200,
    }
    seeds = 1 if args.quick else (args.seeds or DEFAULT_SEEDS)
    for task in plan["tasks"]:
        out["tasks"][task] = bench_real.run(
            task, args.out / "real", seeds, plan["systems"], settings, 1, bench_real.real_data.SHARED_DATA
        )
    return out


def _real_md(r: dict[str, Any]) -> list[str]:
    import bench_real

    if "skipped" in r:
        return [f"**Skipped: {r['skipped']}.**"]
    lines = [
        "Real images only (`benchmarks/real_data.py` documents the splits). Field photos of the test split, "
        "mean ± standard deviation over seeds (frozen prototypes have no seed). ECE: expected calibration "
        'error of the top-1 confidence; "wrong answers under 50%": the share of wrong top-1 answers that '
        'the app reports as "no confident match" at its default threshold. Choices are made on the '
        "validation split, never on test."
        + (
            f" Imported from a `bench_real.py` run in `{r['imported_from']}`."
            if r.get("imported_from")
            else ""
        ),
        "",
    ]
    for task in r["tasks"].values():
        lines += [f"### {task['task']}", "", *bench_real.render_md(task, r.get("default_system")), ""]
    return lines


def _run_enroll(args: argparse.Namespace) -> dict[str, Any]:
    """Enrolment of held-out species (bench_enroll.py): import ``--enroll-results`` or run one seed."""
    import bench_enroll

    if args.enroll_results:
        runs = [json.loads(f.read_text()) for f in sorted(Path(args.enroll_results).glob("results-s*.json"))]
        if not runs:
            raise FileNotFoundError(f"--enroll-results {args.enroll_results}: no results-s*.json in it")
        return {"runs": runs, "imported_from": str(args.enroll_results)}
    if args.quick:
        return {"skipped": "not part of a quick run (about 30 minutes on 2 CPU cores): `--only enroll`"}
    out = bench_enroll.run(bench_enroll.parse_args(["--out", str(args.out / "enroll")]))
    if out is None:
        return {
            "skipped": f"{bench_enroll.real_data.SHARED_DATA} not found (the real images are not committed)"
        }
    return {"runs": [out]}


def _run_audit(args: argparse.Namespace) -> dict[str, Any]:
    """Collection audit on real images with injected errors (bench_audit.py): import or run one seed."""
    import bench_audit

    folder = args.audit_results
    if folder is None:
        if args.quick:
            return {"skipped": "not part of a quick run (about 5 minutes on 2 CPU cores): `--only audit`"}
        if not (bench_audit.real_data.SHARED_DATA / "leafsnap-specimens").is_dir():
            return {
                "skipped": f"{bench_audit.real_data.SHARED_DATA} not found (the real images are not committed)"
            }
        folder = args.out / "audit"
        bench_audit.main(["--out", str(folder)])
    results = Path(folder) / "results.json"
    if not results.is_file():
        raise FileNotFoundError(f"{results}: no bench_audit.py results there")
    out = json.loads(results.read_text())
    return out | ({"imported_from": str(folder)} if args.audit_results else {})


def _audit_md(r: dict[str, Any]) -> list[str]:
    import bench_audit

    if "skipped" in r:
        return [f"**Skipped: {r['skipped']}.**"]
    return [
        "`python -m data_prep audit DATASET` with the embedded backbone (no trained model) on leafsnap "
        "images with injected errors: 5% of labels swapped, 10 resized and re-compressed copies, 10 "
        "off-topic images (5 generated: ruler, blank sheet, label card, colour chart, noise; 5 PlantCLEF "
        "herbarium sheets). One injection seed; the audit's thresholds were set on this same run, so these "
        "are not out-of-sample figures. Method: `benchmarks/bench_audit.py`."
        + (f" Imported from `{r['imported_from']}`." if r.get("imported_from") else ""),
        "",
        bench_audit.markdown(r),
    ]


def _enroll_md(r: dict[str, Any]) -> list[str]:
    import bench_enroll

    if "skipped" in r:
        return [f"**Skipped: {r['skipped']}.**"]
    lines = [
        "Species held out from training altogether, enrolled from their leaf views only "
        "(`python -m autotrain.trainers.image_classification_custom.enroll`, no retraining), then ranked on "
        "their field photos (flowers, fruit, bark, twigs: none used). `trained`: config.json trained on the "
        "other species; `frozen`: the pretrained backbone with no training. Method: `benchmarks/bench_enroll.py`."
        + (f" Imported from `{r['imported_from']}`." if r.get("imported_from") else ""),
        "",
    ]
    for run in r["runs"]:
        settings = run.get("settings", {})
        lines += [
            f"Seed {settings.get('seed')}, {len(run['held_out'])} held-out species, "
            f"{settings.get('image_size')} px, {settings.get('epochs')} epochs:",
            "",
            bench_enroll.table(run),
        ]
    return lines


def _run_scale(args: argparse.Namespace) -> dict[str, Any]:
    """Scaling benchmark (bench_scale.py): import ``--scale-results`` or run its small preset."""
    import bench_scale

    if args.scale_results:
        results = Path(args.scale_results) / "results.json"
        if not results.is_file():
            raise FileNotFoundError(f"{results}: no bench_scale.py results there")
        return json.loads(results.read_text()) | {"imported_from": str(args.scale_results)}
    if args.quick:
        return {"skipped": "not part of a quick run (about 15 minutes on 2 idle CPU cores): `--only scale`"}
    out = bench_scale.run(
        bench_scale.parse_args(["--preset", "small", "--out", str(args.out / "scale-small")])
    )
    return out | {"preset": "small"}


def _baselines(r: dict[str, Any]) -> str:
    kinds = r.get("import_baselines_mb") or {"default": r["import_baseline_mb"]}
    names = {"build": "data_prep build", "default": "trainer and app"}
    return ", ".join(f"{names.get(k, k)} {v:,.0f} MiB" for k, v in kinds.items())


def _scale_md(r: dict[str, Any]) -> list[str]:
    import bench_scale

    if "skipped" in r:
        return [f"**Skipped: {r['skipped']}.**"]
    figure = SCALE_FIGURE if r.get("preset") != "small" and (REPO_ROOT / SCALE_FIGURE).is_file() else None
    loads = [
        s.get("load_average") for run in r["runs"] for s in run["stages"].values() if s.get("load_average")
    ]
    return [
        "Cost of each stage against N images and C species on generated "
        f"JPEGs at realistic sizes (`benchmarks/scale_data.py`), trainer and app at {r['image_size']} px. Each "
        "cell: wall time / peak resident memory of the stage's process tree (a later stage of the trainer "
        "or the app includes what the earlier ones still hold). `b (N)`, `b (C)`: fitted exponents of time / "
        "memory above the import baseline "
        f"({_baselines(r)}) in `cost ~ N^b`, `cost ~ C^b`. "
        + (
            f"1-minute load average at the stages' ends: {min(loads):.1f}-{max(loads):.1f} on 2 cores. "
            if loads
            else ""
        )
        + f"Command: `{r['command']}`."
        + (f" Imported from `{r['imported_from']}`." if r.get("imported_from") else ""),
        "",
        bench_scale.markdown(r),
        *([""] + [f"Failed: N={f['n']:,} C={f['c']:,}: {f['error']}" for f in r.get("failed", [])]),
        *(["", f"![cost against N and C]({figure})"] if figure else []),
    ]


def run_section(name: str, args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    if name == "scale":
        return _run_scale(args)
    if name == "real":
        return _run_real(args)
    if name == "enroll":
        return _run_enroll(args)
    if name == "audit":
        return _run_audit(args)
    if name == "data_prep":
        return _external("bench_data_prep").run(args.out / "data_prep", quick=args.quick)
    if name == "training":
        import bench_training

        return bench_training.run(args.out, quick=args.quick, reps=args.reps, stock_lr=args.stock_lr)
    if name == "accuracy":
        import bench_accuracy

        deadline = None
        if args.budget_min and not args.seeds_given:
            deadline = args.started + 60 * (args.budget_min - APP_RESERVE_MIN * ("app" in args.sections))
        return bench_accuracy.run(
            args.out,
            quick=args.quick,
            seeds=args.seeds,
            epochs=args.epochs,
            stock_lr=args.stock_lr,
            deadline=deadline,
        )
    if name == "app":
        model_dir = _app_model(args, results)
        out = _external("bench_app").run(model_dir, quick=args.quick)
        return {"model_dir": str(model_dir), **(out if isinstance(out, dict) else {"result": out})}
    if name == "gpu":
        import bench_training

        return bench_training.run_gpu(args.out, quick=args.quick, reps=args.reps)
    if name == "accuracy_gpu":
        import torch

        if not torch.cuda.is_available():
            return {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
        import bench_accuracy

        result = bench_accuracy.run(
            args.out,
            quick=args.quick,
            seeds=args.seeds,
            epochs=args.epochs,
            stock_lr=args.stock_lr,
            tag="gpu",
        )
        result["setup"]["device"] = torch.cuda.get_device_name(0)
        return result
    raise ValueError(f"unknown section {name!r}")


# ------------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value == 0:
            return "0"
        magnitude = math.floor(math.log10(abs(value)))
        decimals = max(0, digits - 1 - magnitude)
        return f"{value:.{decimals}f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    return str(value)


def _meta_line(entry: dict[str, Any]) -> str:
    meta = entry["meta"]
    load = f"; load average {fmt(meta.get('load_start'))} -> {fmt(meta.get('load_end'))}"
    return (
        f"_Measured {meta['date']} in {fmt(entry.get('seconds', 0.0))} s on {meta['machine_line']}{load}. "
        f"Command: `{meta['command']}`._"
    )


def _flatten(prefix: str, value: Any, rows: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, rows)
    else:
        rows.append((prefix, value))


def _generic_table(result: dict[str, Any]) -> list[str]:
    rows: list[tuple[str, Any]] = []
    _flatten("", result, rows)
    lines = ["| Measurement | Value |", "| --- | --- |"]
    for key, value in rows:
        text = fmt(value) if not isinstance(value, str) else value.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{key}` | {text} |")
    return lines


def _speed_row(label: str, s: dict[str, Any]) -> str:
    reported = fmt(s["median_trainer_samples_per_s"]) if "median_trainer_samples_per_s" in s else "n/a"
    return (
        f"| {label} | {fmt(s['runs_images_per_s'])} | **{fmt(s['median_images_per_s'])}** | "
        f"{fmt(s['median_step_s'])} | {fmt(s['median_data_s'])} | {fmt(s['median_fwd_bwd_s'])} | "
        f"{fmt(s['median_other_s'])} | {reported} | {fmt(s['median_command_wall_s'])} |"
    )


_SPEED_HEADER = [
    "| Trainer (stage) | images/s per run | median images/s | s/step | data wait s/step | "
    "forward+backward s/step | optimizer+other s/step | Trainer-reported samples/s | command wall s |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def _profile(s: dict[str, Any], label: str) -> str:
    step = s["median_step_s"]
    parts = [("waiting for data", s["median_data_s"]), ("forward+backward", s["median_fwd_bwd_s"])]
    parts.append(("optimizer and the rest", s["median_other_s"]))
    return f"{label} {fmt(step)} s = " + ", ".join(f"{fmt(100 * v / step, 2)}% {name}" for name, v in parts)


def _training_md(r: dict[str, Any]) -> list[str]:
    s = r["setup"]
    full, head = r["full_vs_stock"], r["head_vs_stock"]
    lines = [
        f"Same {s['train_images']} training images of the sample dataset, backbone {s['backbone']}, "
        f"{s['image_size']} px, batch {s['batch_size']}, {s['epochs']} epoch per run, {s['reps']} runs per "
        f"trainer alternating ({', '.join(s['run_order'])}). Stock: `autotrain.trainers.image_classification` "
        f"(albumentations in the main process, `dataloader_num_workers=0`, lr {fmt(s['stock_lr'])}); ours: "
        "`autotrain.trainers.image_classification_custom` with its defaults, `warmup_epochs: 0` for full "
        "fine-tuning (stage 2) and `warmup_epochs == epochs` for the head-only stage (stage 1).",
        "",
        *_SPEED_HEADER,
        _speed_row("stock, full fine-tuning", r["stock"]),
        _speed_row("ours, full fine-tuning (stage 2)", r["ours_full"]),
        _speed_row("ours, head only (stage 1)", r["ours_head"]),
        "",
        f"**Full fine-tuning, ours / stock: {fmt(full['ratio_of_medians'])}x** (ratio of medians; paired "
        f"ratios of adjacent runs {fmt(full['paired_ratios'])}, median {fmt(full['median_paired_ratio'])}x; "
        f"target >= {CPU_TARGET_RATIO:g}x: {'met' if full['ratio_of_medians'] >= CPU_TARGET_RATIO else 'MISSED'}). "
        f"Head-only stage, ours / stock full fine-tuning: {fmt(head['ratio_of_medians'])}x.",
        "",
        f"Where the time goes (median per step): {_profile(r['stock'], 'stock')}; {_profile(r['ours_full'], 'ours')}.",
        "",
        "images/s = images of steps 2..N / time from the end of step 1 to the end of step N, per run (data "
        "loading, forward/backward and optimizer included; model loading, our one-off decoded-image cache "
        "and saving excluded; they are in the command wall time, which also includes Python start-up). "
        "The per-step columns split a step into the wait for the next batch, `training_step` "
        "(forward+backward) and the rest (gradient clipping, optimizer, scheduler, callbacks).",
    ]
    return lines


def _acc_cell(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return "n/a"
    v = row[key]
    return fmt(v["mean"]) + (f" ± {fmt(v['sd'], 2)}" if len(v["values"]) > 1 else "")


def _acc_summary_cells(summ: dict[str, Any], group: str) -> str:
    """``ArcFace t1 / mrr, margin 0 t1 / mrr, stock t1 / mrr`` for one class group of a summary."""
    return ", ".join(
        f"{name} {_acc_cell(summ[v], f'{group}_top1')} / {_acc_cell(summ[v], f'{group}_mrr')}"
        for v, name in (("ours_arcface", "ArcFace"), ("ours_margin0", "margin 0"), ("stock", "stock"))
    )


def _best_ours(r: dict[str, Any]) -> str:
    """The faster of our GPU runs (eager or compiled) in a ``gpu`` section result."""
    return max(("ours_full", "ours_compiled"), key=lambda k: r.get(k, {}).get("median_images_per_s", 0))


def _accuracy_md(r: dict[str, Any]) -> list[str]:
    s = r["setup"]
    labels = {
        "ours_arcface": f"ours, ArcFace (margin {fmt(s.get('arcface_margin', 0.5))})",
        "ours_margin0": "ours, margin 0 (normalised softmax)",
        "stock": "stock AutoTrain trainer",
    }
    summ = r["summary"]
    n_all = summ["ours_arcface"].get("all_n", "?")
    n_ho = summ["ours_arcface"].get("herbarium_only_n", "?")
    lines = [
        f"Dataset: {s['dataset']} ({s['num_classes']} species, {s['train_images']} training images); scored on "
        f"the {s['eval_images']} field photos of the `{s['eval_split']}` split, {n_ho} of them of species without "
        f"field training photos. Backbone {s['backbone']}, {s['image_size']} px, batch {s['batch_size']}, "
        f"{s['epochs']} epochs for every variant (ours: the first {s['ours_warmup_epochs']} head-only), seeds "
        f"0..{s['seeds'] - 1}, stock lr {fmt(s['stock_lr'])}. Mean ± sd over seeds"
        + (f" ({s['budget_note']})" if s.get("budget_note") else "")
        + ". Our trainer's epoch is rounded up to whole batches by its balanced sampler.",
        "",
        f"| Variant | field top-1 (n={n_all}) | field top-5 | field MRR | herbarium-only species top-1 "
        f"(n={n_ho}) | top-5 | MRR | command wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, label in labels.items():
        row = summ[variant]
        cells = [
            _acc_cell(row, f"{g}_{m}") for g in ("all", "herbarium_only") for m in ("top1", "top5", "mrr")
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(row['median_command_wall_s'])} |")
    lines += [
        "",
        "Neither trainer sees the validation split (the stock trainer raises when validation lacks a training "
        "class, so it runs with `valid_split: null`; ours runs without validation too: no best-epoch "
        "selection, no early stopping). All models are scored by the same evaluator "
        "(`benchmarks/stock_harness.py:evaluate_folder`: each model's saved `ViTImageProcessor`, its logits, "
        "`metrics.evaluation_report`).",
    ]
    return lines


def _gpu_md(r: dict[str, Any]) -> list[str]:
    if "skipped" in r:
        return [f"**Skipped: {r['skipped']}.** No GPU figure is reported from this run."]
    s = r["setup"]
    lines = [
        f"Device: {r['device']}. {s['backbone']}, {s['image_size']} px, batch {s['batch_size']}, "
        f"{s['mixed_precision']}, optimizer {s['optimizer']}, {s['train_images']} training images (the sample's "
        f"training split repeated), {s['epochs']} epochs, data loading from the prepared dataset included "
        f"(ours: {s['ours_dataloader_num_workers']} workers; stock: main process). Runs: {', '.join(s['run_order'])}. "
        "Ours' batches leave the DataLoader as uint8 at the cache side (about 1.15 x 224 px, the size the "
        "table's per-run records show) and are cropped to 224 px on the GPU.",
        "",
        *_SPEED_HEADER,
        _speed_row("stock, full fine-tuning", r["stock"]),
        _speed_row("ours, full fine-tuning (augmentation on the GPU)", r["ours_full"]),
    ]
    if "ours_compiled" in r:
        lines.append(_speed_row("ours, full fine-tuning, `torch_compile: true`", r["ours_compiled"]))
    lines += [
        "",
        f"Ours / stock: {fmt(r['ours_vs_stock'])}x"
        + (f" ({fmt(r['ours_compiled_vs_stock'])}x compiled)" if "ours_compiled_vs_stock" in r else "")
        + f". Where the time goes (median per step): {_profile(r['stock'], 'stock')}; "
        f"{_profile(r['ours_full'], 'ours')}.",
    ]
    c = r.get("ceiling")
    if c and "eager" in c:
        lines.append(
            f"Ceiling, the bare timm model's training step on synthetic data already on the "
            f"{c['device']} (bf16 autocast, fused AdamW, batch {c['batch_size']}, no data loading, head or "
            f"Trainer): {fmt(c['eager'])} images/s eager"
            + (f", {fmt(c['compiled'])} compiled" if "compiled" in c else "")
            + "."
        )
    if "peak_tflops" in r:
        best = _best_ours(r)
        o = r[best]
        met = "met" if o["median_images_per_s"] >= GPU_TARGET_IMAGES_PER_S else "MISSED"
        parts = [
            f"{label} {fmt(100 * r[k]['fraction_of_peak'])}%"
            for k, label in (("ours_full", "ours"), ("ours_compiled", "ours compiled"), ("stock", "stock"))
            if k in r and "fraction_of_peak" in r[k]
        ]
        lines.append(
            f"Best of ours: {fmt(o['median_images_per_s'])} images/s = {fmt(o['achieved_tflops'])} TFLOP/s. "
            f"Fraction of the {fmt(r['peak_tflops'])} TFLOP/s dense bf16 peak (105 GFLOP per training "
            f"image): {', '.join(parts)}. Target >= {GPU_TARGET_IMAGES_PER_S:g} images/s: {met}."
        )
    if "note" in r:
        lines.append(f"_{r['note']}_")
    return lines


def _real_summary(sections: dict[str, Any]) -> list[str]:
    entry = sections.get("real")
    if not entry or entry["status"] != "ok" or "skipped" in entry["result"]:
        return [f"| Real images | {_status(entry) if entry else 'not run'} | - |"]
    r, lines = entry["result"], []
    for task, t in r["tasks"].items():
        ours = (t.get("summary") or {}).get(r.get("default_system") or "ours")
        stock = (t.get("summary") or {}).get("stock")
        frozen = ((t.get("frozen") or {}).get("frozen_unit") or {}).get("test")
        for group, label in (
            ("field", "all field photos"),
            ("herbarium_only", "species without field training photos"),
        ):
            cells = []
            if ours and f"test/{group}/top1" in ours:
                cells.append(
                    f"ours {fmt(ours[f'test/{group}/top1'][0])} / {fmt(ours[f'test/{group}/mrr'][0])}"
                )
            if frozen and group in frozen:
                cells.append(f"frozen {fmt(frozen[group]['top1'])} / {fmt(frozen[group]['mrr'])}")
            if stock and f"test/{group}/top1" in stock:
                cells.append(
                    f"stock {fmt(stock[f'test/{group}/top1'][0])} / {fmt(stock[f'test/{group}/mrr'][0])}"
                )
            lines.append(
                f"| Real {task}, field top-1 / MRR, {label} (mean of seeds) | {'; '.join(cells)} | ours >= both |"
            )
    return lines


def _summary_md(sections: dict[str, Any]) -> list[str]:
    lines = ["| Claim | Measured | Target |", "| --- | --- | --- |"]
    lines += _real_summary(sections)
    tr = sections.get("training")
    if tr and tr["status"] == "ok":
        r = tr["result"]
        lines.append(
            f"| CPU training throughput, full fine-tuning, ours / stock (same data, backbone, "
            f"{r['setup']['image_size']} px, batch {r['setup']['batch_size']}) | "
            f"**{fmt(r['full_vs_stock']['ratio_of_medians'])}x** ({fmt(r['ours_full']['median_images_per_s'])} vs "
            f"{fmt(r['stock']['median_images_per_s'])} images/s; median of paired ratios "
            f"{fmt(r['full_vs_stock']['median_paired_ratio'])}x) | >= {CPU_TARGET_RATIO:g}x "
            f"({_met(r['full_vs_stock']['ratio_of_medians'] >= CPU_TARGET_RATIO)}) |"
        )
        lines.append(
            f"| CPU head-only stage (ours) / stock full fine-tuning | {fmt(r['head_vs_stock']['ratio_of_medians'])}x "
            f"({fmt(r['ours_head']['median_images_per_s'])} images/s) | - |"
        )
    else:
        lines.append(f"| CPU training throughput, ours / stock | {_status(tr)} | >= {CPU_TARGET_RATIO:g}x |")
    acc = sections.get("accuracy")
    if acc and acc["status"] == "ok":
        summ = acc["result"]["summary"]
        for group, label in (
            ("all", "all field photos"),
            ("herbarium_only", "species without field training photos"),
        ):
            lines.append(f"| Field top-1 / MRR, {label} | {_acc_summary_cells(summ, group)} | - |")
    else:
        lines.append(f"| Field accuracy | {_status(acc)} | - |")
    accg = sections.get("accuracy_gpu")
    if accg and accg["status"] == "ok" and "skipped" not in accg["result"]:
        summ = accg["result"]["summary"]
        n = accg["result"]["setup"]["seeds"]
        lines.append(
            f"| Field top-1 / MRR, all field photos, GPU, {n} seeds | {_acc_summary_cells(summ, 'all')} | - |"
        )
    lines += _external_summary("data_prep", sections.get("data_prep"))
    lines += _external_summary("app", sections.get("app"))
    gpu = sections.get("gpu")
    if gpu and gpu["status"] == "ok" and "skipped" not in gpu["result"]:
        r = gpu["result"]
        best = _best_ours(r)
        o = r[best]
        frac = o.get("fraction_of_peak")
        extra = f", {fmt(100 * frac)}% of bf16 peak" if frac is not None else ""
        label = " compiled" if best == "ours_compiled" else ""
        lines.append(
            f"| GPU ViT-B/16 bf16 training, ours{label} ({r['device']}) | {fmt(o['median_images_per_s'])} "
            f"images/s{extra}; stock {fmt(r['stock']['median_images_per_s'])} "
            f"({fmt(o['median_images_per_s'] / r['stock']['median_images_per_s'])}x) "
            f"| >= {GPU_TARGET_IMAGES_PER_S:g} images/s "
            f"({_met(o['median_images_per_s'] >= GPU_TARGET_IMAGES_PER_S)}) |"
        )
    else:
        text = "skipped: no CUDA device" if gpu and gpu["status"] == "ok" else _status(gpu)
        lines.append(
            f"| GPU ViT-B/16 bf16 training, ours | {text} | >= {GPU_TARGET_IMAGES_PER_S:g} images/s |"
        )
    return lines


def _external_summary(name: str, entry: dict[str, Any] | None) -> list[str]:
    """Summary rows from the other components' benchmarks: their own measured-vs-target entries."""
    if entry is None or entry["status"] != "ok":
        return [f"| {TITLES[name]} | {_status(entry)} | - |"]
    r = entry["result"]
    rows = []
    small = r.get("small_700px")
    if isinstance(small, dict) and "data_prep_img_per_s" in small and "target_small_img_per_s" in r:
        rows.append(
            f"| Data preparation, {small.get('images', '?')} 700-px JPEGs | {fmt(small['data_prep_img_per_s'])} "
            f"images/s | >= {fmt(r['target_small_img_per_s'])} images/s"
            + (f" ({_met(bool(r['meets_target']))})" if "meets_target" in r else "")
            + " |"
        )
    large = r.get("large_4000px")
    if isinstance(large, dict) and "data_prep_img_per_s" in large:
        rows.append(
            f"| Data preparation, {large.get('images', '?')} 4000-px scans (downsized once) | "
            f"{fmt(large['data_prep_img_per_s'])} images/s | - |"
        )
    targets = r.get("targets_ms")
    if isinstance(targets, dict):
        for key, t in targets.items():
            if isinstance(t, dict) and {"measured", "target"} <= set(t):
                met = f" ({_met(bool(t['met']))})" if "met" in t else ""
                rows.append(
                    f"| App latency, `{key}` | {fmt(t['measured'])} ms | <= {fmt(t['target'])} ms{met} |"
                )
    return rows or [f"| {TITLES[name]} | see below | - |"]


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _status(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "not run"
    return "FAILED (see below)" if entry["status"] == "failed" else "see below"


TITLES = {
    "real": "Real images: herbarium-to-field identification",
    "data_prep": "Data preparation",
    "training": "Training throughput (CPU)",
    "accuracy": "Field accuracy",
    "app": "App latency",
    "gpu": "Training throughput (GPU)",
    "accuracy_gpu": "Field accuracy, several seeds (GPU)",
    "enroll": "Enrolment of new species without retraining (real images)",
    "audit": "Collection audit: label errors, near-duplicates, outliers (real images)",
    "scale": "Scaling: time and memory of every stage against images and species",
}
SCALE_FIGURE = "benchmarks/results/scale.png"


def render(sections: dict[str, Any], run_meta: dict[str, Any], quick: bool) -> str:
    lines = [
        "# Benchmarks",
        "",
        "_Rewritten by `make bench` (`python benchmarks/run_all.py`); do not edit by hand. Method and flags: "
        "[benchmarks/README.md](benchmarks/README.md). Ratios matter more than absolute numbers: the machines "
        "are shared and noisy, so both sides of each comparison run alternately in the same session._",
        "",
    ]
    if quick:
        lines += ["**QUICK RUN: tiny configuration for the tests; these are not benchmark figures.**", ""]
    lines += [
        (
            f"Last run: {run_meta['date']}, sections {', '.join(run_meta['sections'])}, on {run_meta['machine_line']}. "
            f"Command: `{run_meta['command']}`."
            if run_meta["sections"]
            else f"Re-rendered {run_meta['date']} from the results embedded in earlier reports (`{run_meta['command']}`); "
            "nothing was measured by that command."
        )
        + " Each section below carries its own date, machine and command.",
        "",
        "## Summary",
        "",
        *_summary_md(sections),
    ]
    for i, name in enumerate(SECTIONS, start=1):
        entry = sections.get(name)
        lines += ["", f"## {i}. {TITLES[name]}", ""]
        if entry is None:
            lines.append("Not run yet.")
            continue
        lines += [_meta_line(entry), ""]
        if entry["status"] == "failed":
            lines += ["**FAILED** (no figures):", "", "```", entry["error"].strip()[-3000:], "```"]
            continue
        r = entry["result"]
        if name == "real":
            lines += _real_md(r)
        elif name == "enroll":
            lines += _enroll_md(r)
        elif name == "audit":
            lines += _audit_md(r)
        elif name == "scale":
            lines += _scale_md(r)
        elif name == "training":
            lines += _training_md(r)
        elif name == "accuracy":
            lines += _accuracy_md(r)
        elif name == "gpu":
            lines += _gpu_md(r)
        elif name == "accuracy_gpu":
            if "skipped" in r:
                lines.append(f"**Skipped: {r['skipped']}.** No GPU figure is reported from this run.")
            else:
                lines += [
                    f"The accuracy section's three variants, trained on {r['setup']['device']} in float32 "
                    "(ours augments on the GPU there, `augmentation_device: auto`), so that several seeds fit.",
                    "",
                    *_accuracy_md(r),
                ]
        else:
            lines += _generic_table(r)
    payload = json.dumps({"sections": sections}, indent=None, sort_keys=True, default=str)
    payload = payload.replace("--", "-\\u002d")  # an HTML comment must not contain "--"
    lines += ["", f"{RESULTS_MARKER}", payload, "-->", ""]
    return "\n".join(lines)


def load_previous(report: Path) -> dict[str, Any]:
    """The sections embedded in an earlier report (empty when there is none or it cannot be read)."""
    try:
        text = report.read_text(encoding="utf-8")
    except OSError:
        return {}
    start = text.rfind(RESULTS_MARKER)
    if start < 0:
        return {}
    body = text[start + len(RESULTS_MARKER) :]
    body = body[: body.rfind("-->")]
    try:
        return json.loads(body)["sections"]
    except (ValueError, KeyError):
        return {}


# ------------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests); the report goes to --out")
    parser.add_argument(
        "--only",
        action="append",
        metavar="SECTION",
        help=f"run only these sections (repeat or comma-separate): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"accuracy seeds (default: up to {DEFAULT_SEEDS}, as many as fit --budget-min; quick: 1)",
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        default=DEFAULT_BUDGET_MIN,
        help="time budget of the whole run in minutes, used to choose the number of accuracy seeds when "
        "--seeds is not given (default %(default)g; 0: no budget)",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="throughput runs per trainer (default 3; quick 1)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="accuracy epochs (default: config.json's; quick 1)"
    )
    parser.add_argument(
        "--stock-lr",
        type=float,
        default=DEFAULT_STOCK_LR,
        help="stock trainer learning rate (default %(default)g)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench-out", help="working folder (default bench-out/)"
    )
    parser.add_argument(
        "--report", type=Path, default=None, help="report file (default BENCHMARKS.md; quick: OUT/)"
    )
    parser.add_argument(
        "--real-results",
        type=Path,
        default=None,
        help="real section: import the results.json files of an earlier `bench_real.py --out DIR` run",
    )
    parser.add_argument(
        "--real-default",
        default=None,
        help="real section, with --real-results: the system that config.json ships (marked in the table)",
    )
    parser.add_argument(
        "--enroll-results",
        type=Path,
        default=None,
        help="enroll section: import the results-s*.json files of earlier `bench_enroll.py --out DIR` runs",
    )
    parser.add_argument(
        "--audit-results",
        type=Path,
        default=None,
        help="audit section: import the results.json of an earlier `bench_audit.py --out DIR` run",
    )
    parser.add_argument(
        "--scale-results",
        type=Path,
        default=None,
        help="scale section: import the results.json of an earlier `bench_scale.py --out DIR` run",
    )
    parser.add_argument(
        "--import-report",
        type=Path,
        action="append",
        default=[],
        help="merge the sections of another report (e.g. one written on a GPU machine) into --report, "
        "each with its own date, machine and command; with no --only, nothing is run",
    )
    args = parser.parse_args(argv)
    selected: list[str] = []
    for item in args.only or list(SECTIONS):
        for name in item.split(","):
            name = name.strip()
            if name not in SECTIONS:
                parser.error(f"--only: unknown section {name!r} (choose from {', '.join(SECTIONS)})")
            if name not in selected:
                selected.append(name)
    args.sections = [s for s in SECTIONS if s in selected]
    if args.import_report and not args.only:
        args.sections = []
    args.seeds_given = args.seeds is not None
    if args.seeds is None:
        args.seeds = 1 if args.quick else DEFAULT_SEEDS
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    args.out = args.out.resolve()
    if args.report is None:
        args.report = args.out / "BENCHMARKS.md" if args.quick else REPO_ROOT / "BENCHMARKS.md"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    raw_argv = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/run_all.py" + ("".join(" " + shlex.quote(a) for a in raw_argv))
    info = machine_info()
    run_meta = {
        "date": now_iso(),
        "machine": info,
        "machine_line": machine_line(info),
        "command": command,
        "sections": args.sections,
        "quick": args.quick,
    }
    previous = {} if args.quick else load_previous(args.report)
    for other in args.import_report:
        imported = load_previous(other)
        if not imported:
            print(f"[bench] --import-report {other}: no results found in it", file=sys.stderr)
            return 2
        previous.update(imported)
    sections: dict[str, Any] = {k: v for k, v in previous.items() if k in SECTIONS and k not in args.sections}
    failed = []
    for name in args.sections:
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        meta = dict(run_meta, load_start=os.getloadavg()[0], date=now_iso())
        try:
            result = run_section(name, args, sections)
            entry = {"status": "ok", "result": result}
        except Exception as exc:  # noqa: BLE001 - reported, and the exit status says it failed
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"}
            failed.append(name)
            print(f"[bench] {name} FAILED: {exc}", file=sys.stderr, flush=True)
        meta["load_end"] = os.getloadavg()[0]
        entry.update(meta=meta, seconds=time.perf_counter() - t0)
        earlier = previous.get(name)
        if (
            entry["status"] == "ok"
            and "skipped" in entry["result"]
            and earlier
            and earlier.get("status") == "ok"
            and "skipped" not in earlier["result"]
        ):
            # no GPU here: keep the figures measured on one (they carry their own date and machine)
            print(f"[bench] {name} skipped here; keeping the result of {earlier['meta']['date']}", flush=True)
            entry = earlier
        sections[name] = entry
        print(f"[bench] {name} {entry['status']} in {entry['seconds']:.0f} s", flush=True)
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(render(sections, run_meta, args.quick), encoding="utf-8")
    if not args.sections:  # --import-report only
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(render(sections, run_meta, args.quick), encoding="utf-8")
    (args.out / "results.json").write_text(
        json.dumps(sections, indent=1, default=str) + "\n", encoding="utf-8"
    )
    print(f"[bench] report: {args.report}")
    if failed:
        print(f"[bench] FAILED sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
