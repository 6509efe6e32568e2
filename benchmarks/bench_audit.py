"""Collection audit on real images (issue 12, item 2): precision and recall of each finding kind.

On ``leafsnap-specimens``, ``--species`` species (default 40; the smallest SHA-1 of the name) with every
view of ``real_data.leafsnap_plan`` (leaf views in ``herbarium/``, other views in ``field/`` and
``test/``) are written as the folders layout, then injected (one seed, ``--seed``):

- label errors: 5% of the images, moved in pairs into each other's species folder (labels swapped);
- near-duplicates: 10 copies of random images, resized to 60-80% and re-compressed (JPEG quality
  55-75); 5 next to their original, 5 into another split's folder of the same species (leakage);
- off-topic images: 10 in random species folders, 5 generated (a ruler, a blank cream sheet, a printed
  label card, a colour chart, uniform noise) and 5 real PlantCLEF herbarium sheets of species outside
  leafsnap (``plantclef-subset``): pressed specimens on paper, off-topic for a collection of
  studio photos of fresh leaves, flowers, fruit and bark.

``data_prep build`` (``--max-side 320``) builds the dataset, the audit runs with the embedded backbone
(no model), and each finding kind is scored against the injections. Also written: the cosine similarity
of each injected pair and the highest of all other pairs (how ``DUPLICATE_THRESHOLD`` was chosen), and
the outlier distances of the off-topic images against the others.

``python benchmarks/bench_audit.py [--out bench-out/audit] [--seed 0]``; results in ``OUT/results.json``
and ``OUT/results.md``, the audit in ``OUT/audit/``. Skipped, and said so, when the real data is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_data  # noqa: E402

from data_prep import build_dataset  # noqa: E402
from data_prep.audit import embed_dataset, find_all, load_dataset_folder, outlier_distances  # noqa: E402
from data_prep.audit_report import write_audit  # noqa: E402


def _h(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16)


def write_collection(out: Path, n_species: int) -> list[str]:
    """The first ``n_species`` leafsnap species (by SHA-1) in the folders layout; their relative paths."""
    plan = real_data.leafsnap_plan(real_data.SHARED_DATA / "leafsnap-specimens")
    chosen = sorted(plan, key=_h)[:n_species]
    real_data.write_layout({s: plan[s] for s in chosen}, out)
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def swap_labels(root: Path, files: list[str], share: float, rng: random.Random) -> dict[str, str]:
    """Move ``share`` of the files in pairs into each other's species folder (same part, e.g. ``field/``);
    ``{new path: true species}``."""
    truth, pool = {}, rng.sample(files, len(files))
    want = round(share * len(files)) // 2
    while want and len(pool) >= 2:
        a = pool.pop()
        b = next(
            (f for f in pool if f.split("/")[0] == a.split("/")[0] and f.split("/")[1] != a.split("/")[1]),
            None,
        )
        if b is None:
            break
        pool.remove(b)
        for src, dst in ((a, b), (b, a)):
            part, species, name = src.split("/")
            new = f"{part}/{dst.split('/')[1]}/{name}"
            (root / src).rename(root / new)
            truth[new] = species
        want -= 1
    return truth


def add_near_duplicates(root: Path, files: list[str], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` resized, re-compressed copies (half into another split); ``[(original, copy)]``."""
    pairs = []
    for i, src in enumerate(rng.sample(files, n)):
        part, species, name = src.split("/")
        other = "test" if part != "test" else "herbarium"
        target = f"{other if i % 2 else part}/{species}/dup{i}-{Path(name).stem}.jpg"
        with Image.open(root / src) as image:
            image = image.convert("RGB")
            scale = rng.uniform(0.6, 0.8)
            image = image.resize(
                (int(image.width * scale), int(image.height * scale)), Image.Resampling.BICUBIC
            )
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / target, "JPEG", quality=rng.randint(55, 75))
        pairs.append((src, target))
    return pairs


def generated_off_topic(kind: str, rng: random.Random) -> Image.Image:
    """A ruler, a blank sheet, a label card, a colour chart or noise (400 x 300 px)."""
    size = (400, 300)
    image = Image.new("RGB", size, (236, 228, 205) if kind in ("blank", "label") else (250, 250, 250))
    draw = ImageDraw.Draw(image)
    if kind == "ruler":
        draw.rectangle((20, 120, 380, 180), fill=(240, 220, 120), outline=(0, 0, 0))
        for x in range(25, 380, 7):
            draw.line((x, 120, x, 135 if (x - 25) % 35 else 150), fill=(0, 0, 0), width=1)
    elif kind == "label":
        draw.rectangle((60, 80, 340, 220), fill=(255, 255, 250), outline=(20, 20, 20), width=2)
        for y in range(100, 210, 18):
            draw.text((75, y), f"Herb. No. {rng.randint(0, 999999):06d}  leg. A. Collector", fill=(0, 0, 0))
    elif kind == "chart":
        for i in range(12):
            colour = tuple(rng.randint(0, 255) for _ in range(3))
            draw.rectangle((20 + 30 * i, 100, 48 + 30 * i, 200), fill=colour)
    elif kind == "noise":
        array = np.random.default_rng(rng.randint(0, 2**31)).integers(0, 256, (300, 400, 3), np.uint8)
        image = Image.fromarray(array)
    return image


def add_off_topic(root: Path, species: list[str], rng: random.Random) -> list[str]:
    """5 generated and 5 PlantCLEF herbarium sheets into random species' training folders; their paths."""
    added = []
    sheets = sorted((real_data.SHARED_DATA / "plantclef-subset" / "herbarium").rglob("*.jpg"))
    sources: list[Any] = ["ruler", "blank", "label", "chart", "noise"] + rng.sample(sheets, 5)
    for i, source in enumerate(sources):
        rel = f"herbarium/{rng.choice(species)}/offtopic{i}.jpg"
        image = (
            generated_off_topic(source, rng) if isinstance(source, str) else Image.open(source).convert("RGB")
        )
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        (root / rel).write_bytes(buffer.getvalue())
        added.append(rel)
    return added


def _pr(found: set, truth: set) -> dict[str, Any]:
    hit = len(found & truth)
    return {
        "flagged": len(found),
        "injected": len(truth),
        "true_positives": hit,
        "precision": round(hit / len(found), 3) if found else None,
        "recall": round(hit / len(truth), 3) if truth else None,
    }


def score(audit: dict[str, Any], truth: dict[str, Any], split_of: dict[str, str]) -> dict[str, Any]:
    """Precision and recall of each finding kind against the injections (``split_of``: path -> split in the
    built dataset; a copy next to its original in ``field/`` can land in validation: leakage too)."""
    findings = audit["findings"]
    labels = {r["path"] for r in findings["label_issues"]}
    pairs = {frozenset((r["path"], r["other_path"])) for r in findings["near_duplicates"]}
    injected_pairs = {frozenset(p) for p in truth["duplicates"]}
    leak_truth = {frozenset(p) for p in truth["duplicates"] if split_of.get(p[0]) != split_of.get(p[1])}
    leak_found = {
        frozenset((r["path"], r["other_path"])) for r in findings["near_duplicates"] if r["leakage"]
    }
    return {
        "label_issues": _pr(labels, set(truth["swapped"]))
        | {
            "flagged_off_topic": len(labels & set(truth["off_topic"])),
            "suggested_true_species": sum(
                r["suggested"] == truth["swapped"].get(r["path"]) for r in findings["label_issues"]
            ),
        },
        "near_duplicates": _pr(pairs, injected_pairs),
        "leakage_pairs": _pr(leak_found, leak_truth),
        "outliers": _pr({r["path"] for r in findings["outliers"]}, set(truth["off_topic"])),
    }


def diagnostics(emb: Any, truth: dict[str, Any]) -> dict[str, Any]:
    """Similarity of injected pairs vs all others, outlier distances of off-topic images vs the rest."""
    index = {p: i for i, p in enumerate(emb.paths)}
    sims = emb.vectors @ emb.vectors.T
    np.fill_diagonal(sims, -1)
    injected = [(index[a], index[b]) for a, b in truth["duplicates"] if a in index and b in index]
    pair_sims = sorted(float(sims[i, j]) for i, j in injected)
    for i, j in injected:
        sims[i, j] = sims[j, i] = -1
    distances = outlier_distances(emb.vectors)
    off = np.isin(np.arange(len(emb.paths)), [index[p] for p in truth["off_topic"] if p in index])
    return {
        "injected_pair_cosines": [round(s, 4) for s in pair_sims],
        "top_other_pair_cosines": [round(float(s), 4) for s in np.sort(np.triu(sims, 1).ravel())[-10:][::-1]],
        "off_topic_distances": sorted(round(float(d), 3) for d in distances[off]),
        "other_distance_quantiles": {
            q: round(float(np.quantile(distances[~off], q)), 3) for q in (0.5, 0.75, 0.9, 0.99, 1.0)
        },
    }


def _why(reason: str) -> str:
    """A not-excluded reason without the path or species it names (for counting)."""
    return reason.split(" with ")[0].split(":")[0].removesuffix(" of").rsplit(" of ", 1)[0]


def markdown(result: dict[str, Any]) -> str:
    """The results table (one row per finding kind) and the set-up line."""
    s = result["setup"]
    lines = [
        f"Audit on leafsnap-specimens: {s['species']} species, {s['images']} images after build; injected "
        f"{s['swapped']} swapped labels (5%), {s['duplicates']} near-duplicates ({s['leakage']} copied into another split's folder), "
        f"{s['off_topic']} off-topic images (5 generated: ruler, blank sheet, label card, colour chart, noise; "
        f"5 PlantCLEF herbarium sheets); seed {s['seed']} (one injection draw); embedded backbone, no model; "
        f"audit {s['audit_seconds']:.0f} s on {s['machine']}.",
        "",
        "| finding | flagged | injected | true positives | precision | recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, r in result["scores"].items():
        lines.append(
            f"| {kind} | {r['flagged']} | {r['injected']} | {r['true_positives']} | {r['precision']} | {r['recall']} |"
        )
    li = result["scores"]["label_issues"]
    accuracy = ", ".join(
        f"{domain} {notes.get('out_of_fold_accuracy', 'not checked')} ({notes.get('folds', 0)} folds)"
        for domain, notes in result["label_check"]["domains"].items()
    )
    kept = result["exclusion"]["not_excluded_reasons"]
    lines += [
        "",
        f"label_issues: checked within each domain; out-of-fold accuracy of the classifier on the embeddings: {accuracy}.",
        f"exclude.txt lists {result['exclusion']['listed']} images; flagged but kept out: "
        + (", ".join(f"{n} ({why})" for why, n in kept.items()) or "none")
        + ".",
        f"label_issues: {li['flagged_off_topic']} of the flagged are off-topic images (counted as false "
        f"positives above); the suggested label is the true species for {li['suggested_true_species']} of the "
        f"{li['true_positives']} found swaps.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/audit"))
    parser.add_argument("--species", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (real_data.SHARED_DATA / "leafsnap-specimens").is_dir():
        print(f"skipped: {real_data.SHARED_DATA} not found (the real-image benchmark needs it)")
        return 0
    rng = random.Random(args.seed)
    raw, data = args.out / "raw", args.out / "dataset"
    files = write_collection(raw, args.species)
    swapped = swap_labels(raw, files, 0.05, rng)
    current = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
    duplicates = add_near_duplicates(raw, [f for f in current if f not in swapped], 10, rng)
    species = sorted({f.split("/")[1] for f in files})
    truth = {"swapped": swapped, "duplicates": duplicates, "off_topic": add_off_topic(raw, species, rng)}
    if data.exists():
        shutil.rmtree(data)
    build_dataset(raw, data, max_side=320, num_proc=2, progress=False)
    start = time.perf_counter()
    emb = embed_dataset(load_dataset_folder(data), None)
    audit = {"dataset": str(data)} | find_all(emb, seed=args.seed)
    seconds = time.perf_counter() - start
    np.savez(
        args.out / "embeddings.npz",
        vectors=emb.vectors,
        labels=emb.labels,
        paths=emb.paths,
        splits=emb.splits,
    )
    write_audit(audit, emb, args.out / "audit")
    from bench_common import machine_info

    setup = {
        "species": args.species,
        "images": len(emb.paths),
        "swapped": len(swapped),
        "duplicates": len(duplicates),
        "leakage": sum(a.split("/")[0] != b.split("/")[0] for a, b in duplicates),  # by folder; see scores
        "off_topic": len(truth["off_topic"]),
        "seed": args.seed,
        "audit_seconds": seconds,
        "machine": "{cpu}, {cores} cores".format(**machine_info()),
    }
    result = {
        "setup": setup,
        "label_check": audit["parameters"]["label_issues"],
        "exclusion": {
            "listed": len(audit["exclude"]),
            "not_excluded_reasons": dict(Counter(_why(r["reason"]) for r in audit["not_excluded"])),
        },
        "scores": score(audit, truth, dict(zip(emb.paths, emb.splits))),
        "diagnostics": diagnostics(emb, truth),
        "truth": truth,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2, default=list) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result))
    print(json.dumps(result["diagnostics"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
