"""Evaluation metrics of the fine-tuning tasks, on host numpy arrays.

Thin wrappers over the reference implementations (scikit-learn, scipy, seqeval) so every task reports
numbers computed the way the papers and leaderboards compute them; nothing here re-derives a statistic.
All functions return plain Python floats (JSON-serialisable).
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "ax")


def _pair(predictions, labels, what: str):
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"{what}: predictions {predictions.shape} and labels {labels.shape} differ in shape")
    if predictions.size == 0:
        raise ValueError(f"{what}: no predictions")
    return predictions, labels


def accuracy(predictions, labels) -> float:
    """Fraction of exact matches; for [N, C] 0/1 indicator arrays, subset accuracy (all labels right)."""
    predictions, labels = _pair(predictions, labels, "accuracy")
    return float(skm.accuracy_score(labels, predictions))


def f1(predictions, labels, average: str = "binary") -> float:
    """F1 of the positive class 1 (`average='binary'`, GLUE MRPC/QQP) or 'macro' / 'micro' (multi-label:
    [N, C] indicators)."""
    predictions, labels = _pair(predictions, labels, "f1")
    return float(skm.f1_score(labels, predictions, average=average, zero_division=0))


def matthews_corr(predictions, labels) -> float:
    """Matthews correlation coefficient (CoLA)."""
    predictions, labels = _pair(predictions, labels, "matthews_corr")
    return float(skm.matthews_corrcoef(labels, predictions))


def pearson(predictions, labels) -> float:
    return float(stats.pearsonr(*_pair(predictions, labels, "pearson"))[0])


def spearman(predictions, labels) -> float:
    return float(stats.spearmanr(*_pair(predictions, labels, "spearman"))[0])


def mean_squared_error(predictions, labels) -> float:
    predictions, labels = _pair(predictions, labels, "mean_squared_error")
    return float(skm.mean_squared_error(labels, predictions))


def regression_metrics(predictions, labels) -> Dict[str, float]:
    """Pearson, Spearman, their mean (how GLUE reports STS-B) and the MSE."""
    p, s = pearson(predictions, labels), spearman(predictions, labels)
    return {"pearson": p, "spearmanr": s, "combined_score": (p + s) / 2,
            "mse": mean_squared_error(predictions, labels)}


def glue_metrics(task: str, predictions, labels) -> Dict[str, float]:
    """The GLUE metrics of `task` (as the GLUE paper and HF `evaluate`'s glue metric report them).

    predictions/labels: class ids [N] (STS-B: float scores [N]). Tasks with two metrics also report
    `combined_score`, their mean (the single number GLUE averages into the overall score).
    """
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {GLUE_TASKS}")
    if task == "cola":
        return {"matthews_correlation": matthews_corr(predictions, labels)}
    if task == "stsb":
        p, s = pearson(predictions, labels), spearman(predictions, labels)
        return {"pearson": p, "spearmanr": s, "combined_score": (p + s) / 2}
    if task in ("mrpc", "qqp"):
        acc, f = accuracy(predictions, labels), f1(predictions, labels)
        return {"accuracy": acc, "f1": f, "combined_score": (acc + f) / 2}
    return {"accuracy": accuracy(predictions, labels)}


def classification_metrics(predictions, labels, num_labels: int) -> Dict[str, float]:
    """Single-label classification: accuracy and macro F1 over all `num_labels` classes."""
    predictions, labels = _pair(predictions, labels, "classification_metrics")
    macro = skm.f1_score(labels, predictions, labels=np.arange(num_labels), average="macro", zero_division=0)
    return {"accuracy": accuracy(predictions, labels), "macro_f1": float(macro)}


def multi_label_metrics(predictions, labels) -> Dict[str, float]:
    """Multi-label classification on [N, C] 0/1 indicators: micro and macro F1, subset accuracy."""
    predictions, labels = _pair(np.asarray(predictions).astype(int), np.asarray(labels).astype(int),
                                "multi_label_metrics")
    return {"micro_f1": f1(predictions, labels, "micro"), "macro_f1": f1(predictions, labels, "macro"),
            "subset_accuracy": accuracy(predictions, labels)}


def multiple_choice_accuracy(logits, labels) -> float:
    """Accuracy of argmax over choices: `logits` [N, num_choices], `labels` [N] (SWAG)."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"multiple_choice_accuracy takes logits [N, num_choices], got shape {logits.shape}")
    return accuracy(logits.argmax(-1), labels)


def entity_metrics(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                   per_type: bool = True) -> Dict[str, float]:
    """Entity-level precision/recall/F1 over IOB tag sequences with seqeval (conlleval's definition: an
    entity counts only when its type and both boundaries match), token accuracy, and per entity type
    `<TYPE>_precision/_recall/_f1/_support` when `per_type`."""
    from seqeval import metrics as sq
    true_tags, pred_tags = [list(t) for t in true_tags], [list(p) for p in pred_tags]
    if len(true_tags) != len(pred_tags) or any(len(t) != len(p) for t, p in zip(true_tags, pred_tags)):
        raise ValueError("entity_metrics: gold and predicted tag sequences differ in number or length")
    out = {"precision": float(sq.precision_score(true_tags, pred_tags, zero_division=0)),
           "recall": float(sq.recall_score(true_tags, pred_tags, zero_division=0)),
           "f1": float(sq.f1_score(true_tags, pred_tags, zero_division=0)),
           "accuracy": float(sq.accuracy_score(true_tags, pred_tags))}
    if per_type:
        report = sq.classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
        for name, row in report.items():
            if name.endswith(" avg"):
                continue
            out.update({f"{name}_precision": float(row["precision"]), f"{name}_recall": float(row["recall"]),
                        f"{name}_f1": float(row["f1-score"]), f"{name}_support": float(row["support"])})
    return out


def entity_report(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> str:
    """seqeval's per-type text report (for logs)."""
    from seqeval import metrics as sq
    return sq.classification_report([list(t) for t in true_tags], [list(p) for p in pred_tags], digits=4,
                                     zero_division=0)
