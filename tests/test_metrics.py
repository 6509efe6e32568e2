"""Metrics against hand-computed values, including an evaluation split that lacks training classes."""

import numpy as np
import pytest

from autotrain.trainers.image_classification_custom import metrics as M

# 4 training classes; the evaluation split has no image of class 3 (normal: no field photo of it).
LABELS = np.array([0, 1, 2, 1, 0])
SCORES = np.array(
    [
        [0.90, 0.05, 0.03, 0.02],  # true 0: rank 1, predicted 0
        [0.50, 0.30, 0.10, 0.10],  # true 1: rank 2, predicted 0
        [0.10, 0.20, 0.30, 0.40],  # true 2: rank 2, predicted 3 (a class absent from the labels)
        [0.10, 0.60, 0.20, 0.10],  # true 1: rank 1, predicted 1
        [0.20, 0.30, 0.40, 0.10],  # true 0: rank 3, predicted 2
    ]
)
DOMAINS = np.array([1, 1, 0, 1, 1])  # image 2 is a herbarium sheet
CLASS_HAS_FIELD = np.array([True, False, True, False])


def test_ranks_topk_mrr_by_hand():
    assert M.true_class_ranks(SCORES, LABELS).tolist() == [1, 2, 2, 1, 3]
    assert M.top_k_accuracy(SCORES, LABELS, 1) == pytest.approx(2 / 5)
    assert M.top_k_accuracy(SCORES, LABELS, 2) == pytest.approx(4 / 5)
    assert M.top_k_accuracy(SCORES, LABELS, 5) == 1.0  # k capped at the 4 classes
    assert M.mean_reciprocal_rank(SCORES, LABELS) == pytest.approx((1 + 1 / 2 + 1 / 2 + 1 + 1 / 3) / 5)


def test_macro_f1_by_hand_averages_classes_present_in_labels():
    predictions = SCORES.argmax(1)
    assert predictions.tolist() == [0, 0, 3, 1, 2]
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 1, fp 0, fn 1 -> 2/3; class 2: tp 0 -> 0
    assert M.macro_f1(predictions, LABELS) == pytest.approx((0.5 + 2 / 3 + 0) / 3)


def test_ties_count_in_favour_of_the_true_class():
    scores = np.array([[0.5, 0.5, 0.1]])
    assert M.true_class_ranks(scores, np.array([1])).tolist() == [1]


def test_report_splits_by_domain_and_group():
    report = M.evaluation_report(SCORES, LABELS, DOMAINS, CLASS_HAS_FIELD)
    assert set(report) == {"all", "field", "herbarium", "with_field", "herbarium_only"}
    assert report["all"]["n"] == 5
    field = report["field"]  # images 0, 1, 3, 4: ranks 1, 2, 1, 3
    assert field["n"] == 4
    assert field["top1"] == pytest.approx(0.5)
    assert field["mrr"] == pytest.approx((1 + 0.5 + 1 + 1 / 3) / 4)
    assert report["herbarium"]["top1"] == 0.0
    assert report["herbarium"]["mrr"] == pytest.approx(0.5)
    with_field = report["with_field"]  # classes 0 and 2: images 0, 2, 4: ranks 1, 2, 3
    assert with_field["n"] == 3
    assert with_field["top1"] == pytest.approx(1 / 3)
    assert with_field["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    only = report["herbarium_only"]  # class 1: images 1, 3: ranks 2, 1
    assert only["top1"] == pytest.approx(0.5)
    assert only["mrr"] == pytest.approx(0.75)
    assert only["macro_f1"] == pytest.approx(2 / 3)


def test_empty_subsets_are_left_out():
    report = M.evaluation_report(SCORES, LABELS, np.ones(5, int), np.ones(4, bool))
    assert "herbarium" not in report and "herbarium_only" not in report


def test_flatten_and_compute_metrics_closure():
    class Prediction:
        predictions = (SCORES, None)  # a tuple, as the Trainer may pass
        label_ids = LABELS

    compute = M.make_compute_metrics(DOMAINS, CLASS_HAS_FIELD)
    flat = compute(Prediction())
    assert flat["top1"] == pytest.approx(0.4)
    assert flat["field_mrr"] == pytest.approx((1 + 0.5 + 1 + 1 / 3) / 4)
    assert flat["herbarium_only_top1"] == pytest.approx(0.5)
    assert M.best_model_metric(DOMAINS) == "field_mrr"
    assert M.best_model_metric(np.zeros(3, int)) == "mrr"
    assert M.best_model_metric(None) == "mrr"


def test_classes_with_field_photos():
    labels = np.array([0, 0, 1, 2, 2])
    domains = np.array([0, 1, 0, 0, 0])
    assert M.classes_with_field_photos(labels, domains, 4).tolist() == [True, False, False, False]
