"""SWAG (Zellers et al., 2018): pick the most plausible of four endings, with a multiple-choice head.

    python -m bert_jax.main --config=configs/swag.py --config.task.data_dir=swagaf/data

Reads the released CSVs (`train.csv`, `val.csv`, `test.csv`; columns `sent1`, `sent2`, `ending0..3`,
`label`, the test file without labels). Each choice is encoded as HF's run_swag does: first segment
`sent1`, second `sent2 + " " + ending_i`, so the inputs are [N, 4, seq].
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional

import numpy as np

from bert_jax.tasks import metrics, readers
from bert_jax.tasks.base import Features, Task
from bert_jax.tasks.classification import write_index_tsv

NUM_CHOICES = 4
ENDINGS = tuple(f"ending{i}" for i in range(NUM_CHOICES))
DEFAULT_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}


@dataclasses.dataclass
class SwagExample:
    """A context (`sent1`), the start of the next sentence (`sent2`), four endings, the right one's id
    (None for the test split) and the row's index in its file."""

    sent1: str
    sent2: str
    endings: List[str]
    label: Optional[int] = None
    index: int = 0


class SwagTask(Task):
    name = "swag"
    head = "multiple_choice"
    metric_for_best = "accuracy"
    eval_splits = ("validation",)
    predict_split = "test"

    def num_labels(self) -> int:
        return NUM_CHOICES

    # ---- data -----------------------------------------------------------------------------------------
    def load_split(self, split: str) -> List[SwagExample]:
        files = {**DEFAULT_FILES, **dict(self.config.get("files", {}) or {})}
        if split not in files:
            raise ValueError(f"SWAG has no split {split!r}; expected one of {sorted(files)}")
        if not self.config.get("data_dir", ""):
            raise ValueError("SWAG reads its CSVs from config.task.data_dir")
        path = readers.require_file(os.path.join(os.path.expanduser(self.config.data_dir), files[split]),
                               f"SWAG {split} file")
        columns, rows = readers.read_delimited(path, ",")
        readers.require_columns(path, columns, ("sent1", "sent2") + ENDINGS + (("label",) if split != "test" else ()))
        labelled = "label" in columns
        examples = []
        for n, row in enumerate(rows):
            if any(row[c] is None for c in ("sent1", "sent2") + ENDINGS):
                raise ValueError(f"{path}, line {row['__line__']}: the row has fewer columns than the header")
            label = None
            if labelled and row["label"] not in (None, ""):
                if row["label"].strip() not in {str(i) for i in range(NUM_CHOICES)}:
                    raise ValueError(f"{path}, line {row['__line__']}: label {row['label']!r} is not one of "
                                     f"0..{NUM_CHOICES - 1}")
                label = int(row["label"])
            examples.append(SwagExample(row["sent1"], row["sent2"], [row[e] for e in ENDINGS], label, n))
        if split != "test" and any(e.label is None for e in examples):
            raise ValueError(f"{path}: {sum(e.label is None for e in examples)} rows have no label")
        limit = self.config.get("max_train_examples" if split == "train" else "max_eval_examples", -1)
        return readers.cap(examples, limit)

    def featurize(self, examples, tokenizer, max_seq_length, split) -> Features:
        """inputs int32 [N, 4, seq] (choice-major within an example); labels int32 [N]."""
        if not examples:
            raise ValueError("no examples to featurize")
        first = [e.sent1 for e in examples for _ in range(NUM_CHOICES)]
        second = [f"{e.sent2} {ending}" for e in examples for ending in e.endings]
        encoded = tokenizer(first, second, truncation=True, padding="max_length", max_length=max_seq_length)
        inputs = {k: np.asarray(encoded[k], np.int32).reshape(len(examples), NUM_CHOICES, max_seq_length)
                  for k in ("input_ids", "token_type_ids", "attention_mask")}
        labels = {}
        if all(e.label is not None for e in examples):
            labels = {"labels": np.asarray([e.label for e in examples], np.int32)}
        return Features(inputs, labels)

    # ---- evaluation -----------------------------------------------------------------------------------
    def postprocess(self, outputs, features, examples) -> np.ndarray:
        """The chosen ending per example (argmax of logits [N, 4])."""
        return np.asarray(outputs["logits"]).argmax(-1).astype(np.int32)

    def metrics(self, predictions, examples) -> Dict[str, float]:
        if any(e.label is None for e in examples):
            raise ValueError("cannot compute SWAG accuracy: the split has no labels")
        return {"accuracy": metrics.accuracy(predictions, np.asarray([e.label for e in examples]))}

    def write_predictions(self, predictions, examples, path) -> None:
        write_index_tsv(path, [e.index for e in examples], [str(int(p)) for p in predictions])

    def predictions_filename(self, split: str) -> str:
        return f"predictions_{split}.tsv"
