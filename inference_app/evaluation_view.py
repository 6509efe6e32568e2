"""The app's "Evaluation" tab: how the model did on the field photos it was evaluated on, species by species.

Read from the model folder's ``metrics.json`` (written by the trainer): the overall field figures, the
per-species table (images, top-1, top-5, MRR, herbarium-only species marked, herbarium-to-field
distance), the most-confused species pairs, the silhouette score of the embeddings and the domain gap.
Nothing is computed here; a folder without ``metrics.json`` (a Hub repository: the app downloads only
the model files) gets a sentence saying so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NO_METRICS_TEXT = (
    "No `metrics.json` beside this model (the trainer writes it into the model folder; the app does not "
    "download it from the Hub), so there is no evaluation to show."
)
TABLE_HEADERS = ["species", "images", "top-1", "top-5", "MRR", "herbarium only", "herbarium-field distance"]


def load_metrics(model_dir: str | Path | None) -> dict[str, Any] | None:
    """``model_dir/metrics.json`` as a dict, or None when absent or unreadable (logged)."""
    if model_dir is None or not (Path(model_dir) / "metrics.json").is_file():
        return None
    try:
        return json.loads((Path(model_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("unreadable %s: %s", Path(model_dir) / "metrics.json", error)
        return None


def species_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """The per-species table as rows of :data:`TABLE_HEADERS` (worst MRR first), empty when not recorded."""
    per_species = (metrics.get("per_species") or {}).get("rows") or []
    gap = {g["species"]: g["distance"] for g in (metrics.get("domain_gap") or {}).get("per_species", [])}
    rows = [
        [
            r["species"],
            int(r["images"]),
            round(float(r["top1"]), 3),
            round(float(r["top5"]), 3),
            round(float(r["mrr"]), 3),
            "yes" if r.get("herbarium_only") else "",
            round(float(gap[r["species"]]), 3) if r["species"] in gap else None,
        ]
        for r in per_species
    ]
    return sorted(rows, key=lambda row: (row[4], row[0]))


def summary_markdown(metrics: Mapping[str, Any]) -> str:
    """Overall field figures, silhouette, domain gap and the most-confused pairs, as markdown."""
    per_species = metrics.get("per_species") or {}
    split = per_species.get("split") or ("test" if "test" in metrics else "validation")
    field = (metrics.get(split) or {}).get("field") or {}
    lines = []
    if field:
        lines.append(
            f"**{split.capitalize()} field photos** ({field.get('n', '?')}): top-1 {field['top1']:.3f}, "
            f"top-5 {field['top5']:.3f}, MRR {field['mrr']:.3f}."
        )
    silhouette = metrics.get("silhouette") or {}
    if silhouette.get("all") is not None:
        lines.append(
            f"Silhouette of the embeddings by species (cosine, {silhouette.get('n', '?')} images): "
            f"{silhouette['all']:.3f} (1 = species form tight separate clusters, 0 or below = they overlap)."
        )
    gap = metrics.get("domain_gap") or {}
    if gap.get("median") is not None:
        lines.append(
            f"Herbarium-to-field distance (cosine distance between a species' mean sheet and mean photo "
            f"embedding): median {gap['median']:.3f} over {gap.get('n_species', '?')} species."
        )
    pairs = (metrics.get("confused_pairs") or {}).get("pairs") or []
    if pairs:
        shown = "; ".join(f"*{p['species_a']}* / *{p['species_b']}* ({p['count']})" for p in pairs[:5])
        lines.append(f"Most confused species pairs (photos): {shown}.")
    return "\n\n".join(lines) or "This `metrics.json` has no field evaluation."


def evaluation_tab(model_dir: str | Path | None) -> None:
    """Build the tab's content inside the current ``gr.Tab`` (call within ``gr.Blocks``)."""
    import gradio as gr

    metrics = load_metrics(model_dir)
    if metrics is None:
        gr.Markdown(NO_METRICS_TEXT, elem_id="no-evaluation")
        return
    gr.Markdown(summary_markdown(metrics), elem_id="evaluation-summary")
    rows = species_rows(metrics)
    if rows:
        gr.Dataframe(
            value=rows,
            headers=TABLE_HEADERS,
            label="Per species (field photos; worst MRR first)",
            interactive=False,
            elem_id="per-species",
        )
