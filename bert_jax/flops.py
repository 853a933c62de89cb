"""Model FLOP counting and per-chip peak FLOP/s: the one table the benchmark, the training loop's
MFU and AOT compilation reports share.

Model FLOPs per token (training, bidirectional attention):
    6 * N_non_embedding + 12 * L * hidden * seq + 6 * hidden * vocab * f
with f the fraction of positions projected onto the vocabulary (masked positions / seq with the
sparse MLM head, 1 dense); inference counts one third of it. N_non_embedding excludes the
word/position/token-type tables and the embedding LayerNorm; the tied decoder is the third term.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from bert_jax.config import BertConfig

# Peak dense bf16 TFLOP/s per chip, matched against `device_kind` (lower case, first hit wins).
PEAK_TFLOPS = (
    ("h200", 989.0), ("h100", 989.0), ("a100", 312.0),
    ("v5 lite", 197.0), ("v5e", 197.0), ("v5p", 459.0), ("tpu v5", 459.0), ("v4", 275.0),
)


def non_embedding_params(config: BertConfig) -> int:
    """Encoder layers + MLM head transform (biases and LayerNorms included), analytically."""
    h, i = config.hidden_size, config.intermediate_size
    per_layer = (4 * (h * h + h)  # Q, K, V, attention output
                 + 2 * h  # attention LayerNorm
                 + (h * i + i) + (i * h + h)  # intermediate, output
                 + 2 * h)  # output LayerNorm
    head = h * h + h + 2 * h  # cls/predictions/transform dense + LayerNorm
    return config.num_hidden_layers * per_layer + head


def flops_per_token(config: BertConfig, seq: int, mlm_positions_fraction: float, training: bool = True) -> float:
    """6 N_non_emb + 12 L H seq + 6 H V f per token for a training step; a third of it forward-only."""
    h = config.hidden_size
    flops = (6.0 * non_embedding_params(config) + 12.0 * config.num_hidden_layers * h * seq
             + 6.0 * h * config.vocab_size * mlm_positions_fraction)
    return flops if training else flops / 3.0


def pretraining_step_flops(config: BertConfig, seq_len: int, max_predictions: int, global_batch_size: int) -> float:
    """Model FLOPs of one pretraining step over the global batch (sparse MLM head: logits at the
    `max_predictions` masked positions of each row)."""
    return flops_per_token(config, seq_len, max_predictions / seq_len, training=True) * seq_len * global_batch_size


def count_non_embedding_params(params) -> int:
    """The same count as `non_embedding_params`, read off a `BertForMaskedLM` param tree."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [getattr(k, "key", str(k)) for k in path]
        if "embeddings" in keys or keys[-2:] == ["predictions", "bias"]:
            continue
        total += int(np.prod(leaf.shape))
    return total


def peak_tflops(device_kind: str) -> Optional[float]:
    """Peak dense bf16 TFLOP/s of one chip named `device_kind`; None for chips not in the table."""
    kind = device_kind.lower()
    for key, value in PEAK_TFLOPS:
        if key in kind:
            return value
    return None
