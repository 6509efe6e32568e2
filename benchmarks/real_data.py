"""Real-image benchmark tasks built from ``../shared/data`` (never committed into the project).

Two tasks, both written as the ``folders`` layout that ``python -m data_prep build`` reads
(``herbarium/<species>/``, ``field/<species>/``, ``test/<species>/``), with files *copied* (not linked):

``leafsnap``: the two-domain task of issue 14 on ``leafsnap-specimens`` (185 species, 2,283 studio
    photos). Leaf views (file prefixes ``LTV``, ``LUV``) are the herbarium-like domain, for every
    species. The other views (flowers, fruit, bark, seeds, twigs) are the field domain. The split is
    deterministic (SHA-1 of names, no seed), so every system and every seed sees the same images:

    - a species has field *training* photos when ``sha1(species) % 3 != 0`` (about two thirds);
    - each species' field photos, ordered by ``sha1(species/file)``, give the first
      ``max(1, round(0.4 * n))`` to ``test/`` (every species has test photos); for species with field
      training photos the rest go to ``field/``, for the others the rest are not used;
    - ``data_prep build`` then draws the validation split from ``field/`` (its ``--val-fraction``,
      default 0.2, seeded): validation holds field photos of species *with* field training photos only.

``plantclef``: ``plantclef-subset`` as it is (one herbarium sheet per species, 120 field photos of 14
    species, 76 test photos of 21 species). A smoke test of the same pipeline on real PlantCLEF 2020
    images, not an accuracy benchmark (photos of one plant can sit in both ``field/`` and ``test/``).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
LEAF_PREFIXES = ("LTV", "LUV")
TEST_FRACTION = 0.4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _h(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16)


def has_field_training(species: str) -> bool:
    """Whether a leafsnap species gets field training photos (about two thirds of them)."""
    return _h(species) % 3 != 0


def leafsnap_plan(source: Path) -> dict[str, list[tuple[Path, str]]]:
    """``{species: [(file, "herbarium" | "field" | "test" | "unused"), ...]}`` for leafsnap-specimens."""
    plan: dict[str, list[tuple[Path, str]]] = {}
    for sp_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(f for f in sp_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        leaves = [f for f in files if f.name.split("-")[0] in LEAF_PREFIXES]
        others = sorted((f for f in files if f not in leaves), key=lambda f: _h(f"{sp_dir.name}/{f.name}"))
        n_test = max(1, round(TEST_FRACTION * len(others))) if others else 0
        rest = "field" if has_field_training(sp_dir.name) else "unused"
        plan[sp_dir.name] = (
            [(f, "herbarium") for f in leaves]
            + [(f, "test") for f in others[:n_test]]
            + [(f, rest) for f in others[n_test:]]
        )
    return plan


def write_layout(plan: dict[str, list[tuple[Path, str]]], out: Path) -> dict[str, int]:
    """Copy the planned files into ``out/{herbarium,field,test}/<species>/``; return counts per part."""
    if out.exists():
        shutil.rmtree(out)
    counts: dict[str, int] = {}
    for species, items in plan.items():
        for file, part in items:
            counts[part] = counts.get(part, 0) + 1
            if part == "unused":
                continue
            target = out / part / species / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    return counts


def prepare(task: str, out: Path, data_root: Path = SHARED_DATA) -> dict[str, int]:
    """Write the ``folders`` layout of ``task`` (``"leafsnap"`` or ``"plantclef"``) under ``out``.

    Raises:
        FileNotFoundError: the real data is not there (callers skip and say so).
    """
    if task == "leafsnap":
        source = data_root / "leafsnap-specimens"
        if not source.is_dir():
            raise FileNotFoundError(f"{source} not found: the real-data benchmark needs ../shared/data")
        return write_layout(leafsnap_plan(source), out)
    if task == "plantclef":
        source = data_root / "plantclef-subset"
        if not source.is_dir():
            raise FileNotFoundError(f"{source} not found: the real-data benchmark needs ../shared/data")
        if out.exists():
            shutil.rmtree(out)
        counts = {}
        for part in ("herbarium", "field", "test"):
            shutil.copytree(source / part, out / part)
            counts[part] = sum(1 for p in (out / part).rglob("*") if p.is_file())
        return counts
    raise ValueError(f"unknown task {task!r}: expected 'leafsnap' or 'plantclef'")
