"""Input layouts: find every (file, species, domain, split) in a folder tree, PlantCLEF list files or a CSV.

Three layouts (``detect_layout`` picks one; ``--layout`` forces it):

``folders``
    ``ROOT/herbarium/<species>/*``, ``ROOT/field/<species>/*`` (``photo`` is a synonym of
    ``field``), optional ``ROOT/test/<species>/*`` (field photos, a fixed test set). Sub-folders
    inside a species folder are included. Species name = folder name.
``plantclef``
    ``ROOT/list/train.txt`` (``relative/path class_id`` per line; the domain comes from a
    ``herbarium`` or ``photo``/``field`` folder in the path), ``ROOT/list/groundtruth.txt``
    (``relative/path class_id``: the test set; without it, two-column lines of ``list/test.txt``),
    ``ROOT/list/species_list.txt`` (``class_id; species name``; without it the class id is the name).
``csv``
    a CSV file (or a folder holding exactly one) with columns ``path,label,domain`` and optionally
    ``split`` (``train``/``test``); paths are relative to the CSV's folder; domain is ``herbarium``,
    ``field`` or ``photo``.

Discovery only lists and parses; it opens no image. Problems become :class:`Finding` objects.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.findings import IGNORED, SKIPPED, Finding

DOMAINS = ("herbarium", "field")
LAYOUTS = ("auto", "folders", "plantclef", "csv")
_DOMAIN_WORDS = {"herbarium": "herbarium", "field": "field", "photo": "field", "photos": "field"}
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})


class DataPrepError(Exception):
    """An input problem that stops the build (missing folder, unknown layout, bad CSV header)."""


@dataclass(frozen=True)
class Entry:
    """One candidate image: absolute ``file``, ``rel`` path (POSIX, relative to the root)."""

    file: Path
    rel: str
    label: str
    domain: str  # "herbarium" | "field"
    split: str  # "train" (the pool that train and validation are drawn from) | "test"


@dataclass
class Discovery:
    """Everything found in the input, before any image is opened."""

    root: Path
    layout: str
    entries: list[Entry] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    ignored_files: int = 0  # hidden / OS metadata files (``.DS_Store``, ``Thumbs.db``)

    @property
    def classes(self) -> list[str]:
        """Species names in the one stable order every later stage uses: sorted."""
        return sorted({e.label for e in self.entries})


def _is_system_file(name: str) -> bool:
    return name.startswith(".") or name.lower() in _SYSTEM_FILES


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _child_dirs(root: Path) -> dict[str, Path]:
    """Lower-cased name -> folder for the direct sub-folders of ``root``."""
    return {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}


def detect_layout(source: str | Path) -> str:
    """Return ``"folders"``, ``"plantclef"`` or ``"csv"`` for ``source``, or raise :class:`DataPrepError`."""
    src = Path(source)
    if not src.exists():
        raise DataPrepError(f"input not found: {src}")
    if src.is_file():
        if src.suffix.lower() == ".csv":
            return "csv"
        raise DataPrepError(f"{src} is a file but not a .csv; give a folder or a CSV with path,label,domain")
    if (src / "list" / "train.txt").is_file():
        return "plantclef"
    if set(_child_dirs(src)) & {"herbarium", "field", "photo", "photos"}:
        return "folders"
    if len(list(src.glob("*.csv"))) == 1:
        return "csv"
    raise DataPrepError(
        f"cannot tell the layout of {src}: expected herbarium/ and field/ (or photo/) folders, "
        "list/train.txt (PlantCLEF), or one CSV file with path,label,domain columns"
    )


def discover(source: str | Path, layout: str = "auto") -> Discovery:
    """List the candidate images of ``source`` in the given (or detected) layout."""
    if layout not in LAYOUTS:
        raise DataPrepError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    src = Path(source)
    if not src.exists():
        raise DataPrepError(f"input not found: {src}")
    chosen = detect_layout(src) if layout == "auto" else layout
    if chosen == "folders":
        return _discover_folders(src)
    if chosen == "plantclef":
        return _discover_plantclef(src)
    return _discover_csv(src)


# --------------------------------------------------------------------------- folders


def _walk_species(folder: Path, root: Path, disc: Discovery) -> list[Path]:
    """All non-hidden files under ``folder`` (recursive, sorted); unlistable folders are reported."""

    def on_error(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else folder
        disc.findings.append(
            Finding(_rel(where, root), "unreadable_folder", SKIPPED, exc.strerror or str(exc))
        )

    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _is_system_file(name):
                disc.ignored_files += 1
            else:
                files.append(Path(dirpath) / name)
    return files


def _discover_folders(root: Path) -> Discovery:
    disc = Discovery(root=root, layout="folders")
    children = _child_dirs(root)
    sources = [
        (children[k], _DOMAIN_WORDS[k], "train")
        for k in ("herbarium", "field", "photo", "photos")
        if k in children
    ]
    if "test" in children:
        sources.append((children["test"], "field", "test"))
    if not any(split == "train" for _, _, split in sources):
        raise DataPrepError(f"{root}: no herbarium/ or field/ (photo/) folder")
    for domain_dir, domain, split in sources:
        try:
            items = sorted(domain_dir.iterdir())
        except OSError as exc:
            disc.findings.append(
                Finding(_rel(domain_dir, root), "unreadable_folder", SKIPPED, exc.strerror or str(exc))
            )
            continue
        for item in items:
            if _is_system_file(item.name):
                disc.ignored_files += 1
            elif item.is_dir():
                files = _walk_species(item, root, disc)
                if not files:
                    disc.findings.append(Finding(_rel(item, root), "empty_folder", IGNORED))
                for f in files:
                    disc.entries.append(Entry(f, _rel(f, root), item.name, domain, split))
            else:
                disc.findings.append(
                    Finding(_rel(item, root), "outside_class_folder", SKIPPED, "no species folder")
                )
    return disc


# --------------------------------------------------------------------------- PlantCLEF lists


def _read_lines(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    return [
        (i, line.strip())
        for i, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.startswith("#")
    ]


def _read_species_list(path: Path, disc: Discovery) -> dict[str, str]:
    names: dict[str, str] = {}
    for lineno, line in _read_lines(path):
        class_id, sep, name = line.partition(";")
        class_id, name = class_id.strip(), name.strip()
        if not sep or not class_id or not name:
            disc.findings.append(Finding(f"list/{path.name}:{lineno}", "malformed_line", SKIPPED, line[:120]))
            continue
        if lineno == 1 and not class_id.isdigit() and "class" in class_id.lower():
            continue  # a header line
        names[class_id] = name
    seen: dict[str, str] = {}
    for class_id, name in sorted(names.items()):
        if name in seen:  # two ids with one name would merge two classes: keep them apart
            names[class_id] = f"{name} ({class_id})"
        seen[name] = class_id
    return names


def _domain_from_path(rel: str) -> str | None:
    for part in reversed(Path(rel).parts[:-1]):
        if part.lower() in _DOMAIN_WORDS:
            return _DOMAIN_WORDS[part.lower()]
    return None


def _parse_list(path: Path, root: Path, split: str, names: dict[str, str] | None, disc: Discovery) -> None:
    for lineno, line in _read_lines(path):
        fields = line.rsplit(None, 1)
        where = f"list/{path.name}:{lineno}"
        if len(fields) != 2:
            if split == "test":
                disc.findings.append(Finding(fields[0], "unlabelled_test", SKIPPED, f"no class in {where}"))
            else:
                disc.findings.append(Finding(where, "malformed_line", SKIPPED, line[:120]))
            continue
        rel, class_id = fields[0].removeprefix("./"), fields[1]
        if names is not None and class_id not in names:
            disc.findings.append(
                Finding(rel, "unknown_class_id", SKIPPED, f"class id {class_id!r} ({where})")
            )
            continue
        domain = "field" if split == "test" else _domain_from_path(rel)
        if domain is None:
            disc.findings.append(
                Finding(rel, "unknown_domain", SKIPPED, f"no herbarium/photo folder in path ({where})")
            )
            continue
        file = root / rel
        if not file.is_file():
            disc.findings.append(Finding(rel, "missing_file", SKIPPED, where))
            continue
        label = names[class_id] if names is not None else class_id
        disc.entries.append(Entry(file, Path(rel).as_posix(), label, domain, split))


def _discover_plantclef(root: Path) -> Discovery:
    disc = Discovery(root=root, layout="plantclef")
    lists = root / "list"
    if not (lists / "train.txt").is_file():
        raise DataPrepError(f"{root}: list/train.txt not found (PlantCLEF layout)")
    names = (
        _read_species_list(lists / "species_list.txt", disc)
        if (lists / "species_list.txt").is_file()
        else None
    )
    _parse_list(lists / "train.txt", root, "train", names, disc)
    if (lists / "groundtruth.txt").is_file():
        _parse_list(lists / "groundtruth.txt", root, "test", names, disc)
        if (lists / "test.txt").is_file():
            known = {e.rel for e in disc.entries if e.split == "test"} | {f.path for f in disc.findings}
            for lineno, line in _read_lines(lists / "test.txt"):
                rel = line.split()[0].removeprefix("./")
                if rel not in known:
                    disc.findings.append(Finding(rel, "unlabelled_test", SKIPPED, f"list/test.txt:{lineno}"))
    elif (lists / "test.txt").is_file():
        _parse_list(lists / "test.txt", root, "test", names, disc)
    return disc


# --------------------------------------------------------------------------- CSV


def _discover_csv(source: Path) -> Discovery:
    if source.is_dir():
        found = sorted(source.glob("*.csv"))
        if len(found) != 1:
            raise DataPrepError(
                f"{source}: expected exactly one .csv file, found {len(found)}; pass the CSV path"
            )
        source = found[0]
    root = source.parent
    disc = Discovery(root=root, layout="csv")
    with source.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = {h.strip().lower() for h in (reader.fieldnames or [])}
        missing = {"path", "label", "domain"} - header
        if missing:
            raise DataPrepError(
                f"{source}: missing column(s) {', '.join(sorted(missing))}; need path,label,domain"
            )
        for lineno, raw in enumerate(reader, 2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{source.name}:{lineno}"
            rel, label = row.get("path", ""), row.get("label", "")
            split = (row.get("split") or "train").lower()
            if not rel or not label or split not in ("train", "test"):
                disc.findings.append(
                    Finding(where, "malformed_line", SKIPPED, f"path={rel!r} label={label!r} split={split!r}")
                )
                continue
            domain = _DOMAIN_WORDS.get(row.get("domain", "").lower())
            if domain is None:
                disc.findings.append(
                    Finding(rel, "unknown_domain", SKIPPED, f"domain {row.get('domain')!r} ({where})")
                )
                continue
            file = Path(rel) if Path(rel).is_absolute() else root / rel
            if not file.is_file():
                disc.findings.append(Finding(rel, "missing_file", SKIPPED, where))
                continue
            disc.entries.append(Entry(file, _rel(file, root), label, domain, split))
    return disc
