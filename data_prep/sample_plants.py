"""Procedural plants for the embedded sample: species traits, plant geometry and rendering.

A species is a :class:`SpeciesTraits` (leaf shape, margin, venation, arrangement, branching,
flower colour and count, ...). :func:`grow_plant` turns traits plus a per-image random generator
into geometry (stems, leaves, veins, petals) in plant units (base at the origin, about one unit
tall, up is -y), with controlled within-species variation. :func:`render_plant` draws that geometry
onto a PIL image through a similarity transform and a palette, so the same plant can be pressed
on a herbarium sheet or photographed in the field.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

RGB = tuple[int, int, int]

LEAF_SHAPES = ("ellipse", "lanceolate", "round", "cordate", "needle", "lobed", "linear")
ARRANGEMENTS = ("alternate", "opposite", "whorled", "rosette")
VENATIONS = ("none", "midrib", "pinnate", "parallel")

_GENERA = (
    "Ficta",
    "Pictaria",
    "Graphina",
    "Simulia",
    "Fabricia",
    "Artefacta",
    "Pixelia",
    "Imaginaria",
    "Nonvera",
    "Proceduria",
    "Virtualis",
    "Algoritha",
)
_EPITHETS = (
    "alba",
    "rubra",
    "ovata",
    "lanceolata",
    "cordata",
    "minor",
    "major",
    "vulgaris",
    "montana",
    "sylvestris",
    "palustris",
    "aurea",
    "serrata",
)


def species_name(index: int) -> str:
    """A made-up binomial, unique for the first 156 indices (12 genera x 13 epithets, coprime)."""
    return f"{_GENERA[index % len(_GENERA)]} {_EPITHETS[(7 * index) % len(_EPITHETS)]}"


@dataclass(frozen=True)
class SpeciesTraits:
    """What stays constant within a species (the per-image variation is added by grow_plant)."""

    name: str
    leaf_shape: str
    leaf_length: float  # plant units
    leaf_width: float  # width / length
    serrated: bool
    venation: str
    arrangement: str
    leaf_spacing: float  # plant units between nodes
    leaf_angle: float  # degrees from the stem
    n_stems: int
    branch_depth: int
    branch_angle: float  # degrees
    stem_curve: float  # degrees per segment
    leaf_hsv: tuple[float, float, float]
    flower_hsv: tuple[float, float, float]
    flowers_per_tip: int
    n_petals: int
    flower_size: float  # plant units
    axillary_flowers: bool


def create_species(index: int, seed: int) -> SpeciesTraits:
    """Draw the traits of species ``index`` (deterministic in ``seed`` and ``index``).

    Leaf shape and arrangement cycle through their options so that neighbouring species differ;
    the flower hue follows the golden-ratio sequence so that hues are spread around the wheel.
    """
    rng = np.random.default_rng([seed, index, 0, 0])
    shape = LEAF_SHAPES[(index + seed) % len(LEAF_SHAPES)]
    arrangement = ARRANGEMENTS[(index // len(LEAF_SHAPES) + index + seed) % len(ARRANGEMENTS)]
    width = {
        "ellipse": 0.45,
        "lanceolate": 0.28,
        "round": 0.85,
        "cordate": 0.7,
        "needle": 0.08,
        "lobed": 0.7,
        "linear": 0.14,
    }[shape] * rng.uniform(0.85, 1.15)
    length = {"needle": 0.12, "linear": 0.3, "round": 0.13}.get(shape, 0.19) * rng.uniform(0.8, 1.25)
    hue = (0.07 + index * 0.618034 + seed * 0.1) % 1.0
    return SpeciesTraits(
        name=species_name(index),
        leaf_shape=shape,
        leaf_length=float(length),
        leaf_width=float(width),
        serrated=bool(rng.random() < 0.4),
        venation=VENATIONS[int(rng.integers(len(VENATIONS)))] if shape not in ("needle",) else "none",
        arrangement=arrangement,
        leaf_spacing=float(rng.uniform(0.07, 0.14)),
        leaf_angle=float(rng.uniform(30, 70)),
        n_stems=int(rng.integers(1, 3)),
        branch_depth=int(rng.integers(0, 3)) if arrangement != "rosette" else 0,
        branch_angle=float(rng.uniform(20, 50)),
        stem_curve=float(rng.uniform(-4, 4)),
        leaf_hsv=(
            float(rng.uniform(0.2, 0.4)),
            float(rng.uniform(0.45, 0.85)),
            float(rng.uniform(0.35, 0.7)),
        ),
        flower_hsv=(float(hue), float(rng.uniform(0.65, 1.0)), float(rng.uniform(0.75, 1.0))),
        flowers_per_tip=int(rng.integers(2, 6)),
        n_petals=int(rng.integers(4, 9)),
        flower_size=float(rng.uniform(0.045, 0.08)),
        axillary_flowers=bool(rng.random() < 0.35),
    )


@dataclass
class Part:
    """One drawable piece of a plant: ``role`` picks its colour in the palette."""

    role: str  # "stem", "leaf", "vein", "petal", "centre"
    points: np.ndarray  # (N, 2) in plant units
    width: float = 0.0  # line width in plant units (lines only)
    closed: bool = True  # polygon (True) or polyline (False)
    shade: float = 1.0  # per-part brightness factor


def _leaf_profile(shape: str, t: np.ndarray) -> np.ndarray:
    """Half-width of a leaf along its length (t from base 0 to tip 1), peak about 0.5."""
    s = np.sin(np.pi * t)
    if shape == "lanceolate":
        return (t**0.5) * (1 - t) * 1.3
    if shape == "round":
        return np.sqrt(np.clip(s, 0, None)) * 0.5
    if shape == "cordate":
        return np.clip(s**0.6 * (1.15 - t) * 0.55, 0, None)
    if shape == "lobed":
        return s * (0.3 + 0.2 * np.abs(np.sin(3.0 * np.pi * t)))
    if shape in ("needle", "linear"):
        return np.clip(s, 0, None) ** 0.3 * 0.5
    return s * 0.5


_T = np.linspace(0.0, 1.0, 12)
_SERRATION = 1 + 0.18 * (np.arange(12) % 2)
_CIRCLE = np.linspace(0, 2 * math.pi, 9)
_PETAL = np.stack([0.5 * (1 + np.cos(_CIRCLE)), 0.28 * np.sin(_CIRCLE)], axis=1)  # unit petal along +x
_DISC = np.stack([0.3 * np.cos(_CIRCLE), 0.3 * np.sin(_CIRCLE)], axis=1)


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _leaf(
    traits: SpeciesTraits, base: np.ndarray, angle: float, scale: float, rng: np.random.Generator
) -> list[Part]:
    """A leaf polygon (and its veins) attached at ``base``, pointing along ``angle`` (radians)."""
    length = traits.leaf_length * scale * rng.uniform(0.85, 1.15)
    width = length * traits.leaf_width * rng.uniform(0.9, 1.1)
    t = _T
    half = _leaf_profile(traits.leaf_shape, t) * width
    if traits.serrated:
        half = half * _SERRATION
    outline = np.empty((2 * len(t), 2))
    outline[: len(t), 0], outline[: len(t), 1] = t * length, half
    outline[len(t) :, 0], outline[len(t) :, 1] = t[::-1] * length, -half[::-1]
    rot_t = _rotation(angle).T

    def place(p: np.ndarray) -> np.ndarray:
        return p @ rot_t + base

    parts = [Part("leaf", place(outline), shade=float(rng.uniform(0.85, 1.15)))]
    if traits.venation != "none" and length > 0.05:
        vein_w = max(0.004, width * 0.06)
        parts.append(Part("vein", place(np.array([[0.0, 0.0], [length * 0.92, 0.0]])), vein_w, closed=False))
        if traits.venation == "pinnate":
            for x in np.linspace(0.2, 0.75, 3) * length:
                w = float(np.interp(x / length, t, half)) * 0.8
                for sign in (1, -1):
                    seg = np.array([[x, 0.0], [x + 0.12 * length, sign * w]])
                    parts.append(Part("vein", place(seg), vein_w * 0.7, closed=False))
        elif traits.venation == "parallel":
            for sign in (1, -1):
                seg = np.array([[0.05 * length, sign * width * 0.12], [0.85 * length, sign * width * 0.08]])
                parts.append(Part("vein", place(seg), vein_w * 0.7, closed=False))
    return parts


def _flower(traits: SpeciesTraits, centre: np.ndarray, rng: np.random.Generator) -> list[Part]:
    """A radial flower: ``n_petals`` elliptic petals around a disc."""
    r = traits.flower_size * rng.uniform(0.85, 1.15)
    rot0 = rng.uniform(0, 2 * math.pi)
    shades = rng.uniform(0.9, 1.1, traits.n_petals)
    parts = []
    for i in range(traits.n_petals):
        rot_t = _rotation(rot0 + 2 * math.pi * i / traits.n_petals).T * r
        parts.append(Part("petal", _PETAL @ rot_t + centre, shade=float(shades[i])))
    parts.append(Part("centre", _DISC * r + centre))
    return parts


def grow_plant(traits: SpeciesTraits, rng: np.random.Generator) -> list[Part]:
    """Geometry of one individual of ``traits`` (draw order: stems, leaves and veins, flowers)."""
    stems: list[Part] = []
    leaves: list[Part] = []
    flowers: list[Part] = []
    height = rng.uniform(0.85, 1.0)

    def tip_flowers(tip: np.ndarray) -> None:
        for j in range(traits.flowers_per_tip):
            offset = np.zeros(2) if j == 0 else rng.normal(0, traits.flower_size * 1.2, 2)
            flowers.extend(_flower(traits, tip + offset, rng))

    def branch(start: np.ndarray, angle: float, length: float, depth: int, with_leaves: bool) -> None:
        n_seg = 8
        seg_len = length / n_seg
        points = [start]
        pos = start.copy()
        curve = math.radians(traits.stem_curve + rng.normal(0, 1.5))
        next_leaf = traits.leaf_spacing * rng.uniform(0.5, 1.0)
        travelled = 0.0
        node = 0
        branch_at = {int(n_seg * f) for f in (0.35, 0.6)[: 1 + (depth > 1)]} if depth > 0 else set()
        for s in range(n_seg):
            angle += curve
            step = np.array([math.sin(angle), -math.cos(angle)]) * seg_len
            pos = pos + step
            points.append(pos)
            travelled += seg_len
            rel = travelled / length
            if s in branch_at:
                side = 1 if (s + depth) % 2 else -1
                child_angle = angle + side * math.radians(traits.branch_angle + rng.normal(0, 5))
                branch(pos, child_angle, length * rng.uniform(0.45, 0.6), depth - 1, with_leaves)
            while with_leaves and travelled >= next_leaf and rel < 0.93:
                scale = 1.0 - 0.35 * rel
                lean = math.radians(traits.leaf_angle + rng.normal(0, 6))
                if traits.arrangement == "alternate":
                    sides = [1 if node % 2 else -1]
                elif traits.arrangement == "opposite":
                    sides = [1, -1]
                else:  # whorled
                    sides = [1, -1, 0]
                for side in sides:
                    a = (
                        angle - math.pi / 2 + side * lean
                        if side
                        else angle - math.pi / 2 + rng.normal(0, 0.3)
                    )
                    leaves.extend(_leaf(traits, pos, a, scale, rng))
                if traits.axillary_flowers and node % 3 == 1:
                    flowers.extend(_flower(traits, pos + rng.normal(0, 0.01, 2), rng))
                node += 1
                next_leaf += traits.leaf_spacing * rng.uniform(0.85, 1.15)
        stem_w = 0.012 + 0.004 * depth
        stems.append(Part("stem", np.array(points), stem_w, closed=False))
        tip_flowers(pos)

    base = np.zeros(2)
    if traits.arrangement == "rosette":
        n_rosette = int(rng.integers(6, 10))
        for i in range(n_rosette):
            a = -math.pi / 2 + math.radians(-80 + 160 * i / max(1, n_rosette - 1) + rng.normal(0, 6))
            leaves.extend(_leaf(traits, base, a, 1.6, rng))
        for k in range(traits.n_stems):
            branch(
                base, math.radians(rng.normal(0, 10) + 12 * (k - (traits.n_stems - 1) / 2)), height, 0, False
            )
    else:
        for k in range(traits.n_stems):
            lean = math.radians(rng.normal(0, 6) + 18 * (k - (traits.n_stems - 1) / 2))
            branch(base, lean, height * (1.0 - 0.15 * k), traits.branch_depth, True)
    return stems + leaves + flowers


def hsv_rgb(h: float, s: float, v: float) -> RGB:
    """HSV in [0, 1] to an 8-bit RGB tuple."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def mix(a: RGB, b: RGB, w: float) -> RGB:
    """Linear blend: ``w`` of ``b`` into ``a``."""
    return tuple(int(round(x * (1 - w) + y * w)) for x, y in zip(a, b))  # type: ignore[return-value]


Palette = Callable[[str, float], RGB]


def render_plant(
    draw: ImageDraw.ImageDraw,
    parts: list[Part],
    palette: Palette,
    origin: tuple[float, float],
    scale: float,
    angle: float = 0.0,
    outline: Palette | None = None,
) -> None:
    """Draw ``parts`` with pixel = origin + scale * R(angle) @ point; colours from ``palette(role, shade)``."""
    rot_t = _rotation(angle).T * scale
    for part in parts:
        xy = (part.points @ rot_t + origin).ravel().tolist()
        colour = palette(part.role, part.shade)
        if part.closed:
            edge = outline(part.role, part.shade) if outline else None
            draw.polygon(xy, fill=colour, outline=edge)
        else:
            draw.line(xy, fill=colour, width=max(1, int(round(part.width * scale))), joint="curve")
