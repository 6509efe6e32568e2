"""Retrieval-style classification metrics, overall and split by domain and by class group (numpy only).

PlantCLEF ranks species per image and scores the mean reciprocal rank (MRR) of the true species; we
report it with top-1/top-5 accuracy and macro-F1. Every metric is computed on the evaluated images only,
so a validation split that lacks some training classes (species without field photos) is normal:

- top-k: fraction of images whose true class is among the k highest scores (k is capped at the number
  of classes);
- MRR: mean of 1/rank of the true class, rank = 1 + number of classes scored strictly higher (ties are
  resolved in the image's favour);
- macro-F1: mean F1 of the top-1 predictions over the classes present in the evaluated images' labels
  (a class absent from them has no recall to measure; predicting it still costs the true class its
  recall and counts as a false positive nowhere else).

Subsets: ``all``; each domain (``herbarium``, ``field``) present; and the class groups
``with_field`` (classes that have field photos in the training split) and ``herbarium_only`` (classes
trained from herbarium sheets only: the data-deficient species this project is about).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

DOMAIN_NAMES = ("herbarium", "field")
FIELD = 1
GROUP_NAMES = ("with_field", "herbarium_only")
METRIC_NAMES = ("top1", "top5", "mrr", "macro_f1")


def true_class_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based rank of the true class of each row of ``scores`` (N, C); ties count in its favour."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    true = scores[np.arange(len(labels)), labels]
    return 1 + (scores > true[:, None]).sum(axis=1)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class ranks within the top ``k`` (k capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, np.asarray(scores).shape[1])
    return float((true_class_ranks(scores, labels) <= k).mean())


def mean_reciprocal_rank(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean of 1/rank of the true class."""
    if len(labels) == 0:
        return float("nan")
    return float((1.0 / true_class_ranks(scores, labels)).mean())


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class F1 over the classes present in ``labels``."""
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    if len(classes) == 0:
        return float("nan")
    f1 = []
    for c in classes:
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        f1.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1, top5, mrr, macro_f1 and the number of images ``n``."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    return {
        "top1": top_k_accuracy(scores, labels, 1),
        "top5": top_k_accuracy(scores, labels, 5),
        "mrr": mean_reciprocal_rank(scores, labels),
        "macro_f1": macro_f1(scores.argmax(axis=1), labels) if len(labels) else float("nan"),
        "n": int(len(labels)),
    }


def classes_with_field_photos(labels: np.ndarray, domains: np.ndarray, num_classes: int) -> np.ndarray:
    """Boolean (num_classes,): True where the (training) images include a field photo of the class."""
    has_field = np.zeros(num_classes, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    domains = np.asarray(domains, dtype=np.int64)
    has_field[np.unique(labels[domains == FIELD])] = True
    return has_field


def evaluation_report(
    scores: np.ndarray,
    labels: np.ndarray,
    domains: np.ndarray | None = None,
    class_has_field: np.ndarray | None = None,
    domain_names: Sequence[str] = DOMAIN_NAMES,
) -> dict[str, dict[str, float]]:
    """Metrics for ``all`` images and for every non-empty domain and class-group subset.

    Args:
        scores: (N, C) class scores (logits or similarities; only their order matters).
        labels: (N,) true class ids.
        domains: (N,) domain ids indexing ``domain_names``; None = no domain split.
        class_has_field: (C,) bool from :func:`classes_with_field_photos`; None = no group split.
        domain_names: names of the domain ids.

    Returns:
        ``{"all": {...}, "field": {...}, "herbarium": {...}, "with_field": {...}, "herbarium_only": {...}}``
        (subsets without images are left out), each with ``top1, top5, mrr, macro_f1, n``.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    report = {"all": classification_metrics(scores, labels)}
    if domains is not None:
        domains = np.asarray(domains, dtype=np.int64)
        for d, name in enumerate(domain_names):
            mask = domains == d
            if mask.any():
                report[name] = classification_metrics(scores[mask], labels[mask])
    if class_has_field is not None:
        in_group = np.asarray(class_has_field, dtype=bool)[labels]
        for name, mask in ((GROUP_NAMES[0], in_group), (GROUP_NAMES[1], ~in_group)):
            if mask.any():
                report[name] = classification_metrics(scores[mask], labels[mask])
    return report


def flatten_report(report: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"all": {"top1": x}, "field": {"mrr": y}}`` -> ``{"top1": x, "field_mrr": y}`` (for Trainer logs)."""
    flat = {}
    for subset, values in report.items():
        prefix = "" if subset == "all" else f"{subset}_"
        for key, value in values.items():
            flat[f"{prefix}{key}"] = value
    return flat


def best_model_metric(domains: np.ndarray | None) -> str:
    """``field_mrr`` when the evaluation set has field photos, else ``mrr``."""
    if domains is not None and np.any(np.asarray(domains) == FIELD):
        return "field_mrr"
    return "mrr"


def make_compute_metrics(
    domains: np.ndarray | None,
    class_has_field: np.ndarray | None,
    domain_names: Sequence[str] = DOMAIN_NAMES,
) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer`` that knows the eval set's domains and groups.

    The eval dataloader is sequential, so predictions arrive in the eval set's order.
    """

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        scores = eval_prediction.predictions
        if isinstance(scores, (tuple, list)):
            scores = scores[0]
        labels = np.asarray(eval_prediction.label_ids)
        doms = None if domains is None else np.asarray(domains)[: len(labels)]
        return flatten_report(evaluation_report(scores, labels, doms, class_has_field, domain_names))

    return compute_metrics
