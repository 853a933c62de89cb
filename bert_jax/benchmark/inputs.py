"""Benchmark inputs: the named BERT sizes as `BertConfig`s and a deterministic synthetic MLM batch."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from bert_jax.config import BertConfig

# name: (num_hidden_layers, hidden_size, num_attention_heads, intermediate_size)
MODEL_CONFIGS: Dict[str, tuple] = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}

MASK_ID, CLS_ID, SEP_ID = 103, 101, 102  # bert-base-uncased vocabulary
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.01


def make_config(name: str, dtype: str = "float32", attention_impl: str = "xla", dropout: bool = True,
                **overrides: Any) -> BertConfig:
    """A named BERT size (vocab 30522, 512 positions) as a `BertConfig`."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {list(MODEL_CONFIGS)}")
    layers, hidden, heads, inter = MODEL_CONFIGS[name]
    kwargs = dict(vocab_size=30522, max_position_embeddings=512, num_hidden_layers=layers, hidden_size=hidden,
                  num_attention_heads=heads, intermediate_size=inter, dtype=dtype, param_dtype="float32",
                  attention_impl=attention_impl)
    if not dropout:
        kwargs.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def num_masked(seq: int, mlm_fraction: float) -> int:
    """Masked positions per row (google-research's max_predictions_per_seq = round(f * seq))."""
    return max(1, min(seq - 2, int(round(mlm_fraction * seq))))


def synthetic_batch(batch: int, seq: int, mlm_fraction: float, vocab_size: int = 30522, seed: int = 0
                    ) -> Dict[str, np.ndarray]:
    """Deterministic MLM batch: input_ids (masked), attention_mask, token_type_ids, masked_positions
    [B, P], labels [B, P] (original ids), dense_labels [B, L] (-100 where not masked)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1000, vocab_size, size=(batch, seq)).astype(np.int32)
    ids[:, 0] = CLS_ID
    ids[:, -1] = SEP_ID
    p = num_masked(seq, mlm_fraction)
    positions = np.stack([np.sort(rng.choice(np.arange(1, seq - 1), size=p, replace=False)) for _ in range(batch)]
                         ).astype(np.int32)
    rows = np.arange(batch)[:, None]
    labels = ids[rows, positions].copy()
    input_ids = ids.copy()
    input_ids[rows, positions] = MASK_ID
    dense_labels = np.full((batch, seq), -100, np.int32)
    dense_labels[rows, positions] = labels
    return dict(input_ids=input_ids, attention_mask=np.ones((batch, seq), np.int32),
                token_type_ids=np.zeros((batch, seq), np.int32), masked_positions=positions, labels=labels,
                dense_labels=dense_labels)
