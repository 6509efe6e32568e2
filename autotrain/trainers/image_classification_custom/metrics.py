"""Retrieval-style classification metrics, overall and split by domain and by class group.

PlantCLEF ranks species per image and scores the mean reciprocal rank (MRR) of the true species; we
report it with top-1/top-5 accuracy and macro-F1. Every metric is computed on the evaluated images only,
so a validation split that lacks some training classes (species without field photos) is normal:

- top-k: fraction of images whose true class is among the k highest scores (k is capped at the number
  of classes);
- MRR: mean of 1/rank of the true class, rank = 1 + number of classes scored strictly higher (ties are
  resolved in the image's favour);
- macro-F1: mean F1 of the top-1 predictions over the classes present in the evaluated images' labels
  (scikit-learn's ``f1_score``; a class absent from them has no recall to measure; predicting it still
  costs the true class its recall and counts as a false positive nowhere else).

- ECE: expected calibration error of the softmax of the scores (which must then be logits): the
  images are binned by top-1 confidence into 15 equal-width bins, and ECE is the image-weighted mean of
  |accuracy - mean confidence| over the bins (Guo et al., "On Calibration of Modern Neural Networks",
  ICML 2017).

Subsets: ``all``; each domain (``herbarium``, ``field``) present; and the class groups
``with_field`` (classes that have field photos in the training split) and ``herbarium_only`` (classes
trained from herbarium sheets only: the data-deficient species this project is about).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from data_prep.contract import DOMAINS, FIELD

GROUP_NAMES = ("with_field", "herbarium_only")
METRIC_NAMES = ("top1", "top5", "mrr", "macro_f1", "ece")
ECE_BINS = 15


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
    """Mean per-class F1 of the top-1 ``predictions`` (N,) over the classes present in ``labels`` (N,);
    NaN without images.

    ``sklearn.metrics.f1_score(average="macro")`` restricted to those classes (``labels=``): a predicted
    class absent from ``labels`` is not averaged (it has no recall to measure).
    """
    from sklearn.metrics import f1_score  # imported when used: the module stays quick to import

    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    if len(classes) == 0:
        return float("nan")
    predictions = np.asarray(predictions, dtype=np.int64)
    return float(f1_score(labels, predictions, labels=classes, average="macro", zero_division=0.0))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability_bins(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Reliability diagram data: per equal-width confidence bin, ``lo, hi, n, confidence, accuracy``.

    Args:
        logits: (N, C) logits; confidence is the top-1 softmax probability.
        labels: (N,) true class ids.
        bins: number of bins over [0, 1].

    Returns:
        One dict per non-empty bin (mean confidence and accuracy of the images in it).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return []
    probs = softmax(logits)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append(
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "n": int(mask.sum()),
                    "confidence": float(conf[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                }
            )
    return out


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 softmax confidence (see the module docstring); NaN without images."""
    rows = reliability_bins(logits, labels, bins)
    n = sum(r["n"] for r in rows)
    if n == 0:
        return float("nan")
    return float(sum(r["n"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / n)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    Temperature scaling (Guo et al., ICML 2017): one scalar, fitted on held-out data; it never changes the
    ranking. Searched on a log grid over [0.05, 20] (400 points), then refined around the best point.

    Args:
        logits: (N, C) logits at ``T = 1``.
        labels: (N,) true class ids, N >= 1.

    Returns:
        ``T > 0``.
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one image")

    def nll(t: float) -> float:
        q = z / t
        q = q - q.max(axis=1, keepdims=True)
        return float((np.log(np.exp(q).sum(axis=1)) - q[np.arange(len(labels)), labels]).mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = best * np.exp(np.linspace(-0.02, 0.02, 41))
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


NO_MATCH_THRESHOLD = 0.5
"""The app's default confidence threshold: below it, the app answers "no confident match"."""


def wrong_unconfident(logits: np.ndarray, labels: np.ndarray, threshold: float = NO_MATCH_THRESHOLD) -> float:
    """Share of the wrong top-1 answers whose softmax confidence is below ``threshold`` (the app then says
    "no confident match" instead of a wrong species); NaN when no answer is wrong."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    probs = softmax(logits)
    wrong = probs.argmax(axis=1) != labels
    if not wrong.any():
        return float("nan")
    return float((probs.max(axis=1)[wrong] < threshold).mean())


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1, top5, mrr, macro_f1, ece (scores taken as logits) and the number of images ``n``."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    return {
        "top1": top_k_accuracy(scores, labels, 1),
        "top5": top_k_accuracy(scores, labels, 5),
        "mrr": mean_reciprocal_rank(scores, labels),
        "macro_f1": macro_f1(scores.argmax(axis=1), labels) if len(labels) else float("nan"),
        "ece": expected_calibration_error(scores, labels) if len(labels) else float("nan"),
        "wrong_unconfident": wrong_unconfident(scores, labels),
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
    domain_names: Sequence[str] = DOMAINS,
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


def readable(report: Mapping[str, Mapping[str, float]]) -> str:
    """One log line: ``field top-1 0.600, top-5 0.840, MRR 0.710, ECE 0.120 (n=55)`` (all images when
    there are no field photos), plus the herbarium-only species when present."""
    parts = []
    for subset, title in (
        ("field" if "field" in report else "all", None),
        ("herbarium_only", "herbarium-only"),
    ):
        m = report.get(subset)
        if m:
            parts.append(
                f"{title or subset} top-1 {m['top1']:.3f}, top-5 {m['top5']:.3f}, MRR {m['mrr']:.3f}, "
                f"ECE {m.get('ece', float('nan')):.3f} (n={m['n']})"
            )
    return "; ".join(parts)


def best_model_metric(domains: np.ndarray | None) -> str:
    """``field_mrr`` when the evaluation set has field photos, else ``mrr``."""
    if domains is not None and np.any(np.asarray(domains) == FIELD):
        return "field_mrr"
    return "mrr"


def make_compute_metrics(
    domains: np.ndarray | None,
    class_has_field: np.ndarray | None,
    domain_names: Sequence[str] = DOMAINS,
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
