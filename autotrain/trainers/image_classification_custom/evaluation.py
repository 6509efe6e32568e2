"""The evaluation botanists read: per species, confusions, embedding separation, domain gap, genus/family.

Computed by the outputs stage on one evaluation split (``test``, else ``validation``) and written to
``metrics.json`` and the card:

- ``per_species``: for each species with images in the split, the number of images, top-1, top-5 and
  MRR (the definitions of :mod:`metrics`), and whether it is *herbarium-only* (no field photo in the
  training split). On the split's field photos when it has any, else on all its images.
- ``confused_pairs``: the species pairs most often mistaken for each other by the top-1 answer on the
  same images: ``a_as_b`` photos of ``a`` answered ``b``, ``b_as_a`` the reverse, ``count`` their sum.
- ``silhouette``: ``sklearn.metrics.silhouette_score`` of the embeddings grouped by species, cosine
  distance (1: tight, well separated species; 0: overlapping; < 0: points closer to another species),
  on the map points (the evaluation splits and a sample of training herbarium sheets), and on their
  field photos alone.
- ``domain_gap``: per species, the cosine distance between its mean herbarium-sheet embedding and its
  mean field-photo embedding (0: the model maps both domains to the same place; up to 2), over the
  species that have both in the map points; with its mean and median.
- ``taxonomy_top1``: genus- and family-level top-1 when a taxonomy is given: the species probabilities
  (softmax of the logits at the inference temperature) summed per genus (family), as the app does; an
  image counts when its true species is in the taxonomy (``n`` of ``of`` images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from autotrain.trainers.image_classification_custom.score_rows import RowSummary, ScoreRows, summarize
from data_prep.contract import FIELD, HERBARIUM, TAXONOMY_UNLISTED

TOP_CONFUSED_PAIRS = 10
UNLISTED = TAXONOMY_UNLISTED


def per_species(
    scores: np.ndarray | ScoreRows,
    labels: np.ndarray,
    class_names: Sequence[str],
    class_has_field: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One row per species with images: ``species, herbarium_only, images, top1, top5, mrr``.

    Args:
        scores: ``(N, C)`` class scores (logits or similarities; only their order matters), an array or
            a :class:`ScoreRows` (read in row chunks).
        labels: ``(N,)`` true class ids.
        class_names: ``C`` species names (label order).
        class_has_field: ``(C,)`` bool, True where the training split has a field photo of the species;
            None: ``herbarium_only`` is None.

    Returns:
        Rows in label order; species without images in ``labels`` are left out.
    """
    if len(labels) == 0:
        return []
    return species_rows(summarize(scores, labels), class_names, class_has_field)


def species_rows(
    summary: RowSummary, class_names: Sequence[str], class_has_field: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """:func:`per_species` of a :class:`RowSummary` (its true-class ranks; top-5 is ``rank <= 5``, a
    rank being at most C)."""
    labels, ranks = summary.labels, summary.rank
    rows = []
    for c in np.unique(labels):
        r = ranks[labels == c]
        rows.append(
            {
                "species": class_names[c],
                "herbarium_only": None if class_has_field is None else not bool(class_has_field[c]),
                "images": int(len(r)),
                "top1": float((r <= 1).mean()),
                "top5": float((r <= 5).mean()),
                "mrr": float((1.0 / r).mean()),
            }
        )
    return rows


def confused_pairs(
    predictions: np.ndarray, labels: np.ndarray, class_names: Sequence[str], top: int = TOP_CONFUSED_PAIRS
) -> list[dict[str, Any]]:
    """The ``top`` species pairs most confused by the top-1 answer, most confused first.

    Args:
        predictions: ``(N,)`` top-1 class ids.
        labels: ``(N,)`` true class ids.
        class_names: ``C`` species names.
        top: how many pairs to keep.

    Returns:
        ``[{"species_a", "species_b", "a_as_b", "b_as_a", "count"}]`` with ``a`` before ``b`` in label
        order, ``count = a_as_b + b_as_a > 0``; ties keep label order. Memory ``O(N)``: the pairs are
        counted from the wrong answers, no ``(C, C)`` confusion matrix.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    wrong = labels != predictions  # counted per pair: O(N) memory, no (C, C) confusion matrix
    true, answer = labels[wrong], predictions[wrong]
    a, b = np.minimum(true, answer), np.maximum(true, answer)
    pairs, where = np.unique(a * len(class_names) + b, return_inverse=True)
    both = np.bincount(where, minlength=len(pairs))
    a_as_b = np.bincount(where, weights=true < answer, minlength=len(pairs)).astype(np.int64)
    a, b = pairs // len(class_names), pairs % len(class_names)
    order = np.lexsort((b, a, -both))[:top]
    return [
        {
            "species_a": class_names[a[i]],
            "species_b": class_names[b[i]],
            "a_as_b": int(a_as_b[i]),
            "b_as_a": int(both[i] - a_as_b[i]),
            "count": int(both[i]),
        }
        for i in order
    ]


def species_silhouette(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of ``(N, D)`` embeddings grouped by ``(N,)`` species, cosine distance.

    Returns:
        A value in [-1, 1]; NaN when it is undefined (fewer than 2 species, or every point its own
        species).
    """
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    n_species = len(np.unique(labels))
    if n_species < 2 or n_species >= len(labels):
        return float("nan")
    return float(silhouette_score(np.asarray(embeddings, dtype=np.float64), labels, metric="cosine"))


def domain_gap(
    embeddings: np.ndarray, labels: np.ndarray, domains: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Per species, the cosine distance between its mean herbarium and its mean field embedding.

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)`` class ids.
        domains: ``(N,)`` ``HERBARIUM`` or ``FIELD``.
        class_names: species names.

    Returns:
        ``{"per_species": [{"species", "distance", "herbarium", "field"}], "mean", "median", "n_species"}``:
        species with images of both domains only (``herbarium``/``field``: their image counts); mean and
        median are NaN without any.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels, domains = np.asarray(labels, dtype=np.int64), np.asarray(domains, dtype=np.int64)
    rows = []
    for c in np.unique(labels):
        herbarium = (labels == c) & (domains == HERBARIUM)
        field = (labels == c) & (domains == FIELD)
        if not herbarium.any() or not field.any():
            continue
        h, f = embeddings[herbarium].mean(axis=0), embeddings[field].mean(axis=0)
        cosine = float(h @ f / max(np.linalg.norm(h) * np.linalg.norm(f), 1e-12))
        rows.append(
            {
                "species": class_names[c],
                "distance": 1.0 - cosine,
                "herbarium": int(herbarium.sum()),
                "field": int(field.sum()),
            }
        )
    distances = np.array([r["distance"] for r in rows])
    return {
        "per_species": rows,
        "mean": float(distances.mean()) if len(rows) else float("nan"),
        "median": float(np.median(distances)) if len(rows) else float("nan"),
        "n_species": len(rows),
    }


def taxonomy_groups(
    class_names: Sequence[str], rank_of: Mapping[str, str]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each species' group at a coarser rank: ``(group index (C,), listed (C,) bool, number of groups)``.

    Groups are the sorted distinct names ``rank_of`` gives the species (those it lacks under
    :data:`UNLISTED`, not listed and not counted).
    """
    group_of_class = [rank_of.get(name, UNLISTED) for name in class_names]
    groups = sorted(set(group_of_class))
    column = {g: i for i, g in enumerate(groups)}
    index = np.array([column[g] for g in group_of_class], dtype=np.int64)
    listed = np.array([g != UNLISTED for g in group_of_class], dtype=bool)
    return index, listed, len(set(group_of_class) - {UNLISTED})


def group_top1(
    predicted_group: np.ndarray,
    labels: np.ndarray,
    group_of_class: np.ndarray,
    listed: np.ndarray,
    groups: int,
) -> dict[str, Any]:
    """``{"top1", "n", "groups"}`` of :func:`rank_top1` from each image's most probable group ``(N,)``."""
    labels = np.asarray(labels, dtype=np.int64)
    counted = listed[labels]
    n = int(counted.sum())
    if n == 0:
        return {"top1": float("nan"), "n": 0, "groups": groups}
    top1 = float((predicted_group[counted] == group_of_class[labels][counted]).mean())
    return {"top1": top1, "n": n, "groups": groups}


def rank_top1(
    logits: np.ndarray | ScoreRows, labels: np.ndarray, class_names: Sequence[str], rank_of: Mapping[str, str]
) -> dict[str, Any]:
    """Top-1 at a coarser rank: the species probabilities summed per group (genus or family).

    Args:
        logits: ``(N, C)`` logits (softmax gives the species probabilities), an array or a
            :class:`ScoreRows` (read in row chunks).
        labels: ``(N,)`` true class ids.
        class_names: ``C`` species names.
        rank_of: species name -> group name; species missing from it are summed under
            :data:`UNLISTED`, which never counts as right.

    Returns:
        ``{"top1", "n", "groups"}``: the share of the images whose true species has a group and whose most
        probable group is that one (NaN when ``n`` is 0), ``n`` those images, ``groups`` the distinct groups
        of the model's species.
    """
    index, listed, groups = taxonomy_groups(class_names, rank_of)
    summary = summarize(logits, labels, {"rank": index})
    return group_top1(summary.groups["rank"], labels, index, listed, groups)


def species_missing(class_names: Sequence[str], genus: Mapping[str, str]) -> list[str]:
    """The model's species (in label order) that have no genus in the taxonomy mapping ``genus``."""
    return [name for name in class_names if name not in genus]


def evaluated_images(domains: np.ndarray) -> tuple[np.ndarray, str]:
    """The images the per-species numbers use: ``(mask (N,), "field")`` when there are field photos, else
    ``(all True, "all")``."""
    domains = np.asarray(domains)
    field = domains == FIELD
    return (field, "field") if field.any() else (np.ones(len(domains), dtype=bool), "all")


def species_evaluation(
    split: str,
    logits: np.ndarray | ScoreRows,
    labels: np.ndarray,
    domains: np.ndarray,
    class_names: Sequence[str],
    class_has_field: np.ndarray | None,
    taxonomy: tuple[Mapping[str, str], Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """``per_species``, ``confused_pairs`` and (with a taxonomy) ``taxonomy_top1`` of one split.

    The logits are read once in row chunks (:func:`score_rows.summarize`), never held as ``(N, C)``.

    Args:
        split: the split's name (written beside the numbers).
        logits: ``(N, C)`` at the inference temperature, an array or a :class:`ScoreRows`.
        labels: ``(N,)`` class ids.
        domains: ``(N,)`` domain ids.
        class_names: species names.
        class_has_field: ``(C,)`` bool (see :func:`per_species`).
        taxonomy: ``(genus, family)`` mappings from ``data_prep.contract.read_taxonomy_csv``, or None.

    Returns:
        The three ``metrics.json`` entries; each says its ``split`` and ``images`` (``field`` or ``all``);
        ``taxonomy_top1`` also says ``of`` (the images evaluated; each rank's ``n`` counts those whose
        species is in the taxonomy) and ``species_missing`` (the model's species without a genus).
    """
    mask, subset = evaluated_images(domains)
    ranks = {}
    if taxonomy is not None:
        genus, family = taxonomy  # genus always; family when the taxonomy has one
        named = {"genus": genus, **({"family": family} if family else {})}
        ranks = {name: taxonomy_groups(class_names, m) for name, m in named.items()}
    summary = summarize(logits, labels, {name: r[0] for name, r in ranks.items()}).take(mask)
    where = {"split": split, "images": subset}
    out: dict[str, Any] = {
        "per_species": {**where, "rows": species_rows(summary, class_names, class_has_field)},
        "confused_pairs": {**where, "pairs": confused_pairs(summary.prediction, summary.labels, class_names)},
    }
    if taxonomy is not None:
        out["taxonomy_top1"] = {
            **where,
            "of": int(len(summary)),
            "species_missing": len(species_missing(class_names, taxonomy[0])),
        }
        for name, (index, listed, groups) in ranks.items():
            out["taxonomy_top1"][name] = group_top1(
                summary.groups[name], summary.labels, index, listed, groups
            )
    return out


def embedding_structure(
    embeddings: np.ndarray, labels: np.ndarray, domains: np.ndarray, class_names: Sequence[str], points: str
) -> dict[str, Any]:
    """``silhouette`` (all points and field photos alone) and ``domain_gap`` of the map points.

    Args:
        embeddings: ``(N, D)`` the map points' embeddings.
        labels: ``(N,)`` class ids.
        domains: ``(N,)`` domain ids.
        class_names: species names.
        points: what the points are (written beside the numbers).
    """
    field = np.asarray(domains) == FIELD
    return {
        "silhouette": {
            "metric": "cosine",
            "points": points,
            "all": species_silhouette(embeddings, labels),
            "field": species_silhouette(np.asarray(embeddings)[field], np.asarray(labels)[field]),
            "n": int(len(labels)),
        },
        "domain_gap": {"points": points, **domain_gap(embeddings, labels, domains, class_names)},
    }
