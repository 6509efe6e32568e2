"""The CSV layout: a CSV file (or a folder holding exactly one) with columns ``path,label,domain[,split]``.

Paths are relative to the CSV's folder; domain is ``herbarium``, ``field`` or ``photo``; split is
``train`` (default) or ``test``. Paths that lead outside the CSV's folder are reported.
"""

from __future__ import annotations

import csv
from pathlib import Path

from data_prep.contract import canonical_domain
from data_prep.discovery import DataPrepError, Discovery, Entry, rel_path


def _find_csv(source: Path) -> Path:
    """``source``, or the one CSV file in the folder ``source``."""
    if not source.is_dir():
        return source
    found = sorted(source.glob("*.csv"))
    if len(found) != 1:
        raise DataPrepError(
            f"{source}: expected exactly one .csv file, found {len(found)}; pass the CSV path"
        )
    return found[0]


def discover_csv(source: Path) -> Discovery:
    """List the rows of the CSV ``source`` (or of the one CSV in the folder ``source``).

    Raises:
        DataPrepError: a folder without exactly one CSV, or a CSV without ``path,label,domain`` columns.
    """
    source = _find_csv(source)
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
                disc.skip(where, "malformed_line", f"path={rel!r} label={label!r} split={split!r}")
                continue
            domain = canonical_domain(row.get("domain", ""))
            if domain is None:
                disc.skip(rel, "unknown_domain", f"domain {row.get('domain')!r} ({where})")
                continue
            file = Path(rel) if Path(rel).is_absolute() else root / rel
            entry = Entry(file, rel_path(file, root), label, domain, split)
            disc.add_listed(entry, rel, where, root_name="the CSV's folder")
    return disc
