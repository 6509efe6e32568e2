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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_prep.contract import IMAGE_COLUMN

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
    """``exclude.txt``: a comment header, then every flagged path once (the order of the findings)."""
    paths = list(dict.fromkeys(r["path"] for rows in audit["findings"].values() for r in rows))
    counts = ", ".join(f"{kind} {n}" for kind, n in audit["counts"].items())
    header = [
        "# Exclusion list written by `python -m data_prep audit` (nothing was deleted).",
        f"# dataset: {audit['dataset']}; embeddings: {audit['embeddings']}",
        f"# findings: {counts}; details and thumbnails in {AUDIT_JSON} / {AUDIT_HTML}.",
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
        "vertical-align:top;font-size:13px}table{border-collapse:collapse}img{max-width:96px}</style>",
        f"<h1>Collection audit</h1><p>Dataset <code>{html.escape(audit['dataset'])}</code>: "
        f"{audit['images']} images; embeddings: {html.escape(audit['embeddings'])}. Nothing was deleted; "
        f"<code>{EXCLUDE_TXT}</code> lists every flagged image for <code>data_prep build --exclude</code>.</p>",
    ]
    for kind, (title, meaning) in KINDS.items():
        rows = audit["findings"][kind]
        params = html.escape(json.dumps(audit["parameters"][kind], ensure_ascii=False))
        parts.append(
            f"<h2>{title} ({len(rows)})</h2><p>{html.escape(meaning)}.</p><p><small>{params}</small></p>"
        )
        parts.append(_table(rows, uris, pairs=kind == "near_duplicates"))
    return "\n".join(parts) + "\n"


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
    }
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
    warning = audit["parameters"]["label_issues"].get("warning")
    if warning:
        lines.append(f"warning: {warning}")
    skipped = audit["parameters"]["label_issues"].get("classes_not_checked")
    if skipped:
        lines.append(
            f"label check left out {len(skipped)} class(es) with too few images: {', '.join(skipped)}"
        )
    lines.append(f"wrote {out / AUDIT_JSON}, {out / AUDIT_HTML}, {out / EXCLUDE_TXT} (nothing deleted)")
    return "\n".join(lines)
