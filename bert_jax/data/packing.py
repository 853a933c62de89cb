"""Sequence packing: several variable-length examples per fixed-length row.

Padding a batch of short sequences to `max_length` wastes most of the compute; packing fills each
row with whole examples instead. The model keeps them apart through `sequence_ids` (attention stays
inside a sequence, positions restart per sequence) and reads one pooled vector per sequence at
`cls_positions`, so packed and unpacked runs give the same per-sequence outputs.

No jax import: this runs in the input pipeline.
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np

IGNORE_INDEX = -100


class SequencePacker:
    """Greedy first-fit packer over a stream of examples.

    Each example is a dict of 1-D per-token arrays (`token_keys`, e.g. input_ids, token_type_ids,
    token labels), scalars per sequence (`sequence_keys`, e.g. label, next_sentence_label) and
    optionally the sparse MLM targets `masked_lm_positions` / `masked_lm_ids` / `masked_lm_weights`
    (positions are shifted to the row).

    Each emitted row has, for `max_length` L, `max_sequences_per_row` S and `max_predictions` P:
      token keys [L] (padded with `pad_values`, default 0 and -100 for keys containing "label"),
      attention_mask [L], sequence_ids [L] (1..S, 0 = padding), position_ids [L],
      cls_positions [S] (first token of each sequence), sequence_mask [S],
      sequence keys [S] (padded with -100), masked_lm_* [P].
    """

    def __init__(self, max_length: int, max_sequences_per_row: int = 8,
                 token_keys: Sequence[str] = ("input_ids", "token_type_ids"), sequence_keys: Sequence[str] = (),
                 max_predictions: Optional[int] = None, pad_values: Optional[Mapping[str, int]] = None,
                 open_rows: int = 4):
        if max_length < 1 or max_sequences_per_row < 1 or open_rows < 1:
            raise ValueError("max_length, max_sequences_per_row and open_rows must be >= 1, got "
                             f"{max_length}, {max_sequences_per_row}, {open_rows}")
        self.max_length, self.max_sequences = int(max_length), int(max_sequences_per_row)
        self.token_keys, self.sequence_keys = tuple(token_keys), tuple(sequence_keys)
        self.max_predictions = max_predictions
        self.pad_values = {k: (IGNORE_INDEX if "label" in k else 0) for k in self.token_keys}
        self.pad_values.update(pad_values or {})
        self.open_rows = int(open_rows)

    def pack(self, examples: Iterable[Mapping[str, np.ndarray]]) -> Iterator[Dict[str, np.ndarray]]:
        """Yields packed rows; deterministic for a given input order."""
        rows: List[List[Mapping[str, np.ndarray]]] = []
        used: List[int] = []
        for index, example in enumerate(examples):
            length = self._length(example, index)
            target = next((r for r in range(len(rows)) if used[r] + length <= self.max_length
                           and len(rows[r]) < self.max_sequences), None)
            if target is None:
                if len(rows) == self.open_rows:
                    fullest = int(np.argmax(used))  # emit the fullest row to make room
                    yield self._emit(rows.pop(fullest))
                    used.pop(fullest)
                rows.append([])
                used.append(0)
                target = len(rows) - 1
            rows[target].append(example)
            used[target] += length
        for row in rows:
            yield self._emit(row)

    def _length(self, example, index) -> int:
        missing = [k for k in self.token_keys + self.sequence_keys if k not in example]
        if missing:
            raise ValueError(f"example {index} lacks the keys {missing}")
        lengths = {k: len(example[k]) for k in self.token_keys}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"example {index} has per-token arrays of different lengths: {lengths}")
        length = lengths[self.token_keys[0]]
        if not 0 < length <= self.max_length:
            raise ValueError(f"example {index} has {length} tokens; packing needs 1..max_length={self.max_length}")
        return length

    def _emit(self, row: List[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        L, S = self.max_length, self.max_sequences
        out = {k: np.full((L,), self.pad_values[k], np.int32) for k in self.token_keys}
        out.update(attention_mask=np.zeros((L,), np.int32), sequence_ids=np.zeros((L,), np.int32),
                   position_ids=np.zeros((L,), np.int32), cls_positions=np.zeros((S,), np.int32),
                   sequence_mask=np.zeros((S,), np.int32))
        for k in self.sequence_keys:
            out[k] = np.full((S,), IGNORE_INDEX, np.int32)
        predictions = {"masked_lm_positions": [], "masked_lm_ids": [], "masked_lm_weights": []}
        offset = 0
        for s, example in enumerate(row):
            n = len(example[self.token_keys[0]])
            for k in self.token_keys:
                out[k][offset:offset + n] = example[k]
            out["attention_mask"][offset:offset + n] = 1
            out["sequence_ids"][offset:offset + n] = s + 1
            out["position_ids"][offset:offset + n] = np.arange(n)
            out["cls_positions"][s] = offset
            out["sequence_mask"][s] = 1
            for k in self.sequence_keys:
                out[k][s] = example[k]
            if self.max_predictions is not None and "masked_lm_positions" in example:
                weights = np.asarray(example.get("masked_lm_weights", np.ones(len(example["masked_lm_positions"]))))
                keep = weights > 0
                predictions["masked_lm_positions"].extend(np.asarray(example["masked_lm_positions"])[keep] + offset)
                predictions["masked_lm_ids"].extend(np.asarray(example["masked_lm_ids"])[keep])
                predictions["masked_lm_weights"].extend(weights[keep])
            offset += n
        if self.max_predictions is not None:
            P = self.max_predictions
            count = len(predictions["masked_lm_positions"])
            if count > P:
                raise ValueError(f"a packed row holds {count} masked positions; raise max_predictions (={P})")
            for k, dtype in (("masked_lm_positions", np.int32), ("masked_lm_ids", np.int32),
                             ("masked_lm_weights", np.float32)):
                values = np.zeros((P,), dtype)
                values[:count] = predictions[k]
                out[k] = values
        return out


def pack_examples(examples: Iterable[Mapping[str, np.ndarray]], max_length: int, **kwargs) -> Dict[str, np.ndarray]:
    """Packs all `examples` and stacks the rows: each key -> [num_rows, ...]."""
    rows = list(SequencePacker(max_length, **kwargs).pack(examples))
    if not rows:
        raise ValueError("no examples to pack")
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def packing_efficiency(batch: Mapping[str, np.ndarray]) -> float:
    """Fraction of row positions holding real tokens."""
    return float(np.mean(batch["attention_mask"]))
