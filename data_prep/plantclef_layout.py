"""The PlantCLEF layout: ``ROOT/list/train.txt``, ``groundtruth.txt``/``test.txt`` and ``species_list.txt``.

``train.txt`` holds ``relative/path class_id`` per line (the domain comes from a ``herbarium`` or
``photo``/``field`` folder in the path); ``groundtruth.txt`` (``relative/path class_id``) is the test
set, else the two-column lines of ``test.txt``; ``species_list.txt`` maps ``class_id; species name``
(without it the class id is the name). List paths that lead outside ROOT are reported.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.contract import DOMAIN_SYNONYMS, DOMAINS, FIELD
from data_prep.discovery import DataPrepError, Discovery, Entry, inside


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of the non-empty lines of ``path`` that are not ``#`` comments."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    return [
        (i, line.strip())
        for i, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.startswith("#")
    ]


def _read_species_list(path: Path, disc: Discovery) -> dict[str, str]:
    """``class_id -> species name`` from ``species_list.txt`` (two ids with one name are kept apart)."""
    names: dict[str, str] = {}
    for lineno, line in _read_lines(path):
        class_id, sep, name = line.partition(";")
        class_id, name = class_id.strip(), name.strip()
        if not sep or not class_id or not name:
            disc.skip(f"list/{path.name}:{lineno}", "malformed_line", "expected 'class_id; species name'")
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
    """The domain of the nearest ``herbarium``/``field``/``photo`` folder in ``rel``, else None."""
    for part in reversed(Path(rel).parts[:-1]):
        if part.lower() in DOMAIN_SYNONYMS:
            return DOMAIN_SYNONYMS[part.lower()]
    return None


def _parse_list(path: Path, split: str, names: dict[str, str] | None, disc: Discovery) -> None:
    """Add the ``relative/path class_id`` lines of ``path`` as entries of ``split``."""
    for lineno, line in _read_lines(path):
        fields = line.rsplit(None, 1)
        where = f"list/{path.name}:{lineno}"
        if len(fields) != 2:
            if split == "test":
                disc.skip(fields[0], "unlabelled_test", f"no class in {where}")
            else:
                disc.skip(where, "malformed_line", "expected 'relative/path class_id'")
            continue
        rel, class_id = fields[0].removeprefix("./"), fields[1]
        if names is not None and class_id not in names:
            disc.skip(rel, "unknown_class_id", f"class id {class_id!r} ({where})")
            continue
        domain = DOMAINS[FIELD] if split == "test" else _domain_from_path(rel)
        if domain is None:
            disc.skip(rel, "unknown_domain", f"no herbarium/photo folder in path ({where})")
            continue
        label = names[class_id] if names is not None else class_id
        disc.add_listed(Entry(disc.root / rel, Path(rel).as_posix(), label, domain, split), rel, where)


def discover_plantclef(root: Path) -> Discovery:
    """List the PlantCLEF layout under ``root`` (see the module docstring).

    Raises:
        DataPrepError: no ``list/train.txt``, or a list file that is a symlink leading outside ``root``.
    """
    disc = Discovery(root=root, layout="plantclef")
    lists = root / "list"
    if not (lists / "train.txt").is_file():
        raise DataPrepError(f"{root}: list/train.txt not found (PlantCLEF layout)")
    for name in ("train.txt", "groundtruth.txt", "test.txt", "species_list.txt"):
        if (lists / name).exists() and not inside(lists / name, root):
            raise DataPrepError(
                f"{lists / name}: a symlink leading outside the input root; copy the list file into {lists}"
            )
    species_list = lists / "species_list.txt"
    names = _read_species_list(species_list, disc) if species_list.is_file() else None
    _parse_list(lists / "train.txt", "train", names, disc)
    if (lists / "groundtruth.txt").is_file():
        _parse_list(lists / "groundtruth.txt", "test", names, disc)
        if (lists / "test.txt").is_file():
            known = {e.rel for e in disc.entries if e.split == "test"} | {f.path for f in disc.findings}
            for lineno, line in _read_lines(lists / "test.txt"):
                rel = line.split()[0].removeprefix("./")
                if rel not in known:
                    disc.skip(rel, "unlabelled_test", f"list/test.txt:{lineno}")
    elif (lists / "test.txt").is_file():
        _parse_list(lists / "test.txt", "test", names, disc)
    return disc
