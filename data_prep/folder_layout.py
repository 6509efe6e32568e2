"""The folders layout: ``ROOT/{herbarium,field,photo,test}/<species>/...``, walked without leaving ROOT.

Symlinks are followed only when they resolve inside the root (folder links once each, with loop
protection). Every file ends up as an :class:`~data_prep.discovery.Entry` or in a finding (files
directly in ROOT, unusable species-folder names, FIFOs, broken links, second paths to one file),
except hidden and OS metadata files, which are counted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from data_prep.contract import DOMAIN_SYNONYMS, DOMAINS, FIELD
from data_prep.discovery import DataPrepError, Discovery, Entry, is_system_file, rel_path
from data_prep.findings import IGNORED, SKIPPED, Finding

#: The fixed field test set's folder: ``ROOT/test/<species>/*`` (field photos).
TEST_FOLDER = "test"
_READ_ORDER = (*DOMAIN_SYNONYMS, TEST_FOLDER)  # entry order: herbarium, field, photo, photos, test
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
        self.disc.findings.append(Finding(rel_path(path, self.root), reason, action, detail))

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
            self.linked_dirs[real] = rel_path(path, self.root)
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
            elif is_system_file(item.name):
                self.disc.ignored_files += 1
            elif not _is_file(item):
                self.note(path, "not_a_regular_file", SKIPPED, "FIFO, socket or device: not opened")
            else:
                # through a link, open the resolved path that was checked, not the link again
                entry = Entry(Path(real) if linked else path, rel_path(path, self.root), label, domain, split)
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
                if is_system_file(item.name):
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


def discover_folders(root: Path) -> Discovery:
    """List the folders layout under ``root`` (see the module docstring).

    Raises:
        DataPrepError: no herbarium/ or field/ (photo/) folder inside the root.
    """
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
        if kind in _READ_ORDER and _is_dir(item):
            if is_link and walker.follow(path) is None:
                refused.append(item.name)
                continue
            if kind == TEST_FOLDER:
                sources.append((path, DOMAINS[FIELD], "test", is_link))
            else:
                sources.append((path, DOMAIN_SYNONYMS[kind], "train", is_link))
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
