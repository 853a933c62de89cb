"""Metric functions of the fine-tuning tasks on crafted cases, against hand-computed values and the
official definitions (MCC, binary F1, Pearson/Spearman, conlleval entity F1 via seqeval)."""

import math

import numpy as np
import pytest

from bert_jax.tasks import metrics

# Confusion counts of this pair: TP=2 (0, 4), FP=1 (1), TN=2 (2, 3), FN=1 (5).
PRED = np.array([1, 1, 0, 0, 1, 0])
GOLD = np.array([1, 0, 0, 0, 1, 1])


def test_binary_classification_metrics_match_hand_counts():
    tp, fp, tn, fn = 2, 1, 2, 1
    assert metrics.accuracy(PRED, GOLD) == pytest.approx((tp + tn) / 6)
    assert metrics.f1(PRED, GOLD) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.matthews_corr(PRED, GOLD) == pytest.approx(mcc)  # = 1/3
    assert metrics.matthews_corr(GOLD, GOLD) == pytest.approx(1.0)
    assert metrics.matthews_corr(1 - GOLD, GOLD) == pytest.approx(-1.0)
    # A constant predictor has MCC 0 by convention (sklearn), not NaN.
    assert metrics.matthews_corr(np.zeros(6, int), GOLD) == 0.0


def test_pearson_spearman_match_definitions():
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    y = np.array([1.5, 3.0, 2.0, 4.0, 4.5])
    # Pearson from its definition; Spearman = Pearson of average ranks (ties share the mean rank).
    xc, yc = x - x.mean(), y - y.mean()
    pearson = (xc @ yc) / math.sqrt((xc @ xc) * (yc @ yc))
    rank_x, rank_y = np.array([1, 2.5, 2.5, 4, 5]), np.array([1, 3, 2, 4, 5])
    rxc, ryc = rank_x - rank_x.mean(), rank_y - rank_y.mean()
    spearman = (rxc @ ryc) / math.sqrt((rxc @ rxc) * (ryc @ ryc))
    assert metrics.pearson(x, y) == pytest.approx(pearson, abs=1e-12)
    assert metrics.spearman(x, y) == pytest.approx(spearman, abs=1e-12)
    stsb = metrics.glue_metrics("stsb", x, y)
    assert stsb["combined_score"] == pytest.approx((pearson + spearman) / 2, abs=1e-12)
    reg = metrics.regression_metrics(x, y)
    assert reg["mse"] == pytest.approx(np.mean((x - y) ** 2))


def test_glue_metrics_per_task():
    assert set(metrics.glue_metrics("cola", PRED, GOLD)) == {"matthews_correlation"}
    mrpc = metrics.glue_metrics("mrpc", PRED, GOLD)
    assert mrpc["accuracy"] == pytest.approx(4 / 6) and mrpc["f1"] == pytest.approx(2 / 3)
    assert mrpc["combined_score"] == pytest.approx((4 / 6 + 2 / 3) / 2)
    assert metrics.glue_metrics("qqp", PRED, GOLD) == mrpc
    for task in ("sst2", "mnli", "qnli", "rte", "wnli"):
        assert metrics.glue_metrics(task, PRED, GOLD) == {"accuracy": pytest.approx(4 / 6)}
    with pytest.raises(ValueError, match="unknown GLUE task"):
        metrics.glue_metrics("mnli-m", PRED, GOLD)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.accuracy(PRED[:3], GOLD)


def test_classification_and_multi_label_metrics():
    # Three classes, class 2 never predicted nor gold -> its F1 is 0 and still counts in the macro mean.
    pred, gold = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    f1_0 = 2 * 1 / (2 * 1 + 1 + 0)  # TP 1, FP 1, FN 0
    f1_1 = 2 * 2 / (2 * 2 + 0 + 1)  # TP 2, FP 0, FN 1
    out = metrics.classification_metrics(pred, gold, num_labels=3)
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["macro_f1"] == pytest.approx((f1_0 + f1_1 + 0.0) / 3)

    pred = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    gold = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    out = metrics.multi_label_metrics(pred, gold)
    tp, fp, fn = 4, 1, 0  # pooled over all cells
    assert out["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["subset_accuracy"] == pytest.approx(2 / 3)


def test_multiple_choice_accuracy():
    logits = np.array([[0.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert metrics.multiple_choice_accuracy(logits, np.array([1, 0, 2])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="num_choices"):
        metrics.multiple_choice_accuracy(logits[0], np.array([1]))


def test_entity_metrics_partial_entities_and_boundaries():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "B-ORG", "O"]]
    # PER predicted one word short (a different entity: wrong), LOC exact, two adjacent ORGs merged into one.
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    out = metrics.entity_metrics(gold, pred)
    # Gold entities: PER(0-1), LOC(3), ORG(0), ORG(1) = 4; predicted: PER(0), LOC(3), ORG(0-1) = 3; correct: LOC.
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["recall"] == pytest.approx(1 / 4)
    assert out["f1"] == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))
    assert out["LOC_f1"] == 1.0 and out["PER_f1"] == 0.0 and out["ORG_f1"] == 0.0
    assert out["ORG_support"] == 2.0
    assert out["accuracy"] == pytest.approx(5 / 7)  # token-level
    # conlleval treats an entity opened by I- like one opened by B-: the same spans, so F1 = 1.
    assert metrics.entity_metrics([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]])["f1"] == 1.0
    # An I- of another type starts a new entity: B-PER I-LOC is PER(0) + LOC(1).
    out = metrics.entity_metrics([["B-PER", "B-LOC"]], [["B-PER", "I-LOC"]])
    assert out["f1"] == 1.0
    assert "LOC" in metrics.entity_report(gold, pred)
    with pytest.raises(ValueError, match="differ"):
        metrics.entity_metrics(gold, pred[:1])
