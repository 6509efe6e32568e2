"""What input discovery produces: :class:`Entry` (one candidate image) and :class:`Discovery` (all of them
and the findings), shared by the three layouts (:mod:`data_prep.layouts`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.findings import IGNORED, SKIPPED, Finding

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

    def skip(self, path: str, reason: str, detail: str = "") -> None:
        """Report ``path`` (relative to the root, or ``file:line``) as skipped for ``reason``."""
        self.findings.append(Finding(path, reason, SKIPPED, detail))

    def exclude(self, paths: Iterable[str], listed_in: str) -> int:
        """Leave out the entries whose relative path is in ``paths``; returns how many were left out.

        Each is reported as skipped (``excluded``); a listed path that names no entry is noted
        (``exclude_unmatched``), so a stale or mistyped list is visible in the report.
        """
        wanted = set(paths)
        found = {e.rel for e in self.entries} & wanted
        for entry in self.entries:
            if entry.rel in found:
                self.skip(entry.rel, "excluded", f"listed in {listed_in}")
        for path in sorted(wanted - found):
            self.findings.append(Finding(path, "exclude_unmatched", IGNORED, f"listed in {listed_in}"))
        self.entries = [e for e in self.entries if e.rel not in found]
        return len(found)

    def add_listed(self, entry: Entry, named: str, where: str, root_name: str = "the input root") -> None:
        """Add a file named in a list file or CSV row, or skip it when it leads outside the root or is missing.

        Args:
            entry: the candidate (``entry.file`` is the path the line names, joined to the root).
            named: the path as the line wrote it (for the finding).
            where: ``file:line`` of the line.
            root_name: how the root is called in the finding.
        """
        if not inside(entry.file, self.root):
            self.skip(named, "outside_root", f"leads outside {root_name} ({where})")
        elif not entry.file.is_file():
            self.skip(named, "missing_file", where)
        else:
            self.entries.append(entry)


def is_system_file(name: str) -> bool:
    """Hidden and OS metadata files (``.DS_Store``, ``Thumbs.db``, ``desktop.ini``): counted, not reported."""
    return name.startswith(".") or name.lower() in _SYSTEM_FILES


def inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` resolves (symlinks followed) to ``root`` or somewhere below it."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def rel_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (``path`` itself when it is not below ``root``)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
