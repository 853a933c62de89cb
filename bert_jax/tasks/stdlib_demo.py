"""The embedded fine-tuning demo: which family of standard-library modules a docstring sentence
comes from. Built at run time from the stdlib corpus (`bert_jax.data.corpus`), so nothing is
downloaded.

Each sentence of a document whose module belongs to one of `FAMILIES` is an example labelled with
that family; other modules' documents are left out. The train/validation split is by document (a
dev sentence never shares a module's or class's docstrings with a training sentence): documents are
shuffled with a fixed seed and taken into validation until it holds `dev_fraction` of each family's
sentences. With CPython 3.11 that is ~5,600 sentences in 7 classes (the largest, "internet", is ~21%:
the majority-class baseline).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Tuple

import numpy as np

from bert_jax.tasks.base import Features, Task

# Family -> top-level standard-library packages/modules whose docstrings it collects.
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "concurrency": ("asyncio", "concurrent", "threading", "multiprocessing", "queue", "sched", "subprocess",
                    "selectors", "contextvars"),
    "email": ("email", "smtplib", "imaplib", "poplib", "mailbox", "mimetypes"),
    "internet": ("http", "urllib", "xmlrpc", "wsgiref", "ftplib", "socket", "socketserver", "ssl", "ipaddress",
                 "webbrowser"),
    "markup": ("xml", "html"),
    "logging": ("logging",),
    "testing_debugging": ("unittest", "doctest", "pdb", "bdb", "trace", "traceback", "timeit", "profile", "pstats"),
    "files": ("os", "pathlib", "shutil", "tarfile", "zipfile", "glob", "fnmatch", "tempfile", "filecmp", "gzip",
              "bz2", "lzma", "zlib", "fileinput", "stat", "io"),
}
LABELS: Tuple[str, ...] = tuple(FAMILIES)
_FAMILY_OF = {module: label for label, modules in FAMILIES.items() for module in modules}


@dataclasses.dataclass(frozen=True)
class Example:
    text: str
    label: int  # index into LABELS
    source: str  # the module the sentence's docstring belongs to
    document: int  # index of its document in the corpus


def family_of(module: str) -> Optional[str]:
    """'asyncio.tasks' -> 'concurrency'; None for modules outside FAMILIES."""
    return _FAMILY_OF.get(module.split(".")[0])


def split_documents(documents: List[Tuple[int, int, int]], dev_fraction: float, seed: int) -> set:
    """Document ids of the validation split. `documents`: (document id, label, sentence count).

    Per label, documents in a seeded random order join validation while it stays within
    `dev_fraction` of that label's sentences (a document that would overshoot is skipped, so one huge
    module cannot take the whole split)."""
    rng = np.random.default_rng(seed)
    dev = set()
    for label in sorted({d[1] for d in documents}):
        docs = [d for d in documents if d[1] == label]
        target = dev_fraction * sum(n for _, _, n in docs)
        taken = 0
        for index in rng.permutation(len(docs)):
            doc_id, _, count = docs[index]
            if taken + count <= target:
                dev.add(doc_id)
                taken += count
    return dev


class StdlibDemoTask(Task):
    """Sentence classification into `LABELS`; metrics: accuracy, macro F1 and the majority-class
    baseline (always predicting the most frequent training class)."""

    name = "stdlib_demo"
    head = "sequence_classification"
    metric_for_best = "accuracy"
    eval_splits = ("validation",)
    predict_split = "validation"

    def __init__(self, config):
        super().__init__(config)
        self.dev_fraction = float(config.get("dev_fraction", 0.2))
        self.split_seed = int(config.get("split_seed", 0))
        if not 0.0 < self.dev_fraction < 1.0:
            raise ValueError(f"task.dev_fraction must be in (0, 1), got {self.dev_fraction}")
        self._splits: Optional[Dict[str, List[Example]]] = None

    def num_labels(self) -> int:
        return len(LABELS)

    def problem_type(self) -> Optional[str]:
        return "single_label_classification"

    def label_names(self) -> List[str]:
        return list(LABELS)

    # ---- data ------------------------------------------------------------------------------------
    def _build_splits(self) -> Dict[str, List[Example]]:
        if self._splits is None:
            from bert_jax.data.corpus import stdlib_labelled_documents
            labelled = []
            for doc_id, (source, sentences) in enumerate(stdlib_labelled_documents()):
                family = family_of(source)
                if family is not None:
                    labelled.append((doc_id, LABELS.index(family), source, sentences))
            if not labelled:
                raise RuntimeError("the stdlib corpus has no document of the demo's module families")
            dev = split_documents([(d, label, len(s)) for d, label, _, s in labelled], self.dev_fraction,
                                  self.split_seed)
            splits = {"train": [], "validation": []}
            for doc_id, label, source, sentences in labelled:
                split = "validation" if doc_id in dev else "train"
                splits[split].extend(Example(s, label, source, doc_id) for s in sentences)
            self._splits = splits
        return self._splits

    def load_split(self, split: str) -> List[Example]:
        splits = self._build_splits()
        if split not in splits:
            raise ValueError(f"stdlib_demo has splits {sorted(splits)}, not {split!r}")
        limit = self.config.get("max_train_examples" if split == "train" else "max_eval_examples", -1)
        examples = splits[split]
        if limit is not None and limit >= 0:
            # A seeded sample rather than the first N: the split is grouped by document and family.
            keep = np.sort(np.random.default_rng(self.split_seed).permutation(len(examples))[:limit])
            examples = [examples[i] for i in keep]
        return examples

    def vocab_texts(self):
        from bert_jax.data.corpus import stdlib_sentences
        return stdlib_sentences()

    def featurize(self, examples: List[Example], tokenizer, max_seq_length: int, split: str) -> Features:
        encoded = tokenizer([e.text for e in examples], truncation=True, padding="max_length",
                            max_length=max_seq_length)
        inputs = {k: np.asarray(encoded[k], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
        return Features(inputs, {"labels": np.asarray([e.label for e in examples], np.int32)})

    # ---- evaluation ------------------------------------------------------------------------------
    def postprocess(self, outputs, features: Features, examples: List[Example]) -> np.ndarray:
        """Predicted class ids [N] (argmax of `logits` [N, num_labels])."""
        return np.argmax(np.asarray(outputs["logits"]), axis=-1)

    def majority_class(self) -> int:
        counts = np.bincount([e.label for e in self.load_split("train")], minlength=len(LABELS))
        return int(np.argmax(counts))

    def metrics(self, predictions: np.ndarray, examples: List[Example]) -> Dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score
        gold = np.asarray([e.label for e in examples])
        predictions = np.asarray(predictions)
        return {"accuracy": float(accuracy_score(gold, predictions)),
                "macro_f1": float(f1_score(gold, predictions, average="macro", labels=list(range(len(LABELS))),
                                           zero_division=0)),
                "majority_baseline_accuracy": float(accuracy_score(gold, np.full_like(gold, self.majority_class())))}

    def write_predictions(self, predictions: np.ndarray, examples: List[Example], path: str) -> None:
        rows = [{"text": e.text, "source": e.source, "label": LABELS[e.label], "prediction": LABELS[int(p)]}
                for e, p in zip(examples, predictions)]
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
