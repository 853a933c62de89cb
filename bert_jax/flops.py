"""Model FLOP counting and per-chip peak FLOP/s: the one table the benchmark, the training loop's
MFU and AOT compilation reports share.

Model FLOPs per token (training, bidirectional attention):
    6 * N_non_embedding + 12 * L * hidden * seq + 6 * hidden * vocab * f
(in sliding-window layers the attention term counts the window instead of seq)
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
    """Encoder layers + MLM head transform (biases and norms included), analytically, for any setting
    of the architecture switches (norm placement/type/bias, gated MLP, bias switches, the embedding
    projection of embedding_size != hidden_size, which counts as non-embedding)."""
    h, i = config.hidden_size, config.intermediate_size
    e = config.embedding_size or h
    norm = lambda width: width * (2 if config.norm_bias else 1)  # scale (+ bias)
    branches = 1 if config.mlp_type == "dense" else 2  # gated MLPs have a second input projection
    per_layer = (4 * h * h + (4 * h if config.attention_bias else 0)  # Q, K, V, attention output
                 + branches * h * i + i * h + ((branches * i + h) if config.mlp_bias else 0)  # MLP
                 + 2 * norm(h))  # two norms per layer, post- or pre-LN
    head = h * e + (e if config.mlm_head_bias else 0) + norm(e)  # cls/predictions/transform dense + norm
    extra = (norm(h) if config.norm_position == "pre" else 0) + (e * h + h if e != h else 0)  # final norm, projection
    return config.num_hidden_layers * per_layer + head + extra


def attended_keys(config: BertConfig, layer: int, seq: int) -> int:
    """Keys one query attends to in `layer` (0-based): the whole sequence in a global layer, the window
    (|q - k| <= local_attention_window // 2, edges counted as interior) in a sliding-window layer."""
    if config.local_attention_window > 0 and layer % config.global_attn_every_n_layers:
        return min(seq, 2 * (config.local_attention_window // 2) + 1)
    return seq


def flops_per_token(config: BertConfig, seq: int, mlm_positions_fraction: float, training: bool = True) -> float:
    """6 N_non_emb + 12 H sum_layers(keys) + 6 E V f per token for a training step (keys = seq in a global
    layer, the window in a sliding-window layer; E: the tied decoder's width, hidden_size unless
    embedding_size says otherwise); a third of it forward-only."""
    h = config.hidden_size
    keys = sum(attended_keys(config, layer, seq) for layer in range(config.num_hidden_layers))
    flops = (6.0 * non_embedding_params(config) + 12.0 * h * keys
             + 6.0 * (config.embedding_size or h) * config.vocab_size * mlm_positions_fraction)
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
