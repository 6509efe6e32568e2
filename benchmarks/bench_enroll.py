"""Enrolment without retraining on real images (issue 12, item 1): species never trained on, enrolled.

On ``leafsnap-specimens`` (``real_data.py``'s deterministic two-domain split: leaf views ``LTV``/``LUV``
are the herbarium-like domain, the other views the field domain):

1. ``--held-out`` species (default 20; the smallest SHA-1 of the name) are removed from training
   altogether; the others keep ``real_data.leafsnap_plan``'s herbarium/field/test parts.
2. ``trained``: ``config.json`` as shipped (embedded EfficientNet-Lite0) is trained on the others
   (``--image-size`` 160 px, ``--epochs`` 3 by default to fit 2 CPU cores; no validation split, so no
   temperature fit and no epoch selection). ``frozen``: no training, the pretrained backbone with the
   identity projection and the normalised-mean centres of each trained species' training images.
3. Each model folder gets the held-out species enrolled from their leaf views only
   (``enroll.enroll_folder`` to a new folder), and both folders are evaluated on field photos:
   the held-out species' field photos (every non-leaf view: none was used) ranked among all classes
   and among the enrolled ones, and the trained species' field test photos before enrolment, after
   enrolment restricted to the trained classes (must not move) and after enrolment among all classes
   (how the new centres compete).

``python benchmarks/bench_enroll.py [--out bench-out/enroll] [--seed 0] [--systems frozen,trained]``;
results in ``OUT/results-s<seed>.json`` and ``.md`` (the frozen baseline has no seed: it is the same in
every file). Skipped, and said so, when the real data is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_data  # noqa: E402
import stock_harness as sh  # noqa: E402

# --- project names (one place, so that the paths can follow the issue-11 restructuring) -------------
from autotrain.trainers.image_classification_custom import enroll as E  # noqa: E402
from autotrain.trainers.image_classification_custom import metrics as M  # noqa: E402
from autotrain.trainers.image_classification_custom.model_io import (  # noqa: E402
    create_arcface_model,
    create_image_processor,
    save_arcface_model,
)
from data_prep.contract import EMBEDDED_BACKBONE  # noqa: E402

Files = dict[str, list[Path]]


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def split_species(plan: dict[str, list[tuple[Path, str]]], n_held_out: int) -> dict[str, Any]:
    """Training plan of the kept species, and the enrolment / evaluation files of both groups."""
    usable = [s for s, items in plan.items() if {"herbarium"} < {part for _, part in items}]
    held = sorted(sorted(usable, key=_sha1)[:n_held_out])  # species with leaf views and field photos
    kept = {s: items for s, items in plan.items() if s not in held}

    def files(species, parts):
        return {s: [f for f, part in plan[s] if part in parts] for s in species}

    return {
        "held_out": held,
        "train_plan": kept,
        "enrol": files(held, ("herbarium",)),
        "held_out_field": files(held, ("field", "test", "unused")),
        "trained_train": files(kept, ("herbarium", "field")),
        "trained_test": files(kept, ("test",)),
    }


def link_root(species_files: Files, root: Path) -> Path:
    """``root/<species>/<file>`` as symbolic links (the enrolment command's input layout)."""
    for species, files in species_files.items():
        (root / species).mkdir(parents=True, exist_ok=True)
        for file in files:
            link = root / species / file.name
            if not link.exists():
                link.symlink_to(file.resolve())
    return root


def train_folder(split: dict[str, Any], out: Path, args: argparse.Namespace) -> Path:
    """Build the dataset of the kept species and train ``config.json`` on it; return the model folder."""
    dataset = out / "dataset"
    if not (dataset / "dataset_dict.json").is_file():
        print(f"layout: {real_data.write_layout(split['train_plan'], out / 'layout')}", flush=True)
        build = [
            sys.executable,
            "-m",
            "data_prep",
            "build",
            str(out / "layout"),
            "--out",
            str(dataset),
            "--quiet",
        ]
        proc = subprocess.run(build, cwd=sh.REPO_ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise sh.BenchError(f"data_prep build failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cfg = sh.ours_config(
        f"trained-s{args.seed}",
        dataset,
        EMBEDDED_BACKBONE,
        epochs=args.epochs,
        warmup_epochs=1,
        batch_size=args.batch_size,
        seed=args.seed,
        image_size=args.image_size,
    )
    result = sh.run_trainer("ours", cfg, out / "runs", args.timeout, threads=args.threads)
    print(f"trained in {result['command_wall_s']:.0f} s", flush=True)
    return Path(result["project_dir"])


def frozen_folder(split: dict[str, Any], out: Path, image_size: int) -> Path:
    """Pretrained backbone, identity projection, centres = normalised mean of each species' training images."""
    model = create_arcface_model(
        EMBEDDED_BACKBONE, sorted(split["trained_train"]), image_size=image_size
    ).eval()
    model.init_projection(torch.zeros(1, model.config.feature_dim))
    embeddings, _ = E.embed_species(
        model, create_image_processor(model.config), split["trained_train"], progress=False
    )
    E.add_centres(model, {s: E.class_centres(e, model.head.subcenters) for s, e in embeddings.items()})
    return save_arcface_model(model, out)


def _scores(folder: Path, species_files: Files) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """Logits ``(N, C)`` of a saved folder on its own preprocessing, the true species, and its label2id."""
    model, processor = E.load_model_folder(folder)
    embeddings, _ = E.embed_species(model, processor, species_files, progress=False)
    names = [s for s, e in embeddings.items() for _ in range(len(e))]
    with torch.inference_mode():
        logits = model.head.get_logits(torch.from_numpy(np.concatenate(list(embeddings.values()))))
    return logits.numpy(), names, {str(k): int(v) for k, v in model.config.label2id.items()}


def _metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    c = logits.shape[1]
    chance = {"top1": 1 / c, "top5": min(5, c) / c, "mrr": float(np.mean(1 / np.arange(1, c + 1)))}
    got = M.classification_metrics(logits, labels)
    return {
        **{k: round(got[k], 4) for k in ("top1", "top5", "mrr")},
        "n": got["n"],
        "classes": c,
        **{f"chance_{k}": round(v, 4) for k, v in chance.items()},
    }


def evaluate(before: Path, after: Path, split: dict[str, Any]) -> dict[str, Any]:
    """Field metrics of the held-out species (after) and of the trained species (before and after)."""
    old, names_old, ids_old = _scores(before, split["trained_test"])
    new, names_new, ids = _scores(after, split["trained_test"])
    n_old = len(ids_old)
    assert names_new == names_old and all(ids[s] == i for s, i in ids_old.items())
    labels = np.array([ids[s] for s in names_new])
    held, held_names, _ = _scores(after, split["held_out_field"])
    held_labels = np.array([ids[s] for s in held_names])
    return {
        "held_out_all_classes": _metrics(held, held_labels),
        "held_out_among_enrolled": _metrics(held[:, n_old:], held_labels - n_old),
        "trained_before": _metrics(old, labels),
        "trained_after_trained_classes": _metrics(new[:, :n_old], labels),
        "trained_after_all_classes": _metrics(new, labels),
        "trained_top1_taken_by_enrolled": round(float((new.argmax(1) >= n_old).mean()), 4),
        "trained_logits_max_abs_change": float(np.abs(new[:, :n_old] - old).max()),
    }


ROWS = (
    ("held_out_all_classes", "held-out species, field photos, among all classes"),
    ("held_out_among_enrolled", "held-out species, field photos, among the enrolled only"),
    ("trained_before", "trained species, field test, before enrolment"),
    ("trained_after_trained_classes", "trained species, after, trained classes only"),
    ("trained_after_all_classes", "trained species, after, among all classes"),
)


def table(results: dict[str, Any]) -> str:
    """Markdown table: one row per (system, measure), with chance levels."""
    lines = [
        "| system | measure | images | classes | top-1 | top-5 | MRR | chance top-1 / top-5 / MRR |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for system, res in results["systems"].items():
        for key, label in ROWS:
            m = res[key]
            chance = f"{m['chance_top1']:.3f} / {m['chance_top5']:.3f} / {m['chance_mrr']:.3f}"
            lines.append(
                f"| {system} | {label} | {m['n']} | {m['classes']} | {m['top1']:.3f} | {m['top5']:.3f} "
                f"| {m['mrr']:.3f} | {chance} |"
            )
    notes = [
        f"- {s}: trained-class logits max |change| {r['trained_logits_max_abs_change']:.2e}; "
        f"trained field photos whose top-1 became an enrolled species: {r['trained_top1_taken_by_enrolled']:.3f}"
        for s, r in results["systems"].items()
    ]
    return "\n".join(lines + [""] + notes) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """The whole benchmark; None (with a message) when the real data is absent."""
    source = args.data_root / "leafsnap-specimens"
    if not source.is_dir():
        print(f"bench_enroll: skipped: {source} not found (the real data lives in ../shared/data)")
        return None
    out, t0 = args.out.resolve(), time.perf_counter()
    split = split_species(real_data.leafsnap_plan(source), args.held_out)
    enrol_root = link_root(split["enrol"], out / "enrol")
    folders = {}
    if "frozen" in args.systems:
        folders["frozen"] = frozen_folder(split, out / "frozen", args.image_size)
    if "trained" in args.systems:
        folders["trained"] = train_folder(split, out, args)
    results: dict[str, Any] = {"held_out": split["held_out"], "settings": vars(args) | {"out": str(out)}}
    results["enrolled_images"] = {s: len(f) for s, f in split["enrol"].items()}
    results["systems"] = {}
    for system, folder in folders.items():
        enrolled_dir = out / f"{system}-enrolled"
        if enrolled_dir.exists():
            shutil.rmtree(enrolled_dir)
        E.enroll_folder(folder, enrol_root, enrolled_dir, progress=False)
        results["systems"][system] = evaluate(folder, enrolled_dir, split)
        print(f"{system}: {json.dumps(results['systems'][system]['held_out_all_classes'])}", flush=True)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (also used by ``run_all.py``'s enroll section)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-out/enroll"))
    p.add_argument("--held-out", type=int, default=20)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument(
        "--systems", default="frozen,trained", help="comma-separated: frozen (no training), trained"
    )
    p.add_argument("--data-root", type=Path, default=real_data.SHARED_DATA)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    results = run(args)
    if results is None:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results-s{args.seed}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = table(results)
    (args.out / f"results-s{args.seed}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
