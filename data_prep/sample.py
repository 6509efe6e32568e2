"""The embedded sample: a small, seeded, synthetic herbarium + field dataset in the folder layout.

``generate_sample(out_dir)`` writes::

    out_dir/herbarium/<species>/*.jpg   pressed, brownish plants on cream sheets with label and colour bar
    out_dir/field/<species>/*.jpg       vivid plants in cluttered scenes (rotated, cropped, cast, blurred)
    out_dir/test/<species>/*.jpg        more field photos, for every species

About a quarter of the species (every ``no_field_every``-th) have no field training photos, the hard
PlantCLEF case; they still have field photos in ``test/``. Every image has its own random generator
seeded by (seed, species, kind, index), so the same seed gives identical bytes and a smaller
``n_species`` gives a byte-identical subset.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from data_prep.layouts import DataPrepError
from data_prep.sample_plants import RGB, SpeciesTraits, create_species, grow_plant, hsv_rgb, mix, render_plant

SHEET_SIZE = (256, 320)  # width, height: portrait like a real sheet
FIELD_SIZE = (288, 288)
MARKER = ".data_prep_sample.json"
MAX_SPECIES = 156
_KIND_CODE = {"herbarium": 1, "field": 2, "test": 3}
_COLOUR_CHECKER: tuple[RGB, ...] = (
    (20, 20, 20),
    (245, 245, 245),
    (200, 40, 40),
    (40, 150, 60),
    (40, 60, 190),
    (230, 200, 40),
    (128, 128, 128),
)


def _scale(c: RGB, f: float) -> RGB:
    return tuple(int(min(255, max(0, v * f))) for v in c)  # type: ignore[return-value]


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int, amp: float) -> np.ndarray:
    """Low-frequency noise (H, W) by bilinear upsampling of a coarse random grid."""
    w, h = size
    coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((w, h), Image.BILINEAR)
    return np.asarray(img) * amp


def herbarium_sheet(traits: SpeciesTraits, rng: np.random.Generator) -> Image.Image:
    """A pressed specimen: flat, brownish-desaturated plant on cream paper, tape, label box, colour bar."""
    w, h = SHEET_SIZE
    paper = np.array([238, 230, 208], np.float32) + rng.normal(0, 4, 3)
    arr = np.broadcast_to(paper, (h, w, 3)).copy()
    arr += (
        _smooth_noise(rng, (w, h), 6, 3.0)[..., None] + rng.standard_normal((h, w, 1), dtype=np.float32) * 2.0
    )
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)

    lh, ls, lv = traits.leaf_hsv
    fh, fs, fv = traits.flower_hsv
    dried_leaf = mix(hsv_rgb(lh, ls * 0.35, lv * 0.75), (105, 85, 50), 0.55)
    faded_petal = mix(hsv_rgb(fh, fs * 0.8, fv * 0.85), (150, 120, 85), 0.2)
    colours = {
        "leaf": dried_leaf,
        "vein": _scale(dried_leaf, 0.7),
        "stem": (95, 72, 45),
        "petal": faded_petal,
    }
    colours["centre"] = (80, 60, 40)

    def palette(role: str, shade: float) -> RGB:
        return _scale(colours[role], 0.93 + 0.07 * shade)

    def outline(role: str, shade: float) -> RGB:
        return _scale(colours[role], 0.6)

    parts = grow_plant(traits, rng)
    scale = h * 0.7 * rng.uniform(0.92, 1.05)
    origin = (w * rng.uniform(0.4, 0.5), h * rng.uniform(0.84, 0.88))
    render_plant(draw, parts, palette, origin, scale, angle=rng.normal(0, 0.05), outline=outline)

    for _ in range(int(rng.integers(2, 4))):  # mounting tape strips
        x, y = w * rng.uniform(0.25, 0.65), h * rng.uniform(0.35, 0.85)
        draw.rectangle([x, y, x + rng.uniform(14, 22), y + 5], fill=(226, 220, 196))
    lx0, ly0 = w * rng.uniform(0.5, 0.56), h * rng.uniform(0.8, 0.83)
    draw.rectangle([lx0, ly0, w - 8, h - 8], fill=(248, 246, 238), outline=(60, 60, 60))
    for i in range(4):  # "text" lines on the label
        y = ly0 + 7 + i * 9
        if y < h - 12:
            draw.line(
                [(lx0 + 6, y), (lx0 + 6 + rng.uniform(20, w - 20 - lx0), y)], fill=(40, 40, 50), width=2
            )
    bar_y = 6 if rng.random() < 0.5 else h - 18
    for i, c in enumerate(_COLOUR_CHECKER):
        draw.rectangle([6 + i * 11, bar_y, 15 + i * 11, bar_y + 9], fill=c, outline=(30, 30, 30))
    for i in range(5):  # scale bar, alternating black / white
        x = 6 + len(_COLOUR_CHECKER) * 11 + 4 + i * 8
        draw.rectangle([x, bar_y + 3, x + 8, bar_y + 7], fill=(20, 20, 20) if i % 2 == 0 else (250, 250, 250))
    return img


def _background(rng: np.random.Generator) -> Image.Image:
    """Cluttered natural ground: green-to-brown gradient, grass blades, blobs and stray leaves, defocused."""
    w, h = FIELD_SIZE
    top = np.array(hsv_rgb(rng.uniform(0.18, 0.36), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)), np.float32)
    bottom = np.array(
        hsv_rgb(rng.uniform(0.06, 0.13), rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.5)), np.float32
    )
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None] + _smooth_noise(rng, (w, h), 5, 0.25)[..., None]
    arr = top * (1 - np.clip(t, 0, 1)) + bottom * np.clip(t, 0, 1)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(12, 25))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 30)
        c = hsv_rgb(rng.uniform(0.05, 0.35), rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.65))
        draw.ellipse([x - r, y - r * rng.uniform(0.4, 1), x + r, y + r], fill=c)
    _grass(draw, rng, int(rng.integers(50, 100)))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.2)))


def _grass(draw: ImageDraw.ImageDraw, rng: np.random.Generator, n: int) -> None:
    w, h = FIELD_SIZE
    for _ in range(n):
        x, y = rng.uniform(-10, w + 10), rng.uniform(h * 0.1, h + 20)
        length, lean, width = rng.uniform(25, 110), rng.normal(0, 0.35), rng.uniform(2, 5)
        tip = (x + length * math.sin(lean), y - length * math.cos(lean))
        c = hsv_rgb(rng.uniform(0.14, 0.33), rng.uniform(0.35, 0.85), rng.uniform(0.3, 0.8))
        draw.polygon([(x - width, y), (x + width, y), tip], fill=c)


def field_photo(traits: SpeciesTraits, rng: np.random.Generator) -> Image.Image:
    """A field photo: living colours, clutter, random rotation / scale / crop, lighting, cast, blur."""
    w, h = FIELD_SIZE
    img = _background(rng)
    draw = ImageDraw.Draw(img)
    lh, ls, lv = traits.leaf_hsv
    fh, fs, fv = traits.flower_hsv
    leaf_hue = lh + rng.normal(0, 0.02)

    def palette(role: str, shade: float) -> RGB:
        if role == "leaf":
            return hsv_rgb(leaf_hue, ls, lv * shade)
        if role == "vein":
            return hsv_rgb(leaf_hue, ls * 0.6, min(1.0, lv * 1.3))
        if role == "stem":
            return hsv_rgb(leaf_hue - 0.04, ls * 0.8, lv * 0.8)
        if role == "petal":
            return hsv_rgb(fh, fs, fv * shade)
        return (235, 200, 50)

    parts = grow_plant(traits, rng)
    scale = w * rng.uniform(0.7, 1.3)
    angle = rng.uniform(-0.7, 0.7) if rng.random() < 0.85 else rng.uniform(-math.pi, math.pi)
    cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
    # place the plant's middle (0, -0.5) at (cx, cy)
    ox = cx - scale * 0.5 * math.sin(angle)
    oy = cy + scale * 0.5 * math.cos(angle)
    render_plant(draw, parts, palette, (ox, oy), scale, angle=angle)
    _grass(draw, rng, int(rng.integers(3, 12)))  # foreground blades partly hide the plant

    arr = np.asarray(img, np.float32)
    cast = 1 + rng.normal(0, 0.08, 3)
    light = rng.uniform(0.6, 1.25) * (1 + _smooth_noise(rng, (w, h), 3, 0.15))[..., None]
    arr = arr * cast * light + rng.standard_normal(arr.shape, dtype=np.float32) * 3.0
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.6:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.3)))
    return img


def _class_sizes(seed: int, index: int, n_herbarium: int, n_field: int) -> tuple[int, int]:
    """Per-species image counts, 0.6x to 1.4x the requested mean, so the classes are imbalanced."""
    rng = np.random.default_rng([seed, index, 9, 0])
    n_h = max(1, round(n_herbarium * rng.uniform(0.6, 1.4)))
    n_f = max(min(2, n_field), round(n_field * rng.uniform(0.6, 1.4))) if n_field else 0
    return n_h, n_f


def generate_sample(
    out_dir: str | Path,
    seed: int = 0,
    n_species: int = 20,
    n_herbarium: int = 16,
    n_field: int = 5,
    n_test: int = 6,
    no_field_every: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the synthetic dataset to ``out_dir`` in the folder layout and return ``out_dir``.

    Args:
        out_dir: target folder; created if missing. A folder written by an earlier call (it holds a
            marker file) is replaced; any other non-empty folder needs ``overwrite=True``.
        seed: master seed; the same seed gives byte-identical files.
        n_species: number of species (names are made-up binomials, unique up to 156).
        n_herbarium: mean herbarium sheets per species (each species gets 0.6x to 1.4x).
        n_field: mean field training photos per species that has them (0.6x to 1.4x, at least 2).
        n_test: field test photos per species (all species).
        no_field_every: every ``no_field_every``-th species (index % k == k - 1) has no field
            training photos; 0 gives every species field photos.
        overwrite: allow writing into a non-empty folder that is not an earlier sample.
        progress: show a tqdm bar.

    Returns:
        The output folder as a ``Path``.
    """
    if not 1 <= n_species <= MAX_SPECIES:
        raise DataPrepError(
            f"n_species must be between 1 and {MAX_SPECIES} (unique made-up names), got {n_species}"
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if (out / MARKER).is_file():
            for sub in ("herbarium", "field", "test"):
                shutil.rmtree(out / sub, ignore_errors=True)
        elif not overwrite:
            raise FileExistsError(
                f"{out} is not empty and was not written by `data_prep sample` (use --overwrite)"
            )
    out.mkdir(parents=True, exist_ok=True)
    species = [create_species(i, seed) for i in range(n_species)]
    jobs: list[tuple[int, str, int]] = []
    for i in range(n_species):
        has_field = not (no_field_every and i % no_field_every == no_field_every - 1)
        n_h, n_f = _class_sizes(seed, i, n_herbarium, n_field if has_field else 0)
        jobs += [(i, "herbarium", j) for j in range(n_h)]
        jobs += [(i, "field", j) for j in range(n_f)]
        jobs += [(i, "test", j) for j in range(n_test)]
    for i, kind, j in tqdm(jobs, desc="sample images", disable=not progress, unit="img"):
        traits = species[i]
        rng = np.random.default_rng([seed, i, _KIND_CODE[kind], j])
        img = herbarium_sheet(traits, rng) if kind == "herbarium" else field_photo(traits, rng)
        folder = out / kind / traits.name  # folder name == label name
        folder.mkdir(parents=True, exist_ok=True)
        stem = traits.name.lower().replace(" ", "_")
        img.save(folder / f"{stem}_{kind[0]}{j:02d}.jpg", quality=88 if kind == "herbarium" else 85)
    meta = {
        "seed": seed,
        "n_species": n_species,
        "species_without_field_training_photos": [
            s.name
            for i, s in enumerate(species)
            if no_field_every and i % no_field_every == no_field_every - 1
        ],
    }
    (out / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    return out
