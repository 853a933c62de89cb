"""BERT pre-training data: a faithful port of google-research/bert `create_pretraining_data.py` and its
offline ArrayRecord format (RoBERTa-style dynamic masking and FULL-SENTENCES packing: `dynamic.py`).

Static recipe (`create_training_instances`): input files hold one sentence per line, documents separated by
blank lines (a document does not end at a file boundary, as in the original). Instances are
`[CLS] A [SEP] B [SEP]` with next-sentence labels and masked-LM predictions drawn from one
`random.Random(seed)` in exactly the original's order, so a seed reproduces the original's instances.

Offline format (`write_pretraining_data`; the format itself, `write_examples` and `PretrainingDataSource`, is
in `records.py`): ArrayRecord shards
`{prefix}.array_record-00000-of-0000N` (`group_size:1`, contiguous blocks of the shuffled instances, so record
key k of `PretrainingDataSource` is instance k) plus `{prefix}.features.json`. Each record is a msgpack map
`{feature_name: ExtType(1, msgpack((shape, dtype_name, C-order raw bytes)))}` -- the layout of
`flax.serialization.msgpack_serialize`, so `flax.serialization.msgpack_restore(record)` also reads it, and any
msgpack client can. Features (int32 unless noted):
  input_ids, token_type_ids, attention_mask   [max_seq_length]
  masked_lm_positions, masked_lm_ids          [max_predictions_per_seq]  (zero padded)
  masked_lm_weights                           [max_predictions_per_seq]  float32 1.0 real / 0.0 padding
  next_sentence_labels                        []                         0 = B is next, 1 = B is random
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import logging
import os
import random
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

# The record format lives in records.py; its names resolve here too, where the pipeline and tools look.
from bert_jax.data.records import (FORMAT_VERSION, PretrainingDataSource, decode_example,  # noqa: F401
                                   encode_example, output_prefix, shard_paths, write_examples)

logger = logging.getLogger(__name__)

CLS, SEP, MASK, PAD = "[CLS]", "[SEP]", "[MASK]", "[PAD]"
FEATURE_NAMES = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions", "masked_lm_ids",
                 "masked_lm_weights", "next_sentence_labels")
MaskedLmInstance = collections.namedtuple("MaskedLmInstance", ["index", "label"])


@dataclasses.dataclass
class TrainingInstance:
    """A single training instance (sentence pair), as in the original."""
    tokens: list
    segment_ids: list
    masked_lm_positions: list
    masked_lm_labels: list
    is_random_next: bool


# --------------------------------------------------------------------------------------------- validation
def validate_args(max_seq_length: int = 128, max_predictions_per_seq: int = 20, masked_lm_prob: float = 0.15,
                  short_seq_prob: float = 0.0, dupe_factor: int = 1, num_shards: int = 1) -> None:
    """Raises ValueError naming the offending argument."""
    def _int(name, value, lo):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    _int("max_seq_length", max_seq_length, 5)  # [CLS] a [SEP] b [SEP]
    _int("max_predictions_per_seq", max_predictions_per_seq, 1)
    _int("dupe_factor", dupe_factor, 1)
    _int("num_shards", num_shards, 1)
    if not 0.0 < float(masked_lm_prob) < 1.0:
        raise ValueError(f"masked_lm_prob must be in (0, 1), got {masked_lm_prob!r}")
    if not 0.0 <= float(short_seq_prob) <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob!r}")


def validate_mask_fractions(mask_token_fraction: float = 0.8, random_token_fraction: float = 0.1,
                            prefix: str = "") -> float:
    """Checks the replacement split of the positions chosen for prediction (each becomes [MASK] with
    probability `mask_token_fraction`, a uniformly random token with `random_token_fraction`, and stays as
    it is otherwise; BERT's 80/10/10 is 0.8/0.1). Raises ValueError naming the key (`prefix` + name).

    Returns the probability that a position not replaced by [MASK] keeps its token, the second draw of the
    original recipe (0.5 exactly for 80/10/10, so the default draws are the original's bit for bit)."""
    for name, value in (("mask_token_fraction", mask_token_fraction), ("random_token_fraction", random_token_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{prefix}{name} must be a number in [0, 1], got {value!r}")
    if float(mask_token_fraction) + float(random_token_fraction) > 1.0 + 1e-12:
        raise ValueError(f"{prefix}mask_token_fraction + {prefix}random_token_fraction must be <= 1 (the rest keep "
                         f"their token), got {mask_token_fraction!r} + {random_token_fraction!r}")
    # Rounded so decimal fractions give exact ratios (1 - 0.8 - 0.1 is 0.09999999999999995 in binary).
    keep = max(round(1.0 - float(mask_token_fraction) - float(random_token_fraction), 12), 0.0)
    unmasked = keep + float(random_token_fraction)
    return keep / unmasked if unmasked > 0 else 0.0


def expand_input_files(patterns: Union[str, os.PathLike, Sequence]) -> list[str]:
    """Comma-separated glob patterns (or a list of them) -> sorted file list; ValueError if a pattern matches none."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [p for p in os.fspath(patterns).split(",") if p.strip()]
    files = []
    for pattern in patterns:
        pattern = os.fspath(pattern).strip()
        matched = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
        if not matched:
            raise ValueError(f"input pattern {pattern!r} matched no files")
        files.extend(matched)
    if not files:
        raise ValueError("no input files given")
    return files


def _vocab_words(tokenizer) -> list[str]:
    """`list(tokenizer.vocab.keys())` of the original, i.e. the tokens in vocab-file (= id) order."""
    vocab = tokenizer.vocab
    for token in (CLS, SEP, MASK):
        if token not in vocab:
            raise ValueError(f"tokenizer vocab is missing the special token {token}")
    return sorted(vocab, key=vocab.__getitem__)


def _progress(iterable, total=None, desc="", enabled=False):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True)
    except ImportError:
        def logged():
            every = max(1, (total or 100_000) // 20)
            for n, item in enumerate(iterable, 1):
                if n % every == 0 or n == total:
                    logger.info("%s: %d/%s", desc, n, total if total is not None else "?")
                yield item
        return logged()


class _ByteProgress:
    """Progress over bytes read (tqdm if installed, else a log line every ~5%)."""

    def __init__(self, total, desc, enabled):
        self.bar, self.total, self.desc, self.done, self.logged = None, max(1, total), desc, 0, 0
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, n):
        if not self.enabled:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.done * 20 // self.total > self.logged:
            self.logged = self.done * 20 // self.total
            logger.info("%s: %.0f%%", self.desc, min(100.0, 100.0 * self.done / self.total))

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------- reading documents
def iter_documents(input_files: Sequence[str], tokenizer, as_ids: bool = False,
                   show_progress: bool = False) -> Iterator[list]:
    """Yields documents (lists of tokenized sentences) like the original's reader: one sentence per line, blank
    lines end documents, lines that tokenize to nothing are dropped, empty documents are skipped. Raises
    ValueError naming any input file with no text."""
    for path in input_files:
        if not os.path.isfile(path):
            raise ValueError(f"input file {path!r} does not exist")
        if os.path.getsize(path) == 0:
            raise ValueError(f"input file {path!r} is empty")
    progress = _ByteProgress(sum(os.path.getsize(p) for p in input_files), "reading", show_progress)
    document = []
    for path in input_files:
        has_text = False
        # newline="\n" + errors="ignore" mirrors tf.gfile text reading + convert_to_unicode(..., "ignore").
        with open(path, encoding="utf-8", errors="ignore", newline="\n") as reader:
            for line in reader:
                progress.update(len(line))  # characters, ~bytes
                line = line.strip()
                if not line:  # Empty lines are document delimiters.
                    if document:
                        yield document
                    document = []
                    continue
                has_text = True
                tokens = tokenizer.tokenize(line)
                if tokens:
                    document.append(tokenizer.convert_tokens_to_ids(tokens) if as_ids else tokens)
        if not has_text:
            raise ValueError(f"input file {path!r} is empty (no non-blank lines)")
    progress.close()
    if document:
        yield document


# -------------------------------------------------------------------------------------- the original recipe
def create_training_instances(input_files, tokenizer, max_seq_length, dupe_factor, short_seq_prob,
                              masked_lm_prob, max_predictions_per_seq, rng, do_whole_word_mask=False,
                              transform: Optional[Callable[[TrainingInstance], Any]] = None,
                              show_progress=False, mask_token_fraction=0.8, random_token_fraction=0.1) -> list:
    """Creates the shuffled `TrainingInstance`s from raw text (`transform`, if given, is applied to each instance
    as it is created -- e.g. to store compact encoded records -- without changing the random stream)."""
    validate_args(max_seq_length, max_predictions_per_seq, masked_lm_prob, short_seq_prob, dupe_factor)
    validate_mask_fractions(mask_token_fraction, random_token_fraction)
    if isinstance(input_files, (str, os.PathLike)):
        input_files = expand_input_files(input_files)
    vocab_words = _vocab_words(tokenizer)
    all_documents = list(iter_documents(list(input_files), tokenizer, show_progress=show_progress))
    if not all_documents:
        raise ValueError(f"no documents found in input files {list(input_files)}")
    rng.shuffle(all_documents)

    instances = []
    steps = ((d, i) for d in range(dupe_factor) for i in range(len(all_documents)))
    for _, document_index in _progress(steps, dupe_factor * len(all_documents), "documents", show_progress):
        new = create_instances_from_document(
            all_documents, document_index, max_seq_length, short_seq_prob, masked_lm_prob,
            max_predictions_per_seq, vocab_words, rng, do_whole_word_mask, mask_token_fraction, random_token_fraction)
        instances.extend(map(transform, new) if transform is not None else new)
    rng.shuffle(instances)
    return instances


def create_instances_from_document(all_documents, document_index, max_seq_length, short_seq_prob,
                                   masked_lm_prob, max_predictions_per_seq, vocab_words, rng,
                                   do_whole_word_mask=False, mask_token_fraction=0.8,
                                   random_token_fraction=0.1) -> list[TrainingInstance]:
    """Creates `TrainingInstance`s for a single document (line-for-line the original's logic and RNG calls)."""
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP]

    # Usually fill the whole sequence; with probability short_seq_prob use a shorter (rough) target length.
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances = []
    current_chunk = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                # `a_end` is how many segments from `current_chunk` go into the `A` (first) sentence.
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])

                tokens_b = []
                if len(current_chunk) == 1 or rng.random() < 0.5:  # Random next.
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    # Try to pick a different document (can fail for tiny corpora, as in the original).
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    # We didn't actually use these segments so we "put them back" so they don't go to waste.
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:  # Actual next.
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                assert len(tokens_a) >= 1 and len(tokens_b) >= 1

                tokens = [CLS, *tokens_a, SEP, *tokens_b, SEP]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                tokens, masked_lm_positions, masked_lm_labels = create_masked_lm_predictions(
                    tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng, do_whole_word_mask,
                    mask_token_fraction, random_token_fraction)
                instances.append(TrainingInstance(tokens=tokens, segment_ids=segment_ids,
                                                  masked_lm_positions=masked_lm_positions,
                                                  masked_lm_labels=masked_lm_labels, is_random_next=is_random_next))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def create_masked_lm_predictions(tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng,
                                 do_whole_word_mask=False, mask_token_fraction=0.8, random_token_fraction=0.1):
    """Returns (output_tokens, masked_lm_positions, masked_lm_labels), exactly as the original (whose
    80/10/10 split is the default `mask_token_fraction` / `random_token_fraction`, see
    `validate_mask_fractions`; the draws are the original's whatever the split)."""
    keep_given_unmasked = validate_mask_fractions(mask_token_fraction, random_token_fraction)
    cand_indexes = []
    for i, token in enumerate(tokens):
        if token == CLS or token == SEP:
            continue
        # Whole word masking: '##' continuation pieces join the previous candidate's word.
        if do_whole_word_mask and len(cand_indexes) >= 1 and token.startswith("##"):
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    rng.shuffle(cand_indexes)

    output_tokens = list(tokens)
    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))

    masked_lms = []
    covered_indexes = set()
    for index_set in cand_indexes:
        if len(masked_lms) >= num_to_predict:
            break
        # If adding a whole-word mask would exceed the maximum number of predictions, skip this candidate.
        if len(masked_lms) + len(index_set) > num_to_predict:
            continue
        if any(index in covered_indexes for index in index_set):
            continue
        for index in index_set:
            covered_indexes.add(index)
            if rng.random() < mask_token_fraction:  # 80% of the time, replace with [MASK]
                masked_token = MASK
            elif rng.random() < keep_given_unmasked:  # 10% of the time, keep original
                masked_token = tokens[index]
            else:  # 10% of the time, replace with a random word
                masked_token = vocab_words[rng.randint(0, len(vocab_words) - 1)]
            output_tokens[index] = masked_token
            masked_lms.append(MaskedLmInstance(index=index, label=tokens[index]))
    assert len(masked_lms) <= num_to_predict
    masked_lms = sorted(masked_lms, key=lambda x: x.index)
    return output_tokens, [p.index for p in masked_lms], [p.label for p in masked_lms]


def truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng) -> None:
    """Truncates the longer sequence (b on ties), one token at a time, from the front or back at random."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc_tokens) >= 1
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


# ---------------------------------------------------------------------------------- features and encoding
def instance_to_features(instance: TrainingInstance, tokenizer, max_seq_length: int,
                         max_predictions_per_seq: int) -> dict[str, np.ndarray]:
    """The original's `write_instance_to_example_files` feature computation, as padded numpy arrays."""
    n = len(instance.tokens)
    if n > max_seq_length:
        raise ValueError(f"instance has {n} tokens > max_seq_length={max_seq_length}")
    k = len(instance.masked_lm_positions)
    if k > max_predictions_per_seq:
        raise ValueError(f"instance has {k} predictions > max_predictions_per_seq={max_predictions_per_seq}")
    f = {name: np.zeros(max_seq_length, np.int32) for name in ("input_ids", "token_type_ids", "attention_mask")}
    f["input_ids"][:n] = tokenizer.convert_tokens_to_ids(instance.tokens)
    f["token_type_ids"][:n] = instance.segment_ids
    f["attention_mask"][:n] = 1
    f["masked_lm_positions"] = np.zeros(max_predictions_per_seq, np.int32)
    f["masked_lm_ids"] = np.zeros(max_predictions_per_seq, np.int32)
    f["masked_lm_weights"] = np.zeros(max_predictions_per_seq, np.float32)
    if k:
        f["masked_lm_positions"][:k] = instance.masked_lm_positions
        f["masked_lm_ids"][:k] = tokenizer.convert_tokens_to_ids(instance.masked_lm_labels)
        f["masked_lm_weights"][:k] = 1.0
    f["next_sentence_labels"] = np.asarray(1 if instance.is_random_next else 0, np.int32)
    return f


# ---------------------------------------------------------------------------------------- writing shards
def write_pretraining_data(input_files, output, tokenizer, *, max_seq_length=128, max_predictions_per_seq=20,
                           masked_lm_prob=0.15, short_seq_prob=0.1, dupe_factor=10, do_whole_word_mask=False,
                           random_seed=12345, num_shards=1, show_progress=False, mask_token_fraction=0.8,
                           random_token_fraction=0.1) -> list[str]:
    """The original's `main`: creates the instances with `random.Random(random_seed)` and writes shards."""
    validate_args(max_seq_length, max_predictions_per_seq, masked_lm_prob, short_seq_prob, dupe_factor, num_shards)
    validate_mask_fractions(mask_token_fraction, random_token_fraction)
    files = expand_input_files(input_files)
    logger.info("Reading from %d input files: %s", len(files), files[:10])

    def encode(instance):
        return encode_example(instance_to_features(instance, tokenizer, max_seq_length, max_predictions_per_seq))

    records = create_training_instances(
        files, tokenizer, max_seq_length, dupe_factor, short_seq_prob, masked_lm_prob, max_predictions_per_seq,
        random.Random(random_seed), do_whole_word_mask, transform=encode, show_progress=show_progress,
        mask_token_fraction=mask_token_fraction, random_token_fraction=random_token_fraction)
    config = dict(max_seq_length=max_seq_length, max_predictions_per_seq=max_predictions_per_seq,
                  masked_lm_prob=masked_lm_prob, short_seq_prob=short_seq_prob, dupe_factor=dupe_factor,
                  do_whole_word_mask=do_whole_word_mask, random_seed=random_seed,
                  mask_token_fraction=mask_token_fraction, random_token_fraction=random_token_fraction,
                  input_files=[os.path.abspath(p) for p in files])
    paths = write_examples(records, output, num_shards, {"config": config, "vocab_size": len(tokenizer.vocab)},
                           show_progress)
    logger.info("Wrote %d instances to %d shards: %s", len(records), len(paths), paths[:4])
    return paths


def __getattr__(name: str):
    """`DynamicMasker`, `unmask` and `mlm_only_full_sentences` live in `dynamic.py` (which imports this module's
    special tokens and checks); they resolve here too, where the pipeline and existing code look."""
    if name in ("DynamicMasker", "mlm_only_full_sentences", "unmask"):
        from bert_jax.data import dynamic
        return getattr(dynamic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
