"""Sentence (pair) classification and regression on the user's own CSV / TSV / JSONL files.

    python -m bert_jax.main --config=configs/classify.py \
        --config.task.train_file=train.csv --config.task.validation_file=dev.csv \
        --config.task.text_column=review --config.task.label_column=stars

Also home of what every sentence-level task shares (GLUE reuses it): the `TextExample` record, the
tokenization of (text, text_pair) examples into [N, seq] features, the label arrays of the three HF
problem types, and logits -> predictions.

problem_type (config.task.problem_type):
  single_label  one class per row; names from `label_names` or the sorted labels of the train file.
  regression    one float per row (num_labels 1, MSE loss).
  multi_label   any subset of classes per row: a JSON list, or a `label_delimiter`-separated string.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from bert_jax.tasks import metrics, readers
from bert_jax.tasks.base import Features, Task

PROBLEM_TYPES = {"single_label": "single_label_classification", "regression": "regression",
                 "multi_label": "multi_label_classification"}


@dataclasses.dataclass
class TextExample:
    """One sentence or sentence pair. `label`: class id (int), target (float), 0/1 indicators [C]
    (multi-label), or None when the split is unlabelled. `index`: the row's id in its file (GLUE's
    `index` column; the submission TSVs are keyed by it)."""

    text_a: str
    text_b: Optional[str] = None
    label: Any = None
    index: int = 0


def featurize_text_pairs(examples: Sequence[TextExample], tokenizer, max_seq_length: int) -> Dict[str, np.ndarray]:
    """`[CLS] a [SEP] (b [SEP])` padded to `max_seq_length`, pairs truncated longest-first (as BERT's
    run_classifier and HF run_glue do): `input_ids`, `token_type_ids`, `attention_mask` int32 [N, seq]."""
    if not examples:
        raise ValueError("no examples to featurize")
    has_pair = [e.text_b is not None for e in examples]
    if any(has_pair) and not all(has_pair):
        raise ValueError("either every example has a text_b or none does")
    pairs = [e.text_b for e in examples] if has_pair[0] else None
    encoded = tokenizer([e.text_a for e in examples], pairs, truncation=True, padding="max_length",
                        max_length=max_seq_length)
    return {k: np.asarray(encoded[k], np.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}


def label_arrays(examples: Sequence[TextExample], problem_type: str) -> Dict[str, np.ndarray]:
    """{"labels": int32 [N] | float32 [N] | float32 [N, C]} by HF problem type; {} for unlabelled splits."""
    labelled = [e.label is not None for e in examples]
    if not any(labelled):
        return {}
    if not all(labelled):
        raise ValueError(f"{labelled.count(False)} of {len(examples)} examples have no label")
    values = [e.label for e in examples]
    if problem_type == "regression":
        return {"labels": np.asarray(values, np.float32)}
    if problem_type == "multi_label_classification":
        return {"labels": np.stack(values).astype(np.float32)}
    return {"labels": np.asarray(values, np.int32)}


def logits_to_predictions(logits: np.ndarray, problem_type: str) -> np.ndarray:
    """[N] class ids (single label), [N] floats (regression, logits [N, 1]), [N, C] 0/1 (multi-label:
    sigmoid > 0.5, i.e. logit > 0)."""
    logits = np.asarray(logits, np.float32)
    if problem_type == "regression":
        return logits.reshape(len(logits), -1)[:, 0]
    if problem_type == "multi_label_classification":
        return (logits > 0).astype(np.int32)
    return logits.argmax(-1).astype(np.int32)


def gold_labels(examples: Sequence[TextExample]) -> np.ndarray:
    missing = sum(e.label is None for e in examples)
    if missing:
        raise ValueError(f"cannot compute metrics: {missing} of {len(examples)} examples have no gold label")
    return np.asarray([e.label for e in examples])


def write_index_tsv(path: str, indices: Sequence[int], values: Sequence[str]) -> None:
    """`index<TAB>prediction` with a header: the GLUE submission layout, also used for the user's data."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("index\tprediction\n")
        for index, value in zip(indices, values):
            f.write(f"{index}\t{value}\n")


def _numeric_aware_sort(names):
    """Sorted label names; all-integer names ('0', '2', '10') sort by value, not as strings."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


class TextPairTask(Task):
    """A sequence-classification task over `TextExample`s (sentence or sentence pair): one featurizer
    and one logits -> predictions mapping for GLUE and the user's own data."""

    head = "sequence_classification"

    def featurize(self, examples, tokenizer, max_seq_length, split) -> Features:
        return Features(featurize_text_pairs(examples, tokenizer, max_seq_length),
                        label_arrays(examples, self.problem_type()))

    def postprocess(self, outputs, features, examples) -> np.ndarray:
        """Class ids [N] (argmax of logits [N, C]), scores [N] (regression, logits [N, 1]) or 0/1 [N, C]
        (multi-label)."""
        return logits_to_predictions(outputs["logits"], self.problem_type())


class TextClassificationTask(TextPairTask):
    """Classification / regression of `text_column` (and `text_pair_column`) against `label_column`."""

    name = "classify"

    def __init__(self, config):
        super().__init__(config)
        kind = config.get("problem_type", "single_label") or "single_label"
        if kind not in PROBLEM_TYPES:
            raise ValueError(f"config.task.problem_type={kind!r} must be one of {sorted(PROBLEM_TYPES)}")
        self.kind = kind
        if not config.get("text_column", ""):
            raise ValueError("config.task.text_column must name the column holding the text")
        self.files = {"train": config.get("train_file", ""), "validation": config.get("validation_file", ""),
                      "test": config.get("test_file", "")}
        self.eval_splits = ("validation",) if self.files["validation"] else ()
        self.predict_split = "test" if self.files["test"] else None
        self.metric_for_best, self.metric_mode = {
            "single_label": ("accuracy", "max"), "regression": ("mse", "min"),
            "multi_label": ("micro_f1", "max")}[kind]
        names = config.get("label_names", "") or ()
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        self._label_names: Optional[List[str]] = list(names) or None
        if self._label_names and len(set(self._label_names)) != len(self._label_names):
            raise ValueError(f"config.task.label_names has duplicates: {self._label_names}")

    # ---- model ----------------------------------------------------------------------------------------
    def problem_type(self) -> str:
        return PROBLEM_TYPES[self.kind]

    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.label_names())

    def label_names(self) -> Optional[List[str]]:
        if self.kind == "regression":
            return None
        if self._label_names is None:  # sorted labels of the training file
            path, columns, rows = self._read("train")
            if not self.config.get("label_column", ""):
                raise ValueError("config.task.label_column must name the column holding the labels")
            readers.require_columns(path, columns, [self.config.label_column])
            names = set()
            for row in rows:
                names.update(self._raw_labels(path, row))
            if not names:
                raise ValueError(f"{path}: no labels found in column {self.config.label_column!r}")
            self._label_names = _numeric_aware_sort(names)
        return self._label_names

    # ---- data -----------------------------------------------------------------------------------------
    def _read(self, split: str):
        if split not in self.files:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(self.files)}")
        path = self.files[split]
        if not path:
            raise FileNotFoundError(f"no file for split {split!r}: set config.task.{split}_file")
        path = readers.require_file(path, f"{split} file")
        columns, rows = readers.read_table(path, self.config.get("file_format", ""))
        return path, columns, rows

    def _raw_labels(self, path: str, row: Dict[str, Any]) -> List[str]:
        """The label names of one row (multi-label: several) as strings."""
        value = row.get(self.config.label_column)
        where = f"{path}, line {row['__line__']}"
        if value is None or (isinstance(value, str) and not value.strip() and self.kind != "multi_label"):
            raise ValueError(f"{where}: empty label in column {self.config.label_column!r}")
        if self.kind != "multi_label":
            return [str(value).strip()]
        if isinstance(value, list):
            return [str(v).strip() for v in value]
        if not isinstance(value, str):
            raise ValueError(f"{where}: a multi-label label must be a list or a delimited string, got {value!r}")
        delimiter = self.config.get("label_delimiter", ",") or ","
        return [v.strip() for v in value.split(delimiter) if v.strip()]

    def _label(self, path: str, row: Dict[str, Any], ids: Dict[str, int]):
        """The row's label as the head's target: float, class id, or 0/1 indicators [num_labels]."""
        where = f"{path}, line {row['__line__']}"
        if self.kind == "regression":
            value = row.get(self.config.label_column)
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: regression label {value!r} is not a number") from None
        raw = self._raw_labels(path, row)
        unknown = [r for r in raw if r not in ids]
        if unknown:
            raise ValueError(f"{where}: unknown label(s) {unknown}; the known labels are {list(ids)} "
                             f"(from config.task.label_names or the training file)")
        if self.kind == "single_label":
            return ids[raw[0]]
        indicators = np.zeros(len(ids), np.float32)
        indicators[[ids[r] for r in raw]] = 1.0
        return indicators

    def load_split(self, split: str) -> List[TextExample]:
        """Rows of the split's file; train and validation need the label column, test may lack it."""
        path, columns, rows = self._read(split)
        text, pair, label = (self.config.text_column, self.config.get("text_pair_column", ""),
                             self.config.get("label_column", ""))
        if split != "test" and not label:
            raise ValueError("config.task.label_column must name the column holding the labels")
        readers.require_columns(path, columns, [text, pair] + ([label] if split != "test" else []))
        labelled = bool(label) and label in columns
        ids = {name: i for i, name in enumerate(self.label_names() or ())}
        examples = []
        for i, row in enumerate(rows):
            for column in (text, pair):
                if column and not isinstance(row.get(column), str):
                    raise ValueError(f"{path}, line {row['__line__']}: column {column!r} holds "
                                     f"{row.get(column)!r}, not text")
            examples.append(TextExample(row[text], row[pair] if pair else None,
                                        self._label(path, row, ids) if labelled else None, i))
        limit = self.config.get("max_train_examples" if split == "train" else "max_eval_examples", -1)
        return readers.cap(examples, limit)

    # ---- evaluation -----------------------------------------------------------------------------------
    def metrics(self, predictions, examples) -> Dict[str, float]:
        labels = gold_labels(examples)
        if self.kind == "regression":
            return metrics.regression_metrics(predictions, labels.astype(np.float32))
        if self.kind == "multi_label":
            return metrics.multi_label_metrics(predictions, labels)
        return metrics.classification_metrics(predictions, labels, self.num_labels())

    def write_predictions(self, predictions, examples, path) -> None:
        if self.kind == "regression":
            values = [f"{float(p):.6g}" for p in predictions]
        elif self.kind == "multi_label":
            names, delimiter = self.label_names(), self.config.get("label_delimiter", ",") or ","
            values = [delimiter.join(names[j] for j in np.flatnonzero(row)) for row in predictions]
        else:
            values = [self.label_names()[int(p)] for p in predictions]
        write_index_tsv(path, [e.index for e in examples], values)

    def predictions_filename(self, split: str) -> str:
        return f"predictions_{split}.tsv"
