"""RoBERTa-style dynamic masking and FULL-SENTENCES packing of tokenized documents, on the fly (the
static google-research recipe, whose special tokens and checks these share, and the offline format are
`pretraining.py`)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from bert_jax.data.pretraining import CLS, MASK, PAD, SEP, _vocab_words, validate_args, validate_mask_fractions


def unmask(features: Mapping[str, Any]) -> np.ndarray:
    """input_ids [seq] with a statically masked record's original ids put back at its masked positions
    (those with weight > 0; without weights, positions > 0, as [CLS] is never predicted)."""
    ids = np.array(features["input_ids"], copy=True)
    positions = np.asarray(features["masked_lm_positions"]).reshape(-1)
    labels = np.asarray(features["masked_lm_ids"]).reshape(-1)
    weights = features.get("masked_lm_weights")
    real = (np.asarray(weights).reshape(-1) > 0) if weights is not None else positions > 0
    if positions.shape != labels.shape or (positions[real] >= len(ids)).any() or (positions[real] < 0).any():
        raise ValueError(f"masked_lm_positions {positions.tolist()} / masked_lm_ids {labels.tolist()} do not fit "
                         f"input_ids of length {len(ids)}")
    ids[positions[real]] = labels[real]
    return ids


class DynamicMasker:
    """RoBERTa-style dynamic masking of already tokenized features, deterministic per (seed, epoch, index).

    Same rule as the static recipe: candidates are attended, non-special positions (grouped into words when
    `whole_word_mask`, a word being a position followed by adjacent `continuation_token_ids`, i.e. '##' pieces);
    `num_to_predict = min(max_predictions_per_seq, max(1, round(num_attended_tokens * masked_lm_prob)))`; words
    are taken in random order, skipping any that would overshoot; each chosen position becomes [MASK] with
    probability `mask_token_fraction` (0.8), a uniformly random id in [0, vocab_size) with `random_token_fraction`
    (0.1), and keeps its token otherwise (BERT's 80/10/10 by default). The generator is `np.random.default_rng([seed, epoch,
    index])`, so the result does not depend on the order examples are processed in.

    `per_epoch=False` masks every epoch as epoch 0 (static masking: each example keeps its first pass's
    masks). Records that already carry masks (`masked_lm_positions`/`masked_lm_ids`, e.g. shards written
    by `create_pretraining_data`) are unmasked first, so static shards can be masked afresh every epoch.
    """

    def __init__(self, vocab_size: int, mask_token_id: int, special_token_ids: Iterable[int],
                 masked_lm_prob: float = 0.15, max_predictions_per_seq: int = 20, whole_word_mask: bool = False,
                 seed: int = 0, continuation_token_ids: Optional[Iterable[int]] = None, per_epoch: bool = True,
                 mask_token_fraction: float = 0.8, random_token_fraction: float = 0.1):
        validate_args(max_predictions_per_seq=max_predictions_per_seq, masked_lm_prob=masked_lm_prob)
        # The second draw (keep vs random among the positions not set to [MASK]) is 0.5 exactly for 80/10/10.
        self.keep_given_unmasked = validate_mask_fractions(mask_token_fraction, random_token_fraction)
        self.mask_token_fraction, self.random_token_fraction = float(mask_token_fraction), float(random_token_fraction)
        if int(vocab_size) < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size!r}")
        if not 0 <= int(mask_token_id) < int(vocab_size):
            raise ValueError(f"mask_token_id {mask_token_id!r} is outside [0, vocab_size={vocab_size})")
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if whole_word_mask and continuation_token_ids is None:
            raise ValueError("whole_word_mask=True needs continuation_token_ids (the ids of '##' pieces); "
                             "use DynamicMasker.from_tokenizer")
        self.vocab_size, self.mask_token_id = int(vocab_size), int(mask_token_id)
        self.special_token_ids = np.asarray(sorted({int(t) for t in special_token_ids}), np.int64)
        self.masked_lm_prob, self.max_predictions_per_seq = float(masked_lm_prob), int(max_predictions_per_seq)
        self.whole_word_mask, self.seed = bool(whole_word_mask), int(seed)
        self.continuation_token_ids = np.asarray(sorted(continuation_token_ids or ()), np.int64)
        self.per_epoch = bool(per_epoch)

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs) -> "DynamicMasker":
        """Builds from `tokenizer.vocab`: specials [PAD]/[CLS]/[SEP]/[MASK], continuations = '##' tokens."""
        vocab = tokenizer.vocab
        _vocab_words(tokenizer)  # checks the special tokens exist
        kwargs.setdefault("continuation_token_ids", [i for t, i in vocab.items() if t.startswith("##")])
        return cls(vocab_size=max(vocab.values()) + 1, mask_token_id=vocab[MASK],
                   special_token_ids=[vocab[t] for t in (PAD, CLS, SEP, MASK) if t in vocab], **kwargs)

    def __call__(self, features: Mapping[str, Any], index: int, epoch: int = 0) -> dict[str, np.ndarray]:
        ids = np.asarray(features["input_ids"])
        if ids.ndim != 1:
            raise ValueError(f"input_ids must be 1-D (one example), got shape {ids.shape}")
        if "masked_lm_positions" in features:
            ids = unmask(features)
        if not self.per_epoch:
            epoch = 0
        attention = np.asarray(features.get("attention_mask", np.ones_like(ids)))
        candidates = np.flatnonzero((attention != 0) & ~np.isin(ids, self.special_token_ids))
        num_to_predict = min(self.max_predictions_per_seq,
                             max(1, int(round(int(np.count_nonzero(attention)) * self.masked_lm_prob))))
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        if self.whole_word_mask and len(candidates):
            joins = np.isin(ids[candidates], self.continuation_token_ids) & (np.diff(candidates, prepend=-2) == 1)
            groups = np.split(candidates, np.flatnonzero(~joins)[1:])
            chosen, count = [], 0
            for g in rng.permutation(len(groups)):
                if count >= num_to_predict:
                    break
                if count + len(groups[g]) <= num_to_predict:
                    chosen.append(groups[g])
                    count += len(groups[g])
            positions = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
        else:
            positions = np.sort(rng.permutation(candidates)[:num_to_predict])
        k = len(positions)
        labels = ids[positions]
        keep_or_mask, keep_or_random = rng.random(k), rng.random(k)
        random_ids = rng.integers(0, self.vocab_size, k)
        replaced = np.where(keep_or_mask < self.mask_token_fraction, self.mask_token_id,
                            np.where(keep_or_random < self.keep_given_unmasked, labels, random_ids))
        out = dict(features)
        out["input_ids"] = ids.copy()
        out["input_ids"][positions] = replaced
        P = self.max_predictions_per_seq
        out["masked_lm_positions"] = np.zeros(P, np.int32)
        out["masked_lm_ids"] = np.zeros(P, np.int32)
        out["masked_lm_weights"] = np.zeros(P, np.float32)
        out["masked_lm_positions"][:k] = positions
        out["masked_lm_ids"][:k] = labels
        out["masked_lm_weights"][:k] = 1.0
        return out

    def map_with_index(self, index: int, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """grain `MapWithIndex` protocol."""
        return self(element, index)


def mlm_only_full_sentences(documents: Iterable[Sequence[Sequence[int]]], max_seq_length: int,
                            cls_token_id: int, sep_token_id: int, pad_token_id: int = 0
                            ) -> Iterator[dict[str, np.ndarray]]:
    """RoBERTa FULL-SENTENCES packing (MLM only, no NSP): contiguous whole sentences (lists of token ids) packed
    into `[CLS] ... [SEP]` of at most `max_seq_length`, crossing document boundaries with an extra [SEP] between
    documents. A sentence longer than `max_seq_length - 2` is split into pieces so no token is dropped. Yields
    padded `input_ids`, `token_type_ids` (zeros), `attention_mask` (int32)."""
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, (int, np.integer)) or max_seq_length < 3:
        raise ValueError(f"max_seq_length must be an integer >= 3, got {max_seq_length!r}")
    budget = max_seq_length - 2

    def emit(content):
        n = len(content) + 2
        ids = np.full(max_seq_length, pad_token_id, np.int32)
        ids[:n] = [cls_token_id, *content, sep_token_id]
        mask = np.zeros(max_seq_length, np.int32)
        mask[:n] = 1
        return {"input_ids": ids, "token_type_ids": np.zeros(max_seq_length, np.int32), "attention_mask": mask}

    current: list = []
    for document in documents:
        new_document = True
        for sentence in document:
            sentence = list(sentence)
            for start in range(0, len(sentence), budget):
                piece = sentence[start:start + budget]
                separator = 1 if (new_document and current) else 0
                if current and len(current) + separator + len(piece) > budget:
                    yield emit(current)
                    current, separator = [], 0
                if separator:
                    current.append(sep_token_id)
                current.extend(piece)
                new_document = False
    if current:
        yield emit(current)
