"""Training a WordPiece vocab (`train_wordpiece`): BERT-normalised, deterministic, returned as a `BertTokenizer`."""

from __future__ import annotations

import os
from typing import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from bert_jax.tokenization import (DEFAULT_MODEL_MAX_LENGTH, SPECIAL_TOKENS, UNK, BertTokenizer, _bert_normalizer,
                                   _build_backend)


def train_wordpiece(files_or_iterator, vocab_size: int, lowercase: bool = True, strip_accents: bool | None = None,
                    tokenize_chinese_chars: bool = True, min_frequency: int = 2, limit_alphabet: int = 1000,
                    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH, show_progress: bool = False) -> BertTokenizer:
    """Trains a WordPiece vocab with BERT normalization; the same corpus and settings give the same vocab
    (token for token, id for id) in any process.

    The vocab holds about `vocab_size` entries: the trainer always keeps the whole (`limit_alphabet`-capped)
    character alphabet and its '##' forms, which can push it past `vocab_size` on small corpora.

    Determinism: `tokenizers`' trainer gives the '##' continuation pieces ids in hash-map order, different in
    every process, and those ids break ties between equally frequent merges (huggingface/tokenizers#1794), so
    two runs could learn different vocabularies; with `limit_alphabet` cutting the alphabet, which of equally
    frequent characters survive was hash order too. Here a first, merge-free pass finds the alphabet and the
    continuation pieces, the alphabet is cut deterministically (most frequent first, ties by code point), and
    the real pass gets them, sorted, as its first tokens: every id, and so every tie-break, is fixed. Ids:
    the special tokens 0..4 ([PAD], [UNK], [CLS], [SEP], [MASK]), the alphabet by code point, the '##' forms
    by code point, then the learned pieces in merge order.

    `files_or_iterator` is a path, a list of paths, or an iterable of text strings (e.g. a generator or a list
    of lines; a list of str counts as paths only if every entry is an existing file). An iterator is read
    into memory once (both passes read it).
    """
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be an int above {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
    if not isinstance(limit_alphabet, int) or isinstance(limit_alphabet, bool) or limit_alphabet < 1:
        raise ValueError(f"limit_alphabet must be a positive int, got {limit_alphabet!r}")
    files = _as_files(files_or_iterator)
    texts = None if files is not None else list(files_or_iterator)

    def run(trainer) -> Tokenizer:
        backend = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
        backend.normalizer = _bert_normalizer(lowercase, strip_accents, tokenize_chinese_chars)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        if files is not None:
            try:
                backend.train(files, trainer)
            except Exception as e:  # the backend raises the bare Exception type, naming no file
                if "UTF-8" not in str(e):
                    raise
                raise ValueError(f"training files are not all UTF-8 text: {_non_utf8(files)}") from None
        else:
            backend.train_from_iterator(texts, trainer)
        return backend

    # Pass 1, no merges (the vocab is full from the start): the alphabet and the '##' forms that occur.
    probe = run(trainers.WordPieceTrainer(vocab_size=len(SPECIAL_TOKENS), min_frequency=min_frequency,
                                          special_tokens=list(SPECIAL_TOKENS), continuing_subword_prefix="##",
                                          show_progress=False))
    found = probe.get_vocab(with_added_tokens=False)
    alphabet = sorted(t for t in found if len(t) == 1)
    if len(alphabet) > limit_alphabet:  # keep the most frequent characters, ties by code point
        counts = _char_counts(probe, files, texts)
        alphabet = sorted(sorted(alphabet, key=lambda c: (-counts.get(c, 0), c))[:limit_alphabet])
    kept = set(alphabet)
    continuations = sorted(t for t in found if len(t) == 3 and t.startswith("##") and t[2] in kept)
    # Pass 2: the same alphabet (initial_alphabet + a limit of exactly its size keeps just it) and every
    # base token given up front, in a fixed order, so the trainer assigns no id in hash order.
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL_TOKENS) + alphabet + continuations,
                                        initial_alphabet=alphabet, limit_alphabet=len(alphabet),
                                        continuing_subword_prefix="##", show_progress=show_progress)
    backend = run(trainer)
    return BertTokenizer(_build_backend(backend.get_vocab(), lowercase, strip_accents, tokenize_chinese_chars),
                         do_lower_case=lowercase, strip_accents=strip_accents,
                         tokenize_chinese_chars=tokenize_chinese_chars, model_max_length=model_max_length)


def _non_utf8(files) -> list[str]:
    """The files of `files` that do not decode as UTF-8."""
    bad = []
    for path in files:
        with open(path, "rb") as f:
            try:
                f.read().decode("utf-8")
            except UnicodeDecodeError:
                bad.append(path)
    return bad


def _char_counts(backend: Tokenizer, files, texts) -> dict[str, int]:
    """Occurrences of each character in the normalized, pre-tokenized corpus (what the trainer counts)."""
    import collections
    counts: collections.Counter = collections.Counter()

    def lines():
        if texts is not None:
            yield from texts
            return
        for path in files:
            with open(path, encoding="utf-8") as f:
                yield from f

    for line in lines():
        normalized = backend.normalizer.normalize_str(line)
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized):
            counts.update(word)
    return counts


def _as_files(source: Iterable) -> list[str] | None:
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"training file {os.fspath(source)} does not exist")
        return [os.fspath(source)]
    if not isinstance(source, (list, tuple)):
        return None
    paths = [os.fspath(p) for p in source if isinstance(p, (str, os.PathLike))]
    if len(paths) != len(source):
        return None
    exists = [os.path.isfile(p) for p in paths]
    if all(exists) and paths:
        return paths
    if any(exists) or any(isinstance(p, os.PathLike) for p in source):
        raise FileNotFoundError(f"training files not found: {[p for p, e in zip(paths, exists) if not e]}")
    return None
