"""Named-entity recognition on CoNLL-2003-format files or tfds `conll2003`.

    python -m bert_jax.main --config=configs/ner.py --config.task.data_dir=conll2003/

Files (one token per line, the token in the first column and its IOB tag in the last; blank lines end
sentences; `-DOCSTART-` lines separate documents): `train.txt`, `valid.txt`, `test.txt` in data_dir
(`config.task.files` renames them). Labels come from `config.task.labels` or, when empty, the sorted
tags of the training file (tfds: its NER ClassLabel order).

Featurizing follows BERT's NER recipe: each word's label sits on its first word piece; later pieces,
special tokens and padding get -100 (ignored by the loss). Sentences longer than max_seq_length are
truncated (counted and logged); their cut-off words are predicted "O" so the metric still counts every
gold entity. Predictions map back from first pieces to one tag per word; metrics are seqeval's
entity-level precision/recall/F1.

Words the tokenizer turns into no word piece at all (a lone zero-width space "\u200b" or soft hyphen
"\xad", which BERT's normalizer deletes, or only accents that accent stripping removes) have no position
to be labelled or predicted at. transformers' `run_ner` example gives such a word no label (its labels
sit on tokens, via `word_ids()`) and scores only labelled tokens, so the word is dropped from both the
gold and the predicted sequence; here too: `postprocess` predicts None for it, `metrics` leaves it out of
both sequences, and the predictions file writes "O" for it (one line per word, aligned with the input).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, List, Optional

import numpy as np

from bert_jax.tasks import metrics, readers
from bert_jax.tasks.base import Features, Task

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
DEFAULT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
TFDS_SPLITS = {"train": "train", "validation": "dev", "test": "test"}


@dataclasses.dataclass
class NerExample:
    """A sentence: its words and (None when unlabelled) one IOB tag per word."""

    words: List[str]
    tags: Optional[List[str]] = None


@dataclasses.dataclass
class NerMeta:
    """`word_index` int32 [N, seq]: the word whose first piece sits at each position, -1 elsewhere.
    `pieceless`: per example, bool [num_words], True for words the tokenizer turns into no word piece
    (even untruncated); they are not scored (see the module docstring)."""

    word_index: np.ndarray
    pieceless: Optional[List[np.ndarray]] = None


def read_conll(path: str) -> List[NerExample]:
    """Sentences of a CoNLL file (token = first column, tag = last; one-column lines are unlabelled)."""
    path = readers.require_file(path, "CoNLL file")
    sentences, words, tags = [], [], []

    def flush(line_number):
        if words:
            if any(t is None for t in tags) and not all(t is None for t in tags):
                raise ValueError(f"{path}: the sentence ending at line {line_number} has tags on only some lines")
            sentences.append(NerExample(list(words), None if tags[0] is None else list(tags)))
        words.clear(), tags.clear()

    try:
        with open(path, encoding="utf-8") as f:
            line_number = 0
            for line_number, line in enumerate(f, start=1):
                columns = line.split()
                if not columns or columns[0] == "-DOCSTART-":
                    flush(line_number)
                    continue
                words.append(columns[0])
                tags.append(columns[-1] if len(columns) > 1 else None)
            flush(line_number)
    except UnicodeDecodeError as e:
        raise readers.not_utf8(path, e) from None
    if not sentences:
        raise ValueError(f"{path} holds no sentences")
    return sentences


def word_starts(words: List[str]) -> np.ndarray:
    """Character offset of each word in `" ".join(words)`."""
    lengths = np.asarray([len(w) for w in words], np.int64)
    return np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]) if len(words) else np.zeros(0, np.int64)


def align_to_words(examples: List[NerExample], tokenizer, max_seq_length: int):
    """Tokenizes each sentence and locates the first word piece of every word.

    The sentence is tokenized as its words joined by spaces, and every piece is assigned to the word
    whose character span holds the piece's start offset. (The tokenizer's own word ids count the
    pre-tokenizer's words, which split punctuation: 'U.S.' is four of them but one CoNLL word.)
    Returns (encoded inputs dict, word_index int32 [N, seq], number of truncated sentences, pieceless:
    per sentence a bool [num_words] array, True for words with no word piece even untruncated).
    """
    texts = [" ".join(e.words) for e in examples]
    encoded = tokenizer(texts, truncation=True, padding="max_length", max_length=max_seq_length,
                        return_offsets_mapping=True, return_word_ids=True)
    word_index = np.full(encoded["word_ids"].shape, -1, np.int32)
    for i, example in enumerate(examples):
        pieces, owner = _piece_owners(example.words, encoded["offset_mapping"][i], encoded["word_ids"][i])
        first = np.ones(len(pieces), bool)
        first[1:] = owner[1:] != owner[:-1]
        word_index[i, pieces[first]] = owner[first]
    full = tokenizer(texts, padding="longest", return_offsets_mapping=True, return_word_ids=True)
    truncated = int((full["attention_mask"].sum(-1) > max_seq_length).sum())
    pieceless = []
    for i, example in enumerate(examples):
        _, owner = _piece_owners(example.words, full["offset_mapping"][i], full["word_ids"][i])
        empty = np.ones(len(example.words), bool)
        empty[owner] = False
        pieceless.append(empty)
    inputs = {k: np.asarray(encoded[k], np.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}
    return inputs, word_index, truncated, pieceless


def _piece_owners(words: List[str], offsets: np.ndarray, tokenizer_words: np.ndarray):
    """(positions of the real pieces of one encoded sentence, the word each of them starts in)."""
    pieces = np.flatnonzero(tokenizer_words >= 0)  # real tokens (not [CLS]/[SEP]/[PAD])
    owner = np.searchsorted(word_starts(words), offsets[pieces, 0], side="right") - 1
    return pieces, owner


class NerTask(Task):
    """CoNLL-2003-style NER with a token-classification head."""

    name = "ner"
    head = "token_classification"
    metric_for_best = "f1"
    eval_splits = ("validation",)
    predict_split = "test"

    def __init__(self, config):
        super().__init__(config)
        self._tfds = readers.use_tfds(config)
        labels = config.get("labels", "") or ()
        if isinstance(labels, str):
            labels = [label.strip() for label in labels.split(",") if label.strip()]
        self._labels: Optional[List[str]] = list(labels) or None
        if self._labels and len(set(self._labels)) != len(self._labels):
            raise ValueError(f"config.task.labels has duplicates: {self._labels}")

    # ---- model ----------------------------------------------------------------------------------------
    def num_labels(self) -> int:
        return len(self.label_names())

    def label_names(self) -> List[str]:
        if self._labels is None:
            if self._tfds:
                from tensorflow_datasets.core.dataset_builders.conll import conll_dataset_builder_utils as conll
                self._labels = list(conll.NER_TAGS)
            else:
                tags = {t for e in read_conll(self._path("train")) for t in (e.tags or ())}
                if not tags:
                    raise ValueError(f"{self._path('train')} has no NER tags; set config.task.labels")
                self._labels = sorted(tags)
        return self._labels

    # ---- data -----------------------------------------------------------------------------------------
    def _path(self, split: str) -> str:
        files = {**DEFAULT_FILES, **dict(self.config.get("files", {}) or {})}
        if split not in files:
            raise ValueError(f"NER has no split {split!r}; expected one of {sorted(files)}")
        data_dir = os.path.expanduser(self.config.get("data_dir", ""))
        return os.path.join(data_dir, files[split])

    def load_split(self, split: str) -> List[NerExample]:
        if self._tfds:
            examples = self._load_tfds(split)
        else:
            path = self._path(split)
            examples = read_conll(path)
            known = set(self.label_names())
            for n, example in enumerate(examples):
                unknown = sorted(set(example.tags or ()) - known)
                if unknown:
                    raise ValueError(f"{path}: sentence {n} ({' '.join(example.words[:8])} ...) has unknown "
                                     f"tag(s) {unknown}; the labels are {self.label_names()}")
        limit = self.config.get("max_train_examples" if split == "train" else "max_eval_examples", -1)
        return readers.cap(examples, limit)

    def _load_tfds(self, split: str) -> List[NerExample]:
        if split not in TFDS_SPLITS:
            raise ValueError(f"NER has no split {split!r}; expected one of {sorted(TFDS_SPLITS)}")
        names = self.label_names()
        examples = []
        for record in readers.tfds_records("conll2003", TFDS_SPLITS[split], self.config.get("tfds_data_dir", "")):
            words = [readers.as_str(w) for w in np.asarray(record["tokens"]).tolist()]
            ids = np.asarray(record["ner"]).tolist()
            if len(ids) != len(words):
                raise ValueError(f"tfds conll2003 {split}: a record has {len(words)} tokens but {len(ids)} tags")
            examples.append(NerExample(words, [names[i] for i in ids]))
        return examples

    def featurize(self, examples, tokenizer, max_seq_length, split) -> Features:
        """inputs [N, seq]; labels [N, seq] (tag id on each word's first piece, -100 elsewhere)."""
        if not examples:
            raise ValueError("no examples to featurize")
        inputs, word_index, truncated, pieceless = align_to_words(examples, tokenizer, max_seq_length)
        if truncated:
            logger.warning("NER %s: %d of %d sentences are longer than max_seq_length=%d word pieces; their "
                           "cut-off words are predicted 'O'", split, truncated, len(examples), max_seq_length)
        labels = {}
        if all(e.tags is not None for e in examples):
            ids = {name: i for i, name in enumerate(self.label_names())}
            label_ids = np.full(word_index.shape, IGNORE_INDEX, np.int32)
            for i, example in enumerate(examples):
                positions = np.flatnonzero(word_index[i] >= 0)
                label_ids[i, positions] = [ids[example.tags[w]] for w in word_index[i, positions]]
            labels = {"labels": label_ids}
        dropped = sum(int(p.sum()) for p in pieceless)
        if dropped:
            logger.warning("NER %s: %d word(s) become no word piece (e.g. a lone zero-width space); they are "
                           "not labelled or scored, as in transformers' run_ner", split, dropped)
        return Features(inputs, labels, NerMeta(word_index, pieceless))

    # ---- evaluation -----------------------------------------------------------------------------------
    def postprocess(self, outputs, features, examples) -> List[List[Optional[str]]]:
        """One tag per word (logits [N, seq, num_labels] read at each word's first piece; "O" for words
        that were truncated away; None for words with no word piece, which are not scored)."""
        predicted = np.asarray(outputs["logits"]).argmax(-1)
        word_index = features.meta.word_index
        pieceless = features.meta.pieceless
        names = self.label_names()
        tags = []
        for i, example in enumerate(examples):
            sentence: List[Optional[str]] = ["O"] * len(example.words)
            for position in np.flatnonzero(word_index[i] >= 0):
                sentence[word_index[i, position]] = names[predicted[i, position]]
            for j in np.flatnonzero(pieceless[i]) if pieceless is not None else ():
                sentence[j] = None
            tags.append(sentence)
        return tags

    def metrics(self, predictions, examples) -> Dict[str, float]:
        """seqeval entity scores over the words that have a prediction (None = no word piece: left out
        of both the gold and the predicted sequence, as transformers' run_ner does)."""
        if any(e.tags is None for e in examples):
            raise ValueError("cannot compute NER metrics: the split has no gold tags")
        gold, predicted = [], []
        for example, tags in zip(examples, predictions):
            keep = [j for j, tag in enumerate(tags) if tag is not None]
            gold.append([example.tags[j] for j in keep])
            predicted.append([tags[j] for j in keep])
        return metrics.entity_metrics(gold, predicted)

    def write_predictions(self, predictions, examples, path) -> None:
        """CoNLL columns: `word gold predicted` (or `word predicted` unlabelled), blank line per sentence;
        a word with no word piece (prediction None) reads "O"."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for example, tags in zip(examples, predictions):
                for j, (word, tag) in enumerate(zip(example.words, tags)):
                    gold = f" {example.tags[j]}" if example.tags is not None else ""
                    f.write(f"{word}{gold} {tag or 'O'}\n")
                f.write("\n")

    def predictions_filename(self, split: str) -> str:
        return f"predictions_{split}.txt"
