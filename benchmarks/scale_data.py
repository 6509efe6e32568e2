"""Generated images at realistic sizes for the scaling benchmark (``bench_scale.py``).

What it writes (``--out POOL``):

- ``images/000000.jpg`` ... : ``n`` JPEG files. Herbarium sheets (80 %) are portrait, longest side drawn
  uniformly in 1,500-4,000 px; field photos (20 %) are landscape, longest side 1,000-3,000 px (the sizes
  of PlantCLEF 2020's sheets and photos). Domains are interleaved, so any prefix of the pool has the same
  mix.
- Content: ``masters`` distinct drawings per domain are encoded once; file ``i`` is master ``i % masters``
  with a JPEG comment segment holding ``i``, so every file has distinct bytes (``data_prep`` deduplicates
  on the file's bytes) and decodes to the master's pixels. The benchmark measures cost, not accuracy:
  what each stage costs depends on the files' sizes and counts, not on what they show.
- :func:`write_csv` writes ``scale-n{N}-c{C}.csv`` (``data_prep``'s CSV layout: ``path,label,domain,split``)
  over the first ``N`` files with ``C`` species (:func:`assign`: sheets for every species, field photos
  for a tenth of them, half of those photos in the test split).

Run: ``python benchmarks/scale_data.py --out bench-out/scale-pool --n 50000``. Existing files are kept,
so a larger pool extends a smaller one.
"""

from __future__ import annotations

import argparse
import csv
import io
import struct
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

FIELD_EVERY = 5  #: every 5th file is a field photo (20 %)
SHEET_SIDES = (1500, 4000)
FIELD_SIDES = (1000, 3000)


def domain_of(index: int) -> str:
    return "field" if index % FIELD_EVERY == FIELD_EVERY - 1 else "herbarium"


def _size(index: int, domain: str, rng: np.random.Generator) -> tuple[int, int]:
    lo, hi = SHEET_SIDES if domain == "herbarium" else FIELD_SIDES
    long_side = int(rng.integers(lo, hi + 1))
    short_side = int(round(long_side / (1.45 if domain == "herbarium" else 4 / 3)))
    return (short_side, long_side) if domain == "herbarium" else (long_side, short_side)


def _drawing(master: int, domain: str) -> bytes:
    """One master JPEG: a plant-like drawing at 512 px, upscaled to a realistic size."""
    rng = np.random.default_rng([master, domain == "field"])
    size = _size(master, domain, rng)
    small = (512 * size[0] // max(size), 512 * size[1] // max(size))
    if domain == "herbarium":
        image = Image.new("RGB", small, tuple(int(v) for v in rng.integers(215, 245, 3)))
    else:
        noise = rng.integers(30, 140, (small[1] // 8 + 1, small[0] // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(noise).resize(small, Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    cx = small[0] // 2
    green = tuple(int(v) for v in (rng.integers(20, 90), rng.integers(80, 170), rng.integers(20, 80)))
    draw.line([(cx, small[1] - 20), (cx + int(rng.integers(-60, 60)), 30)], fill=green, width=5)
    for _ in range(int(rng.integers(4, 12))):
        x, y = cx + int(rng.integers(-150, 150)), int(rng.integers(40, small[1] - 40))
        w, h = int(rng.integers(20, 90)), int(rng.integers(10, 50))
        draw.ellipse([x - w, y - h, x + w, y + h], fill=green, outline=(20, 40, 20))
    if domain == "herbarium":  # the specimen label in the lower right corner
        draw.rectangle([small[0] - 170, small[1] - 90, small[0] - 20, small[1] - 20], fill=(250, 250, 250))
    image = image.filter(ImageFilter.GaussianBlur(0.8)).resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def _with_comment(jpeg: bytes, index: int) -> bytes:
    """The JPEG with a COM segment after SOI holding ``index`` (distinct bytes, same pixels)."""
    payload = f"scale-benchmark file {index}".encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _write_range(args: tuple[str, int, int, int]) -> int:
    out, start, stop, masters = args
    cache: dict[tuple[int, str], bytes] = {}
    written = 0
    for index in range(start, stop):
        path = Path(out) / "images" / f"{index:06d}.jpg"
        if path.exists():
            continue
        domain = domain_of(index)
        key = (index // FIELD_EVERY % masters, domain)
        if key not in cache:
            cache[key] = _drawing(*key)
        path.write_bytes(_with_comment(cache[key], index))
        written += 1
    return written


def generate_pool(out: Path, n: int, masters: int = 100, workers: int = 2, progress: bool = True) -> Path:
    """Write (or extend) a pool of ``n`` files under ``out/images``; returns ``out``."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    # chunks aligned on masters so each worker encodes a master once per chunk
    step = max(FIELD_EVERY * masters * 5, 1000)
    jobs = [(str(out), s, min(n, s + step), masters) for s in range(0, n, step)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = pool.map(_write_range, jobs)
        for _ in tqdm(done, total=len(jobs), desc="generating images", unit="chunk", disable=not progress):
            pass
    return out


def assign(n: int, classes: int) -> list[tuple[str, str, str]]:
    """``(species, domain, split)`` of the first ``n`` files with ``classes`` species.

    Herbarium sheets go round-robin over all species (every species has a sheet when there are at least
    as many sheets as species). Field photos go to the first tenth of the species (at least one), in
    consecutive pairs (one training photo, one test photo), so a field species has about ten photos and
    half of them are the test split; the other species are herbarium-only, PlantCLEF's hard case.

    Raises:
        ValueError: fewer herbarium sheets than species.
    """
    sheets = sum(domain_of(i) == "herbarium" for i in range(n))
    if sheets < classes:
        raise ValueError(f"{n} files hold {sheets} herbarium sheets, fewer than the {classes} species")
    field_species = max(1, classes // 10)
    rows, herbarium_seen, field_seen = [], 0, 0
    for index in range(n):
        if domain_of(index) == "herbarium":
            rows.append((f"species_{herbarium_seen % classes:05d}", "herbarium", "train"))
            herbarium_seen += 1
        else:
            species = field_seen // 2 % field_species
            rows.append((f"species_{species:05d}", "field", "test" if field_seen % 2 else "train"))
            field_seen += 1
    return rows


def write_csv(pool: Path, n: int, classes: int) -> Path:
    """``pool/scale-n{n}-c{classes}.csv`` over the first ``n`` files (:func:`assign`); returns its path."""
    have = len(list((pool / "images").glob("*.jpg")))
    if have < n:
        raise SystemExit(f"{pool}: the pool has {have} images, {n} needed; run scale_data.py --n {n}")
    path = pool / f"scale-n{n}-c{classes}.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "domain", "split"])
        for index, (species, domain, split) in enumerate(assign(n, classes)):
            writer.writerow([f"images/{index:06d}.jpg", species, domain, split])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/scale-pool"))
    parser.add_argument("--n", type=int, default=1000, help="number of files in the pool")
    parser.add_argument("--masters", type=int, default=100, help="distinct drawings per domain")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    generate_pool(args.out, args.n, args.masters, args.workers)
    print(f"{args.out}: {len(list((args.out / 'images').glob('*.jpg')))} images")


if __name__ == "__main__":
    main()
