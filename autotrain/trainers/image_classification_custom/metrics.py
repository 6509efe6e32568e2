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

Memory: no function here holds an (N, C) matrix beyond the scores it is given. Scores are read in row
chunks (an array, or a :class:`score_rows.ScoreRows` such as logits computed chunk by chunk from
embeddings), each image reduced to a :class:`score_rows.RowSummary`, and every metric is a reduction of
that summary (the ``summary_*`` functions): ``O(N + chunk x C)`` extra memory, the same numbers as the
whole matrix at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from autotrain.trainers.image_classification_custom.score_rows import (  # noqa: F401  (softmax: re-exported)
    RowSummary,
    ScoreRows,
    as_rows,
    block_ranks,
    softmax,
    summarize,
)
from data_prep.contract import DOMAINS, FIELD

GROUP_NAMES = ("with_field", "herbarium_only")
METRIC_NAMES = ("top1", "top5", "mrr", "macro_f1", "ece")
ECE_BINS = 15


def true_class_ranks(
    scores: np.ndarray | ScoreRows, labels: np.ndarray, rows: int | None = None
) -> np.ndarray:
    """1-based rank ``(N,)`` of the true class of each row of ``scores`` (N, C), read ``rows`` rows at a
    time (:func:`score_rows.chunk_rows`); ties count in its favour."""
    scores = as_rows(scores)
    labels = np.asarray(labels, dtype=np.int64)
    parts = [block_ranks(b, labels[s : s + len(b)]) for s, b in scores.chunks(rows)]
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)


def top_k_accuracy(scores: np.ndarray | ScoreRows, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class ranks within the top ``k`` (k capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, as_rows(scores).shape[1])
    return float((true_class_ranks(scores, labels) <= k).mean())


def mean_reciprocal_rank(scores: np.ndarray | ScoreRows, labels: np.ndarray) -> float:
    """Mean of 1/rank of the true class (``scores`` (N, C) read in chunks)."""
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


def summary_reliability_bins(summary: RowSummary, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """:func:`reliability_bins` of a :class:`RowSummary` (its ``confidence`` and ``softmax_prediction``)."""
    if len(summary) == 0:
        return []
    conf = summary.confidence
    correct = summary.softmax_prediction == summary.labels
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


def reliability_bins(
    logits: np.ndarray | ScoreRows, labels: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Reliability diagram data: per equal-width confidence bin, ``lo, hi, n, confidence, accuracy``.

    Args:
        logits: (N, C) logits (array or :class:`ScoreRows`, read in chunks); confidence is the top-1
            softmax probability.
        labels: (N,) true class ids.
        bins: number of bins over [0, 1].

    Returns:
        One dict per non-empty bin (mean confidence and accuracy of the images in it).
    """
    if len(labels) == 0:
        return []
    return summary_reliability_bins(summarize(logits, labels), bins)


def summary_ece(summary: RowSummary, bins: int = ECE_BINS) -> float:
    """:func:`expected_calibration_error` of a :class:`RowSummary`; NaN without images."""
    rows = summary_reliability_bins(summary, bins)
    n = sum(r["n"] for r in rows)
    if n == 0:
        return float("nan")
    return float(sum(r["n"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / n)


def expected_calibration_error(
    logits: np.ndarray | ScoreRows, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of the top-1 softmax confidence of (N, C) ``logits`` (see the module docstring); NaN without
    images."""
    if len(labels) == 0:
        return float("nan")
    return summary_ece(summarize(logits, labels), bins)


TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
"""The coarse log grid of :func:`fit_temperature`."""


def temperature_nll(
    logits: np.ndarray | ScoreRows, labels: np.ndarray, temperatures: Sequence[float], rows: int | None = None
) -> np.ndarray:
    """Mean negative log-likelihood of ``softmax(logits / t)`` for each ``t`` of ``temperatures``.

    ``logits`` (N, C) are read once, ``rows`` rows at a time (default :func:`score_rows.chunk_rows`):
    each chunk's per-image NLLs are summed, and the chunk sums added. In one chunk (N x C up to
    :data:`score_rows.CHUNK_ELEMENTS`) that is numpy's mean of the whole; in several, the float sum is
    taken in another order (relative difference ~1e-16).

    Returns:
        ``(len(temperatures),)`` float64.
    """
    labels = np.asarray(labels, dtype=np.int64)
    sums = []
    for start, block in as_rows(logits).chunks(rows):
        z = np.asarray(block, dtype=np.float64)
        index = (np.arange(len(z)), labels[start : start + len(z)])
        per_t = np.empty(len(temperatures))
        for i, t in enumerate(temperatures):
            q = z / t
            q -= q.max(axis=1, keepdims=True)
            true = q[index]
            np.exp(q, out=q)
            per_t[i] = (np.log(q.sum(axis=1)) - true).sum()
        sums.append(per_t)
    return np.sum(sums, axis=0) / len(labels)


def fit_temperature(logits: np.ndarray | ScoreRows, labels: np.ndarray, rows: int | None = None) -> float:
    """Temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    Temperature scaling (Guo et al., ICML 2017): one scalar, fitted on held-out data; it never changes the
    ranking. Searched on a log grid over [0.05, 20] (400 points), then refined around the best point;
    each search reads the logits once in chunks (:func:`temperature_nll`).

    Args:
        logits: (N, C) logits at ``T = 1`` (array or :class:`ScoreRows`).
        labels: (N,) true class ids, N >= 1.
        rows: rows per chunk (default :func:`score_rows.chunk_rows`).

    Returns:
        ``T > 0``.

    Raises:
        ValueError: no images.
    """
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one image")
    best = TEMPERATURE_GRID[int(np.argmin(temperature_nll(logits, labels, TEMPERATURE_GRID, rows)))]
    fine = best * np.exp(np.linspace(-0.02, 0.02, 41))
    return float(fine[int(np.argmin(temperature_nll(logits, labels, fine, rows)))])


NO_MATCH_THRESHOLD = 0.5
"""The app's default confidence threshold: below it, the app answers "no confident match"."""


def summary_wrong_unconfident(summary: RowSummary, threshold: float = NO_MATCH_THRESHOLD) -> float:
    """:func:`wrong_unconfident` of a :class:`RowSummary`."""
    wrong = summary.softmax_prediction != summary.labels
    if not wrong.any():
        return float("nan")
    return float((summary.confidence[wrong] < threshold).mean())


def wrong_unconfident(
    logits: np.ndarray | ScoreRows, labels: np.ndarray, threshold: float = NO_MATCH_THRESHOLD
) -> float:
    """Share of the wrong top-1 answers whose softmax confidence is below ``threshold`` (the app then says
    "no confident match" instead of a wrong species); NaN when no answer is wrong."""
    if len(labels) == 0:
        return float("nan")
    return summary_wrong_unconfident(summarize(logits, labels), threshold)


def summary_metrics(summary: RowSummary) -> dict[str, float]:
    """:func:`classification_metrics` of a :class:`RowSummary` (top-k needs no class count: a rank is
    at most C, so ``rank <= min(k, C)`` is ``rank <= k``)."""
    if len(summary) == 0:
        nan = float("nan")
        return {
            "top1": nan,
            "top5": nan,
            "mrr": nan,
            "macro_f1": nan,
            "ece": nan,
            "wrong_unconfident": nan,
            "n": 0,
        }
    rank = summary.rank
    return {
        "top1": float((rank <= 1).mean()),
        "top5": float((rank <= 5).mean()),
        "mrr": float((1.0 / rank).mean()),
        "macro_f1": macro_f1(summary.prediction, summary.labels),
        "ece": summary_ece(summary),
        "wrong_unconfident": summary_wrong_unconfident(summary),
        "n": int(len(summary)),
    }


def classification_metrics(scores: np.ndarray | ScoreRows, labels: np.ndarray) -> dict[str, float]:
    """top1, top5, mrr, macro_f1, ece (scores taken as logits), wrong_unconfident and the number of images
    ``n`` of (N, C) ``scores``, read in chunks (:func:`score_rows.summarize`)."""
    return summary_metrics(summarize(scores, labels))


def classes_with_field_photos(labels: np.ndarray, domains: np.ndarray, num_classes: int) -> np.ndarray:
    """Boolean (num_classes,): True where the (training) images include a field photo of the class."""
    has_field = np.zeros(num_classes, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    domains = np.asarray(domains, dtype=np.int64)
    has_field[np.unique(labels[domains == FIELD])] = True
    return has_field


def summary_report(
    summary: RowSummary,
    domains: np.ndarray | None = None,
    class_has_field: np.ndarray | None = None,
    domain_names: Sequence[str] = DOMAINS,
) -> dict[str, dict[str, float]]:
    """:func:`evaluation_report` of a :class:`RowSummary` (every subset a reduction of its rows)."""
    report = {"all": summary_metrics(summary)}
    if domains is not None:
        domains = np.asarray(domains, dtype=np.int64)
        for d, name in enumerate(domain_names):
            mask = domains == d
            if mask.any():
                report[name] = summary_metrics(summary.take(mask))
    if class_has_field is not None:
        in_group = np.asarray(class_has_field, dtype=bool)[summary.labels]
        for name, mask in ((GROUP_NAMES[0], in_group), (GROUP_NAMES[1], ~in_group)):
            if mask.any():
                report[name] = summary_metrics(summary.take(mask))
    return report


def evaluation_report(
    scores: np.ndarray | ScoreRows,
    labels: np.ndarray,
    domains: np.ndarray | None = None,
    class_has_field: np.ndarray | None = None,
    domain_names: Sequence[str] = DOMAINS,
) -> dict[str, dict[str, float]]:
    """Metrics for ``all`` images and for every non-empty domain and class-group subset.

    The scores are read once in row chunks (:func:`score_rows.summarize`): extra memory ``O(N + chunk
    x C)``, never ``(N, C)``; the numbers are those of the whole matrix at once.

    Args:
        scores: (N, C) class scores (logits or similarities; only their order matters, except for ECE
            and ``wrong_unconfident``, which take them as logits), an array or a :class:`ScoreRows`.
        labels: (N,) true class ids.
        domains: (N,) domain ids indexing ``domain_names``; None = no domain split.
        class_has_field: (C,) bool from :func:`classes_with_field_photos`; None = no group split.
        domain_names: names of the domain ids.

    Returns:
        ``{"all": {...}, "field": {...}, "herbarium": {...}, "with_field": {...}, "herbarium_only": {...}}``
        (subsets without images are left out), each with ``top1, top5, mrr, macro_f1, ece,
        wrong_unconfident, n``.
    """
    return summary_report(summarize(scores, labels), domains, class_has_field, domain_names)


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


def summarize_logits_for_metrics(logits: Any, labels: Any) -> Any:
    """``transformers.Trainer``'s ``preprocess_logits_for_metrics``: one evaluation batch's logits
    ``(B, C)`` -> its :class:`RowSummary` as a ``(B, 4)`` float64 tensor on the logits' device, so that the
    evaluation loop gathers ``(N, 4)`` rows instead of the ``(N, C)`` logits.

    Raises:
        ValueError: the batch has no labels (the summary needs the true classes).
    """
    import torch

    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if labels is None:
        raise ValueError("evaluation batches need labels: the metrics rank each image's true class")
    summary = summarize(logits.detach().float().cpu().numpy(), labels.detach().cpu().numpy())
    return torch.from_numpy(summary.to_array()).to(logits.device)


def make_compute_metrics(
    domains: np.ndarray | None,
    class_has_field: np.ndarray | None,
    domain_names: Sequence[str] = DOMAINS,
    summarized: bool = False,
) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer`` that knows the eval set's domains and groups.

    The eval dataloader is sequential, so predictions arrive in the eval set's order. ``summarized``:
    the predictions are the ``(N, 4)`` rows of :func:`summarize_logits_for_metrics` (the Trainer's
    ``preprocess_logits_for_metrics``), else the ``(N, C)`` scores.
    """

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        scores = eval_prediction.predictions
        if isinstance(scores, (tuple, list)):
            scores = scores[0]
        labels = np.asarray(eval_prediction.label_ids)
        doms = None if domains is None else np.asarray(domains)[: len(labels)]
        summary = RowSummary.from_array(scores, labels) if summarized else summarize(scores, labels)
        return flatten_report(summary_report(summary, doms, class_has_field, domain_names))

    return compute_metrics
