"""Deterministic, per-host input pipelines on grain (`grain.python`: IndexSampler + DataLoader).

Each process (JAX host) builds the same loader with its own `process_index`; it reads a disjoint, contiguous
1/process_count of the records (grain `ShardOptions(drop_remainder=True)`, so up to process_count - 1
records are never read), shuffles them per epoch with `seed` and yields *local* batches of
`global_batch_size // process_count` rows of numpy arrays. Put them on the mesh with
`bert_jax.sharding.make_global_batch(local_batch, mesh)` (process p's rows form block p of the global batch).

    loader = make_pretraining_loader("out_dir/", global_batch_size=256, seed=0)
    it = iter(loader)
    batch = next(it)                          # dict of [256 / process_count, ...] numpy arrays
    state = iterator_state_to_bytes(it)       # save with the checkpoint (one state per process)
    ...
    it = iterator_state_from_bytes(iter(loader), state)   # resumes with exactly the next batch

Pre-training batches have the keys of `bert_jax.data.pretraining.FEATURE_NAMES`: input_ids, token_type_ids,
attention_mask [B, seq_len] int32; masked_lm_positions, masked_lm_ids [B, P] int32; masked_lm_weights [B, P]
float32; next_sentence_labels [B] int32 (-100, the loss ignore index, where there is no NSP task).

Dynamic masking (`masker=`): the source holds unmasked tokenized features; record k in epoch e is masked
by `masker(features, index=k, epoch=e)` (`DynamicMasker` draws from `default_rng([seed, e, k])`), so masks
depend on neither process count, shuffling nor worker count, and change every epoch. The epoch travels in
the record key: the sampler hands the source the key `e * num_records + k`.

Importing this module imports grain (and so jax, which grain imports).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import sys
import threading
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import grain.python as grain
import numpy as np

from bert_jax.data import pretraining
from bert_jax.data.records import PretrainingDataSource
from bert_jax.data.sources import InMemorySource

__all__ = ["make_pretraining_loader", "make_text_mlm_loader", "text_mlm_examples",
           "iterator_state_to_bytes", "iterator_state_from_bytes", "restore_iterator", "batches_per_epoch",
           "nsp_instances", "default_read_options", "NO_NSP_LABEL"]

NO_NSP_LABEL = -100  # bert_jax.modeling.losses.IGNORE_INDEX: no next-sentence target


# ----------------------------------------------------------------------------------------------- checks
def _resolve_processes(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    for name, value in (("process_index", process_index), ("process_count", process_count)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index} and {process_count}")
    return int(process_index), int(process_count)


def _local_batch_size(global_batch_size, process_count) -> int:
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, (int, np.integer)) \
            or global_batch_size < 1:
        raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size!r}")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}")
    return int(global_batch_size) // process_count


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def _check_source(source, process_count) -> int:
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise TypeError(f"source must be random-access (__len__ and __getitem__), got {type(source).__name__}")
    n = len(source)
    if n < process_count:
        raise ValueError(f"the source has {n} records, fewer than process_count={process_count}")
    return n


def default_read_options():
    """grain's ReadOptions with one read thread per available core, at most 16 (grain's default is 16 threads,
    which on a 2-core host runs ~1.5x slower than 2 because the reads are GIL-bound Python)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return grain.ReadOptions(num_threads=max(1, min(16, cores)), prefetch_buffer_size=500)


def _ensure_absl_flags_parsed():
    """grain's worker processes read absl flags; mark them parsed if the program did not use absl.app."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _describe(obj) -> str:
    """A repr without memory addresses (grain checks `repr(sampler)` / `repr(source)` on restore)."""
    if isinstance(obj, pretraining.DynamicMasker):
        return (f"DynamicMasker(seed={obj.seed}, vocab_size={obj.vocab_size}, mask_token_id={obj.mask_token_id}, "
                f"masked_lm_prob={obj.masked_lm_prob}, max_predictions_per_seq={obj.max_predictions_per_seq}, "
                f"whole_word_mask={obj.whole_word_mask}, per_epoch={obj.per_epoch}"
                + (f", mask_token_fraction={obj.mask_token_fraction}, random_token_fraction={obj.random_token_fraction}"
                   if (obj.mask_token_fraction, obj.random_token_fraction) != (0.8, 0.1) else "") + ")")
    if isinstance(obj, (list, tuple, np.ndarray)):
        return f"{type(obj).__name__}(len={len(obj)})"
    text = repr(obj)
    return type(obj).__qualname__ if " at 0x" in text else text


# --------------------------------------------------------------------------------- grain building blocks
class _EpochKeySampler:
    """grain `IndexSampler`, with the epoch folded into the record key: key = epoch * num_records + record."""

    def __init__(self, num_records: int, shard_options, shuffle: bool, num_epochs: Optional[int], seed: int):
        self._inner = grain.IndexSampler(num_records=num_records, shard_options=shard_options, shuffle=shuffle,
                                         num_epochs=num_epochs, seed=seed)
        self._num_records = num_records
        self._shard_count = shard_options.shard_count
        self._per_shard = num_records // shard_options.shard_count  # drop_remainder=True: equal shards

    def __len__(self) -> int:
        return len(self._inner)

    def __getitem__(self, index: int):
        metadata = self._inner[index]
        epoch = (index // self._shard_count) // self._per_shard
        return grain.RecordMetadata(index=metadata.index, rng=metadata.rng,
                                    record_key=epoch * self._num_records + metadata.record_key)

    def __repr__(self) -> str:
        return f"EpochKeySampler({self._inner!r})"


class _MaskedSource:
    """Serves key `epoch * n + k` as `masker(source[k], index=k, epoch=epoch)`; its length is the key space."""

    def __init__(self, source, masker, num_epochs: Optional[int]):
        self._source, self._masker = source, masker
        self._n = len(source)
        self._len = self._n * num_epochs if num_epochs is not None else (sys.maxsize // self._n) * self._n

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, key):
        epoch, index = divmod(int(key), self._n)
        return self._masker(self._source[index], index=index, epoch=epoch)

    def __repr__(self) -> str:
        return f"MaskedSource({_describe(self._source)}, masker={_describe(self._masker)})"


class _ToPretrainingFeatures(grain.MapTransform):
    """Checks and casts one record to the pre-training features."""

    def map(self, features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if "input_ids" not in features:
            raise KeyError(f"pre-training records need 'input_ids'; got keys {sorted(features)}")
        missing = [k for k in ("masked_lm_positions", "masked_lm_ids") if k not in features]
        if missing:
            raise KeyError(f"records lack {missing}: pass masker=DynamicMasker(...) to mask unmasked features "
                           f"on the fly")
        ids = np.asarray(features["input_ids"], np.int32)
        out = {"input_ids": ids,
               "token_type_ids": np.asarray(features.get("token_type_ids", np.zeros_like(ids)), np.int32),
               "attention_mask": np.asarray(features.get("attention_mask", np.ones_like(ids)), np.int32),
               "masked_lm_positions": np.asarray(features["masked_lm_positions"], np.int32),
               "masked_lm_ids": np.asarray(features["masked_lm_ids"], np.int32)}
        weights = features.get("masked_lm_weights")
        if weights is None:  # padding positions are 0 ([CLS], never a prediction)
            weights = out["masked_lm_positions"] > 0
        out["masked_lm_weights"] = np.asarray(weights, np.float32)
        out["next_sentence_labels"] = np.asarray(features.get("next_sentence_labels", NO_NSP_LABEL), np.int32)
        return out


def _data_loader(source, operations, *, global_batch_size, seed, process_index, process_count, shuffle,
                 num_epochs, drop_remainder, worker_count, read_options, masker=None):
    process_index, process_count = _resolve_processes(process_index, process_count)
    local = _local_batch_size(global_batch_size, process_count)
    seed = _check_seed(seed)
    n = _check_source(source, process_count)
    if num_epochs is not None and (isinstance(num_epochs, bool) or not isinstance(num_epochs, (int, np.integer))
                                   or num_epochs < 1):
        raise ValueError(f"num_epochs must be a positive integer or None (repeat forever), got {num_epochs!r}")
    epochs = None if num_epochs is None else int(num_epochs)
    if isinstance(worker_count, bool) or not isinstance(worker_count, (int, np.integer)) or worker_count < 0:
        raise ValueError(f"worker_count must be an integer >= 0, got {worker_count!r}")
    if worker_count:
        _ensure_absl_flags_parsed()
    shard_options = grain.ShardOptions(shard_index=process_index, shard_count=process_count, drop_remainder=True)
    if masker is not None:
        sampler = _EpochKeySampler(n, shard_options, shuffle, epochs, seed)
        source = _MaskedSource(source, masker, epochs)
    else:
        sampler = grain.IndexSampler(num_records=n, shard_options=shard_options, shuffle=shuffle,
                                     num_epochs=epochs, seed=seed)
    if read_options is None:
        read_options = default_read_options()
    operations = [*operations, grain.Batch(batch_size=local, drop_remainder=drop_remainder)]
    return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                            worker_count=int(worker_count), shard_options=shard_options, read_options=read_options)


# ------------------------------------------------------------------------------------------- loaders
def make_pretraining_loader(source: Union[str, Sequence, Any], *, global_batch_size: int, seed: int,
                            process_index: Optional[int] = None, process_count: Optional[int] = None,
                            shuffle: bool = True, num_epochs: Optional[int] = None,
                            masker: Optional[Callable] = None, drop_remainder: bool = True, worker_count: int = 0,
                            read_options=None):
    """grain `DataLoader` of pre-training batches (see the module docstring for keys, dtypes and sharding).

    source: a random-access source of feature dicts -- e.g. `PretrainingDataSource` -- or what
      `PretrainingDataSource` accepts (a directory, shard prefix, glob or list of shards).
    masker: e.g. `DynamicMasker.from_tokenizer(tok, seed=...)`, for sources of unmasked features (input_ids,
      token_type_ids, attention_mask, optionally next_sentence_labels); called as masker(features, index=k,
      epoch=e). Without it the records must carry their (static) masked_lm_* features.
    num_epochs: None repeats forever (batches run across epoch boundaries); n stops after n epochs.
    drop_remainder: drop a last partial local batch (only reachable with num_epochs set).
    worker_count: grain worker processes (0 = read and transform in this process, with grain's read threads).
    read_options: `grain.ReadOptions(num_threads=..., prefetch_buffer_size=...)` for the reading threads
      (default `default_read_options()`: a thread per core, at most 16).
    """
    if isinstance(source, (str, bytes)) or (isinstance(source, (list, tuple)) and source
                                             and isinstance(source[0], str)):
        source = PretrainingDataSource(source)
    return _data_loader(source, [_ToPretrainingFeatures()],
                        global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                        process_count=process_count, shuffle=shuffle, num_epochs=num_epochs,
                        drop_remainder=drop_remainder, worker_count=worker_count, read_options=read_options,
                        masker=masker)


# -------------------------------------------------------------------------- text -> MLM examples (demo path)
_CACHE_SIZE = 4
_cache: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_cache_lock = threading.Lock()


def _cached(key, build):
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = build()
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def _as_documents(documents_or_source) -> list[list[str]]:
    """Documents as lists of stripped, non-empty sentences."""
    if isinstance(documents_or_source, (str, bytes)):
        raise TypeError("documents_or_source must be documents (lists of sentences) or a source, not a str; "
                        "read files with bert_jax.data.sources.TextLinesSource(paths, mode='documents')")
    documents = []
    for i in range(len(documents_or_source)):
        doc = documents_or_source[i]
        if isinstance(doc, Mapping):
            if "sentences" in doc:
                doc = doc["sentences"]
            elif "text" in doc:
                doc = str(doc["text"]).splitlines()
            else:
                raise KeyError(f"record {i} has neither 'sentences' nor 'text' (keys {sorted(doc)})")
        elif isinstance(doc, str):
            doc = doc.splitlines()
        sentences = [str(s).strip() for s in doc]
        sentences = [s for s in sentences if s]
        if sentences:
            documents.append(sentences)
    if not documents:
        raise ValueError("no text: every document is empty")
    return documents


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.vocab.items()))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _documents_fingerprint(documents) -> str:
    h = hashlib.blake2b(digest_size=8)
    for doc in documents:
        for s in doc:
            h.update(s.encode())
            h.update(b"\n")
        h.update(b"\x00")
    return h.hexdigest()


def _tokenize(documents, tokenizer) -> list[list[tuple[list[str], list[int]]]]:
    """Documents of (tokens, ids) per sentence; sentences that tokenize to nothing are dropped (as
    create_pretraining_data's reader does), and so are documents left empty."""
    flat = [s for doc in documents for s in doc]
    backend = getattr(tokenizer, "backend", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        encodings = backend.encode_batch(flat, add_special_tokens=False)
        pieces = [(e.tokens, e.ids) for e in encodings]
    else:
        pieces = []
        for s in flat:
            tokens = tokenizer.tokenize(s)
            pieces.append((tokens, tokenizer.convert_tokens_to_ids(tokens)))
    out, k = [], 0
    for doc in documents:
        sentences = [p for p in pieces[k:k + len(doc)] if p[0]]
        k += len(doc)
        if sentences:
            out.append(sentences)
    return out


def text_mlm_examples(documents_or_source, tokenizer, *, seq_len: int, mode: str = "full_sentences", seed: int = 0,
                      masked_lm_prob: float = 0.15, max_predictions: int = 20, dupe_factor: int = 1,
                      short_seq_prob: float = 0.1, whole_word_mask: bool = False) -> list[dict[str, np.ndarray]]:
    """Unmasked fixed-length examples from text (cached in memory: tokenization per (tokenizer, text), the
    examples per all arguments).

    mode='full_sentences': RoBERTa FULL-SENTENCES packing (`mlm_only_full_sentences`); next_sentence_labels
      = -100 (no NSP).
    mode='nsp': google-research sentence pairs -- `create_training_instances`' algorithm run in memory with
      `random.Random(seed)` (the same instances it would create from these documents written to a file), the
      recipe's static masks undone so the pipeline can mask dynamically; next_sentence_labels 0/1.
    """
    if mode not in ("full_sentences", "nsp"):
        raise ValueError(f"mode must be 'full_sentences' or 'nsp', got {mode!r}")
    pretraining.validate_args(max_seq_length=seq_len, max_predictions_per_seq=max_predictions,
                              masked_lm_prob=masked_lm_prob, short_seq_prob=short_seq_prob, dupe_factor=dupe_factor)
    documents = _as_documents(documents_or_source)
    text_key = (_tokenizer_fingerprint(tokenizer), _documents_fingerprint(documents))
    tokenized = _cached(("tokens", *text_key), lambda: _tokenize(documents, tokenizer))
    if not tokenized:
        raise ValueError("no text: nothing tokenized to any token")
    if mode == "full_sentences":
        key = ("full_sentences", *text_key, seq_len)
        return _cached(key, lambda: _full_sentences(tokenized, tokenizer, seq_len))
    key = ("nsp", *text_key, seq_len, seed, masked_lm_prob, max_predictions, dupe_factor, short_seq_prob,
           whole_word_mask)
    return _cached(key, lambda: _nsp_examples(tokenized, tokenizer, seq_len, seed, masked_lm_prob, max_predictions,
                                              dupe_factor, short_seq_prob, whole_word_mask))


def _full_sentences(tokenized, tokenizer, seq_len):
    vocab = tokenizer.vocab
    docs = ([ids for _, ids in doc] for doc in tokenized)
    examples = list(pretraining.mlm_only_full_sentences(docs, seq_len, vocab[pretraining.CLS],
                                                        vocab[pretraining.SEP], vocab[pretraining.PAD]))
    for example in examples:
        example["next_sentence_labels"] = np.asarray(NO_NSP_LABEL, np.int32)
    return examples


def nsp_instances(tokenized_documents, tokenizer, seq_len, seed, masked_lm_prob=0.15, max_predictions=20,
                  dupe_factor=1, short_seq_prob=0.1, whole_word_mask=False) -> list:
    """`create_training_instances`' loop on already tokenized documents (lists of token lists)."""
    rng = random.Random(seed)
    all_documents = [list(doc) for doc in tokenized_documents]
    rng.shuffle(all_documents)
    vocab_words = pretraining._vocab_words(tokenizer)
    instances = []
    for _ in range(dupe_factor):
        for index in range(len(all_documents)):
            instances.extend(pretraining.create_instances_from_document(
                all_documents, index, seq_len, short_seq_prob, masked_lm_prob, max_predictions, vocab_words, rng,
                whole_word_mask))
    rng.shuffle(instances)
    return instances


def _nsp_examples(tokenized, tokenizer, seq_len, seed, masked_lm_prob, max_predictions, dupe_factor,
                  short_seq_prob, whole_word_mask):
    vocab = tokenizer.vocab
    unk = vocab.get("[UNK]", 0)
    instances = nsp_instances([[tokens for tokens, _ in doc] for doc in tokenized], tokenizer, seq_len, seed,
                              masked_lm_prob, max_predictions, dupe_factor, short_seq_prob, whole_word_mask)
    examples = []
    for instance in instances:
        tokens = list(instance.tokens)
        for position, label in zip(instance.masked_lm_positions, instance.masked_lm_labels):
            tokens[position] = label  # undo the recipe's static mask
        n = len(tokens)
        f = {k: np.zeros(seq_len, np.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}
        f["input_ids"][:n] = [vocab.get(t, unk) for t in tokens]
        f["token_type_ids"][:n] = instance.segment_ids
        f["attention_mask"][:n] = 1
        f["next_sentence_labels"] = np.asarray(1 if instance.is_random_next else 0, np.int32)
        examples.append(f)
    return examples


def make_text_mlm_loader(documents_or_source, tokenizer, *, seq_len: int, global_batch_size: int, seed: int,
                         masked_lm_prob: float = 0.15, max_predictions: int = 20, mode: str = "full_sentences",
                         whole_word_mask: bool = False, dupe_factor: int = 1, short_seq_prob: float = 0.1,
                         dynamic_masking: bool = True, process_index: Optional[int] = None, process_count: Optional[int] = None,
                         shuffle: bool = True, num_epochs: Optional[int] = None, drop_remainder: bool = True,
                         worker_count: int = 0, read_options=None, mask_token_fraction: float = 0.8,
                         random_token_fraction: float = 0.1):
    """Pre-training batches straight from text, for the demo and small corpora: the text is tokenized once
    (cached in memory), turned into fixed-length examples (`text_mlm_examples`: FULL-SENTENCES packing or NSP
    pairs) and masked per epoch with `DynamicMasker.from_tokenizer(tokenizer, seed=seed, ...)`
    (`dynamic_masking=False`: every epoch reuses the first pass's masks).

    documents_or_source: documents (each a list of sentences, or a str with a sentence per line), e.g.
      `bert_jax.data.corpus.stdlib_documents()`, or a source of dicts with 'sentences' or 'text' (e.g.
      `TextLinesSource(paths, mode='documents')`)."""
    examples = text_mlm_examples(documents_or_source, tokenizer, seq_len=seq_len, mode=mode, seed=seed,
                                 masked_lm_prob=masked_lm_prob, max_predictions=max_predictions,
                                 dupe_factor=dupe_factor, short_seq_prob=short_seq_prob,
                                 whole_word_mask=whole_word_mask)
    fingerprint = hashlib.blake2b(
        b"".join(e["input_ids"].tobytes() + e["token_type_ids"].tobytes() for e in examples),
        digest_size=8).hexdigest()
    source = InMemorySource(examples, name=f"text_mlm/{mode}/seq{seq_len}/{fingerprint}")
    masker = pretraining.DynamicMasker.from_tokenizer(tokenizer, masked_lm_prob=masked_lm_prob,
                                                      max_predictions_per_seq=max_predictions,
                                                      whole_word_mask=whole_word_mask, seed=_check_seed(seed),
                                                      per_epoch=dynamic_masking,
                                                      mask_token_fraction=mask_token_fraction,
                                                      random_token_fraction=random_token_fraction)
    return make_pretraining_loader(source, global_batch_size=global_batch_size, seed=seed,
                                   process_index=process_index, process_count=process_count, shuffle=shuffle,
                                   num_epochs=num_epochs, masker=masker, drop_remainder=drop_remainder,
                                   worker_count=worker_count, read_options=read_options)


# --------------------------------------------------------------------------------------- checkpointing
def iterator_state_to_bytes(iterator) -> bytes:
    """The iterator's position as bytes (grain's JSON state) to store in a checkpoint. Each process has its own
    state: save one per process (e.g. under `data_state/process_{jax.process_index()}`)."""
    if not hasattr(iterator, "get_state"):
        raise TypeError(f"{type(iterator).__name__} has no get_state(); use iter(loader) of a grain DataLoader")
    state = iterator.get_state()
    if isinstance(state, str):
        state = state.encode()
    elif not isinstance(state, bytes):
        state = json.dumps(state, sort_keys=True).encode()
    return state


def iterator_state_from_bytes(iterator, state: Union[bytes, str]):
    """Restores `iterator` (a fresh `iter(loader)` of an identically built loader) to `state` and returns it;
    it then yields exactly the batches an uninterrupted iterator would have. Raises ValueError if the state is
    not grain iterator state or belongs to a differently built loader (other source, sampler or workers)."""
    if isinstance(state, str):
        state = state.encode()
    if isinstance(state, (bytearray, memoryview, np.ndarray)):
        state = bytes(np.asarray(state, np.uint8).tobytes() if isinstance(state, np.ndarray) else state)
    try:
        json.loads(state.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a grain iterator state (expected JSON bytes): {e}") from None
    iterator.set_state(state)
    return iterator


def restore_iterator(loader, state: Union[bytes, str]):
    """`iterator_state_from_bytes(iter(loader), state)`."""
    return iterator_state_from_bytes(iter(loader), state)


def batches_per_epoch(num_records: int, global_batch_size: int, process_count: int = 1) -> int:
    """Full local batches each process gets per epoch (with drop_remainder, and epochs not straddled)."""
    return (num_records // process_count) // _local_batch_size(global_batch_size, process_count)
