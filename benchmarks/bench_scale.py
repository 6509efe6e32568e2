"""Scaling benchmark: time and peak memory of every stage against N images and C species.

For each configuration ``(N, C)`` it writes a CSV layout over the first ``N`` files of a generated pool
(``scale_data.py``: JPEGs at realistic sizes) and measures, each in its own process:

- ``build``: ``python -m data_prep build CSV --out DATASET`` (validate, downsize to 1,024 px, write Arrow);
- the trainer's stages (``scale_stages.py trainer``): set-up, decoded-image cache, prototypes (with the
  no-training baseline), one epoch (with its validation pass; config.json's first epoch, head-only with
  the backbone frozen; ``--epoch full``: full fine-tuning, about 3x slower per image on CPU), evaluation,
  the t-SNE map and the rest of saving;
- the app (``scale_stages.py app``): first start (embedding the reference set, the nearest-neighbour
  index, the t-SNE map), start from its cache (a new process), one query.

Wall time and the peak resident memory of the process tree (``scale_measure.py``); the 1-minute load
average at each stage's end is kept, since other work on the machine inflates wall times. From the runs
it fits, per stage, the exponent ``b`` of ``cost ~ N^b`` (at fixed C) and ``cost ~ C^b`` (at fixed N) by
least squares on log-log values (memory: on the peak above the process's import baseline), and draws a
log-log figure.

Usage::

    python benchmarks/bench_scale.py --preset small --out bench-out/scale-small   # ~15 min (make bench)
    python benchmarks/bench_scale.py --preset large --out bench-out/scale --pool bench-out/scale-pool  # hours
    python benchmarks/bench_scale.py --configs 10000x1000 --out bench-out/scale   # one configuration

A configuration's stage whose JSON is already in ``OUT`` is not run again (a long run can be resumed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale_data  # noqa: E402
from scale_measure import load_average, run_measured  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    # N-sweep at C = 1,000 (N = 2k, 10k, 50k) and C-sweep at N = 2,000 (C = 100, 1k, 1.6k). Every species
    # needs a herbarium sheet and 80 % of the files are sheets, so C <= 0.8 N: the N = 1k at
    # C = 1k and C = 10k at N = 10k do not exist; the C-sweep runs at N = 2k, and the model at 64 px (its
    # cost per image is a constant factor: 224 px is about 12x the pixels), to fit a 2-core session.
    "large": {
        "configs": [(2000, 1000), (10000, 1000), (50000, 1000), (2000, 100), (2000, 1600)],
        "image_size": 64,
    },
    "small": {"configs": [(200, 20), (400, 20), (800, 20), (800, 80)], "image_size": 64},
}
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
STAGE_FILES = ("build", "trainer", "app")


def parse_config(text: str) -> tuple[int, int]:
    """``"10000x1000"`` -> ``(10000, 1000)``."""
    n, _, c = text.lower().partition("x")
    try:
        return int(n), int(c)
    except ValueError:
        raise argparse.ArgumentTypeError(f"configuration {text!r}: expected NxC, e.g. 10000x1000") from None


def _env() -> dict[str, str]:
    return {
        **os.environ,
        **ENV,
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }


def _stage_json(path: Path, cmd: list[str], log: Path) -> dict[str, Any]:
    """Run a stage command that writes its own per-stage JSON at ``path``; add its process total."""
    measured = run_measured(cmd, log, env=_env())
    out = json.loads(path.read_text())
    out["process"] = measured.as_dict() | {"load_average": load_average()}
    path.write_text(json.dumps(out, indent=1))
    return out


def run_config(
    pool: Path, out: Path, n: int, c: int, image_size: int, batch_size: int, epoch: str = "head"
) -> dict[str, Any]:
    """Every stage of one configuration; returns ``{"n", "c", "stages": {name: {...}}, ...}``."""
    folder = out / f"n{n}-c{c}"
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = scale_data.write_csv(pool, n, c)
    dataset, model = folder / "dataset", folder / "model"
    py = sys.executable
    results: dict[str, Any] = {}
    build_json = folder / "build.json"
    if not build_json.is_file():
        cmd = [py, "-m", "data_prep", "build", str(csv_path), "--out", str(dataset), "--quiet"]
        measured = run_measured(cmd, folder / "build.log", env=_env())
        report = json.loads((dataset / "prep_report.json").read_text())
        disk = sum(f.stat().st_size for f in dataset.rglob("*") if f.is_file())
        build_json.write_text(
            json.dumps(
                {
                    "stages": {"build": measured.as_dict() | {"load_average": load_average()}},
                    "facts": {"dataset_bytes": disk, "splits": report.get("splits", report.get("counts"))},
                },
                indent=1,
            )
        )
    results["build"] = json.loads(build_json.read_text())
    stage_cmds = {
        "trainer": [
            py, str(HERE / "scale_stages.py"), "trainer", "--dataset", str(dataset), "--project", str(model),
            "--image-size", str(image_size), "--batch-size", str(batch_size),
            "--warmup-epochs", "0" if epoch == "full" else "1",
        ],
        "app": [py, str(HERE / "scale_stages.py"), "app", "--model", str(model), "--reference", str(dataset)],
    }  # fmt: skip
    for name, cmd in stage_cmds.items():
        path = folder / f"{name}.json"
        if not path.is_file():
            _stage_json(path, [*cmd, "--json", str(path)], folder / f"{name}.log")
        results[name] = json.loads(path.read_text())
    attribute_evaluation_pass(results["trainer"])
    stages: dict[str, Any] = {}
    for part in STAGE_FILES:
        stages.update(results[part]["stages"])
    return {
        "n": n,
        "c": c,
        "image_size": image_size,
        "epoch": epoch,
        "stages": stages,
        "facts": {part: results[part].get("facts", {}) for part in STAGE_FILES},
    }


SAVE_CALLS = (
    "outputs.save_arcface_model",
    "outputs.build_summary",
    "outputs.write_report_files",
    "outputs.publish",
)


def attribute_evaluation_pass(trainer: dict[str, Any]) -> dict[str, Any]:
    """Runs of ``scale_stages.py`` before 2026-11-30 07:00 wrapped the evaluation splits' embedding pass
    under a renamed method (``facts.untimed`` lists ``Embedder.embed_and_logits``), so its seconds fell into
    ``save``; move what ``save`` holds beyond its own timed calls into ``evaluation`` (the pass, plus a
    few lines of glue) and say so in ``facts.reattributed_seconds``."""
    facts = trainer.get("facts", {})
    if "Embedder.embed_and_logits" not in facts.get("untimed", []) or "reattributed_seconds" in facts:
        return trainer
    calls = facts.get("save_outputs_calls", {})
    stages = trainer["stages"]
    moved = max(0.0, stages["save"]["seconds"] - sum(calls.get(name, 0.0) for name in SAVE_CALLS))
    stages["evaluation"]["seconds"] += moved
    stages["save"]["seconds"] -= moved
    facts["reattributed_seconds"] = round(moved, 3)
    return trainer


BASELINE_IMPORTS = {
    "build": "import data_prep.build",
    "default": "import autotrain.trainers.image_classification_custom.training, inference_app.app",
}


def import_baselines_mb() -> dict[str, float]:
    """Peak RSS of processes that only import what a stage's process imports: ``build`` (data_prep) and
    ``default`` (the trainer and the app), what every stage starts with."""
    log = Path(os.devnull)
    return {
        kind: run_measured([sys.executable, "-c", code], log, env=_env()).peak_rss_mb
        for kind, code in BASELINE_IMPORTS.items()
    }


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x); None with fewer than two distinct x or a y <= 0."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len({p[0] for p in points}) < 2:
        return None
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx


def sweeps(runs: list[dict[str, Any]]) -> dict[str, tuple[str, int, list[dict[str, Any]]]]:
    """The N-sweep (runs at the most common C) and the C-sweep (runs at the most common N)."""
    out = {}
    for axis, fixed in (("n", "c"), ("c", "n")):
        values = [r[fixed] for r in runs]
        best = max(set(values), key=lambda v: (sum(1 for r in runs if r[fixed] == v), v))
        chosen = sorted((r for r in runs if r[fixed] == best), key=lambda r: r[axis])
        if len(chosen) >= 2:
            out[axis] = (fixed, best, chosen)
    return out


def exponents(
    runs: list[dict[str, Any]], baseline_mb: float | dict[str, float]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{axis: {stage: {"time": b, "memory": b}}}`` over each sweep; memory above the stage's import
    baseline (``baseline_mb[stage]``, else ``baseline_mb["default"]``, or one number for all)."""
    if not isinstance(baseline_mb, dict):
        baseline_mb = {"default": baseline_mb}
    out: dict[str, Any] = {}
    for axis, (_, _, chosen) in sweeps(runs).items():
        stages = [s for s in chosen[0]["stages"] if all(s in r["stages"] for r in chosen)]
        xs = [r[axis] for r in chosen]
        out[axis] = {
            s: {
                "time": fit_exponent(xs, [r["stages"][s]["seconds"] for r in chosen]),
                "memory": fit_exponent(
                    xs,
                    [
                        max(r["stages"][s]["peak_rss_mb"] - baseline_mb.get(s, baseline_mb["default"]), 1.0)
                        for r in chosen
                    ],
                ),
            }
            for s in stages
        }
    return out


def figure(results: dict[str, Any], path: Path) -> Path:
    """Log-log figure: time and peak memory of each stage against N and against C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sweeps(results["runs"])
    fig, axes = plt.subplots(2, max(1, len(groups)), figsize=(6.5 * max(1, len(groups)), 9), squeeze=False)
    for col, (axis, (fixed, value, chosen)) in enumerate(groups.items()):
        xs = [r[axis] for r in chosen]
        for row, (key, unit) in enumerate((("seconds", "wall time (s)"), ("peak_rss_mb", "peak RSS (MiB)"))):
            ax = axes[row][col]
            colours = plt.get_cmap("tab20").colors
            for i, stage in enumerate(chosen[0]["stages"]):
                ys = [r["stages"].get(stage, {}).get(key) for r in chosen]
                if all(y is not None and y > 0 for y in ys):
                    ax.plot(xs, ys, marker="os^vD"[i % 5], color=colours[i % len(colours)], label=stage)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"{'N images' if axis == 'n' else 'C species'} ({fixed.upper()} = {value:,})")
            ax.set_ylabel(unit)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][col].legend(fontsize=7, ncol=2)
    machine = results["machine"].split(";")[0]
    fig.suptitle(f"Scaling benchmark: model at {results['image_size']} px; {machine}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def markdown(results: dict[str, Any]) -> str:
    """The BENCHMARKS.md table: one row per stage, seconds and peak MiB per configuration, exponents."""
    runs = sorted(results["runs"], key=lambda r: (r["c"] != 1000, r["n"], r["c"]))
    fits = results.get("exponents", {})
    stages = list(dict.fromkeys(s for r in runs for s in r["stages"]))
    head = ["stage", *[f"N={r['n']:,} C={r['c']:,}" for r in runs], "b (N)", "b (C)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(b: float | None) -> str:
        return "–" if b is None else f"{b:.2f}"

    for stage in stages:
        cells = []
        for r in runs:
            s = r["stages"].get(stage)
            cells.append("–" if s is None else f"{s['seconds']:.1f} s / {s['peak_rss_mb']:,.0f} MiB")
        bn = fits.get("n", {}).get(stage, {})
        bc = fits.get("c", {}).get(stage, {})
        cells += [
            f"{fmt(bn.get('time'))} / {fmt(bn.get('memory'))}",
            f"{fmt(bc.get('time'))} / {fmt(bc.get('memory'))}",
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    loads = [max((s.get("load_average") or 0.0) for s in r["stages"].values()) for r in runs]
    lines.append(
        "| load average (1 min, highest at a stage's end) | "
        + " | ".join(f"{v:.1f}" for v in loads)
        + " | | |"
    )
    lines += [
        "",
        "Cells: wall time / peak resident memory of the process tree. `b (N)`, `b (C)`: fitted exponent of time "
        "/ of memory above the import baseline. A stage taking a few seconds, or runs at different load "
        "averages, give exponents that are noise (even negative); read them with the seconds beside them.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Presets: small = N 200-800 at 64 px (about 15 minutes on 2 idle cores; make bench); "
        "large = N 2,000-50,000 and C 100-1,600 at 64 px (hours on 2 cores; about 60 GB of disk for the "
        "50,000-image pool, its build and caches). Each cell of the printed table: wall time / peak memory.",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="small", help="configurations and image size (below)"
    )
    parser.add_argument(
        "--configs", type=parse_config, nargs="*", help="NxC configurations (default: preset)"
    )
    parser.add_argument("--pool", type=Path, default=None, help="generated images (default OUT/pool)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out/scale-small"),
        help="results: OUT/results.json, OUT/scale.png, one folder per configuration (default %(default)s)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="trainer image size (default: preset)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--epoch",
        choices=("head", "full"),
        default="head",
        help="the measured epoch: head-only (config.json's first epoch; default) or full fine-tuning",
    )
    parser.add_argument("--skip-failed", action="store_true", help="report a failing configuration and go on")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) the configurations; writes OUT/results.json, OUT/scale.png; returns the results."""
    from bench_common import machine_info, machine_line

    preset = PRESETS[args.preset]
    configs = args.configs or preset["configs"]
    image_size = args.image_size or preset["image_size"]
    args.out = args.out.resolve()
    pool = (args.pool or args.out / "pool").resolve()
    need = max(n for n, _ in configs)
    scale_data.generate_pool(pool, need, progress=True)
    args.out.mkdir(parents=True, exist_ok=True)
    runs, failed = [], []
    started = time.time()
    for n, c in configs:
        print(f"[scale] N={n:,} C={c:,}", flush=True)
        try:
            runs.append(run_config(pool, args.out, n, c, image_size, args.batch_size, args.epoch))
        except subprocess.CalledProcessError as exc:
            failed.append({"n": n, "c": c, "error": f"{Path(exc.cmd[1]).name} exited {exc.returncode}"})
            print(f"[scale] N={n:,} C={c:,} failed: {failed[-1]['error']} (log in {args.out})", flush=True)
            if not args.skip_failed:
                raise
    baselines = import_baselines_mb()
    results = {
        "image_size": image_size,
        "epoch": args.epoch,
        "machine": machine_line(machine_info()),
        "command": "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:]),
        "import_baseline_mb": baselines["default"],
        "import_baselines_mb": baselines,
        "runs": runs,
        "failed": failed,
        "exponents": exponents(runs, baselines) if runs else {},
        "minutes": (time.time() - started) / 60,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    if runs:
        figure(results, args.out / "scale.png")
    print(markdown(results) if runs else "no configuration completed")
    return results


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
