"""The model card's evaluation-by-species section and the most-confused-pairs figure (``confusions.png``).

Reads the ``metrics.json`` entries of :mod:`evaluation` (``per_species``, ``confused_pairs``,
``silhouette``, ``domain_gap``, ``taxonomy_top1``); numbers are formatted with the card's one
``format_metric``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CONFUSIONS_FILE = "confusions.png"


def _format(value: Any) -> str:
    from autotrain.trainers.image_classification_custom.model_card import format_metric

    return format_metric(value)


def per_species_table(per_species: Mapping[str, Any], domain_gap: Mapping[str, Any] | None) -> str:
    """A Markdown table: one row per species (images, top-1, top-5, MRR, herbarium-to-field distance),
    herbarium-only species marked."""
    distance = {r["species"]: r["distance"] for r in (domain_gap or {}).get("per_species", [])}
    rows = [
        "| Species | Herbarium only | Images | Top-1 | Top-5 | MRR | Herbarium-to-field distance |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in per_species.get("rows", []):
        marked = {True: "yes", False: "", None: "?"}[row.get("herbarium_only")]
        cells = [_format(row[k]) for k in ("images", "top1", "top5", "mrr")]
        rows.append(
            f"| {row['species']} | {marked} | "
            + " | ".join(cells)
            + f" | {_format(distance.get(row['species']))} |"
        )
    return "\n".join(rows)


def _summary_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Bullet lines: silhouette, domain gap summary and genus/family top-1."""
    lines = []
    silhouette = metrics.get("silhouette")
    if silhouette:
        lines.append(
            f"- Silhouette of the embeddings by species (cosine): {_format(silhouette.get('all'))} over "
            f"{silhouette.get('n')} images ({silhouette.get('points')}); field photos alone: "
            f"{_format(silhouette.get('field'))}. 1 = tight, well separated species; 0 = overlapping."
        )
    gap = metrics.get("domain_gap")
    if gap:
        lines.append(
            f"- Herbarium-to-field distance (cosine distance between a species' mean herbarium-sheet and mean "
            f"field-photo embedding; 0 = the model puts both domains in the same place): mean "
            f"{_format(gap.get('mean'))}, median {_format(gap.get('median'))} over {gap.get('n_species')} species."
        )
    taxonomy = metrics.get("taxonomy_top1")
    if taxonomy:
        of = f" of {taxonomy['of']}" if "of" in taxonomy else ""
        gaps = taxonomy.get("species_missing")
        missing = (
            f"; **{gaps} species are not in the taxonomy file** and their images are left out" if gaps else ""
        )
        for rank in ("genus", "family"):
            if rank in taxonomy:
                t = taxonomy[rank]
                lines.append(
                    f"- {rank.capitalize()}-level top-1 (species probabilities summed per {rank}): "
                    f"{_format(t['top1'])} on {t['n']}{of} {taxonomy['images']} images of the {taxonomy['split']} "
                    f"split ({t['groups']} {'genera' if rank == 'genus' else 'families'}){missing}."
                )
    return lines


def evaluation_lines(metrics: Mapping[str, Any], confusions_file: str | None = None) -> list[str]:
    """Card lines: the per-species table, the summary bullets and the most-confused pairs (figure and list).

    Args:
        metrics: the content of ``metrics.json``.
        confusions_file: relative path of ``confusions.png``, when written.

    Returns:
        No lines when ``metrics`` has no ``per_species`` entry.
    """
    per_species = metrics.get("per_species")
    if not per_species:
        return []
    lines = [
        f"## By species: {per_species['split']} split ({per_species['images']} images)",
        "",
        "Herbarium only: the species had no field photo in the training split. The distance column is the "
        "herbarium-to-field distance (see below; n/a when the species lacks one of the domains among the "
        "mapped images).",
        "",
        per_species_table(per_species, metrics.get("domain_gap")),
        "",
        *_summary_lines(metrics),
        "",
    ]
    pairs = (metrics.get("confused_pairs") or {}).get("pairs") or []
    if pairs:
        lines += ["### Most-confused species pairs", ""]
        if confusions_file:
            lines += [f"![Most-confused species pairs]({confusions_file})", ""]
        lines += [
            f"- {p['species_a']} <-> {p['species_b']}: {p['count']} ({p['a_as_b']} {p['species_a']} answered "
            f"{p['species_b']}, {p['b_as_a']} the reverse)"
            for p in pairs
        ]
        lines.append("")
    return lines


def plot_confusions(pairs: Sequence[Mapping[str, Any]], path: str, title: str) -> None:
    """Horizontal stacked bars, one per species pair (most confused on top): photos of ``a`` answered
    ``b`` and the reverse.

    Args:
        pairs: the ``confused_pairs`` list (at least one pair).
        path: PNG path.
        title: figure title.

    Raises:
        ValueError: no pairs.
    """
    if not pairs:
        raise ValueError("no confused pairs to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{p['species_a']} / {p['species_b']}" for p in pairs][::-1]
    a_as_b = [p["a_as_b"] for p in pairs][::-1]
    b_as_a = [p["b_as_a"] for p in pairs][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.4 * len(pairs)), dpi=110)
    ax.barh(names, a_as_b, color="#1f77b4", label="first answered as second")
    ax.barh(names, b_as_a, left=a_as_b, color="#ff7f0e", label="second answered as first")
    ax.set_xlabel("photos")
    ax.set_title(title, fontsize=10, pad=20)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
