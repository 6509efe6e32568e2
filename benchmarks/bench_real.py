"""Real images: frozen-feature prototypes vs the stock AutoTrain trainer vs this trainer (issue 14).

Tasks (``real_data.py``): ``leafsnap`` (185 species, leaf views = herbarium-like domain, other views =
field domain, field training photos for about two thirds of the species, a held-out field test set for
every species) and ``plantclef`` (real PlantCLEF 2020 fragment: a smoke test, not an accuracy benchmark).

Systems, all on the embedded EfficientNet-Lite0 weights at 224 px and scored by one evaluator
(``stock_harness.evaluate_folder``: each saved model folder with its own saved preprocessing) on the
field photos of the test split, overall and for the species without field training photos:

- ``frozen``: no training. Pooled backbone features, class-mean prototypes of the training images,
  cosine ranking (with ``s = 30`` logits for ECE). Both input normalisations: ``frozen_unit`` ([-1, 1])
  and ``frozen_imagenet`` (ImageNet mean/std). Deterministic (no seed).
- ``stock``: ``autotrain.trainers.image_classification`` (lr ``--stock-lr``, same epochs and batch size,
  no validation split: it refuses one that lacks training classes).
- ``ours``: ``config.json`` as shipped (with its validation split: temperature fitting, epoch selection).
- ``ours_*``: candidate settings (``CANDIDATES``), each also reported at several WiSE-FT mixing
  coefficients (``metrics.json``'s ``wise_ft.report``, the trainer's own evaluator on its decoded cache).

Choices are made on the validation split (field photos of species with field training photos); the
test split is reported, never used to choose. ``python benchmarks/bench_real.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_data  # noqa: E402
import stock_harness as sh  # noqa: E402
from bench_common import mean_sd  # noqa: E402

WISE_FT_GRID = [0.0, 0.25, 0.5, 0.75, 1.0]
UNIT = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Candidate settings on top of config.json (what each changes); "ours" is config.json itself. Each is
# also evaluated at the WiSE-FT alphas of WISE_FT_GRID (one training run gives them all).
CANDIDATES: dict[str, dict[str, Any]] = {
    # the learning rates config.json had before issue 14 (backbone 3e-4, head 3e-3, 512-d embedding), now
    # with the prototype start; chosen on validation, so config.json keeps them
    "ours_old_lr": {"lr": 3e-4, "backbone_lr": None, "head_lr": None, "embedding_dim": 512},
    "ours_bb3e-5": {"backbone_lr": 3e-5, "head_lr": 1e-3, "lr": None, "embedding_dim": None},
    "ours_bb1e-5": {"backbone_lr": 1e-5, "head_lr": 1e-3, "lr": None, "embedding_dim": None},
    # backbone frozen throughout (only the projection and the centres train)
    "ours_head_only": {
        "warmup_epochs": "epochs",
        "head_lr": 1e-3,
        "backbone_lr": 1e-5,
        "lr": None,
        "embedding_dim": None,
    },
}
GROUPS = ("field", "herbarium_only", "with_field")
METRICS = ("top1", "top5", "mrr", "ece", "wrong_unconfident")


def build_dataset(task: str, out: Path, data_root: Path) -> Path:
    """Write the task's layout and run ``python -m data_prep build`` on it; return the dataset folder."""
    layout, dataset = out / "layout", out / "dataset"
    if (dataset / "dataset_dict.json").is_file():
        return dataset
    counts = real_data.prepare(task, layout, data_root)
    print(f"[{task}] layout: {counts}", flush=True)
    cmd = [sys.executable, "-m", "data_prep", "build", str(layout), "--out", str(dataset), "--quiet"]
    proc = subprocess.run(cmd, cwd=sh.REPO_ROOT, capture_output=True, text=True)
    if not (dataset / "dataset_dict.json").is_file():
        raise sh.BenchError(f"data_prep build failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return dataset


def frozen_prototypes(
    dataset: Path, mean, std, image_size: int | None = None, splits=("validation", "test")
) -> dict[str, Any]:
    """Nearest-class-mean on the embedded backbone's pooled features (no training, no projection)."""
    import numpy as np
    import torch
    from datasets import load_from_disk

    from autotrain.trainers.image_classification_custom import metrics as M
    from autotrain.trainers.image_classification_custom.dataset import NormalizeCollator, decode_images
    from autotrain.trainers.image_classification_custom.embedder import Embedder, prototype_logits
    from autotrain.trainers.image_classification_custom.model_io import create_arcface_model
    from data_prep.contract import EMBEDDED_BACKBONE

    ds = load_from_disk(str(dataset))
    names = ds["train"].features["label"].names
    model = create_arcface_model(
        EMBEDDED_BACKBONE, names, image_mean=mean, image_std=std, image_size=image_size
    ).eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    size, interp = int(model.config.image_size), model.config.image_interpolation
    collator = NormalizeCollator(model.config.image_mean, model.config.image_std)

    def feats(split):
        images = decode_images(ds[split], "image", size=size, interpolation=interp)
        return Embedder(model, collator, 64, size, interp, device).features(images)

    train_labels = np.asarray(ds["train"]["label"])
    has_field = M.classes_with_field_photos(train_labels, np.asarray(ds["train"]["domain"]), len(names))
    train_feats = feats("train")
    out = {}
    for split in splits:
        if split not in ds or len(ds[split]) == 0:
            continue
        logits = prototype_logits(train_feats, train_labels, feats(split), len(names), 30.0)
        report = M.evaluation_report(
            logits, np.asarray(ds[split]["label"]), np.asarray(ds[split]["domain"]), has_field
        )
        out[split] = {k: v for k, v in report.items() if k in ("all", *GROUPS)}
    return out


def _ours_overrides(name: str, epochs: int) -> dict[str, Any]:
    over = dict(CANDIDATES.get(name, {}))
    if over.get("warmup_epochs") == "epochs":
        over["warmup_epochs"] = epochs
    return over


def train_jobs(
    dataset: Path,
    runs: Path,
    systems: list[str],
    seeds: int,
    settings: dict[str, Any],
    parallel: int,
    on_result=None,
    first_seed: int = 0,
    previous: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Train every (system, seed) with at most ``parallel`` runs at a time; evaluate each saved folder.

    Runs go seed by seed (every system's seed 0 first); ``on_result(partial)`` is called after each run
    with the results so far, so an interrupted benchmark keeps what it measured."""
    backbone = sh.embedded_backbone_folders(runs / "backbone", settings.get("image_size"))
    default = sh.default_config()
    epochs = int(settings.get("epochs") or default.get("epochs", 6))
    batch = int(settings.get("batch_size") or default.get("batch_size", 32))
    threads = max(1, (os.cpu_count() or 2) // max(1, parallel))
    jobs = []
    for seed in range(first_seed, first_seed + seeds):
        for system in systems:
            name = f"{system.replace('_', '-')}-s{seed}"
            if system == "stock":
                sh.link_dataset(runs / name, dataset)
                cfg = sh.stock_config(
                    name,
                    backbone["stock"],
                    epochs=epochs,
                    batch_size=batch,
                    lr=settings["stock_lr"],
                    seed=seed,
                )
                kind = "stock"
            else:
                over = {"wise_ft_report": WISE_FT_GRID, "tsne": False, **_ours_overrides(system, epochs)}
                cfg = sh.ours_config(
                    name,
                    dataset,
                    backbone["ours_model"],
                    epochs=epochs,
                    warmup_epochs=int(over.pop("warmup_epochs", default.get("warmup_epochs", 1))),
                    batch_size=batch,
                    seed=seed,
                    image_size=backbone["image_size"],
                    evaluate=True,
                    **over,
                )
                cfg = {k: v for k, v in cfg.items() if v is not None}
                kind = "ours"
            jobs.append((system, seed, kind, cfg))

    def one(job):
        system, seed, kind, cfg = job
        t0 = time.perf_counter()
        try:
            res = sh.run_trainer(kind, cfg, runs, settings["timeout"], threads=threads)
        except sh.BenchError as err:
            print(f"  {system} seed {seed}: FAILED {str(err).splitlines()[0]}", flush=True)
            return system, {"seed": seed, "error": str(err)[-3000:]}
        report = sh.evaluate_folder(kind, res["project_dir"], dataset, "test")
        report = {"seed": seed, "test": report, "wall_s": round(time.perf_counter() - t0, 1)}
        metrics_file = Path(res["project_dir"]) / "metrics.json"
        if kind == "ours" and metrics_file.is_file():
            m = json.loads(metrics_file.read_text())
            report["wise_ft"] = (m.get("wise_ft") or {}).get("report")
            report["calibration"] = {
                k: v for k, v in (m.get("calibration") or {}).items() if k != "reliability_field"
            }
            report["validation"] = m.get("validation")
            report["training"] = {
                k: (m.get("training") or {}).get(k) for k in ("best_checkpoint", "epochs_completed")
            }
        print(f"  {system} seed {seed}: {_line(report['test'])} ({report['wall_s']:.0f}s)", flush=True)
        return system, report

    out: dict[str, list[dict[str, Any]]] = {k: list(v) for k, v in (previous or {}).items()}
    for system in systems:
        out.setdefault(system, [])
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for system, report in pool.map(one, jobs):
            out[system].append(report)
            if on_result is not None:
                on_result(out)
    return out


def _line(report: dict[str, Any]) -> str:
    parts = []
    for group in ("field", "herbarium_only"):
        m = report.get(group)
        if m:
            parts.append(
                f"{group} top-1 {m['top1']:.3f} top-5 {m['top5']:.3f} MRR {m['mrr']:.3f} ECE {m['ece']:.3f}"
            )
    return "; ".join(parts)


def summarise(values_by_system: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """mean/sd over seeds per system, group and metric, for ``test`` and (when known) ``validation``."""
    table: dict[str, Any] = {}
    for system, reports in values_by_system.items():
        ok = [r for r in reports if "error" not in r]
        row: dict[str, Any] = {"seeds": len(ok), "failed": len(reports) - len(ok)}
        for split in ("test", "validation"):
            for group in GROUPS:
                for metric in METRICS:
                    vals = [r[split][group][metric] for r in ok if r.get(split) and group in r[split]]
                    if vals:
                        mean, sd = mean_sd(vals)
                        row[f"{split}/{group}/{metric}"] = [round(mean, 4), round(sd, 4)]
        table[system] = row
    return table


def wise_ft_rows(values_by_system: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Per system and WiSE-FT alpha: mean/sd (over seeds) of validation and test metrics."""
    out: dict[str, list[dict[str, Any]]] = {}
    for system, reports in values_by_system.items():
        ok = [r for r in reports if r.get("wise_ft")]
        if not ok:
            continue
        rows = []
        for i, alpha in enumerate(WISE_FT_GRID):
            row: dict[str, Any] = {"alpha": alpha}
            for split in ("validation", "test"):
                for group in GROUPS:
                    for metric in METRICS:
                        vals = [
                            r["wise_ft"][i][split][group][metric]
                            for r in ok
                            if i < len(r["wise_ft"]) and group in r["wise_ft"][i].get(split, {})
                        ]
                        if vals:
                            mean, sd = mean_sd(vals)
                            row[f"{split}/{group}/{metric}"] = [round(mean, 4), round(sd, 4)]
            rows.append(row)
        out[system] = rows
    return out


def wise_ft_selected(values_by_system: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What ``wise_ft_select`` would save, from each run's WiSE-FT sweep: per run the alpha with the best
    validation field MRR (ties to the larger alpha), then its test metrics; mean/sd over runs. Ranking
    metrics only (the sweep is at temperature 1, so ECE would not be the saved model's)."""
    out: dict[str, Any] = {}
    for system, reports in values_by_system.items():
        picked = []
        for r in reports:
            rows = [x for x in (r.get("wise_ft") or []) if "validation" in x and "field" in x["validation"]]
            if rows:
                best = max(rows, key=lambda x: (round(x["validation"]["field"]["mrr"], 6), x["alpha"]))
                picked.append(best)
        if not picked:
            continue
        row: dict[str, Any] = {"alphas": [x["alpha"] for x in picked]}
        for group in GROUPS:
            for metric in ("top1", "top5", "mrr"):
                vals = [x["test"][group][metric] for x in picked if group in x.get("test", {})]
                if vals:
                    mean, sd = mean_sd(vals)
                    row[f"test/{group}/{metric}"] = [round(mean, 4), round(sd, 4)]
        out[system] = row
    return out


def run(
    task: str,
    out: Path,
    seeds: int,
    systems: list[str],
    settings: dict[str, Any],
    parallel: int,
    data_root: Path,
    first_seed: int = 0,
) -> dict[str, Any]:
    """The whole benchmark for one task; returns (and writes ``out/<task>/results.json``) the results.

    With ``first_seed > 0`` the runs are added to those of an earlier ``results.json`` in the same place."""
    work = Path(out).resolve() / task
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dataset = build_dataset(task, work, data_root)
    from datasets import load_from_disk

    ds = load_from_disk(str(dataset))
    sizes = {k: len(v) for k, v in ds.items()}
    print(f"[{task}] dataset: {sizes}", flush=True)
    results: dict[str, Any] = {"task": task, "splits": sizes, "settings": settings, "seeds": seeds}
    previous = None
    if first_seed > 0 and (work / "results.json").is_file():  # add seeds to an earlier run
        earlier = json.loads((work / "results.json").read_text())
        previous = earlier.get("runs")
        results["frozen"] = earlier.get("frozen")
        results["seeds"] = f"{earlier.get('seeds')} + seeds {first_seed}..{first_seed + seeds - 1}"

    def save(runs=None) -> None:
        if runs is not None:
            results["runs"] = runs
            results["summary"] = summarise(runs)
            results["wise_ft"] = wise_ft_rows(runs)
            results["wise_ft_selected"] = wise_ft_selected(runs)
        results["wall_s"] = round(time.perf_counter() - t0, 1)
        (work / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")

    size = settings.get("image_size")
    if "frozen" in systems and not results.get("frozen"):
        results["frozen"] = {
            "frozen_unit": frozen_prototypes(dataset, *UNIT, image_size=size),
            "frozen_imagenet": frozen_prototypes(dataset, *IMAGENET, image_size=size),
        }
        for name, rep in results["frozen"].items():
            print(f"  {name}: test {_line(rep['test'])}", flush=True)
        save()
    trained = [s for s in systems if s != "frozen"]
    if trained:
        save(
            train_jobs(
                dataset,
                work / "runs",
                trained,
                seeds,
                settings,
                parallel,
                on_result=save,
                first_seed=first_seed,
                previous=previous,
            )
        )
    return results


def merge(parts: list[Path], out: Path) -> list[Path]:
    """Join the ``<task>/results.json`` of several ``--out`` folders (runs split over processes) into
    ``out/<task>/results.json``: frozen results from the first that has them, every system's runs
    concatenated (ordered by seed), summaries recomputed. Returns the files written."""
    written = []
    tasks = sorted({p.parent.name for part in parts for p in Path(part).glob("*/results.json")})
    for task in tasks:
        merged: dict[str, Any] = {}
        runs: dict[str, list[dict[str, Any]]] = {}
        sources = []
        for part in parts:
            file = Path(part) / task / "results.json"
            if not file.is_file():
                continue
            r = json.loads(file.read_text())
            sources.append(str(part))
            for key in ("task", "splits", "settings"):
                merged.setdefault(key, r.get(key))
            if r.get("frozen") and not merged.get("frozen"):
                merged["frozen"] = r["frozen"]
            for system, reports in (r.get("runs") or {}).items():
                runs.setdefault(system, []).extend(reports)
        runs = {k: sorted(v, key=lambda x: x["seed"]) for k, v in runs.items() if v}
        merged["seeds"] = max((len(v) for v in runs.values()), default=0)
        merged["merged_from"] = sources
        merged["runs"] = runs
        merged["summary"] = summarise(runs)
        merged["wise_ft"] = wise_ft_rows(runs)
        merged["wise_ft_selected"] = wise_ft_selected(runs)
        target = Path(out) / task / "results.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(merged, indent=2, default=float) + "\n")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=("leafsnap", "plantclef", "both"), default="both")
    p.add_argument("--out", type=Path, default=Path("bench-out/real"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--first-seed", type=int, default=0, help="start at this seed and add to OUT's earlier results.json"
    )
    p.add_argument("--systems", default="frozen,stock,ours," + ",".join(CANDIDATES))
    p.add_argument("--epochs", type=int, default=None, help="default: config.json's")
    p.add_argument("--batch-size", type=int, default=None, help="default: config.json's")
    p.add_argument("--image-size", type=int, default=None, help="default: config.json's (224)")
    p.add_argument("--stock-lr", type=float, default=5e-4)
    p.add_argument("--parallel", type=int, default=1, help="trainer runs at a time")
    p.add_argument("--timeout", type=float, default=7200)
    p.add_argument("--data-root", type=Path, default=real_data.SHARED_DATA)
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="join the results of these --out folders into --out",
    )
    args = p.parse_args(argv)
    if args.merge:
        for file in merge(args.merge, args.out):
            print(f"wrote {file}")
        return 0
    if not args.data_root.is_dir():
        print(f"real-data benchmark skipped: {args.data_root} not found (it needs ../shared/data)")
        return 0
    settings = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "stock_lr": args.stock_lr,
        "timeout": args.timeout,
    }
    systems = [s for s in args.systems.split(",") if s]
    tasks = ("leafsnap", "plantclef") if args.task == "both" else (args.task,)
    for task in tasks:
        res = run(
            task, args.out, args.seeds, systems, settings, args.parallel, args.data_root, args.first_seed
        )
        print(json.dumps(res.get("summary", {}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------

SYSTEM_TITLES = {
    "frozen_unit": "frozen-feature prototypes, [-1, 1] input (no training)",
    "frozen_imagenet": "frozen-feature prototypes, ImageNet mean/std input (no training)",
    "stock": "stock AutoTrain `image_classification`",
    "ours": "this trainer, `config.json` as shipped",
    "ours_old_lr": "this trainer, lr 3e-4 (backbone 3e-4, head 3e-3), 512-d PCA start: `config.json`",
    "ours_bb3e-5": "this trainer, backbone lr 3e-5, head 1e-3, identity projection",
    "ours_bb1e-5": "this trainer, backbone lr 1e-5, head 1e-3, identity projection",
    "ours_head_only": "this trainer, backbone frozen (head lr 1e-3), identity projection",
}


def _cell(value) -> str:
    if value is None:
        return "n/a"
    mean, sd = value
    return f"{mean:.3f} ± {sd:.3f}"


def render_md(results: dict[str, Any], default_system: str | None = None) -> list[str]:
    """Markdown tables of one task's results: test field metrics (overall and herbarium-only species)
    per system, validation MRR, and the WiSE-FT sweep on validation and test."""
    lines = [
        f"Task `{results['task']}`: splits {results['splits']}, {results['seeds']} seed(s) per trained system, "
        f"settings { ({k: v for k, v in results['settings'].items() if v is not None}) }.",
        "",
        "| System | Field top-1 | Field top-5 | Field MRR | Field ECE | Wrong answers under 50% | "
        "Herbarium-only top-1 | Herbarium-only MRR | Validation MRR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rep in (results.get("frozen") or {}).items():
        t, v = rep.get("test", {}), rep.get("validation", {})

        def one(d, g, m):
            return None if g not in d else (d[g][m], 0.0)

        lines.append(
            f"| {SYSTEM_TITLES.get(name, name)} | "
            + " | ".join(
                _cell(one(t, g, m))
                for g, m in (
                    ("field", "top1"),
                    ("field", "top5"),
                    ("field", "mrr"),
                    ("field", "ece"),
                    ("field", "wrong_unconfident"),
                    ("herbarium_only", "top1"),
                    ("herbarium_only", "mrr"),
                )
            )
            + f" | {_cell(one(v, 'field', 'mrr'))} |"
        )
    for name, row in (results.get("summary") or {}).items():
        title = SYSTEM_TITLES.get(name, name)
        if name == default_system:
            title = f"**{title} (the shipped default)**"
        keys = [
            "test/field/top1",
            "test/field/top5",
            "test/field/mrr",
            "test/field/ece",
            "test/field/wrong_unconfident",
            "test/herbarium_only/top1",
            "test/herbarium_only/mrr",
            "validation/field/mrr",
        ]
        failed = f" ({row['failed']} failed)" if row.get("failed") else ""
        lines.append(f"| {title}{failed} | " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    for name, row in (results.get("wise_ft_selected") or {}).items():
        keys = [
            "test/field/top1",
            "test/field/top5",
            "test/field/mrr",
            None,
            None,
            "test/herbarium_only/top1",
            "test/herbarium_only/mrr",
            None,
        ]
        alphas = ", ".join(f"{a:g}" for a in row["alphas"])
        lines.append(
            f"| {SYSTEM_TITLES.get(name, name)}, WiSE-FT alpha chosen on validation per run ({alphas}; "
            "`wise_ft_select`) | " + " | ".join(_cell(row.get(k)) if k else "-" for k in keys) + " |"
        )
    sweeps = results.get("wise_ft") or {}
    if sweeps:
        lines += [
            "",
            "WiSE-FT sweep (the trainer's own evaluator; alpha 0 = the starting model, alpha 1 = fine-tuned "
            "weights; validation = field photos of species with field training photos):",
            "",
            "| System | alpha | Validation top-1 | Validation MRR | Test field top-1 | Test field MRR | "
            "Test herbarium-only top-1 | Test herbarium-only MRR |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, rows in sweeps.items():
            for r in rows:
                keys = [
                    "validation/field/top1",
                    "validation/field/mrr",
                    "test/field/top1",
                    "test/field/mrr",
                    "test/herbarium_only/top1",
                    "test/herbarium_only/mrr",
                ]
                lines.append(
                    f"| {name} | {r['alpha']:g} | " + " | ".join(_cell(r.get(k)) for k in keys) + " |"
                )
    return lines
