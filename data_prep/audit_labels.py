"""The collection audit's label check: cleanlab ``find_label_issues`` on out-of-fold probabilities of a
logistic regression on the embeddings, within each domain (:data:`LABEL_RULE`).

The embedding and the other finding kinds are :mod:`data_prep.audit`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from data_prep.contract import DOMAINS

if TYPE_CHECKING:
    from data_prep.audit import Embedded

#: A class needs at least this many images to take part in the label check (one per fold, 2 folds).
MIN_CLASS_IMAGES = 3
MAX_FOLDS = 5
#: Below this out-of-fold accuracy the label check warns that its flags are unreliable.
WEAK_ACCURACY = 0.6
#: How the label check compares images (audit.json's ``parameters.label_issues.rule``).
LABEL_RULE = (
    "within each domain: herbarium sheets are checked against herbarium sheets and field photos against "
    f"field photos (a species' few sheets look unlike its field photos, which is no label error); a class "
    f"with fewer than {MIN_CLASS_IMAGES} images in a domain is not checked in that domain"
)


def out_of_fold_probabilities(
    vectors: np.ndarray, labels: np.ndarray, folds: int, seed: int = 0
) -> np.ndarray:
    """``(N, C)`` out-of-fold class probabilities of a logistic regression on ``vectors``.

    Args:
        vectors: ``(N, D)`` embeddings.
        labels: ``(N,)`` class ids ``0..C-1``, each class with at least ``folds`` images.
        folds: stratified folds (shuffled with ``seed``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(classifier, vectors, labels, cv=splitter, method="predict_proba")


def find_label_issues(emb: Embedded, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Likely label errors: cleanlab ``find_label_issues`` on out-of-fold probabilities, within each domain.

    Herbarium sheets are scored by a classifier fitted on herbarium sheets only, field photos by one on
    field photos only (:data:`LABEL_RULE`): mixed, a species' single sheet among its field photos
    looks mislabelled only because sheets look unlike photos. In each domain, classes with fewer than
    :data:`MIN_CLASS_IMAGES` images there are left out (neither checked nor used as evidence); the folds
    are ``min(MAX_FOLDS, smallest class left)``.

    Returns:
        ``(rows, lowest score first; notes)``: a row's ``score`` is the out-of-fold probability of its
        given label, ``suggested`` the most probable class, ``domain`` where it was checked. ``notes``
        holds the rule, per domain the folds, accuracy and any warning (``domains``), and the classes
        not checked in each domain (``classes_not_checked``).
    """
    notes: dict[str, Any] = {
        "rule": LABEL_RULE,
        "classifier": "StandardScaler + LogisticRegression(C=0.1), cross_val_predict, stratified folds",
        "min_class_images": MIN_CLASS_IMAGES,
        "domains": {},
        "classes_not_checked": {},
        "warnings": [],
    }
    rows: list[dict[str, Any]] = []
    domain_ids = emb.domain_ids()
    for number, domain in enumerate(DOMAINS):
        index = np.flatnonzero(domain_ids == number)
        if len(index):
            found, domain_notes = _label_issues_within(emb, index, seed)
            rows += [row | {"domain": domain} for row in found]
            notes["classes_not_checked"][domain] = domain_notes.pop("classes_not_checked")
            notes["warnings"] += [f"{domain}: {domain_notes['warning']}"] if "warning" in domain_notes else []
            notes["domains"][domain] = domain_notes
    return sorted(rows, key=lambda row: row["score"]), notes


def _label_issues_within(
    emb: Embedded, index: np.ndarray, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`find_label_issues` for the images ``index`` (one domain): ``(rows, notes)``."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    counts = Counter(emb.labels[index].tolist())
    kept_classes = sorted(c for c, n in counts.items() if n >= MIN_CLASS_IMAGES)
    notes: dict[str, Any] = {
        "images": len(index),
        "classes_not_checked": sorted(emb.classes[c] for c, n in counts.items() if n < MIN_CLASS_IMAGES),
    }
    if len(kept_classes) < 2:
        notes["skipped"] = f"fewer than 2 classes with at least {MIN_CLASS_IMAGES} images: nothing to check"
        return [], notes
    index = index[np.isin(emb.labels[index], kept_classes)]
    remap = {c: i for i, c in enumerate(kept_classes)}
    labels = np.asarray([remap[c] for c in emb.labels[index]])
    notes["folds"] = folds = min(MAX_FOLDS, min(counts[c] for c in kept_classes))
    probs = out_of_fold_probabilities(emb.vectors[index], labels, folds, seed)
    notes["out_of_fold_accuracy"] = accuracy = round(float((probs.argmax(1) == labels).mean()), 4)
    if accuracy < WEAK_ACCURACY:
        notes["warning"] = (
            f"out-of-fold accuracy {accuracy:.2f}: the model's embeddings do not separate the species well "
            "enough for the label check, so most flags are likely false"
            if emb.trained
            else f"out-of-fold accuracy {accuracy:.2f}: the embeddings barely separate the species, so most "
            "flags are likely false; audit with a trained model (--model) for a useful label check"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = cleanlab_issues(labels, probs, return_indices_ranked_by="self_confidence")
    rows = []
    for j in ranked:
        best = int(np.argmax(probs[j]))
        suggested = emb.classes[kept_classes[best]]
        reason = f"out-of-fold p(given label)={probs[j, labels[j]]:.2f}; most likely {suggested} ({probs[j, best]:.2f})"
        rows.append(emb.row(int(index[j]), probs[j, labels[j]], reason, suggested=suggested))
    return rows, notes
