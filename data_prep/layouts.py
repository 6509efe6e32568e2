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

Discovery only lists and parses; it opens no image. Problems become :class:`Finding` objects. Each
layout has its module (:mod:`data_prep.folder_layout`, :mod:`data_prep.plantclef_layout`,
:mod:`data_prep.csv_layout`); what they produce is in :mod:`data_prep.discovery`.

Nothing outside the input root is read: a symlink is followed only when it resolves inside the root
(folder links once each, with loop protection), and list-file or CSV paths that lead outside it are
reported as ``outside_root``. In the folders layout every file ends up as an :class:`Entry` or in a
finding (files directly in ROOT, unusable species-folder names, FIFOs, broken links, second paths to
one file), except hidden and OS metadata files, which are counted.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.contract import DOMAIN_SYNONYMS, DOMAINS
from data_prep.csv_layout import discover_csv
from data_prep.discovery import DataPrepError, Discovery, Entry
from data_prep.folder_layout import discover_folders
from data_prep.plantclef_layout import discover_plantclef

LAYOUTS = ("auto", "folders", "plantclef", "csv")


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
    if set(_child_dirs(src)) & DOMAIN_SYNONYMS.keys():
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
        return discover_folders(src)
    if chosen == "plantclef":
        return discover_plantclef(src)
    return discover_csv(src)


__all__ = ["DOMAINS", "LAYOUTS", "DataPrepError", "Discovery", "Entry", "detect_layout", "discover"]
