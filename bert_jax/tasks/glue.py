"""GLUE: every task of the benchmark (Wang et al., 2019), from the original TSVs or tfds `glue/<task>`.

    python -m bert_jax.main --config=configs/glue.py:task=mrpc --config.task.data_dir=glue_data/MRPC

Sources (config.task.source; "" picks files when data_dir is set, else tfds):
  files  the GLUE distribution's TSVs in `data_dir`: train.tsv, dev.tsv, test.tsv (MNLI: dev_matched,
         dev_mismatched, test_matched, test_mismatched; the AX diagnostic as AX.tsv or diagnostic.tsv).
         They are read with quoting disabled, as the GLUE/tfds/HF readers do: sentences hold unbalanced
         quote characters that a quoting reader would merge across lines.
  tfds   a locally prepared `glue/<task>` through `tfds.data_source` (never downloaded).

Class ids follow the tfds/GLUE label order (e.g. MNLI entailment=0, neutral=1, contradiction=2;
WNLI not_entailment=0), and `write_predictions` writes the submission files the GLUE server expects
(CoLA.tsv ... AX.tsv, `index<TAB>prediction`, labels spelled as in the original TSVs).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from bert_jax.tasks import metrics, readers
from bert_jax.tasks.classification import TextExample, TextPairTask, gold_labels, write_index_tsv

logger = logging.getLogger(__name__)

_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")


@dataclasses.dataclass(frozen=True)
class GlueSpec:
    """How one GLUE task is laid out.

    submission: file stem of the task's submission TSV. tsv_text / tfds_text: the (first, second)
    text column of the TSVs / feature of tfds (second None for single sentences). tsv_label: the TSVs'
    label column (None: no labels, AX). labels: label strings as written in the TSVs and submissions, in
    class-id order (None: regression); class_names: the tfds ClassLabel names in the same order.
    """

    submission: str
    tsv_text: Tuple[str, Optional[str]]
    tfds_text: Tuple[str, Optional[str]]
    tsv_label: Optional[str]
    labels: Optional[Tuple[str, ...]]
    class_names: Optional[Tuple[str, ...]]
    metric_for_best: str = "accuracy"


SPECS: Dict[str, GlueSpec] = {
    "cola": GlueSpec("CoLA", ("sentence", None), ("sentence", None), "label", ("0", "1"),
                     ("unacceptable", "acceptable"), "matthews_correlation"),
    "sst2": GlueSpec("SST-2", ("sentence", None), ("sentence", None), "label", ("0", "1"),
                     ("negative", "positive")),
    "mrpc": GlueSpec("MRPC", ("#1 String", "#2 String"), ("sentence1", "sentence2"), "Quality", ("0", "1"),
                     ("not_equivalent", "equivalent"), "combined_score"),
    "stsb": GlueSpec("STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", None, None,
                     "combined_score"),
    "qqp": GlueSpec("QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate", ("0", "1"),
                    ("not_duplicate", "duplicate"), "combined_score"),
    "mnli": GlueSpec("MNLI", ("sentence1", "sentence2"), ("premise", "hypothesis"), "gold_label", _NLI3, _NLI3),
    "qnli": GlueSpec("QNLI", ("question", "sentence"), ("question", "sentence"), "label", _NLI2, _NLI2),
    "rte": GlueSpec("RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _NLI2, _NLI2),
    "wnli": GlueSpec("WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("0", "1"),
                     ("not_entailment", "entailment")),
    # The diagnostic set: MNLI's classes, test only, predicted by an MNLI model.
    "ax": GlueSpec("AX", ("sentence1", "sentence2"), ("premise", "hypothesis"), None, _NLI3, _NLI3),
}
# CoLA's train/dev TSVs have no header: source, label, the original annotation, sentence.
COLA_COLUMNS = ("source", "label", "original_label", "sentence")
# Split -> file in data_dir; MNLI's matched/mismatched splits are named as in tfds.
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv",
               "validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv",
               "test_matched": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"}
AX_FILES = ("AX.tsv", "diagnostic.tsv", os.path.join("diagnostic", "diagnostic.tsv"), "diagnostic-full.tsv")
SUBMISSION_NAMES = {"test_matched": "MNLI-m", "test_mismatched": "MNLI-mm", "ax": "AX"}


class GlueTask(TextPairTask):
    """One GLUE task, chosen by `config.task.glue_task` (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli).

    Examples are `TextExample`s; predictions are class ids [N] (STS-B: scores [N]). MNLI evaluates on
    validation_matched and validation_mismatched and predicts test_matched, test_mismatched and the AX
    diagnostic (`predict_splits`; `predict_split` is the first of them).
    """


    def __init__(self, config):
        super().__init__(config)
        task = (config.get("glue_task", "") or "").lower().replace("-", "")
        if task not in SPECS or task == "ax":
            raise ValueError(f"config.task.glue_task={config.get('glue_task', '')!r} is not a GLUE task; expected "
                             f"one of {sorted(set(SPECS) - {'ax'})} (AX is predicted by the mnli task)")
        self.glue_task, self.spec = task, SPECS[task]
        self.name = f"glue_{task}"
        self.metric_for_best = self.spec.metric_for_best
        if task == "mnli":
            self.eval_splits = ("validation_matched", "validation_mismatched")
            self.predict_splits = ("test_matched", "test_mismatched", "ax")
        else:
            self.eval_splits = ("validation",)
            self.predict_splits = ("test",)
        self.predict_split = self.predict_splits[0]

    # ---- model ----------------------------------------------------------------------------------------
    def num_labels(self) -> int:
        return 1 if self.spec.labels is None else len(self.spec.labels)

    def problem_type(self) -> str:
        return "regression" if self.spec.labels is None else "single_label_classification"

    def label_names(self) -> Optional[List[str]]:
        return None if self.spec.class_names is None else list(self.spec.class_names)

    # ---- data -----------------------------------------------------------------------------------------
    def _check_split(self, split: str) -> None:
        known = (self.train_split,) + tuple(self.eval_splits) + tuple(self.predict_splits)
        if split not in known:
            raise ValueError(f"GLUE {self.glue_task} has no split {split!r}; expected one of {known}")

    def load_split(self, split: str) -> List[TextExample]:
        self._check_split(split)
        spec = SPECS["ax"] if split == "ax" else self.spec
        if readers.use_tfds(self.config):
            examples = self._load_tfds(split, spec)
        else:
            examples = self._load_tsv(split, spec)
        limit = self.config.get("max_train_examples" if split == self.train_split else "max_eval_examples", -1)
        return readers.cap(examples, limit)

    def _tsv_path(self, split: str) -> str:
        data_dir = os.path.expanduser(self.config.get("data_dir", ""))
        if not data_dir:
            raise ValueError("reading GLUE TSVs needs config.task.data_dir")
        if split == "ax":
            if self.config.get("ax_file", ""):
                return readers.require_file(self.config.ax_file, "GLUE AX diagnostic file")
            for name in AX_FILES:
                if os.path.isfile(os.path.join(data_dir, name)):
                    return os.path.join(data_dir, name)
            raise FileNotFoundError(f"no AX diagnostic TSV in {data_dir} (looked for {list(AX_FILES)}); "
                                    f"set config.task.ax_file")
        return readers.require_file(os.path.join(data_dir, SPLIT_FILES[split]),
                                    f"GLUE {self.glue_task} {split} file")

    def _load_tsv(self, split: str, spec: GlueSpec) -> List[TextExample]:
        path = self._tsv_path(split)
        headerless = self.glue_task == "cola" and not split.startswith("test")
        columns, rows = readers.read_delimited(path, "\t", header=not headerless, quoting=False,
                                          fieldnames=COLA_COLUMNS if headerless else None)
        text_a, text_b = spec.tsv_text
        labelled = spec.tsv_label is not None and spec.tsv_label in columns
        if not split.startswith("test") and split != "ax" and not labelled:
            readers.require_columns(path, columns, [spec.tsv_label])
        readers.require_columns(path, columns, [text_a, text_b])
        index_column = next((c for c in ("index", "id") if c in columns), None)
        needed = [c for c in (text_a, text_b, spec.tsv_label if labelled else None) if c]
        examples, skipped = [], []
        for n, row in enumerate(rows):
            if any(row.get(c) is None for c in needed):
                skipped.append(row["__line__"])  # truncated rows (QQP's train.tsv has some); tfds/HF drop them
                continue
            label = self._tsv_label(path, row, spec) if labelled else None
            index = int(row[index_column]) if index_column and row[index_column].strip().isdigit() else n
            examples.append(TextExample(row[text_a], row[text_b] if text_b else None, label, index))
        if skipped:
            logger.warning("%s: skipped %d rows with missing fields (first at line %d)", path, len(skipped),
                           skipped[0])
        if not examples:
            raise ValueError(f"{path}: no usable rows")
        return examples

    def _tsv_label(self, path: str, row, spec: GlueSpec):
        value = row[spec.tsv_label].strip()
        if spec.labels is None:
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{path}, line {row['__line__']}: score {value!r} is not a number") from None
        if value not in spec.labels:
            raise ValueError(f"{path}, line {row['__line__']}: unknown label {value!r} in column "
                             f"{spec.tsv_label!r}; GLUE {self.glue_task} labels are {list(spec.labels)}")
        return spec.labels.index(value)

    def _load_tfds(self, split: str, spec: GlueSpec) -> List[TextExample]:
        name, tfds_split = ("glue/ax", "test") if split == "ax" else (f"glue/{self.glue_task}", split)
        records = readers.tfds_records(name, tfds_split, self.config.get("tfds_data_dir", ""))
        text_a, text_b = spec.tfds_text
        examples = []
        for n, record in enumerate(records):
            label = np.asarray(record["label"]).item()
            # tfds marks unlabelled (test) rows with -1.
            label = None if label == -1 else (float(label) if spec.labels is None else int(label))
            index = int(np.asarray(record["idx"]).item()) if "idx" in record else n
            second = readers.as_str(record[text_b]) if text_b else None
            examples.append(TextExample(readers.as_str(record[text_a]), second, label, index))
        if not examples:
            raise ValueError(f"tfds {name} split {tfds_split!r} is empty")
        # ArrayRecord order is a shuffle of the TSV rows; `idx` restores the file order.
        return sorted(examples, key=lambda e: e.index)

    # ---- evaluation -----------------------------------------------------------------------------------
    def metrics(self, predictions, examples) -> Dict[str, float]:
        labels = gold_labels(examples)
        return metrics.glue_metrics(self.glue_task, np.asarray(predictions), labels)

    def write_predictions(self, predictions, examples, path) -> None:
        """GLUE submission TSV: `index<TAB>prediction`, labels as in the task's TSVs (0/1 for CoLA, SST-2,
        MRPC, QQP, WNLI; words for the NLI tasks), STS-B scores clipped to [0, 5]."""
        predictions = np.asarray(predictions)
        if len(predictions) != len(examples):
            raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
        if self.spec.labels is None:
            values = [f"{v:.3f}" for v in np.clip(predictions.astype(np.float64), 0.0, 5.0)]
        else:
            values = [self.spec.labels[int(p)] for p in predictions]
        write_index_tsv(path, [e.index for e in examples], values)

    def predictions_filename(self, split: str) -> str:
        """The GLUE server's file name for predict splits (CoLA.tsv, MNLI-m.tsv, AX.tsv, ...)."""
        if split in SUBMISSION_NAMES:
            return f"{SUBMISSION_NAMES[split]}.tsv"
        if split == "test":
            return f"{self.spec.submission}.tsv"
        return f"{self.spec.submission}_{split}.tsv"
