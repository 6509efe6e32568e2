"""What the collection audit writes: ``audit.json``, ``audit.html`` (thumbnails inline) and ``exclude.txt``.

The audit itself is :mod:`data_prep.audit`. Nothing here deletes or moves an image: ``exclude.txt`` is
a list that ``python -m data_prep build SOURCE --exclude FILE`` reads (one path relative to the input
root per line; ``#`` starts a comment).
"""

from __future__ import annotations

import base64
import html
import io
import json
import posixpath
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_prep.contract import HERBARIUM, IMAGE_COLUMN

if TYPE_CHECKING:
    from data_prep.audit import Embedded

AUDIT_JSON, AUDIT_HTML, EXCLUDE_TXT = "audit.json", "audit.html", "exclude.txt"
THUMBNAIL_SIDE = 96
#: Finding kinds, their headings and what each means (the report's and the README's words).
KINDS: dict[str, tuple[str, str]] = {
    "label_issues": (
        "Likely label errors",
        "cleanlab find_label_issues on out-of-fold probabilities of a classifier on the embeddings; "
        "score = probability of the given label (lower: more suspicious)",
    ),
    "near_duplicates": (
        "Near-duplicates",
        "pairs of images whose embeddings have a cosine similarity at or above the threshold and whose "
        "small grey thumbnails correlate at or above theirs; the "
        "image listed is the one suggested for exclusion (the training copy of a cross-split pair)",
    ),
    "outliers": (
        "Outliers (possibly off-topic)",
        "images far from all others: mean cosine distance to the nearest images (cleanlab OutOfDistribution) beyond the far-out fence; score = that distance",
    ),
}


#: What ``exclude.txt`` never lists (audit.json's ``parameters.exclude``; see :func:`exclusion_plan`).
EXCLUDE_RULE = (
    "exclude.txt never lists a test-split image (removing hard test photos would inflate test scores), "
    "an image of a near-duplicate pair with two labels (a label conflict: a human must decide), or an "
    "image whose removal would leave its species without any training image or without its last "
    "herbarium sheet; these stay in the findings and in not_excluded, with the reason"
)


def exclusion_plan(emb: Embedded, findings: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[dict]]:
    """``(paths for exclude.txt, [{path, kind, reason}] of flagged images kept out of it)`` (:data:`EXCLUDE_RULE`).

    Rows are taken in findings order; each flagged path is decided once. A species' training images and
    herbarium sheets are counted down as its images are listed, so the last of either is never listed.
    """
    domains = emb.domain_ids().tolist()
    info = {p: (emb.classes[int(c)], s, d) for p, c, s, d in zip(emb.paths, emb.labels, emb.splits, domains)}
    train = Counter(label for label, split, _ in info.values() if split == "train")
    sheets = Counter(
        label for label, split, domain in info.values() if split == "train" and domain == HERBARIUM
    )
    decided: dict[str, str | None] = {}  # path -> None (listed) or why it is not
    kept: list[dict[str, Any]] = []

    def keep(path: str, kind: str, why: str) -> None:
        decided[path] = why
        label, split, _ = info[path]
        kept.append({"path": path, "kind": kind, "split": split, "label": label, "reason": why})

    for row in findings.get("near_duplicates", []):  # conflicts first: they override every other kind
        if row.get("label_conflict"):
            for path, other in ((row["path"], row["other_path"]), (row["other_path"], row["path"])):
                if path not in decided:
                    keep(
                        path, "near_duplicates", f"label conflict with {other}: a human must decide the label"
                    )
    for kind, rows in findings.items():
        for path in (row["path"] for row in rows if row["path"] not in decided):
            label, split, domain = info[path]
            sheet = split == "train" and domain == HERBARIUM
            if split == "test":
                keep(path, kind, "test split: removing hard test images would inflate test scores")
            elif split == "train" and train[label] <= 1:
                keep(path, kind, f"the last training image of {label}")
            elif sheet and sheets[label] <= 1:
                keep(path, kind, f"the last herbarium sheet of {label}")
            else:
                decided[path] = None
                train[label] -= split == "train"
                sheets[label] -= sheet
    return [path for path, why in decided.items() if why is None], kept


def normalise_exclude_paths(paths: list[str], root: str | Path) -> list[str]:
    """``paths`` as relative POSIX paths under ``root``: ``./field/a.jpg`` -> ``field/a.jpg``, and an
    absolute path under ``root`` made relative (one outside ``root`` is kept as written, so it is
    reported as unmatched)."""
    base = Path(root).resolve()
    normal = []
    for path in paths:
        if Path(path).is_absolute():
            try:
                path = Path(path).resolve().relative_to(base).as_posix()
            except ValueError:
                pass
        normal.append(posixpath.normpath(path.replace("\\", "/")) if not Path(path).is_absolute() else path)
    return normal


def read_exclude_list(file: str | Path) -> list[str]:
    """The relative paths listed in an exclusion file (blank lines and ``#`` comments skipped).

    Raises:
        DataPrepError: the file cannot be read.
    """
    from data_prep.discovery import DataPrepError

    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataPrepError(f"{file}: exclusion list cannot be read ({exc})") from None
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def exclude_text(audit: dict[str, Any]) -> str:
    """``exclude.txt``: a comment header, then the paths :func:`exclusion_plan` lists (findings order)."""
    paths = audit["exclude"]
    counts = ", ".join(f"{kind} {n}" for kind, n in audit["counts"].items())
    header = [
        "# Exclusion list written by `python -m data_prep audit` (nothing was deleted).",
        f"# dataset: {audit['dataset']}; embeddings: {audit['embeddings']}",
        f"# findings: {counts}; details and thumbnails in {AUDIT_JSON} / {AUDIT_HTML}.",
        "# Never listed: test-split images (removing hard test photos would inflate test scores), both",
        "# images of a near-duplicate pair with two labels (a label conflict: decide by hand), and a",
        f"# species' last training image or last herbarium sheet; {len(audit['not_excluded'])} such flagged "
        f"image(s) are in {AUDIT_JSON} 'not_excluded' with the reason.",
        "# One path per line, relative to the build's input root. Review it, delete the lines to keep,",
        "# then rebuild: python -m data_prep build SOURCE --exclude exclude.txt",
    ]
    return "\n".join(header + paths) + "\n"


def thumbnail(encoded: dict[str, Any], side: int = THUMBNAIL_SIDE) -> str:
    """A ``data:image/jpeg;base64,...`` URI of an encoded dataset image, longer side ``side`` px."""
    from data_prep.images import open_image

    image = open_image(encoded["bytes"] or encoded["path"], reduce_to=(side, side))
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _thumbnails(emb: Embedded, paths: set[str]) -> dict[str, str]:
    """``{path: data URI}`` for the given paths (decoded from the dataset, not from the input files)."""
    from datasets import Image as ImageFeature

    where: dict[str, tuple[str, int]] = {}
    position: dict[str, int] = {}
    for path, split in zip(emb.paths, emb.splits):
        where[path] = (split, position.get(split, 0))
        position[split] = position.get(split, 0) + 1
    raw = {name: ds.cast_column(IMAGE_COLUMN, ImageFeature(decode=False)) for name, ds in emb.images.items()}
    uris = {}
    for path in sorted(paths & where.keys()):
        split, index = where[path]
        try:
            uris[path] = thumbnail(raw[split][index][IMAGE_COLUMN])
        except (OSError, ValueError):  # a thumbnail is a courtesy: its absence is shown, not fatal
            uris[path] = ""
    return uris


def _cell(uri: str, path: str) -> str:
    img = f'<img src="{uri}" alt="{html.escape(path)}">' if uri else "(no thumbnail)"
    return f"<td>{img}<br><code>{html.escape(path)}</code></td>"


def _table(rows: list[dict[str, Any]], uris: dict[str, str], pairs: bool) -> str:
    head = "<tr><th>image</th>" + ("<th>similar to</th>" if pairs else "")
    head += "<th>split</th><th>label</th><th>score</th><th>reason</th></tr>"
    body = []
    for r in rows:
        other = _cell(uris.get(r["other_path"], ""), r["other_path"]) if pairs else ""
        body.append(
            f"<tr>{_cell(uris.get(r['path'], ''), r['path'])}{other}<td>{html.escape(r['split'])}</td>"
            f"<td>{html.escape(r['label'])}</td><td>{r['score']:.3f}</td><td>{html.escape(r['reason'])}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>" if body else "<p>None found.</p>"


def audit_html(audit: dict[str, Any], uris: dict[str, str]) -> str:
    """The readable report: counts, parameters, and one table per finding kind with thumbnails."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Collection audit</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px;"
        "vertical-align:top;font-size:13px}table{border-collapse:collapse}img{max-width:96px}"
        "ul.params{font-size:13px;color:#444}</style>",
        f"<h1>Collection audit</h1><p>Dataset <code>{html.escape(audit['dataset'])}</code>: "
        f"{audit['images']} images; embeddings: {html.escape(audit['embeddings'])}. Nothing was deleted; "
        f"<code>{EXCLUDE_TXT}</code> lists every flagged image for <code>data_prep build --exclude</code>.</p>",
    ]
    for kind, (title, meaning) in KINDS.items():
        rows = audit["findings"][kind]
        params = _parameters_html(audit["parameters"][kind])
        parts.append(f"<h2>{title} ({len(rows)})</h2><p>{html.escape(meaning)}.</p>{params}")
        parts.append(_table(rows, uris, pairs=kind == "near_duplicates"))
    parts.append(f"<h2>Flagged but not in {EXCLUDE_TXT} ({len(audit['not_excluded'])})</h2>")
    parts.append(f"<p>{html.escape(audit['parameters']['exclude'])}.</p>")
    kept = [
        f"<tr>{_cell(uris.get(r['path'], ''), r['path'])}<td>{html.escape(r['kind'])}</td>"
        f"<td>{html.escape(r['split'])}</td><td>{html.escape(r['label'])}</td><td>{html.escape(r['reason'])}</td></tr>"
        for r in audit["not_excluded"]
    ]
    head = "<tr><th>image</th><th>finding</th><th>split</th><th>label</th><th>why not listed</th></tr>"
    parts.append(f"<table>{head}{''.join(kept)}</table>" if kept else "<p>None.</p>")
    return "\n".join(parts) + "\n"


def _parameters_html(value: Any) -> str:
    """A parameters dict as a nested, readable HTML list (``key: value``; lists joined by commas)."""
    if isinstance(value, dict):
        items = "".join(
            f"<li><b>{html.escape(str(k))}</b>: {_parameters_html(v)}</li>" for k, v in value.items()
        )
        return f"<ul class='params'>{items}</ul>"
    if isinstance(value, list):
        return html.escape(", ".join(map(str, value))) if value else "none"
    return html.escape(str(value))


def write_audit(audit: dict[str, Any], emb: Embedded, out: Path) -> Path:
    """Write ``audit.json``, ``audit.html`` and ``exclude.txt`` into ``out`` (created); returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / AUDIT_JSON).write_text(json.dumps(audit, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    wanted = {
        r[key]
        for rows in audit["findings"].values()
        for r in rows
        for key in ("path", "other_path")
        if key in r
    } | {r["path"] for r in audit["not_excluded"]}
    (out / AUDIT_HTML).write_text(audit_html(audit, _thumbnails(emb, wanted)), encoding="utf-8")
    (out / EXCLUDE_TXT).write_text(exclude_text(audit), encoding="utf-8")
    return out


def format_audit_summary(audit: dict[str, Any], out: Path, shown: int = 5) -> str:
    """A short console summary: counts per kind, the first few rows of each, where the files are."""
    lines = [f"audited {audit['images']} images ({audit['embeddings']})"]
    for kind, (title, _) in KINDS.items():
        rows = audit["findings"][kind]
        lines.append(f"{title}: {len(rows)}")
        lines += [f"  {r['path']} [{r['split']}, {r['label']}]: {r['reason']}" for r in rows[:shown]]
    notes = audit["parameters"]["label_issues"]
    lines += [f"warning: {warning}" for warning in notes["warnings"]]
    for domain, skipped in notes["classes_not_checked"].items():
        if skipped:
            lines.append(
                f"label check left out {len(skipped)} class(es) with too few {domain} images: {', '.join(skipped)}"
            )
    if audit["not_excluded"]:
        lines.append(
            f"{len(audit['not_excluded'])} flagged image(s) kept out of {EXCLUDE_TXT} (see {AUDIT_JSON} not_excluded)"
        )
    lines.append(f"wrote {out / AUDIT_JSON}, {out / AUDIT_HTML}, {out / EXCLUDE_TXT} (nothing deleted)")
    return "\n".join(lines)
