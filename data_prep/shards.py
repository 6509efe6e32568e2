"""The sharded build: ``build --num-shards K --shard-index i`` writes a part, ``join`` makes the dataset.

Discovery is global and cheap (it opens no image), so every shard lists the whole input, sees the
full class list and encodes its rows with the same ``ClassLabel`` features. Shard ``i`` validates and
encodes only the files at discovery positions ``i, i + K, i + 2K, ...`` (the slow part: decoding,
resizing, re-encoding) and writes a *part*: ``rows.arrow`` (its kept images, in the dataset schema)
and ``part.json`` (the manifest: source, settings, class list, a fingerprint of the discovery, and
per row its discovery position, content digest, size and fix findings; the shard's skipped files).

:func:`join_parts` does what needs every file at once: it concatenates the parts' rows
(``datasets.concatenate_datasets``, no image copied), puts the row metadata back into discovery order,
then runs the single build's own steps (:func:`data_prep.build.assemble`: duplicates and leakage
across all parts, the stratified field validation split, the report; :func:`data_prep.build.save_build`:
``save_to_disk``, ``prep_report.json``, ``dataset_balance.png``). Because the rows, digests and
findings reach those steps in the same order as in a single build, the joined dataset is the single
build's: same rows in the same order, same label names and ids, same splits, same findings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets
from tqdm.auto import tqdm

from data_prep.build import (
    StrictModeError,
    Validated,
    assemble,
    check_out,
    default_num_proc,
    image_options,
    prepare,
    save_build,
    validate_into_arrow,
)
from data_prep.contract import dataset_features
from data_prep.discovery import DataPrepError, Discovery, Entry
from data_prep.findings import Finding
from data_prep.images import MAX_PIXELS_ENV, default_max_pixels

PART_FILE = "part.json"
ROWS_FILE = "rows.arrow"
PART_FORMAT = "data_prep build part, version 1"
#: manifest keys every part of one build must share (the join names the first that differs)
SHARED_KEYS = ("format", "num_shards", "source", "layout", "settings", "max_pixels", "classes", "discovery")


def check_shard(num_shards: int, shard_index: int) -> None:
    """Raise :class:`DataPrepError` unless ``num_shards >= 1`` and ``0 <= shard_index < num_shards``."""
    if num_shards < 1:
        raise DataPrepError(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise DataPrepError(
            f"--shard-index {shard_index} is out of range for --num-shards {num_shards} (0..{num_shards - 1})"
        )


def is_part(path: str | Path) -> bool:
    """True when ``path`` is a folder written by :func:`build_part` (it holds ``part.json``)."""
    return (Path(path) / PART_FILE).is_file()


def build_part(
    source: str | Path,
    out: str | Path,
    layout: str = "auto",
    *,
    num_shards: int,
    shard_index: int,
    val_fraction: float = 0.2,
    max_side: int = 1024,
    min_side: int = 32,
    quality: int = 90,
    num_proc: int | None = None,
    seed: int = 0,
    exclude: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Validate and encode shard ``shard_index`` of ``num_shards`` of ``source`` into the part folder ``out``.

    The options are :func:`data_prep.build.build_dataset`'s; ``val_fraction`` and ``seed`` act at the
    join but are recorded here, so that parts built with different settings cannot be joined. An
    earlier part in ``out`` is replaced (atomically).

    Returns:
        The part's manifest (what ``part.json`` holds).

    Raises:
        DataPrepError: a shard index out of range, bad input (as for a single build), or an ``out``
            that is neither empty nor an earlier part.
    """
    start = time.perf_counter()
    check_shard(num_shards, shard_index)
    out_path = Path(out)
    if out_path.exists() and any(out_path.iterdir()) and not is_part(out_path):
        raise DataPrepError(
            f"output folder {out_path} exists and does not hold an earlier part; choose another --out"
        )
    disc, settings = prepare(source, layout, exclude, val_fraction, max_side, min_side, quality, seed)
    positions = list(range(shard_index, len(disc.entries), num_shards))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".data_prep-part-", dir=out_path.parent))
    staging = tmp / "part"  # a plain mkdir: the part folder gets the umask's permissions, not mkdtemp's 0700
    try:
        staging.mkdir()
        validated = validate_into_arrow(
            [disc.entries[p] for p in positions],
            staging / ROWS_FILE,
            dataset_features(disc.classes),
            num_proc or default_num_proc(),
            progress,
            image_options(settings),
        )
        manifest = _manifest(disc, settings, num_shards, shard_index, positions, validated)
        manifest["seconds"] = round(time.perf_counter() - start, 3)
        (staging / PART_FILE).write_text(json.dumps(manifest, ensure_ascii=False) + "\n")
        if out_path.exists():
            shutil.rmtree(out_path)
        shutil.move(str(staging), str(out_path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _fingerprint(disc: Discovery) -> str:
    """A digest of everything discovery found (entries and findings): equal in every shard of one input."""
    digest = hashlib.sha256()
    for e in disc.entries:
        digest.update(json.dumps([e.rel, e.label, e.domain, e.split]).encode())
    for f in disc.findings:
        digest.update(json.dumps(f.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()


def _manifest(
    disc: Discovery,
    settings: dict[str, Any],
    num_shards: int,
    shard_index: int,
    positions: list[int],
    validated: Validated,
) -> dict[str, Any]:
    """``part.json``: what the join checks (:data:`SHARED_KEYS`) and what it needs of each row and skip."""
    return {
        "format": PART_FORMAT,
        "num_shards": num_shards,
        "shard_index": shard_index,
        "source": str(disc.root.resolve()),
        "layout": disc.layout,
        "settings": settings,
        "max_pixels": default_max_pixels(),
        "classes": disc.classes,
        "discovery": _fingerprint(disc),
        "files": len(disc.entries),
        "has_test": any(e.split == "test" for e in disc.entries),
        "discovery_findings": [f.to_dict() for f in disc.findings],
        "ignored_files": disc.ignored_files,
        # one row per Arrow row: [discovery position, path, label, domain, split, digest, stored bytes]
        "rows": [
            [positions[p], e.rel, e.label, e.domain, e.split, d, n]
            for p, e, d, n in zip(validated.positions, validated.kept, validated.digests, validated.nbytes)
        ],
        "fixes": [[f.to_dict() for f in fixes] for fixes in validated.fixes],
        "skips": [[positions[p], f.to_dict()] for p, f in validated.skips],
        "stats": validated.stats,
    }


def _read_part(path: Path) -> dict[str, Any]:
    """The manifest of the part folder ``path``, or a :class:`DataPrepError` naming it."""
    if not path.exists():
        raise DataPrepError(f"{path} does not exist (give the folders the shards wrote with --out)")
    if not is_part(path) or not (path / ROWS_FILE).is_file():
        raise DataPrepError(
            f"{path} is not a part written by `data_prep build --num-shards` (no {PART_FILE})"
        )
    try:
        manifest = json.loads((path / PART_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise DataPrepError(f"{path / PART_FILE} cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PART_FORMAT:
        raise DataPrepError(f"{path / PART_FILE} is not a {PART_FORMAT!r} manifest")
    return manifest


def _read_parts(paths: Sequence[Path], progress: bool) -> list[dict[str, Any]]:
    """Every part's manifest; the bar is closed before an error leaves, so the error is printed last."""
    with tqdm(paths, desc="reading parts", unit="part", disable=not progress) as bar:
        return [_read_part(p) for p in bar]


def _check_parts(paths: Sequence[Path], manifests: Sequence[dict[str, Any]]) -> list[int]:
    """Raise :class:`DataPrepError` unless the parts are shards ``0..K-1`` of one build; their order by shard."""
    first = manifests[0]
    for path, manifest in zip(paths, manifests):
        for key in SHARED_KEYS:
            if manifest.get(key) != first.get(key):
                raise DataPrepError(_difference(key, (path, manifest), (paths[0], first)))
    by_index: dict[int, Path] = {}
    for path, manifest in zip(paths, manifests):
        index = manifest["shard_index"]
        if index in by_index:
            raise DataPrepError(f"{path} and {by_index[index]} are both shard {index}; give each part once")
        by_index[index] = path
    missing = sorted(set(range(first["num_shards"])) - set(by_index))
    if missing:
        raise DataPrepError(
            f"missing shard(s) {', '.join(map(str, missing))} of {first['num_shards']} (source {first['source']}); "
            f"build them with --shard-index, then join every part"
        )
    return sorted(range(len(paths)), key=lambda i: manifests[i]["shard_index"])


Named = tuple[Path, dict[str, Any]]  # a part folder and its manifest


def _difference(key: str, part: Named, other: Named) -> str:
    """One line saying how ``part`` differs from ``other`` in the :data:`SHARED_KEYS` entry ``key``, and what to do.

    Names each differing option with both values (``p1: built with --seed 7, p0 with --seed 0``); a
    source whose files or species changed between the shards is said in words, with each part's file count.
    """
    (path, a), (first, b) = part, other
    if key == "settings":
        keys = [
            k
            for k in sorted(set(a["settings"]) | set(b["settings"]))
            if a["settings"].get(k) != b["settings"].get(k)
        ]
        mine, theirs = (" and ".join(_option(k, m["settings"].get(k)) for k in keys) for m in (a, b))
        return f"{path}: built with {mine}, {first} with {theirs}; build every shard with the same options"
    if key == "num_shards":
        return (
            f"{path}: built with --num-shards {a[key]}, {first} with --num-shards {b[key]}; "
            "build every shard with the same --num-shards"
        )
    if key == "source":
        return f"{path}: built from {a[key]}, {first} from {b[key]}; build every shard from the same source"
    if key == "layout":
        return f"{path}: read the source as the {a[key]} layout, {first} as {b[key]}; give every shard the same --layout"
    if key == "max_pixels":
        return (
            f"{path}: built with a pixel limit of {a[key]:_} (--max-pixels or ${MAX_PIXELS_ENV}), {first} with "
            f"{b[key]:_}; build every shard with the same --max-pixels"
        )
    if key in ("classes", "discovery"):
        seen = f"{first} saw {b['files']} files, {path} saw {a['files']}" + _species_change(a, b, path, first)
        return f"the source's files changed between the shard builds ({seen}); rebuild every shard"
    return f"{path} is not a shard of the same build as {first}: different {key}"


def _option(key: str, value: Any) -> str:
    """A recorded setting as the command-line option that sets it (``--seed 7``; ``no --exclude``)."""
    flag = "--" + key.replace("_", "-")
    return f"no {flag}" if value is None else f"{flag} {value}"


def _species_change(a: dict[str, Any], b: dict[str, Any], path: Path, first: Path, most: int = 3) -> str:
    """``; PATH has 2 species FIRST lacks (X, Y)...`` for parts whose class lists differ, else ``""``."""
    text = ""
    for name, mine, theirs, other in ((path, a, b, first), (first, b, a, path)):
        extra = [c for c in mine["classes"] if c not in set(theirs["classes"])]
        if extra:
            listed = ", ".join(extra[:most]) + (", ..." if len(extra) > most else "")
            text += f"; {name} has {len(extra)} species {other} lacks ({listed})"
    return text


def _merge(manifests: Sequence[dict[str, Any]]) -> tuple[Validated, list[int]]:
    """The parts' row metadata in discovery order, and the concatenated row holding each kept entry."""
    root = Path(manifests[0]["source"])
    items = []  # (discovery position, concatenated row, entry, digest, bytes, fixes)
    skips: list[tuple[int, Finding]] = []
    stats: dict[str, Any] = {}
    offset = 0
    for manifest in manifests:
        for j, (position, rel, label, domain, split, digest, nbytes) in enumerate(manifest["rows"]):
            entry = Entry(root / rel, rel, label, domain, split)
            fixes = [Finding(**f) for f in manifest["fixes"][j]]
            items.append((position, offset + j, entry, digest, nbytes, fixes))
        skips += [(position, Finding(**f)) for position, f in manifest["skips"]]
        offset += len(manifest["rows"])
        for key, count in manifest["stats"].items():
            stats[key] = stats.get(key, 0) + count
    items.sort(key=lambda item: item[0])
    skips.sort(key=lambda item: item[0])
    validated = Validated(
        kept=[item[2] for item in items],
        digests=[item[3] for item in items],
        nbytes=[item[4] for item in items],
        fixes=[item[5] for item in items],
        positions=[item[0] for item in items],
        skips=skips,
        stats=stats,
    )
    return validated, [item[1] for item in items]


def join_parts(
    parts: Sequence[str | Path], out: str | Path, *, strict: bool = False, progress: bool = True
) -> tuple[DatasetDict, dict[str, Any]]:
    """Join the parts of a sharded build into the dataset the single build of the same input writes.

    Args:
        parts: the part folders, one per shard ``0..K-1``, in any order.
        out: the dataset folder (``save_to_disk``, ``prep_report.json``, ``dataset_balance.png``); an
            earlier build there is replaced.
        strict: raise :class:`StrictModeError` (after writing) if anything was reported.
        progress: show tqdm bars.

    Returns:
        ``(dataset_dict, report)``, as :func:`data_prep.build.build_dataset`. The report's
        ``stats.seconds`` is the slowest shard's time plus the join's (the wall time when the shards
        run side by side); ``stats.shard_seconds`` lists each shard's.

    Raises:
        DataPrepError: no parts, a folder that is not a part, parts of different builds (source,
            settings, class list, discovery, shard count), a shard given twice or missing, or an
            ``out`` that holds something else.
    """
    start = time.perf_counter()
    if not parts:
        raise DataPrepError("join needs the part folders written by `data_prep build --num-shards`")
    out_path, paths = Path(out), [Path(p) for p in parts]
    check_out(out_path)
    manifests = _read_parts(paths, progress)
    order = _check_parts(paths, manifests)
    paths, manifests = [paths[i] for i in order], [manifests[i] for i in order]
    rows = concatenate_datasets([Dataset.from_file(str(p / ROWS_FILE)) for p in paths])
    validated, row_of = _merge(manifests)
    first = manifests[0]
    disc = Discovery(Path(first["source"]), first["layout"], ignored_files=first["ignored_files"])
    disc.findings = [Finding(**f) for f in first["discovery_findings"]]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".data_prep-", dir=out_path.parent))
    try:
        dsd, report, shards = assemble(
            disc, first["classes"], first["has_test"], rows, validated, out_path, first["settings"], row_of
        )
        report["stats"] |= _join_timing(start, first["files"], [m["seconds"] for m in manifests])
        dsd = save_build(dsd, out_path, tmp, report, progress, shards)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if strict and report["findings"]:
        raise StrictModeError(report)
    return dsd, report


def _join_timing(start: float, n_files: int, shard_seconds: list[float]) -> dict[str, Any]:
    """The report's timing of a sharded build: slowest shard + join, and each shard's seconds."""
    seconds = max(shard_seconds) + time.perf_counter() - start
    return {
        "seconds": round(seconds, 3),
        "images_per_s": round(n_files / seconds, 1),
        "shard_seconds": shard_seconds,
    }


__all__ = ["PART_FILE", "ROWS_FILE", "build_part", "check_shard", "is_part", "join_parts"]
