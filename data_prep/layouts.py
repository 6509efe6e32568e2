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

Nothing outside the input root is read: a symlink is followed only when it resolves inside the root
(folder links once each, with loop protection), and list-file or CSV paths that lead outside it are
reported as ``outside_root``. In the folders layout every file ends up as an :class:`Entry` or in a
finding (files directly in ROOT, unusable species-folder names, FIFOs, broken links, second paths to
one file), except hidden and OS metadata files, which are counted.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.findings import IGNORED, SKIPPED, Finding

DOMAINS = ("herbarium", "field")
LAYOUTS = ("auto", "folders", "plantclef", "csv")
_DOMAIN_WORDS = {"herbarium": "herbarium", "field": "field", "photo": "field", "photos": "field"}
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})
_READ_ORDER = ("herbarium", "field", "photo", "photos", "test")  # folders layout: entry order


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


def _inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` resolves (symlinks followed) to ``root`` or somewhere below it."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


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

_HIDDEN_FOLDER = re.compile(r"^\.[A-Za-z0-9_-]")  # .git, .thumbnails, .ipynb_checkpoints


def _class_name_problem(name: str) -> str | None:
    """Why a folder name cannot be a species label (None when it can)."""
    if name.startswith("."):
        return "starts with '.'"
    if "\\" in name:
        return "contains '\\'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains control characters"
    if name != name.strip():
        return "starts or ends with white space"
    return None


class _FolderWalker:
    """Lists a folders-layout tree without leaving the input root.

    Symlinks are followed only when they resolve inside the root; a folder symlink is followed once
    (a second link to the same folder, or one that points to a folder containing it, is reported and
    not followed), so link loops end. A file reached twice (its own path and a symlink) is kept under
    its own path. Every file and folder that is not listed as an :class:`Entry` gets a finding, except
    hidden and OS metadata files, which are counted (``Discovery.ignored_files``).
    """

    def __init__(self, disc: Discovery):
        self.disc = disc
        self.root = disc.root
        self.real_root = os.path.realpath(disc.root)
        self.linked: set[str] = set()  # rel paths of entries reached through a symlink
        self.linked_dirs: dict[str, str] = {}  # real folder -> rel path it was first read under

    def note(self, path: Path, reason: str, action: str, detail: str = "") -> None:
        self.disc.findings.append(Finding(_rel(path, self.root), reason, action, detail))

    def inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)

    def follow(self, path: Path) -> str | None:
        """Real path of the symlink ``path`` when it may be followed; otherwise a finding and None."""
        real = os.path.realpath(path)
        if not self.inside(real):
            self.note(path, "outside_root", SKIPPED, "symlink leading outside the input root: not followed")
            return None
        if not os.path.exists(real):
            self.note(path, "broken_link", SKIPPED, "the symlink's target does not exist")
            return None
        return real

    def scan(self, folder: Path) -> list[os.DirEntry[str]] | None:
        """The sorted entries of ``folder``, or None (and a finding) when it cannot be listed."""
        try:
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            where = Path(exc.filename) if isinstance(exc.filename, str) else folder
            self.note(where, "unreadable_folder", SKIPPED, exc.strerror or type(exc).__name__)
            return None

    def enter(self, path: Path, real: str, via_link: bool, ancestors: frozenset[str]) -> bool:
        """Whether to walk the folder ``path`` (real path ``real``); reports the folders it refuses."""
        if real in ancestors:
            self.note(path, "symlink_loop", IGNORED, "points to a folder that contains it")
            return False
        if via_link:
            if real in self.linked_dirs:
                self.note(path, "same_file", IGNORED, f"folder already read as {self.linked_dirs[real]}")
                return False
            self.linked_dirs[real] = _rel(path, self.root)
        return True

    def resolve(self, item, path: Path, parent_real: str, via_link: bool) -> tuple[str, bool] | None:
        """``(real path, reached through a link)`` of a directory entry; None for a link not followed
        (outside the root, broken or a loop: :meth:`follow` reports it)."""
        if item.is_symlink():
            real = self.follow(path)
            return None if real is None else (real, True)
        return os.path.join(parent_real, item.name), via_link

    def walk(
        self, folder: Path, label: str, domain: str, split: str, via_link: bool, ancestors: frozenset[str]
    ) -> int | None:
        """Add the files under ``folder`` (recursively) as entries; their number, None if unlistable."""
        items = self.scan(folder)
        if items is None:
            return None
        folder_real = os.path.realpath(folder)
        found = 0
        for item in items:
            path = folder / item.name
            resolved = self.resolve(item, path, folder_real, via_link)
            if resolved is None:
                continue
            real, linked = resolved
            if _is_dir(item):
                if item.name.startswith("."):
                    self.note(path, "hidden_folder", IGNORED, "name starts with '.': not read")
                elif self.enter(path, real, linked, ancestors):
                    found += self.walk(path, label, domain, split, linked, ancestors | {real}) or 0
            elif _is_system_file(item.name):
                self.disc.ignored_files += 1
            elif not _is_file(item):
                self.note(path, "not_a_regular_file", SKIPPED, "FIFO, socket or device: not opened")
            else:
                # through a link, open the resolved path that was checked, not the link again
                entry = Entry(Path(real) if linked else path, _rel(path, self.root), label, domain, split)
                self.disc.entries.append(entry)
                if linked:
                    self.linked.add(entry.rel)
                found += 1
        return found

    def read_domain(self, domain_dir: Path, domain: str, split: str, via_link: bool) -> None:
        """``<domain>/<species>/...``: one label per species folder."""
        items = self.scan(domain_dir)
        domain_real = os.path.realpath(domain_dir)
        for item in items or []:
            path = domain_dir / item.name
            resolved = self.resolve(item, path, domain_real, via_link)
            if resolved is None:
                continue
            real, linked = resolved
            if not _is_dir(item):
                if _is_system_file(item.name):
                    self.disc.ignored_files += 1
                elif not _is_file(item):
                    self.note(path, "not_a_regular_file", SKIPPED, "FIFO, socket or device: not opened")
                else:
                    self.note(path, "outside_class_folder", SKIPPED, "no species folder")
                continue
            if _HIDDEN_FOLDER.match(item.name):
                self.note(path, "hidden_folder", IGNORED, "name starts with '.': not read")
                continue
            problem = _class_name_problem(item.name)
            if problem:
                self.note(path, "bad_class_name", SKIPPED, f"folder name {problem}: not read; rename it")
                continue
            ancestors = frozenset({self.real_root, domain_real})
            if not self.enter(path, real, linked, ancestors):
                continue
            found = self.walk(path, item.name, domain, split, linked, ancestors | {real})
            if found == 0:
                self.note(path, "empty_folder", IGNORED)

    def drop_linked_copies(self) -> None:
        """Keep each real file once: under its own path when it has one, else under its first link."""
        if not self.linked:  # no symlink followed: every path is its own real path
            return
        first: dict[str, Entry] = {}
        order = [e for e in self.disc.entries if e.rel not in self.linked] + [
            e for e in self.disc.entries if e.rel in self.linked
        ]
        dropped: set[str] = set()
        for entry in order:
            real = os.path.realpath(entry.file)
            if real in first:
                dropped.add(entry.rel)
                self.disc.findings.append(
                    Finding(entry.rel, "same_file", SKIPPED, f"same file as {first[real].rel}")
                )
            else:
                first[real] = entry
        if dropped:
            self.disc.entries = [e for e in self.disc.entries if e.rel not in dropped]


def _is_dir(item: os.DirEntry[str]) -> bool:
    try:
        return item.is_dir()
    except OSError:
        return False


def _is_file(item: os.DirEntry[str]) -> bool:
    try:
        return item.is_file()
    except OSError:
        return False


def _discover_folders(root: Path) -> Discovery:
    disc = Discovery(root=root, layout="folders")
    walker = _FolderWalker(disc)
    sources: list[tuple[Path, str, str, bool]] = []
    refused: list[str] = []
    for item in walker.scan(root) or []:
        path = root / item.name
        kind = item.name.lower()
        if kind.startswith("."):  # .git, .DS_Store, the sample's marker file: not data
            disc.ignored_files += 1
            continue
        is_link = item.is_symlink()
        if (kind in _DOMAIN_WORDS or kind == "test") and _is_dir(item):
            if is_link and walker.follow(path) is None:
                refused.append(item.name)
                continue
            if kind == "test":
                sources.append((path, "field", "test", is_link))
            else:
                sources.append((path, _DOMAIN_WORDS[kind], "train", is_link))
        elif is_link and walker.follow(path) is None:
            continue
        elif _is_dir(item):
            walker.note(
                path, "not_in_layout", SKIPPED, "folder not read: not herbarium/, field/, photo/ or test/"
            )
        else:
            walker.note(
                path, "not_in_layout", SKIPPED, "file directly in ROOT, not in a <domain>/<species> folder"
            )
    if not any(split == "train" for _, _, split, _ in sources):
        why = f" ({', '.join(refused)}: symlink outside the input root, not followed)" if refused else ""
        raise DataPrepError(
            f"{root}: no herbarium/ or field/ (photo/) folder inside the input root{why}; expected "
            "ROOT/herbarium/<species>/* and ROOT/field/<species>/*"
        )
    order = {word: i for i, word in enumerate(_READ_ORDER)}
    for domain_dir, domain, split, is_link in sorted(
        sources, key=lambda s: (order[s[0].name.lower()], s[0].name)
    ):
        walker.read_domain(domain_dir, domain, split, is_link)
    walker.drop_linked_copies()
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
            disc.findings.append(
                Finding(
                    f"list/{path.name}:{lineno}",
                    "malformed_line",
                    SKIPPED,
                    "expected 'class_id; species name'",
                )
            )
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
                disc.findings.append(
                    Finding(where, "malformed_line", SKIPPED, "expected 'relative/path class_id'")
                )
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
        if not _inside(file, root):
            disc.findings.append(
                Finding(rel, "outside_root", SKIPPED, f"leads outside the input root ({where})")
            )
            continue
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
    for name in ("train.txt", "groundtruth.txt", "test.txt", "species_list.txt"):
        if (lists / name).exists() and not _inside(lists / name, root):
            raise DataPrepError(
                f"{lists / name}: a symlink leading outside the input root; copy the list file into {lists}"
            )
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
            if not _inside(file, root):
                disc.findings.append(
                    Finding(rel, "outside_root", SKIPPED, f"leads outside the CSV's folder ({where})")
                )
                continue
            if not file.is_file():
                disc.findings.append(Finding(rel, "missing_file", SKIPPED, where))
                continue
            disc.entries.append(Entry(file, _rel(file, root), label, domain, split))
    return disc
