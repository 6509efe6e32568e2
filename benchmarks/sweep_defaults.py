"""Small hyper-parameter sweep of our trainer on the sample dataset (how the embedded default was chosen).

Usage (a GPU machine makes it minutes; on 2 CPU cores each run takes about 5 minutes)::

    python benchmarks/sweep_defaults.py --out sweep-out --parallel 6 --split validation

Every variant is the embedded default ``config.json`` with a few overrides, trained for its epochs with
the listed seeds and scored by ``stock_harness.evaluate_folder`` on ``--split`` (field photos). The
2026-11-23 sweep behind the current defaults (``benchmarks/results/2026-11-23-h100-defaults-sweep.md``)
scored on the ``test`` split; ``--split validation`` (the default here) keeps the test split for the
final comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stock_harness as sh  # noqa: E402
from bench_common import sample_dataset  # noqa: E402

VARIANTS: dict[str, dict] = {
    "lr1e-4-w2-m05": {"lr": 1e-4, "warmup_epochs": 2, "arcface_margin": 0.5},
    "lr3e-4-w2-m05": {"lr": 3e-4, "warmup_epochs": 2, "arcface_margin": 0.5},
    "lr1e-3-w2-m05": {"lr": 1e-3, "warmup_epochs": 2, "arcface_margin": 0.5},
    "lr3e-4-w1-m05": {"lr": 3e-4, "warmup_epochs": 1, "arcface_margin": 0.5},
    "lr3e-4-w1-m03": {"lr": 3e-4, "warmup_epochs": 1, "arcface_margin": 0.3},
    "lr3e-4-w1-m0": {"lr": 3e-4, "warmup_epochs": 1, "arcface_margin": 0.0},
    "lr3e-4-w1-m05-aug05": {"lr": 3e-4, "warmup_epochs": 1, "arcface_margin": 0.5, "augmentation": 0.5},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sweep-out"))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (GPU: 4-6)")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--only", action="append", help="variant names (default: all)")
    args = parser.parse_args(argv)
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = sample_dataset(work, False)
    backbone = sh.embedded_backbone_folders(work / "backbone")
    lock = threading.Lock()  # model loading in evaluate_folder is not thread-safe
    jobs = []
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        for seed in range(args.seeds):
            o = dict(overrides)
            cfg = sh.ours_config(
                f"{name.replace('.', '')}-s{seed}",
                data,
                backbone["ours_model"],
                epochs=int(sh.default_config().get("epochs", 6)),
                warmup_epochs=o.pop("warmup_epochs", 1),
                batch_size=int(sh.default_config().get("batch_size", 32)),
                seed=seed,
                image_size=backbone["image_size"],
                **o,
            )
            jobs.append((name, seed, cfg))

    def run(job):
        name, seed, cfg = job
        res = sh.run_trainer("ours", cfg, work / "runs", 3600)
        with lock:
            rep = sh.evaluate_folder("ours", res["project_dir"], data, args.split)
        row = {"variant": name, "seed": seed, "top1": rep["all"]["top1"], "mrr": rep["all"]["mrr"]}
        print(json.dumps(row), flush=True)
        return row

    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        rows = list(pool.map(run, jobs))
    print(f"\n| variant | seeds | field top-1 ({args.split}) | field MRR |\n| --- | --- | --- | --- |")
    for name in VARIANTS:
        got = [r for r in rows if r["variant"] == name]
        if got:
            t = statistics.mean(r["top1"] for r in got)
            m = statistics.mean(r["mrr"] for r in got)
            print(f"| {name} | {len(got)} | {t:.3f} | {m:.3f} |")
    (work / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
