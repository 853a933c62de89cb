"""The contract between a fine-tuning task and the fine-tuning loop.

A task turns its data (tfds, files in the original format, generic CSV/JSONL) into `Features`:
host numpy arrays with one leading axis, already tokenized and padded. The loop batches, shards and
trains on them without knowing the task; after an eval pass it hands the model's outputs for every
feature back to the task, which turns them into predictions, metrics and files.

    task = tasks.get_task(config.task)                 # e.g. GlueTask(config.task)
    examples = task.load_split("train")                # task-specific example objects
    features = task.featurize(examples, tokenizer, max_seq_length, split="train")
    ...loop trains `task.build_model(bert_config)` on features.inputs + features.labels...
    outputs = {"logits": [N, ...]}                     # or start_logits / end_logits for QA
    predictions = task.postprocess(outputs, features, examples)
    metrics = task.metrics(predictions, examples)      # {"accuracy": ..., "f1": ...}
    task.write_predictions(predictions, examples, path)
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

HEADS = ("sequence_classification", "token_classification", "question_answering", "multiple_choice")


@dataclasses.dataclass
class Features:
    """Tokenized model inputs of one split; every array shares the leading axis [num_features].

    inputs: `input_ids`, `attention_mask`, `token_type_ids` as int32 [N, seq] (multiple choice:
        [N, num_choices, seq]).
    labels: the keyword arguments the head takes as targets, e.g. {"labels": [N]} (int32 classes,
        float32 regression targets, or float32 [N, num_labels] multi-label), {"labels": [N, seq]} for
        token classification (-100 where ignored), {"start_positions": [N], "end_positions": [N]} for
        QA. Empty for unlabelled splits (GLUE test).
    meta: whatever `postprocess` needs to map features back to examples (SQuAD: example index and
        offsets per window), opaque to the loop.
    """

    inputs: Dict[str, np.ndarray]
    labels: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    meta: Any = None

    def __post_init__(self):
        sizes = {k: len(v) for k, v in {**self.inputs, **self.labels}.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"feature arrays disagree on the number of features: {sizes}")
        if "input_ids" not in self.inputs:
            raise ValueError(f"features need input_ids; got {sorted(self.inputs)}")

    def __len__(self) -> int:
        return len(self.inputs["input_ids"])

    def take(self, indices: np.ndarray) -> Dict[str, np.ndarray]:
        """Inputs and labels of the rows `indices`, as one batch dict."""
        return {k: v[indices] for k, v in {**self.inputs, **self.labels}.items()}


class Task(abc.ABC):
    """One fine-tuning task. Subclasses are constructed from the experiment's `config.task`
    (an ml_collections ConfigDict) and must set the class attributes below."""

    name: str = ""
    head: str = "sequence_classification"  # one of HEADS
    metric_for_best: str = "accuracy"  # key of `metrics()` that picks the best-on-dev checkpoint
    metric_mode: str = "max"
    train_split: str = "train"
    eval_splits: Sequence[str] = ("validation",)  # MNLI: validation_matched, validation_mismatched
    predict_split: Optional[str] = "test"

    def __init__(self, config):
        self.config = config

    # ---- what the model looks like --------------------------------------------------------------
    def num_labels(self) -> int:
        """Classes (1 for regression; choices are not labels for multiple choice)."""
        return 2

    def problem_type(self) -> Optional[str]:
        """HF `problem_type`: None (inferred), 'regression', 'single_label_classification',
        'multi_label_classification'."""
        return None

    def label_names(self) -> Optional[List[str]]:
        """Names of the classes in id order (becomes the HF config's id2label)."""
        return None

    # ---- data ------------------------------------------------------------------------------------
    def vocab_texts(self) -> Optional[Iterable[str]]:
        """Text to train a WordPiece vocab on when a run has neither `vocab` nor `init_from` (the
        embedded demo); None (the default): such a run needs a vocab."""
        return None

    @abc.abstractmethod
    def load_split(self, split: str) -> List[Any]:
        """The examples of `split`; raises a clear error for missing files/columns, unknown labels,
        empty files."""

    @abc.abstractmethod
    def featurize(self, examples: List[Any], tokenizer, max_seq_length: int, split: str) -> Features:
        """Tokenized, padded features for `examples` (training splits carry labels)."""

    # ---- evaluation ------------------------------------------------------------------------------
    @abc.abstractmethod
    def postprocess(self, outputs: Dict[str, np.ndarray], features: Features, examples: List[Any]) -> Any:
        """Predictions per example from the model outputs for every feature (same order as
        `features`): `logits` [N, ...] or `start_logits`/`end_logits` [N, seq]."""

    @abc.abstractmethod
    def metrics(self, predictions: Any, examples: List[Any]) -> Dict[str, float]:
        """The task's reference metrics for `predictions` against the examples' gold labels."""

    def write_predictions(self, predictions: Any, examples: List[Any], path: str) -> None:
        """Writes predictions (a GLUE submission TSV, SQuAD predictions JSON, ...) to `path`."""
        raise NotImplementedError(f"task {self.name!r} does not write predictions")

    def predictions_filename(self, split: str) -> str:
        return f"predictions_{split}.json"
