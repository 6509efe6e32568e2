"""Benchmark: ``data_prep.build_dataset`` beside ``datasets.load_dataset("imagefolder")`` on the same files.

Two inputs are generated in ``workdir``: ``n_small`` 700-pixel JPEG photos and ``n_large``
4000-pixel JPEG scans, both in the folders layout. For each, in the same run:

- ``data_prep``: build + validate + downsize to 1024 px + ``save_to_disk`` (images/s, wall clock);
- ``imagefolder``: ``load_dataset("imagefolder", data_dir=...)`` with a fresh cache (images/s);
- the cost a training epoch then pays to decode one stored image (ms), for both outputs.

Target: at least 100 images/s for the 700-pixel JPEGs on 2 cores (``num_proc=2``).

Usage: ``python benchmarks/bench_data_prep.py [--workdir DIR] [--quick]`` prints JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TARGET_SMALL_IMG_PER_S = 100.0


def _photo(rng: np.random.Generator, size: tuple[int, int], texture: np.ndarray) -> bytes:
    """A photo-like JPEG: smooth random colour field plus tiled fine texture (compresses like a photo)."""
    w, h = size
    coarse = Image.fromarray(rng.integers(0, 256, (h // 40 + 2, w // 40 + 2, 3), dtype=np.uint8))
    arr = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    reps = (h // texture.shape[0] + 1, w // texture.shape[1] + 1, 1)
    arr = arr + np.tile(texture, reps)[:h, :w]
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_input(root: Path, n: int, size: tuple[int, int], seed: int = 0, n_species: int = 10) -> Path:
    """``n`` JPEGs of ``size`` in ``root/{herbarium,field}/<species>/`` (2 herbarium : 1 field)."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(-12, 13, (64, 64, 3), dtype=np.int16)
    for i in range(n):
        domain = "field" if i % 3 == 2 else "herbarium"
        path = root / domain / f"species_{i % n_species:02d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_photo(rng, size, texture))
    return root


def _decode_ms(dataset: Any, limit: int = 20) -> float:
    """Mean milliseconds to decode one stored image to RGB (what each training epoch pays)."""
    rows = dataset.select(range(min(limit, len(dataset))))
    start = time.perf_counter()
    for im in rows["image"]:
        im.convert("RGB").load()
    return 1000 * (time.perf_counter() - start) / max(1, len(rows))


def _measure(root: Path, n: int, work: Path, num_proc: int) -> dict[str, Any]:
    import datasets

    from data_prep import build_dataset

    datasets.disable_progress_bars()
    out = work / f"out-{root.name}"
    start = time.perf_counter()
    dsd, report = build_dataset(root, out, num_proc=num_proc, progress=False)
    prep_s = time.perf_counter() - start

    cache = Path(tempfile.mkdtemp(prefix="hf-cache-", dir=work))
    start = time.perf_counter()
    folder = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=str(cache), split="train")
    folder_s = time.perf_counter() - start
    folder_mb = sum(f.stat().st_size for f in cache.rglob("*.arrow")) / 1e6
    result = {
        "images": n,
        "data_prep_s": round(prep_s, 3),
        "data_prep_img_per_s": round(n / prep_s, 1),
        "imagefolder_s": round(folder_s, 3),
        "imagefolder_img_per_s": round(n / folder_s, 1),
        "data_prep_decode_ms_per_image": round(_decode_ms(dsd["train"]), 2),
        "imagefolder_decode_ms_per_image": round(_decode_ms(folder), 2),
        "data_prep_stored_mb": round(sum(f.stat().st_size for f in out.rglob("*.arrow")) / 1e6, 2),
        "imagefolder_arrow_mb": round(folder_mb, 2),  # imagefolder stores file paths, not bytes
        "imagefolder_columns": folder.column_names,
        "downsized": report["stats"]["resized"],
        "findings": len(report["findings"]),
    }
    shutil.rmtree(cache, ignore_errors=True)
    return result


def run(
    workdir: Path,
    n_small: int = 300,
    n_large: int = 30,
    quick: bool = False,
    num_proc: int = 2,
    small_side: int = 700,
    large_side: int = 4000,
) -> dict[str, Any]:
    """Generate both inputs in ``workdir`` and measure both builders on each.

    Args:
        workdir: scratch folder (created; its generated inputs and outputs are removed at the end).
        n_small: number of 700-pixel JPEGs.
        n_large: number of 4000-pixel scans.
        quick: small counts (40 and 4) for a smoke run.
        num_proc: worker processes for ``data_prep`` (the target is stated for 2).
        small_side: longer side of the small photos.
        large_side: longer side of the large scans.

    Returns:
        JSON-serialisable results (see the module docstring).
    """
    if quick:
        n_small, n_large = min(n_small, 40), min(n_large, 4)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    small_size = (small_side, small_side * 3 // 4)
    large_size = (large_side * 2 // 3, large_side)  # portrait, like a herbarium sheet
    try:
        t = time.perf_counter()
        small = make_input(work / "small", n_small, small_size, seed=1)
        large = make_input(work / "large", n_large, large_size, seed=2)
        gen_s = time.perf_counter() - t
        results = {
            "cpu_count": os.cpu_count(),
            "num_proc": num_proc,
            "generate_inputs_s": round(gen_s, 2),
            f"small_{small_side}px": _measure(small, n_small, work, num_proc),
            f"large_{large_side}px": _measure(large, n_large, work, num_proc),
            "target_small_img_per_s": TARGET_SMALL_IMG_PER_S,
        }
    finally:
        for sub in ("small", "large", "out-small", "out-large"):
            shutil.rmtree(work / sub, ignore_errors=True)
    results["meets_target"] = (
        results[f"small_{small_side}px"]["data_prep_img_per_s"] >= TARGET_SMALL_IMG_PER_S
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)"
    )
    parser.add_argument("--n-small", type=int, default=300)
    parser.add_argument("--n-large", type=int, default=30)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="40 small and 4 large images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-data-prep-") as tmp:
        workdir = args.workdir or Path(tmp)
        print(json.dumps(run(workdir, args.n_small, args.n_large, args.quick, args.num_proc), indent=2))


if __name__ == "__main__":
    main()
